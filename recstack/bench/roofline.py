"""Ceilings of this machine, measured, so that `recstack bench` can print every achieved figure
next to the limit it is chasing (DESIGN.md principle 6).

`python -m recstack.bench.roofline` measures them and prints a table, and can write the figures as a
JSON report. What is measured, and the roofline model, are recstack.ceilings' (re-exported here).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from recstack.argtypes import float_in, int_in
from recstack.ceilings import (
    BATCH_ROWS,
    DEFAULT_TABLE_BYTES,
    GIB,
    MIB,
    SCATTER_OPS,
    gather_bandwidth_gbs,
    matmul_gflops,
    measure_ceilings,
    mlp_flops_per_sample,
    mlp_gemm_gflops,
    roofline_samples_per_s,
    scatter_update_bandwidth_gbs,
    stream_bandwidth_gbs,
)
from recstack.config import THREADS_MAX, parse_int_list
from recstack.errors import ConfigError

__all__ = [
    "BATCH_ROWS",
    "DEFAULT_TABLE_BYTES",
    "GIB",
    "MIB",
    "SCATTER_OPS",
    "gather_bandwidth_gbs",
    "main",
    "matmul_gflops",
    "measure_ceilings",
    "mlp_flops_per_sample",
    "mlp_gemm_gflops",
    "roofline_samples_per_s",
    "scatter_update_bandwidth_gbs",
    "stream_bandwidth_gbs",
]

MAX_ROW_BYTES = DEFAULT_TABLE_BYTES // BATCH_ROWS
"""The widest row the command line measures (dim 4096): the table holds at least a batch of rows, so wider
rows grow it beyond DEFAULT_TABLE_BYTES."""
MAX_SECONDS = 600.0
MAX_MLP_BATCH = 1 << 20
"""The largest MLP batch the command line measures: activations and gradients of every layer are held for it."""


# --------------------------------------------------------------------------------------------
# command line


def _widths(text: str) -> list[int]:
    try:
        widths = parse_int_list(text, "widths")
    except ConfigError:
        widths = []
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer widths >= 1 like 13,512,256,64, got {text!r}")
    if len(widths) < 2:
        raise argparse.ArgumentTypeError("an MLP needs at least two widths (input and output)")
    return widths


def _row_bytes(text: str) -> int:
    row_bytes = int_in(4, MAX_ROW_BYTES, what=f"row bytes in [4, {MAX_ROW_BYTES}]")(text)
    if row_bytes % 4:
        raise argparse.ArgumentTypeError(f"expected a multiple of 4 (float32 rows), got {row_bytes}")
    return row_bytes


def _table_rows(ceilings: dict[str, Any]) -> list[tuple[str, str, str]]:
    c = ceilings
    rows = [("threads", f"{c['threads']}", "torch intra-op threads")]
    rows.append(("matmul", f"{c['matmul_gflops']:.1f} GFLOP/s", f"fp32 torch.mm {c['matmul_size']}^3"))
    if "mlp_gemm_gflops" in c:
        rows.append(
            (
                "mlp gemm",
                f"{c['mlp_gemm_gflops']:.1f} GFLOP/s",
                f"fwd+bwd GEMMs, batch {c['mlp_batch']}, {c['mlp_widths']}",
            )
        )
    rows.append(("stream copy", f"{c['stream_copy_gbs']:.1f} GB/s", "c = a, read + write counted"))
    rows.append(("stream triad", f"{c['stream_triad_gbs']:.1f} GB/s", "a = b + s*c, 2 reads + write counted"))
    kernel = "index_select" if c["gather_pooling"] == 1 else f"embedding_bag sum, pooling {c['gather_pooling']}"
    rows.append(
        (
            "gather",
            f"{c['gather_gbs']:.2f} GB/s",
            f"{c['gather_mrows_per_s']:.1f} M rows/s of {c['row_bytes']} B, random, {kernel}, {c['table_bytes'] / GIB:.2g} GiB table",
        )
    )
    rows.append(
        ("scatter index_add_", f"{c['scatter_index_add_gbs']:.2f} GB/s", "sorted random rows, read-modify-write")
    )
    rows.append(
        ("scatter gather+add+copy", f"{c['scatter_gather_add_copy_gbs']:.2f} GB/s", "index_select, sub_, index_copy_")
    )
    rows.append(
        (
            "scatter (ceiling)",
            f"{c['scatter_gbs']:.2f} GB/s",
            f"{c['scatter_mrows_per_s']:.1f} M rows/s, best: {c['scatter_op']}",
        )
    )
    if c.get("cpu_share") is not None:
        note = "contended: figures are low, rerun on an idle machine" if c["cpu_share"] < 0.8 else "uncontended"
        rows.append(("cpu share", f"{c['cpu_share']:.2f}", f"{note} (load {c.get('loadavg_1m') or 0:.2f} before)"))
        by_phase = c.get("cpu_share_by_phase") or {}
        if by_phase:
            rows.append(("  by phase", "", ", ".join(f"{k} {v:.2f}" for k, v in by_phase.items())))
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from rich.table import Table

    from recstack import progress, report

    parser = argparse.ArgumentParser(prog="python -m recstack.bench.roofline", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--row-bytes",
        type=_row_bytes,
        default=256,
        help=f"embedding row size in bytes (dim * 4 for fp32; at most {MAX_ROW_BYTES})",
    )
    parser.add_argument(
        "--pooling",
        type=int_in(1, BATCH_ROWS, what=f"rows per lookup in [1, {BATCH_ROWS}]"),
        default=1,
        help="rows per pooled lookup (1: plain index_select)",
    )
    parser.add_argument(
        "--threads",
        type=int_in(1, THREADS_MAX, what=f"a thread count in [1, {THREADS_MAX}]"),
        default=None,
        help="torch threads (default: torch's)",
    )
    parser.add_argument(
        "--seconds",
        type=float_in(0.0, MAX_SECONDS, low_open=True, what=f"seconds in (0, {MAX_SECONDS:g}]"),
        default=0.6,
        help="timing per measurement",
    )
    parser.add_argument("--mlp-widths", type=_widths, action="append", help="e.g. 13,512,256,64 (repeat for more MLPs)")
    parser.add_argument(
        "--mlp-batch", type=int_in(1, MAX_MLP_BATCH, what=f"a batch in [1, {MAX_MLP_BATCH}]"), default=2048
    )
    parser.add_argument("--report", "--json", dest="report", default=None, help="write the ceilings as a JSON report")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    progress.set_quiet(args.quiet)

    console = progress.console
    if args.quiet:
        ceilings = measure_ceilings(
            args.row_bytes, pooling=args.pooling, threads=args.threads, mlp_batch=args.mlp_batch,
            mlp_widths=args.mlp_widths, seconds=args.seconds,
        )  # fmt: skip
    else:
        with console.status("measuring") as status:
            ceilings = measure_ceilings(
                args.row_bytes, pooling=args.pooling, threads=args.threads, mlp_batch=args.mlp_batch,
                mlp_widths=args.mlp_widths, seconds=args.seconds,
                progress=lambda what: status.update(f"measuring {what}"),
            )  # fmt: skip
        table = Table(
            title=f"Ceilings of this machine ({os.cpu_count()} CPUs, measured in {ceilings['measure_s']:.1f} s)"
        )
        table.add_column("ceiling")
        table.add_column("rate", justify="right")
        table.add_column("how")
        for row in _table_rows(ceilings):
            table.add_row(*row)
        console.print(table)
    if args.report:
        doc = report.new_report("bench.roofline", config={k: v for k, v in vars(args).items() if k != "quiet"})
        doc["ceilings"] = ceilings
        report.write_report(args.report, doc)
        progress.say(f"report written to {args.report}")
    return ceilings


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
