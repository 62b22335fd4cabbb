"""What the data commands print for people and write for tools, and the frame of a converter command
(no stray arguments, the report written even when the conversion fails)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recstack.errors import ConfigError, DataError
from recstack.progress import console, is_quiet
from recstack.report import new_report, write_report


@contextmanager
def report_on_data_error(command: str, report_path: str | Path | None) -> Iterator[None]:
    """A data command that fails after counting rows still writes what it counted."""
    try:
        yield
    except DataError as exc:
        if report_path and exc.report is not None:
            write_report(report_path, {**new_report(command), **exc.report, "error": str(exc)})
        raise


def run_converter(command: str, args: argparse.Namespace, extra: list[str], convert: Callable[[], dict[str, Any]]) -> int:
    """The CLI frame of a converter: no stray arguments, the report written even on failure."""
    if extra:
        raise ConfigError(f"unexpected arguments: {' '.join(extra)}")
    from recstack.data.prepare import check_out

    with report_on_data_error(command, args.report):
        if Path(args.input).exists():  # else the converter names the missing input
            check_out(args.out, args.overwrite)
        report = convert()
    finish_data_command(command, report, args.report)
    return 0


def add_out_arguments(parser: argparse.ArgumentParser) -> None:
    """--out DIR and --overwrite, as every converter takes them (run_converter checks them)."""
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--overwrite", action="store_true", help="replace what --out already holds")


def finish_data_command(command: str, data_report: dict[str, Any], report_path: str | Path | None) -> dict[str, Any]:
    report = new_report(command)
    report.update(data_report)
    write_report(report_path, report)
    if not is_quiet():
        print_data_summary(report)
    return report


def print_data_summary(report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=report["command"], show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("rows read", f"{report['rows_read']:,}")
    table.add_row("rows kept", f"{report['rows_kept']:,}")
    table.add_row("rows rejected", f"{report['rows_rejected']:,}")
    for reason, count in sorted((r, c) for r, c in report.get("rejects_by_reason", {}).items() if c):
        table.add_row(f"  {reason}", f"{count:,}")
    for name, (a, b) in report.get("splits", {}).items():
        table.add_row(f"split {name}", f"{b - a:,} rows")
    if report.get("mb_per_s") is not None:
        table.add_row("throughput", f"{report['mb_per_s']:.1f} MB/s ({report['seconds']:.1f} s)")
    table.add_row("written to", str(report.get("out", "")))
    console.print(table)
    for reason, examples in sorted(report.get("reject_examples", {}).items()):
        for ex in examples[:3]:
            console.print(f"  rejected {ex.get('file', '')}:{ex['line']}: {reason}", style="yellow")


def synth_command(
    preset: str,
    rows: int,
    out: str | Path,
    *,
    seed: int,
    scale: float,
    test_fraction: float,
    report_path: str | Path | None,
    quiet: bool,
) -> dict[str, Any]:
    import time

    from recstack.argtypes import SEED_MAX
    from recstack.data.synth import generate
    from recstack.errors import DataError

    if rows <= 0:
        raise DataError(f"--rows must be positive, got {rows}")
    if not 0.0 <= test_fraction < 1.0:  # NaN fails too; generate refuses a fraction that empties a split
        raise DataError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    if not math.isfinite(scale) or scale <= 0:
        raise DataError(f"--scale must be a positive finite number, got {scale}")
    if not 0 <= seed <= SEED_MAX:
        raise DataError(f"--seed must be in [0, {SEED_MAX}], got {seed}")
    start = time.perf_counter()
    schema = generate(preset, rows, out, seed=seed, scale=scale, test_fraction=test_fraction, show_progress=not quiet)
    seconds = time.perf_counter() - start
    report = new_report("data synth")
    report.update(
        {
            "rows_read": schema.num_rows,
            "rows_kept": schema.num_rows,
            "rows_rejected": 0,
            "rejects_by_reason": {},
            "out": str(out),
            "splits": schema.splits,
            "seconds": seconds,
            "rows_per_s": schema.num_rows / seconds if seconds else None,
            "num_embeddings": {s.name: s.num_embeddings for s in schema.sparse},
            "info": schema.info,
        }
    )
    write_report(report_path, report)
    if not quiet:
        console.print(
            f"wrote {schema.num_rows:,} synthetic rows ({preset}, scale {scale:g}) to {out} in {seconds:.1f} s; "
            f"splits {', '.join(f'{k} {b - a:,}' for k, (a, b) in schema.splits.items())}"
        )
    return report
