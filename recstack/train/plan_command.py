"""`recstack plan`: a sharding plan for a model on N ranks, from its tables and the dataset's
measured pooling factors (recstack.embeddings.planner's cost model and search).

    recstack plan --model.preset criteo-kaggle --world-size 4 [--memory-per-rank 2GiB]
                  [--batch-size 65536] [--data DIR] [--report plan.json] [--quiet]

The model is built on the "meta" device (nothing allocated) for its tables; the mean ids per sample
of every feature are read from at most `--sample-rows` rows of the training split. The report holds
`world_size`, `tables` [{name, sharding, ranks}] (ShardingPlan.to_dict, loadable by
ShardingPlan.from_dict), `per_rank_bytes`, `predicted` (all_to_all_bytes_per_step and the rest of the
prediction) and the config. `plan_for(config, dataset, world_size)` is the same for the trainer.

`python -m recstack.train.plan_command --at-scale` prints the modelled step time and all-to-all
volume of the criteo-terabyte preset at 8, 64 and 512 GPUs as a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any

from recstack.argtypes import int_in, positive_float, positive_int, seed

SAMPLE_ROWS = 16384
"""Rows read to measure the pooling factors (a random sample of the training split)."""

# One NVIDIA H200 (torch 2.11, CUDA 13), measured by tools/gpu_rates.py on 2026-12-04: random-row
# gathers (F.embedding_bag, one id per bag, 64 fp32 columns, 1Mi ids from an 8 GiB table), sorted
# index_add_ updates of the same rows, and an 8192^3 TF32 matrix product.
H200_GATHER_BYTES_PER_S = 311e9
H200_UPDATE_BYTES_PER_S = 357e9
H200_TF32_FLOPS_PER_S = 363e12
NVLINK_BYTES_PER_S = 300e9
"""Stated, not measured: all-to-all rate per GPU to GPUs of its node (NVLink/NVSwitch, about half an
H100/H200 SXM's 900 GB/s bidirectional NVLink after protocol overhead)."""
NETWORK_BYTES_PER_S = 25e9
"""Stated, not measured: per GPU to other nodes (one 200 Gb/s NIC per GPU)."""
AT_SCALE_GPUS = (8, 64, 512)
AT_SCALE_BATCH = 65536


def gpu_machine(intra: float = NVLINK_BYTES_PER_S, inter: float = NETWORK_BYTES_PER_S, ranks_per_node: int = 8):
    from recstack.embeddings.planner import Machine

    return Machine(name="H200 nodes (gather, update and matmul rates measured on one H200; links stated)",
                   gather_bytes_per_s=H200_GATHER_BYTES_PER_S, update_bytes_per_s=H200_UPDATE_BYTES_PER_S,
                   intra_node_bytes_per_s=intra, inter_node_bytes_per_s=inter, ranks_per_node=ranks_per_node,
                   latency_s=20e-6, matmul_flops_per_s=H200_TF32_FLOPS_PER_S)


# --- inputs of the planner ---------------------------------------------------------------------------


def measure_pooling(dataset, max_sequence_length: int, split: str = "train", sample_rows: int = SAMPLE_ROWS,
                    seed: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """(feature -> mean ids per sample, feature -> mean of min(length, max_sequence_length)) over a
    random sample of at most `sample_rows` rows of `split` (all of it when smaller)."""
    import numpy as np

    start, stop = dataset.split(split) if split in dataset.schema.splits else (0, len(dataset))
    n = stop - start
    if n <= 0:
        return {}, {}
    if n <= sample_rows:
        rows: Any = slice(start, stop)
    else:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=sample_rows, replace=False)) + start
    batch = dataset.gather(rows)
    keys = batch.sparse.keys
    lengths = batch.sparse.lengths.view(len(keys), batch.batch_size).double()
    pooled = dict(zip(keys, lengths.mean(1).tolist()))
    kept = dict(zip(keys, lengths.clamp(max=max_sequence_length).mean(1).tolist()))
    return pooled, kept


def model_tables(config, schema) -> dict[str, Any]:
    """The model's collections' tables, sparse optimizer, and dense sizes, from a build on "meta"."""
    from recstack.models.zoo import build_model, training_bytes

    sizing = copy.deepcopy(config)
    sizing.fae.budget = ""  # the plan is of the full tables: tiers and kinds do not change them
    sizing.embeddings.kind, sizing.embeddings.collections = "dense", []
    model = build_model(sizing, schema, "meta")
    collections = model.embedding_collections()
    flops = getattr(model, "flops_per_sample", None)
    return {
        "collections": [list(c.tables) for c in collections],
        "optimizer": collections[0].optimizer if collections else None,
        "reserved_bytes": training_bytes(model) - sum(c.memory_bytes() for c in collections),
        "dense_params": sum(p.numel() for p in model.parameters()),
        "flops_per_sample": float(flops()) if flops is not None else 0.0,
    }


def plan_for(config, dataset, world_size: int, memory_per_rank: int | None = None, *, machine=None,
             batch_size: int | None = None, sample_rows: int = SAMPLE_ROWS, dp_max_bytes: int | None = None):
    """(ShardingPlan, PlanPrediction) for the config's model on `world_size` ranks, with the pooling
    factors measured on `dataset`'s training split; the global batch is train.batch_size unless given."""
    from recstack.embeddings.planner import DP_MAX_BYTES, plan_tables

    model = model_tables(config, dataset.schema)
    pooled, kept = measure_pooling(dataset, config.model.max_sequence_length, config.data.train_split, sample_rows,
                                   config.seed)
    return plan_tables(model["collections"], pooled, batch_size or config.train.batch_size, world_size,
                       model["optimizer"], memory_per_rank, machine, sequence_lengths=kept,
                       dp_max_bytes=DP_MAX_BYTES if dp_max_bytes is None else dp_max_bytes,
                       reserved_bytes=model["reserved_bytes"], dense_flops_per_sample=model["flops_per_sample"],
                       dense_params=model["dense_params"])


def predict_for(config, dataset, plan, *, machine=None, sample_rows: int = SAMPLE_ROWS):
    """The cost model's PlanPrediction for a given plan (a file's, or one type for every table)."""
    from recstack.embeddings.planner import predict

    model = model_tables(config, dataset.schema)
    pooled, kept = measure_pooling(dataset, config.model.max_sequence_length, config.data.train_split, sample_rows,
                                   config.seed)
    return predict(plan, model["collections"], pooled, config.train.batch_size, model["optimizer"], machine,
                   sequence_lengths=kept, reserved_bytes=model["reserved_bytes"],
                   dense_flops_per_sample=model["flops_per_sample"], dense_params=model["dense_params"])


# --- the command ---------------------------------------------------------------------------------


def _bytes(text: str) -> int:
    from recstack.data.hotcold import parse_bytes
    from recstack.errors import DataError

    try:
        value = parse_bytes(text)
    except DataError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a byte size > 0, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("A sharding plan for the config's model on N ranks. Any config key can be set as "
                          "--section.key VALUE (e.g. --model.preset criteo-kaggle --model.scale 0.1).")
    parser.add_argument("--world-size", type=int_in(1, 1 << 16, what="a world size in [1, 65536]"), required=True,
                        help="ranks to shard over")
    parser.add_argument("--memory-per-rank", type=_bytes, metavar="BYTES",
                        help="memory a rank may hold for tables, optimizer state and dense layers (e.g. 2GiB)")
    parser.add_argument("--batch-size", type=positive_int, metavar="B", help="global batch (default train.batch_size)")
    parser.add_argument("--config", metavar="FILE", help="a YAML config (see configs/)")
    parser.add_argument("--data", metavar="DIR", help="a prepared dataset (default: the config's synthetic data)")
    parser.add_argument("--seed", type=seed, help="the seed of the synthetic data and the pooling sample")
    parser.add_argument("--sample-rows", type=positive_int, default=SAMPLE_ROWS,
                        help=f"rows read to measure pooling factors (default {SAMPLE_ROWS})")
    parser.add_argument("--dp-max-bytes", type=_bytes, metavar="BYTES",
                        help="largest table that may be replicated, data_parallel (default 1MiB)")
    parser.add_argument("--measure", action="store_true", help="measure this machine's gather and update rates first")
    parser.add_argument("--link-gbs", type=positive_float, metavar="GB/S",
                        help="all-to-all rate per rank within a node (default 2)")
    parser.add_argument("--inter-node-gbs", type=positive_float, metavar="GB/S",
                        help="all-to-all rate per rank across nodes (default 1.25)")
    parser.add_argument("--ranks-per-node", type=positive_int, metavar="N", help="ranks on one node (default 8)")
    parser.add_argument("--report", metavar="FILE", help="write the JSON report here")
    parser.add_argument("--quiet", action="store_true", help="no table")


def _machine(args: argparse.Namespace):
    from recstack.embeddings.planner import Machine

    links: dict[str, Any] = {}
    if args.link_gbs:
        links["intra_node_bytes_per_s"] = args.link_gbs * 1e9
    if args.inter_node_gbs:
        links["inter_node_bytes_per_s"] = args.inter_node_gbs * 1e9
    if args.ranks_per_node:
        links["ranks_per_node"] = args.ranks_per_node
    return Machine.measured(**links) if args.measure else Machine(**links)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from recstack.config import parse_overrides, resolve
    from recstack.progress import is_quiet, say
    from recstack.report import check_output_path, new_report, write_report
    from recstack.train.datasets import open_dataset

    check_output_path(args.report)
    overrides = parse_overrides(extra)
    if args.data:
        overrides["data.path"] = args.data
    if args.seed is not None:
        overrides["seed"] = args.seed
    config = resolve(args.config, overrides)
    machine = _machine(args)
    dataset = open_dataset(config)
    batch = args.batch_size or config.train.batch_size
    say(f"planning {config.model.preset} ({config.model.name}) on {args.world_size} ranks, global batch {batch:,}")
    plan, prediction = plan_for(config, dataset, args.world_size, args.memory_per_rank, machine=machine,
                                batch_size=batch, sample_rows=args.sample_rows, dp_max_bytes=args.dp_max_bytes)
    if args.report:
        report = new_report("plan", config.to_dict())
        report.update(plan.to_dict())
        report["per_rank_bytes"] = prediction.per_rank_bytes
        report["memory_per_rank"] = args.memory_per_rank
        report["data"] = {"path": str(dataset.path), "sample_rows": args.sample_rows}
        report["predicted"] = prediction.to_dict()
        write_report(args.report, report)
    if not is_quiet():
        print_plan(plan, prediction, args.memory_per_rank)
    return 0


def print_plan(plan, prediction, memory_per_rank: int | None = None) -> None:
    from rich.table import Table

    from recstack.memory import format_bytes
    from recstack.progress import console

    table = Table(title=f"sharding plan: {plan.world_size} ranks, global batch {prediction.batch_size:,}",
                  header_style="bold")
    for col in ("table", "rows", "dim", "sharding", "ranks", "bytes", "a2a bytes/step"):
        table.add_column(col, justify="left" if col in ("table", "sharding", "ranks") else "right")
    for t in prediction.tables:
        ranks = "all" if len(t.ranks) == plan.world_size and plan.world_size > 1 else ",".join(map(str, t.ranks))
        table.add_row(t.name, f"{t.rows:,}", str(t.dim), t.sharding, ranks, format_bytes(t.bytes),
                      format_bytes(t.all_to_all_bytes_per_step))
    console.print(table)
    ranks = Table(title="per rank (modelled)", header_style="bold")
    for col in ("rank", "bytes", "lookup bytes/step", "a2a sent/step", "est. ms/step"):
        ranks.add_column(col, justify="right")
    shown = list(range(plan.world_size)) if plan.world_size <= 16 else [*range(8), *range(plan.world_size - 8, plan.world_size)]
    for r in shown:
        ranks.add_row(str(r), format_bytes(prediction.per_rank_bytes[r]), format_bytes(prediction.per_rank_lookup_bytes[r]),
                      format_bytes(prediction.per_rank_all_to_all_bytes[r]), f"{1e3 * prediction.per_rank_seconds[r]:.3f}")
    console.print(ranks)
    limit = f" of {format_bytes(memory_per_rank)} allowed" if memory_per_rank else ""
    console.print(f"most on a rank: {format_bytes(max(prediction.per_rank_bytes))}{limit} "
                  f"(dense layers {format_bytes(prediction.reserved_bytes)} each); all-to-all "
                  f"{format_bytes(prediction.all_to_all_bytes_per_step)}/step, all-gather "
                  f"{format_bytes(prediction.all_gather_bytes_per_step)}/step; modelled step "
                  f"{1e3 * prediction.step_seconds:.3f} ms on {prediction.machine['name']}")


# --- the at-scale model --------------------------------------------------------------------------


def preset_inputs(preset: str = "criteo-terabyte", scale: float = 1.0) -> tuple[Any, Any, dict[str, float], dict[str, float]]:
    """(config, schema, pooling, kept sequence lengths) of a model preset on its synthetic data's
    shape, without generating any rows: the pooling factors are the generator's mean bag sizes."""
    from recstack.config import resolve
    from recstack.data.store import Schema
    from recstack.data.synth_presets import get_preset

    config = resolve(None, {"model.preset": preset, "model.scale": scale})
    synth = get_preset(config.data.synth_preset)
    schema = Schema(0, synth.dense_names, synth.label_names, synth.sparse_features(scale),
                    info={"generator": "recstack.data.synth", "preset": synth.name})
    pooled = {synth.feature_name(i): t.pooling.mean_length for i, t in enumerate(synth.tables)}
    cap = config.model.max_sequence_length
    kept = {synth.feature_name(i): min(t.pooling.mean_length, cap) for i, t in enumerate(synth.tables)}
    return config, schema, pooled, kept


def at_scale(preset: str = "criteo-terabyte", gpus: tuple[int, ...] = AT_SCALE_GPUS, batch_size: int = AT_SCALE_BATCH,
             machine=None, memory_per_rank: int | None = None) -> tuple[str, list[dict[str, Any]]]:
    """The modelled step of `preset` at each GPU count: (a markdown table, its rows)."""
    from recstack.embeddings.planner import plan_tables
    from recstack.memory import format_bytes

    machine = machine or gpu_machine()
    config, schema, pooled, kept = preset_inputs(preset)
    model = model_tables(config, schema)
    rows = []
    for n in gpus:
        plan, p = plan_tables(model["collections"], pooled, batch_size, n, model["optimizer"], memory_per_rank,
                              machine, sequence_lengths=kept, reserved_bytes=model["reserved_bytes"],
                              dense_flops_per_sample=model["flops_per_sample"], dense_params=model["dense_params"])
        counts: dict[str, int] = {}
        for s in plan.tables.values():
            counts[s.sharding] = counts.get(s.sharding, 0) + 1
        rows.append({"gpus": n, "nodes": -(-n // machine.ranks_per_node), "step_ms": 1e3 * p.step_seconds,
                     "embedding_ms": 1e3 * max(p.per_rank_seconds), "dense_ms": 1e3 * p.dense_seconds,
                     "samples_per_s": p.samples_per_s, "all_to_all_bytes_per_step": p.all_to_all_bytes_per_step,
                     "all_gather_bytes_per_step": p.all_gather_bytes_per_step, "max_rank_bytes": max(p.per_rank_bytes),
                     "shardings": counts})
    head = ("| GPUs | nodes | shardings (tables) | most bytes on a GPU | all-to-all / step | all-gather / step "
            "| embedding ms | dense ms | step ms | samples/s |")
    lines = [
        f"Modelled, not measured: {preset} (DLRM, {sum(len(c) for c in model['collections'])} tables, "
        f"dim {config.model.embedding_dim}, row-wise Adagrad), global batch {batch_size:,}, "
        f"{machine.ranks_per_node} GPUs per node. Rates: gather {machine.gather_bytes_per_s / 1e9:.0f} GB/s and "
        f"update {machine.update_bytes_per_s / 1e9:.0f} GB/s (measured on one H200, 256-byte rows), dense "
        f"{machine.matmul_flops_per_s / 1e12:.0f} TFLOP/s (TF32, measured); all-to-all "
        f"{machine.intra_node_bytes_per_s / 1e9:.0f} GB/s per GPU within a node, "
        f"{machine.inter_node_bytes_per_s / 1e9:.0f} GB/s per GPU across nodes, "
        f"{1e6 * machine.latency_s:.0f} us per collective (stated). Phases add up (no overlap). A bound from "
        "bytes and rates: kernel launches, the interaction and the dense optimizer are not counted, so real "
        "runs are slower (TorchRec's DLRM on Criteo 1TB: about 5.4M samples/s on 8 A100s).",
        "",
        head,
        "|" + "|".join(["---"] * (head.count("|") - 1)) + "|",
    ]
    for r in rows:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["shardings"].items()))
        lines.append(f"| {r['gpus']} | {r['nodes']} | {kinds} | {format_bytes(r['max_rank_bytes'])} | "
                     f"{format_bytes(r['all_to_all_bytes_per_step'])} | {format_bytes(r['all_gather_bytes_per_step'])} | "
                     f"{r['embedding_ms']:.2f} | {r['dense_ms']:.2f} | {r['step_ms']:.2f} | {r['samples_per_s']:,.0f} |")
    return "\n".join(lines), rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recstack.train.plan_command",
                                     description="The planner's at-scale model (modelled figures, not measured).")
    parser.add_argument("--at-scale", action="store_true", required=True, help="print the at-scale table")
    parser.add_argument("--preset", default="criteo-terabyte")
    parser.add_argument("--gpus", default=",".join(map(str, AT_SCALE_GPUS)), help="GPU counts, comma-separated")
    parser.add_argument("--batch-size", type=positive_int, default=AT_SCALE_BATCH)
    parser.add_argument("--link-gbs", type=positive_float, default=NVLINK_BYTES_PER_S / 1e9)
    parser.add_argument("--inter-node-gbs", type=positive_float, default=NETWORK_BYTES_PER_S / 1e9)
    parser.add_argument("--ranks-per-node", type=positive_int, default=8)
    args = parser.parse_args(argv)
    from recstack.errors import RecstackError

    try:
        gpus = tuple(int(x) for x in args.gpus.split(","))
        if not all(g >= 1 for g in gpus):
            raise ValueError
    except ValueError:
        print(f"error: --gpus takes counts >= 1 separated by commas, not {args.gpus!r}", file=sys.stderr)
        return 2
    try:
        text, _ = at_scale(args.preset, gpus, args.batch_size,
                           gpu_machine(args.link_gbs * 1e9, args.inter_node_gbs * 1e9, args.ranks_per_node))
    except RecstackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
