"""`recstack models`: the zoo at its published sizes: parameters, embedding bytes, dense FLOPs and
embedding bytes read per sample, and the class each model falls in (Gupta et al. HPCA 2020:
embedding-, MLP- or attention-dominated).

Sizes come from the full-size model built on the `meta` device (no memory); FLOPs are counted by
torch's FLOP counter on a forward pass of a sample batch through the same architecture with small
tables (FLOPs do not depend on table rows), with bags drawn from the preset's pooling.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from recstack.data.batch import Batch, JaggedFeatures

MATMUL_FLOPS_PER_S = 120e9
"""fp32 GEMM rate of the reference machine (2 EPYC cores, measured: README machine facts)."""
GATHER_BYTES_PER_S = 2e9
"""Random embedding-row gather rate of the reference machine (1.5-4 GB/s measured for 256-byte rows)."""
SAMPLE_TABLE_ROWS = 1000
SAMPLE_BATCH = 128


def _layouts(preset_name: str):
    from recstack.config import Config
    from recstack.data.store import SparseFeature
    from recstack.data.synth import get_preset
    from recstack.models.base import DataLayout
    from recstack.models.zoo import apply_preset

    config = Config()
    apply_preset(config, preset_name)
    synth = get_preset(config.data.synth_preset)
    full = synth.sparse_features(1.0)
    small = [SparseFeature(f.name, min(f.num_embeddings, SAMPLE_TABLE_ROWS), f.length, f.dtype, f.table, f.sequence)
             for f in full]
    return (config, synth, DataLayout(synth.dense_names, synth.label_names, full),
            DataLayout(synth.dense_names, synth.label_names, small))


def sample_batch(synth, layout, size: int = SAMPLE_BATCH, seed: int = 0) -> Batch:
    """Random ids with the preset's bag sizes (what FLOPs and bytes per sample depend on)."""
    rng = np.random.default_rng(seed)
    values, lengths = [], []
    for spec, feature in zip(synth.tables, layout.sparse):
        n = spec.pooling.sample(rng, size).astype(np.int64)
        lengths.append(n)
        values.append(rng.integers(0, feature.num_embeddings, int(n.sum())))
    labels = torch.zeros(size) if len(layout.tasks) == 1 else torch.zeros(size, len(layout.tasks))
    sparse = JaggedFeatures([f.name for f in layout.sparse], torch.from_numpy(np.concatenate(values)),
                            torch.from_numpy(np.concatenate(lengths).astype(np.int32)), size)
    return Batch(torch.from_numpy(rng.random((size, len(layout.dense)), dtype=np.float32)), sparse, labels)


def classify(flops: dict[str, float], embedding_bytes: float) -> tuple[str, dict[str, float]]:
    """The family that would take the most time per sample at the reference machine's rates."""
    seconds = {
        "embedding": embedding_bytes / GATHER_BYTES_PER_S,
        "mlp": (flops["mlp"] + flops["interaction"] + flops["other"]) / MATMUL_FLOPS_PER_S,
        "attention": flops["attention"] / MATMUL_FLOPS_PER_S,
    }
    return f"{max(seconds, key=seconds.get)}-dominated", {k: v * 1e6 for k, v in seconds.items()}


def characterize(preset: str) -> dict[str, Any]:
    from recstack.models.base import ModelContext
    from recstack.models.zoo import builder, describe, embedding_bytes_per_sample, sparse_optimizer_config

    config, synth, full_layout, small_layout = _layouts(preset)
    optimizer = sparse_optimizer_config(config.train)
    build = builder(config.model.name)
    full = build(ModelContext(config.model, full_layout, optimizer, device="meta"))
    sizes = describe(full)
    torch.manual_seed(0)
    small = build(ModelContext(config.model, small_layout, optimizer))
    batch = sample_batch(synth, small_layout)
    flops = small.flops_by_family(batch)
    bytes_per_sample = embedding_bytes_per_sample(small, batch)
    model_class, micros = classify(flops, bytes_per_sample)
    return {
        "name": preset,
        "model": config.model.name,
        "params": sizes["params"],
        "dense_params": sizes["dense_params"],
        "embedding_rows": sizes["embedding_rows"],
        "embedding_bytes": sizes["embedding_bytes"],
        "flops_per_sample": sum(flops.values()),
        "flops_by_family": flops,
        "embedding_bytes_per_sample": bytes_per_sample,
        "estimated_us_per_sample": micros,
        "class": model_class,
        "synthetic_data": config.data.synth_preset,
    }


def models_report(presets: list[str]) -> dict[str, Any]:
    return {
        "models": [characterize(p) for p in presets],
        "reference_rates": {"matmul_flops_per_s": MATMUL_FLOPS_PER_S, "gather_bytes_per_s": GATHER_BYTES_PER_S},
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="PRESET", help="presets to characterize (default: the zoo)")
    parser.add_argument("--report", metavar="FILE", help="write the JSON report here")
    parser.add_argument("--quiet", action="store_true", help="no table")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from recstack.errors import ConfigError
    from recstack.models.zoo import PRESETS, ZOO
    from recstack.progress import is_quiet
    from recstack.report import check_output_path, new_report, write_report

    if extra:
        raise ConfigError(f"unexpected arguments: {' '.join(extra)}")
    unknown = [n for n in args.names if n not in PRESETS]
    if unknown:
        raise ConfigError(f"unknown model preset(s) {', '.join(map(repr, unknown))}; presets: {', '.join(sorted(PRESETS))}")
    check_output_path(args.report)
    report = models_report(args.names or ZOO)
    if args.report:
        full = new_report("models", {"presets": args.names or ZOO})
        full.update(report)
        write_report(args.report, full)
    if not is_quiet():
        print_table(report)
    return 0


def print_table(report: dict[str, Any]) -> None:
    from rich.table import Table

    from recstack.progress import console

    table = Table(title="recstack model zoo (published sizes)", header_style="bold")
    for col, justify in [("model", "left"), ("params", "right"), ("tables GB", "right"), ("MFLOP/sample", "right"),
                         ("table KB/sample", "right"), ("dominated by", "left")]:
        table.add_column(col, justify=justify, no_wrap=True)
    for m in report["models"]:
        table.add_row(m["name"], f"{m['params'] / 1e6:,.1f}M", f"{m['embedding_bytes'] / 1e9:.2f}",
                      f"{m['flops_per_sample'] / 1e6:.2f}", f"{m['embedding_bytes_per_sample'] / 1e3:.1f}",
                      m["class"].removesuffix("-dominated"))
    rates = report["reference_rates"]
    table.caption = (f"class: the family with the most time per sample at {rates['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s "
                     f"and {rates['gather_bytes_per_s'] / 1e9:.0f} GB/s of random row gathers")
    console.print(table)
