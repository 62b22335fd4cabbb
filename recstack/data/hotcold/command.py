"""`recstack data hotcold`: build a split's hot/cold partition, write the report, print a summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recstack.data.hotcold.storage import HOTCOLD_DIR, build_hot_cold


def hotcold_command(
    data: str | Path,
    budget: str,
    *,
    sample: str | float = 0.05,
    dim: int = 16,
    state_bytes_per_row: int = 4,
    split: str = "train",
    seed: int = 0,
    report_path: str | Path | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """`recstack data hotcold`: build, write the report, print a summary."""
    from recstack.progress import console
    from recstack.report import new_report, write_report

    config = {
        "data": str(data), "budget": budget, "sample": sample, "dim": dim,
        "state_bytes_per_row": state_bytes_per_row, "split": split, "seed": seed,
    }  # fmt: skip
    summary = build_hot_cold(
        data,
        budget,
        sample=sample,
        dim=dim,
        state_bytes_per_row=state_bytes_per_row,
        split=split,
        seed=seed,
        show_progress=not quiet,
    )
    report = new_report("data hotcold", config)
    report.update(summary)
    report["out"] = str(Path(data) / HOTCOLD_DIR)
    write_report(report_path, report)
    if not quiet:
        from rich.table import Table

        table = Table(title=f"hot/cold partition of {data} ({split})", show_header=False)
        table.add_column("what")
        table.add_column("value", justify="right")
        table.add_row("budget", f"{summary['budget']} = {summary['capacity_rows']:,} rows of {summary['row_bytes']} B")
        table.add_row("hot rows", f"{summary['hot_rows']:,}")
        frac = summary["hot_input_fraction"] or 0.0
        table.add_row("hot inputs", f"{summary['hot_inputs']:,} ({frac:.1%})")
        table.add_row("cold inputs", f"{summary['cold_inputs']:,}")
        table.add_row("sample", f"{summary['sample']:.3g} ({summary['sampled_inputs']:,} inputs)")
        if summary["sampled_recall"] is not None:
            table.add_row("recall of exact top-K", f"{summary['sampled_recall']:.3f}")
        if summary["exact_hot_input_fraction"] is not None:
            table.add_row("hot inputs with exact top-K", f"{summary['exact_hot_input_fraction']:.1%}")
        table.add_row("written to", report["out"])
        console.print(table)
    return report
