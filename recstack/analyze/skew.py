"""Embedding access skew of a prepared dataset (`recstack analyze skew`): how concentrated the lookups
are per table and over all tables, and what the FAE hot set of a memory budget buys (specs/TECHNIQUES.md
section 1, with the profiler of section 11 in `recstack.data.hotcold`).

Definitions (the report's `definitions` repeats them):

- Share of the top fraction p of a table's rows: sort the table's per-row access counts descending
  (all `num_embeddings` rows, never-seen rows counting 0) and let k = p * num_embeddings; the share is
  (sum of the floor(k) largest counts + (k - floor(k)) * the next count) / the table's accesses, i.e.
  the cumulative-access curve, linear between whole rows, read at x = p. It does not depend on how
  ties are broken. `overall` does the same over the rows of all tables pooled (n = sum of
  num_embeddings). Shares are None for a table with no accesses.
- Budgets: capacity K = floor(bytes / (dim * 4 + state bytes per row)); the hot set is the joint top-K
  rows by exact count (ties: table order, then row id), never-seen rows excluded; `hot_input_fraction`
  is the exact fraction of the split's inputs whose every lookup hits it; `sampled_recall` is
  |sampled hot set & exact hot set| / |exact hot set|, the sampled set chosen the same way from the
  counts of a Bernoulli(sample) subset of the inputs.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recstack.data.hotcold import (
    DEFAULT_CHUNK_ROWS,
    AccessCounts,
    capacity_rows,
    count_accesses,
    hot_input_fractions,
    hot_levels,
    parse_bytes,
    parse_fraction,
    recall,
    row_bytes,
    seen_share,
    select_hot,
)
from recstack.data.store import Dataset
from recstack.errors import DataError
from recstack.memory import format_bytes

DEFAULT_BUDGETS = ("1MiB", "16MiB", "256MiB")
SHARE_POINTS = {"top_0_1pct_share": 0.001, "top_1pct_share": 0.01, "top_10pct_share": 0.1}
CURVE_POINTS_PER_DECADE = 10
CURVE_MIN_FRACTION = 1e-7

DEFINITIONS = {
    "top_share": "share of accesses taken by the top fraction p of the table's num_embeddings rows by count: "
    "(sum of the floor(p n) largest counts + frac(p n) * the next count) / accesses (the cumulative curve, "
    "linear between whole rows); overall pools the rows of all tables",
    "rows_seen": "rows with at least one access in the split",
    "capacity_rows": "floor(bytes / (dim * 4 + state_bytes_per_row))",
    "hot_rows": "the joint top-capacity rows of all tables by exact count (ties: table order, then row id), "
    "never-seen rows excluded",
    "hot_access_share": "share of all lookups that hit a hot row",
    "hot_input_fraction": "fraction of the split's inputs whose every lookup (all tables, all bag members) "
    "hits a hot row; inputs with only empty bags are hot",
    "sampled_recall": "|sampled hot set & exact hot set| / |exact hot set|; the sampled set is chosen the "
    "same way from the counts of a random subset of the inputs (each input independently with "
    "probability sample)",
    "sampled_access_recall": "sampled_recall with every row weighted by its exact access count: the share of "
    "the exact hot set's accesses that the sampled hot set also holds",
    "sampled_recall_ceiling": "the share of the exact hot set that the sample saw at all: no set chosen from "
    "the sample's counts can recall more (when it is low, the sample is too small for this budget)",
    "sampled_hot_input_fraction": "hot_input_fraction of the sampled hot set (what FAE would get)",
    "for_hot_inputs": "set on a budget found by --hot-inputs F: the smallest capacity (to within 1/48 of a "
    "geometric grid step, never below) whose exact hot set makes at least F of the inputs hot",
}


def parse_budgets(budgets: str | Sequence[str | int]) -> list[int]:
    items = budgets.split(",") if isinstance(budgets, str) else list(budgets)
    parsed = sorted({parse_bytes(b.strip() if isinstance(b, str) else b) for b in items if str(b).strip()})
    return parsed


def _cumulative(values: np.ndarray, mults: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints of the cumulative curve: (rows so far, accesses so far), from (0, 0)."""
    rows = np.concatenate([[0.0], np.cumsum(mults, dtype=np.float64)])
    accesses = np.concatenate([[0.0], np.cumsum(values.astype(np.float64) * mults)])
    return rows, accesses


def top_shares(values: np.ndarray, mults: np.ndarray, num_rows: int, fractions: Sequence[float]) -> list[float] | None:
    """Share of accesses taken by the top fraction p of `num_rows` rows, for each p (see the module
    docstring); (values, mults) are the count runs, descending. None when there are no accesses."""
    rows, accesses = _cumulative(values, mults)
    total = accesses[-1]
    if total <= 0:
        return None
    x = np.asarray(fractions, dtype=np.float64) * num_rows
    return (np.interp(x, rows, accesses) / total).tolist()


def top_share(counts: np.ndarray, fraction: float) -> float | None:
    """The share of the top `fraction` of the rows of one count array (a convenience for one table)."""
    from recstack.data.hotcold import count_runs

    values, mults = count_runs(np.asarray(counts))
    shares = top_shares(values, mults, int(np.asarray(counts).size), [fraction])
    return None if shares is None else shares[0]


def curve_fractions(num_rows: int) -> np.ndarray:
    lo = max(1.0 / max(num_rows, 1), CURVE_MIN_FRACTION)
    decades = -math.log10(lo)
    return np.logspace(math.log10(lo), 0.0, max(2, int(math.ceil(decades * CURVE_POINTS_PER_DECADE)) + 1))


def _shares_dict(values: np.ndarray, mults: np.ndarray, num_rows: int) -> dict[str, float | None]:
    shares = top_shares(values, mults, num_rows, list(SHARE_POINTS.values()))
    return {k: (None if shares is None else shares[i]) for i, k in enumerate(SHARE_POINTS)}


SEARCH_LEVELS = 48
"""Capacities tried per pass when searching the budget of a hot-input fraction (two passes: a
geometric grid over 1..rows seen, then an even grid inside the bracket found)."""


def capacities_for_hot_inputs(
    ds: Dataset,
    split: str,
    exact: AccessCounts,
    targets: Sequence[float],
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    show_progress: bool = False,
) -> list[int | None]:
    """For each target fraction f, the smallest capacity K (to within 1/SEARCH_LEVELS of the bracket
    of the geometric grid; never below the exact answer) whose exact joint top-K makes at least f of
    the split's inputs hot; None when even every row seen does not (inputs whose bags are all
    empty are hot at any K, so f = 0 gives 0). Two passes over the split's ids."""
    seen = exact.rows_seen()
    if seen == 0:
        return [None] * len(targets)

    def fractions(capacities: list[int]) -> np.ndarray:
        levels = hot_levels(exact, [select_hot(exact, k) for k in capacities])
        return hot_input_fractions(ds, split, [levels], len(capacities), chunk_rows=chunk_rows,
                                   show_progress=show_progress)[0]

    coarse = sorted({0, *np.unique(np.geomspace(1, seen, SEARCH_LEVELS - 1).round().astype(int)).tolist()})
    coarse_fractions = fractions(coarse)
    brackets: list[tuple[int, int] | None] = []
    for f in targets:
        i = int(np.searchsorted(coarse_fractions, f - 1e-12))  # first capacity reaching f
        brackets.append(None if i == len(coarse) else (coarse[max(i - 1, 0)], coarse[i]))
    fine = sorted({int(k) for b in brackets if b for k in np.linspace(b[0], b[1], SEARCH_LEVELS).round()})
    fine_fractions = fractions(fine) if fine else np.zeros(0)
    found: list[int | None] = []
    for f, b in zip(targets, brackets):
        if b is None:
            found.append(None)
            continue
        reached = [k for k, x in zip(fine, fine_fractions) if b[0] <= k <= b[1] and x >= f - 1e-12]
        found.append(min(reached))
    return found


def analyze_skew(
    data: str | Path,
    *,
    sample: float | str = 0.05,
    budgets: str | Sequence[str | int] = DEFAULT_BUDGETS,
    hot_inputs: Sequence[float] = (),
    dim: int = 16,
    state_bytes_per_row: int = 4,
    split: str = "train",
    seed: int = 0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    show_progress: bool = False,
) -> dict[str, Any]:
    """The skew figures of a dataset split: the report body (`tables`, `overall`, `budgets`, `curves`,
    `data`, `definitions`). Two passes over the split's ids (two more with `hot_inputs`: the budgets
    that make those fractions of the inputs hot join `budgets`, marked `for_hot_inputs`); memory
    bounded by the count arrays."""
    started = time.perf_counter()
    ds = Dataset(data)
    fraction = parse_fraction(sample)
    budget_bytes = parse_budgets(budgets)
    per_row = row_bytes(dim, state_bytes_per_row)
    start, stop = ds.split(split)
    exact, sampled = count_accesses(
        ds, split, sample=fraction, seed=seed, chunk_rows=chunk_rows, show_progress=show_progress
    )
    assert sampled is not None
    features = ds.schema.sparse

    tables: list[dict[str, Any]] = []
    curves: dict[str, Any] = {"tables": {}}
    total_rows = sum(s.num_embeddings for s in features)
    grid = curve_fractions(total_rows)
    curves["fraction"] = grid.round(9).tolist()
    for t, s in enumerate(features):
        values, mults = exact.runs(t)
        seen = int(mults.sum())
        accesses = exact.accesses(t)
        tables.append(
            {
                "name": s.name,
                "num_embeddings": s.num_embeddings,
                "bag": s.length if s.length is not None else "variable",
                "accesses": accesses,
                "rows_seen": seen,
                "rows_seen_fraction": seen / s.num_embeddings if s.num_embeddings else None,
                "max_count": int(values[0]) if values.size else 0,
                **_shares_dict(values, mults, s.num_embeddings),
                "sampled_rows_seen": sampled.rows_seen(t),
                "sampled_accesses": sampled.accesses(t),
            }
        )
        shares = top_shares(values, mults, s.num_embeddings, grid)
        curves["tables"][s.name] = None if shares is None else np.round(shares, 6).tolist()
    joint_values, joint_mults = exact.joint_runs()
    overall_seen = int(joint_mults.sum())
    overall = {
        "num_embeddings": total_rows,
        "accesses": exact.accesses(),
        "rows_seen": overall_seen,
        "rows_seen_fraction": overall_seen / total_rows if total_rows else None,
        **_shares_dict(joint_values, joint_mults, total_rows),
    }
    overall_curve = top_shares(joint_values, joint_mults, total_rows, grid)
    curves["overall"] = None if overall_curve is None else np.round(overall_curve, 6).tolist()

    wanted: dict[int, float] = {}  # budget bytes -> the hot-input fraction it was searched for
    if hot_inputs:
        for f, k in zip(hot_inputs, capacities_for_hot_inputs(ds, split, exact, hot_inputs, chunk_rows=chunk_rows,
                                                               show_progress=show_progress)):
            if k is not None:
                wanted[k * per_row] = f
        budget_bytes = sorted({*budget_bytes, *wanted})
    capacities = [capacity_rows(b, dim, state_bytes_per_row) for b in budget_bytes]
    exact_sets = [select_hot(exact, k) for k in capacities]
    sampled_sets = [select_hot(sampled, k) for k in capacities]
    rows_axis, access_axis = _cumulative(joint_values, joint_mults)
    fractions: list[np.ndarray] = [np.zeros(0), np.zeros(0)]
    if capacities:
        fractions = hot_input_fractions(
            ds,
            split,
            [hot_levels(exact, exact_sets), hot_levels(sampled, sampled_sets)],
            len(capacities),
            chunk_rows=chunk_rows,
            show_progress=show_progress,
        )
    inputs = stop - start
    budget_rows = []
    for i, (b, k) in enumerate(zip(budget_bytes, capacities)):
        hot = exact_sets[i].size
        hot_accesses = float(np.interp(hot, rows_axis, access_axis))
        budget_rows.append(
            {
                "bytes": b,
                "budget": format_bytes(b),
                "row_bytes": per_row,
                "capacity_rows": k,
                "hot_rows": hot,
                "hot_bytes": hot * per_row,
                "hot_access_share": hot_accesses / access_axis[-1] if access_axis[-1] > 0 else None,
                "hot_input_fraction": float(fractions[0][i]) if inputs else None,
                "sampled_hot_rows": sampled_sets[i].size,
                "sampled_hot_input_fraction": float(fractions[1][i]) if inputs else None,
                "sampled_recall": recall(exact, exact_sets[i], sampled, sampled_sets[i]),
                "sampled_access_recall": recall(exact, exact_sets[i], sampled, sampled_sets[i], weighted=True),
                "sampled_recall_ceiling": seen_share(exact, exact_sets[i], sampled),
                "for_hot_inputs": wanted.get(b),
            }
        )
    return {
        "data": {
            "path": str(ds.path),
            "split": split,
            "split_rows": [start, stop],
            "inputs": inputs,
            "sampled_inputs": sampled.inputs,
            "sample": fraction,
            "lookups": exact.accesses(),
        },
        "tables": tables,
        "overall": overall,
        "budgets": budget_rows,
        "hot_input_targets": {str(f): next((r["bytes"] for r in budget_rows if r["for_hot_inputs"] == f), None)
                              for f in hot_inputs},
        "curves": curves,
        "definitions": DEFINITIONS,
        "seconds": time.perf_counter() - started,
    }


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def print_skew(report: dict[str, Any]) -> None:
    from rich.table import Table

    from recstack.progress import console

    data = report["data"]
    table = Table(title=f"access skew of {data['path']} ({data['split']}: {data['inputs']:,} inputs)")
    for col, justify in (("table", "left"), ("rows", "right"), ("seen", "right"), ("accesses", "right"),
                         ("top 0.1%", "right"), ("top 1%", "right"), ("top 10%", "right")):  # fmt: skip
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in [*report["tables"], {"name": "overall", **report["overall"]}]:
        style = "bold" if row["name"] == "overall" else None
        table.add_row(
            row["name"], f"{row['num_embeddings']:,}", f"{row['rows_seen']:,}", f"{row['accesses']:,}",
            _pct(row["top_0_1pct_share"]), _pct(row["top_1pct_share"]), _pct(row["top_10pct_share"]), style=style,
        )  # fmt: skip
    console.print(table)
    if not report["budgets"]:
        return
    hot = Table(title=f"hot sets (sample {data['sample']:.3g}: {data['sampled_inputs']:,} inputs)")
    for col in ("budget", "hot rows", "hot lookups", "hot inputs", "hot inputs (sampled set)",
                "sampled recall (ceiling)"):
        hot.add_column(col, justify="right")
    for b in report["budgets"]:
        recall_text = "-" if b["sampled_recall"] is None else f"{b['sampled_recall']:.3f} ({b['sampled_recall_ceiling']:.3f})"
        searched = "" if b.get("for_hot_inputs") is None else f" (for {_pct(b['for_hot_inputs'], 0)})"
        hot.add_row(
            b["budget"] + searched, f"{b['hot_rows']:,}", _pct(b["hot_access_share"]), _pct(b["hot_input_fraction"]),
            _pct(b["sampled_hot_input_fraction"]), recall_text,
        )  # fmt: skip
    console.print(hot)


def skew_command(
    data: str | Path,
    *,
    sample: float | str = 0.05,
    budgets: str | Sequence[str | int] = DEFAULT_BUDGETS,
    hot_inputs: Sequence[float] = (),
    dim: int = 16,
    state_bytes_per_row: int = 4,
    split: str = "train",
    seed: int = 0,
    report_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """`recstack analyze skew`: analyze, plot (beside the report unless --plot says where), write the
    report, print the tables."""
    from recstack.analyze.plots import plot_path as checked_plot_path
    from recstack.analyze.plots import plot_skew
    from recstack.report import check_output_path, new_report, write_report

    if dim < 1:
        raise DataError("--dim must be >= 1")
    check_output_path(report_path)
    if plot_path is None and report_path:
        plot_path = Path(report_path).with_suffix(".png")
    if plot_path is not None:
        plot_path = checked_plot_path(plot_path)  # before the passes over the data
    config = {
        "data": str(data), "sample": sample, "budgets": budgets if isinstance(budgets, str) else list(budgets),
        "hot_inputs": list(hot_inputs), "dim": dim, "state_bytes_per_row": state_bytes_per_row, "split": split,
        "seed": seed,
    }  # fmt: skip
    if not all(0 <= f <= 1 for f in hot_inputs):
        raise DataError(f"--hot-inputs takes fractions in [0, 1], got {','.join(map(str, hot_inputs))}")
    body = analyze_skew(
        data, sample=sample, budgets=budgets, hot_inputs=hot_inputs, dim=dim, state_bytes_per_row=state_bytes_per_row,
        split=split, seed=seed, show_progress=not quiet,
    )  # fmt: skip
    report = new_report("analyze skew", config)
    report.update(body)
    report["plot"] = None
    if plot_path is not None:
        written, problem = plot_skew(body, plot_path)
        report["plot"] = str(written) if written else None
        if problem:
            print(problem, file=sys.stderr)
    write_report(report_path, report)
    if not quiet:
        print_skew(report)
        if report["plot"]:
            from recstack.progress import console

            console.print(f"plot: {report['plot']}")
    return report
