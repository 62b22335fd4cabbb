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
from recstack.errors import ConfigError
from recstack.models.zoo import build_model, describe
from recstack.progress import console, is_quiet, say
from recstack.report import check_output_path, new_report, write_report
from recstack.train.datasets import synthetic_dataset
from recstack.train.trainer import Trainer

ROUNDS = 5
WARMUP_STEPS = 10


def training_bytes_per_sample(model: torch.nn.Module, batch_size: int) -> tuple[float, float]:
    """Embedding bytes per sample: (gathered in forward, read-modify-written by the sparse update).

    The update reads and writes each touched row and its optimizer state once per unique row;
    with skewed ids a batch has fewer unique rows than lookups, so the lookup count is an upper bound
    (the bench measures the real unique fraction and passes it in `unique_fraction`)."""
    emb = model.embeddings
    row_bytes = emb.dim * emb.dtype.itemsize
    state_bytes = emb.optimizer.state_floats_per_row(emb.dim) * 4
    lookups = model.embedding_lookups_per_sample()
    return lookups * row_bytes, lookups * 2 * (row_bytes + state_bytes)


def _step_times(trainer: Trainer, batches, steps: int) -> list[float]:
    """Seconds of each of `steps` training steps, from the end of the previous step to the end of
    this one: with a loader that includes waiting for the next batch."""
    times = []
    last = time.perf_counter()
    for batch in islice(batches, steps):
        trainer.train_step(batch)
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times


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
    check_output_path(report_path)
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
    split_rows = trainer.train_rows[1] - trainer.train_rows[0]
    # a batch larger than the split is the whole split: rates and the ceiling's GEMM shapes use what is run
    batch_size = min(config.train.batch_size, split_rows)
    say(f"bench train: {config.model.preset}, batch {batch_size}, {sizes['embedding_rows']:,} embedding rows, "
        f"{ROUNDS} rounds x {steps // ROUNDS} steps per variant")

    # (b) compute only: batches gathered before timing, cycled. (a) end to end: the prefetching
    # loader over shuffled rows of the memory-mapped dataset. Rounds alternate (a) and (b), so
    # machine noise hits both alike; the figures use the median step time over all rounds.
    no_batch = ConfigError(f"bench train: {split_rows:,} training rows make no batch of {config.train.batch_size:,}",
                           "use more --rows or a smaller --train.batch_size")
    resident = list(islice(trainer.loader.epoch(0), 16))
    if not resident:
        raise no_batch
    _step_times(trainer, cycle(resident), WARMUP_STEPS)
    # each (a) round discards the steps served from the queue filled during (b): keep some after them
    per_round = max(steps // ROUNDS, config.data.prefetch + 8)
    epoch = 1
    loading = trainer.loader.epoch(epoch)
    compute_times: list[float] = []
    loaded_times: list[float] = []
    for _ in range(ROUNDS):
        compute_times += _step_times(trainer, cycle(resident), per_round)
        got = _step_times(trainer, loading, per_round)
        while len(got) < per_round:  # the epoch ran out: continue with the next one
            epoch += 1
            loading = trainer.loader.epoch(epoch)
            more = _step_times(trainer, loading, per_round - len(got))
            if not more:  # every epoch has a batch when the first had one: a guard against looping forever
                raise no_batch
            got += more
        # the loader's queue filled up during the (b) round: count only steps after it drained
        loaded_times += got[config.data.prefetch + 1 :]
    loading.close()

    gather_bytes, update_bytes = training_bytes_per_sample(model, batch_size)
    uniq = unique_fraction(dataset, trainer.train_rows, batch_size, config.seed)
    ceilings = roofline.measure_ceilings(
        row_bytes=model.embeddings.dim * model.embeddings.dtype.itemsize,
        mlp_batch=batch_size,
        mlp_widths=[model.bottom.widths, model.top.widths],
    )
    flops = 3 * sizes["flops_per_sample"]  # forward, and two GEMMs per layer in backward
    # The ceiling: dense FLOPs at the GEMM rate this machine's BLAS reaches on the model's own layer
    # shapes (no framework can beat that without changing the model), embedding bytes at the
    # measured gather and update rates. The stricter peak bound uses a 2048^3 GEMM's rate instead.
    bound = roofline.roofline_samples_per_s(
        flops, gather_bytes, update_bytes * uniq, ceilings, matmul_key="mlp_gemm_gflops"
    )
    peak = roofline.roofline_samples_per_s(flops, gather_bytes, update_bytes * uniq, ceilings)

    e2e = batch_size / statistics.median(loaded_times)
    comp = batch_size / statistics.median(compute_times)
    report = new_report("bench train", config.to_dict())
    report.update(
        {
            "model": sizes,
            "batch_size": batch_size,
            "throughput": {
                "end_to_end_samples_per_s": e2e,
                "compute_samples_per_s": comp,
                "end_to_end_step_ms": _quantiles_ms(loaded_times),
                "compute_step_ms": _quantiles_ms(compute_times),
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
            "peak_gemm_ceiling": peak,
            "compute_vs_ceiling": comp / bound["samples_per_s"],
            "compute_vs_peak_gemm_ceiling": comp / peak["samples_per_s"],
        }
    )
    write_report(report_path, report)
    if not is_quiet():
        print_bench(report)
    return report


def _quantiles_ms(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    pick = lambda q: 1e3 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p10": pick(0.1), "p50": 1e3 * statistics.median(ordered), "p90": pick(0.9), "steps": len(ordered)}


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
        ("machine ceiling (roofline, model's GEMM shapes)", c["samples_per_s"]),
    ):
        table.add_row(name, f"{value:,.0f}", f"{value / c['samples_per_s']:.0%}")
    console.print(table)
    m = c["machine"]
    console.print(
        f"step time p10/p50/p90: (a) {t['end_to_end_step_ms']['p10']:.1f}/{t['end_to_end_step_ms']['p50']:.1f}/"
        f"{t['end_to_end_step_ms']['p90']:.1f} ms, (b) {t['compute_step_ms']['p10']:.1f}/"
        f"{t['compute_step_ms']['p50']:.1f}/{t['compute_step_ms']['p90']:.1f} ms; "
        f"CPU share during the ceiling measurement {m.get('cpu_share', float('nan')):.2f} (1.0 = an idle machine)"
    )
    peak = report["peak_gemm_ceiling"]["samples_per_s"]
    console.print(
        f"(a)/(b) = {t['end_to_end_vs_compute']:.2f}; ceiling from {c['flops_per_sample'] / 1e6:.2f} MFLOP/sample at "
        f"{m['mlp_gemm_gflops']:.0f} GFLOP/s (the model's GEMM shapes), {c['gather_bytes_per_sample']:,.0f} B gathered "
        f"at {m['gather_gbs']:.2f} GB/s, {c['update_bytes_per_sample']:,.0f} B updated at {m['scatter_gbs']:.2f} GB/s; "
        f"with the peak GEMM rate ({m['matmul_gflops']:.0f} GFLOP/s, 2048^3) the ceiling is {peak:,.0f} samples/s "
        f"and (b) reaches {report['compute_vs_peak_gemm_ceiling']:.0%} of it"
    )
