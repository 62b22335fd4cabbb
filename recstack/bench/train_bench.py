"""`recstack bench train`: training samples/s (a) end to end, reading batches from the binary
format through the prefetching loader, and (b) with loading excluded (batches gathered in advance),
next to this machine's ceiling for the model.

The two variants run in alternating rounds in one process, so machine noise hits both alike; the
figures are medians over rounds. The ceiling is the roofline of `recstack.bench.roofline`: dense
FLOPs at the measured GEMM rate plus embedding bytes at the measured gather and scatter rates.
"""

from __future__ import annotations

import statistics
import time
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import torch

from recstack.bench import roofline
from recstack.config import resolve
from recstack.data.loader import BatchLoader
from recstack.data.store import Dataset
from recstack.models.zoo import build_model, describe
from recstack.progress import console, is_quiet, say
from recstack.report import new_report, write_report
from recstack.train.run import synthetic_dataset
from recstack.train.trainer import Trainer

ROUNDS = 5
WARMUP_STEPS = 10


def training_bytes_per_sample(model: torch.nn.Module, batch_size: int) -> tuple[float, float]:
    """Embedding bytes per sample: (gathered in forward, read-modify-written by the sparse update).

    The update reads and writes each touched row and its optimizer state once per unique row;
    with skewed ids a batch has fewer unique rows than lookups, so the lookup count is an upper bound
    (the bench measures the real unique fraction and passes it in `unique_fraction`)."""
    emb = model.embeddings
    row_bytes = emb.dim * 4
    state_bytes = emb.optimizer.state_floats_per_row(emb.dim) * 4
    lookups = model.embedding_lookups_per_sample()
    return lookups * row_bytes, lookups * 2 * (row_bytes + state_bytes)


def _time_steps(trainer: Trainer, batches, steps: int) -> float:
    """Samples/s over `steps` training steps drawn from `batches`."""
    samples = 0
    start = time.perf_counter()
    for batch in islice(batches, steps):
        trainer.train_step(batch)
        samples += batch.batch_size
    return samples / (time.perf_counter() - start)


def unique_fraction(dataset: Dataset, rows: tuple[int, int], batch_size: int, seed: int) -> float:
    """Mean over a few batches of unique (feature, id) pairs / lookups: what the update really touches."""
    loader = BatchLoader(dataset, rows, batch_size, shuffle=True, seed=seed, prefetch=0)
    fractions = []
    for batch in islice(loader.epoch(0), 8):
        f = batch.sparse
        keys = torch.arange(len(f.keys)).repeat_interleave(f.lengths.view(len(f.keys), -1).sum(1))
        pairs = keys * (1 << 40) + f.values
        fractions.append(torch.unique(pairs).numel() / max(1, pairs.numel()))
    return statistics.mean(fractions) if fractions else 1.0


def bench_train(
    overrides: dict[str, Any],
    rows: int = 1 << 20,
    steps: int = 200,
    report_path: str | Path | None = None,
    config_file: str | None = None,
) -> dict[str, Any]:
    config = resolve(config_file, overrides)
    config.data.synth_rows = rows
    config.data.synth_test_fraction = 0.0
    torch.manual_seed(config.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    dataset = Dataset(config.data.path) if config.data.path else Dataset(synthetic_dataset(config))
    model = build_model(config, dataset.schema)
    trainer = Trainer(config, dataset, model)
    sizes = describe(model)
    batch_size = config.train.batch_size
    say(f"bench train: {config.model.preset}, batch {batch_size}, {sizes['embedding_rows']:,} embedding rows, "
        f"{ROUNDS} rounds x {steps // ROUNDS} steps per variant")

    # (b) compute only: batches gathered before timing, cycled
    resident = list(islice(trainer.loader.epoch(0), 16))
    loading = trainer.loader.epoch(1)
    _time_steps(trainer, cycle(resident), WARMUP_STEPS)
    per_round = max(1, steps // ROUNDS)
    end_to_end, compute_only = [], []
    for epoch in range(ROUNDS):
        compute_only.append(_time_steps(trainer, cycle(resident), per_round))
        rate = _time_steps(trainer, loading, per_round)
        if rate == 0:
            loading = trainer.loader.epoch(epoch + 2)
            rate = _time_steps(trainer, loading, per_round)
        end_to_end.append(rate)

    gather_bytes, update_bytes = training_bytes_per_sample(model, batch_size)
    uniq = unique_fraction(dataset, trainer.train_rows, batch_size, config.seed)
    ceilings = roofline.measure_ceilings(row_bytes=model.embeddings.dim * 4)
    flops = 3 * sizes["flops_per_sample"]  # forward, and two GEMMs per layer in backward
    bound = roofline.roofline_samples_per_s(flops, gather_bytes, update_bytes * uniq, ceilings)

    e2e, comp = statistics.median(end_to_end), statistics.median(compute_only)
    report = new_report("bench train", config.to_dict())
    report.update(
        {
            "model": sizes,
            "batch_size": batch_size,
            "throughput": {
                "end_to_end_samples_per_s": e2e,
                "compute_samples_per_s": comp,
                "end_to_end_rounds": end_to_end,
                "compute_rounds": compute_only,
                "end_to_end_vs_compute": e2e / comp,
            },
            "ceiling": {
                **bound,
                "flops_per_sample": flops,
                "gather_bytes_per_sample": gather_bytes,
                "update_bytes_per_sample": update_bytes * uniq,
                "unique_row_fraction": uniq,
                "machine": ceilings,
            },
            "compute_vs_ceiling": comp / bound["samples_per_s"],
        }
    )
    write_report(report_path, report)
    if not is_quiet():
        print_bench(report)
    return report


def print_bench(report: dict[str, Any]) -> None:
    from rich.table import Table

    t, c = report["throughput"], report["ceiling"]
    table = Table(title=f"bench train: {report['config']['model']['preset']}, batch {report['batch_size']}")
    table.add_column("figure")
    table.add_column("samples/s", justify="right")
    table.add_column("vs ceiling", justify="right")
    for name, value in (
        ("(a) end to end (loader + step)", t["end_to_end_samples_per_s"]),
        ("(b) step only (loading excluded)", t["compute_samples_per_s"]),
        ("machine ceiling (roofline)", c["samples_per_s"]),
    ):
        table.add_row(name, f"{value:,.0f}", f"{value / c['samples_per_s']:.0%}")
    console.print(table)
    m = c["machine"]
    console.print(
        f"(a)/(b) = {t['end_to_end_vs_compute']:.2f}; ceiling from {c['flops_per_sample'] / 1e6:.2f} MFLOP/sample at "
        f"{m['matmul_gflops']:.0f} GFLOP/s, {c['gather_bytes_per_sample']:,.0f} B gathered at {m['gather_gbs']:.2f} GB/s, "
        f"{c['update_bytes_per_sample']:,.0f} B updated at {m['scatter_gbs']:.2f} GB/s"
    )
