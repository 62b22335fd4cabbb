"""Pictures of analyses for people (the skew curves). The figure, format and path helpers live in
recstack.plotting, below serve, which draws its own plots; matplotlib is optional: without it a plot
function returns a one-line reason instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recstack.plotting import NO_MATPLOTLIB, PLOT_FORMATS, figure, plot_path, save_figure

__all__ = ["NO_MATPLOTLIB", "PLOT_FORMATS", "figure", "plot_path", "plot_skew", "save_figure"]

_figure = figure
"""`figure` under its old name here: recstack.analyze.profile imports it, and plot_skew calls it by
this name (the tests replace it to play a machine without matplotlib)."""


def plot_skew(report: dict[str, Any], path: str | Path) -> tuple[Path | None, str | None]:
    """Cumulative access curves of an `analyze skew` report body: per table (thin) and over all
    tables (thick); x: fraction of rows by popularity (log), y: share of accesses.
    Returns (the file written or None, a one-line reason when none was)."""
    try:
        fig = _figure(8.0, 5.5)
    except ImportError:
        return None, NO_MATPLOTLIB
    curves = report["curves"]
    x = curves["fraction"]
    ax = fig.add_subplot()
    tables = [(name, y) for name, y in curves["tables"].items() if y is not None]
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    for i, (name, y) in enumerate(tables):
        ax.plot(x, y, lw=0.9, alpha=0.8, color=cmap(i / max(len(tables) - 1, 1)), label=name)
    if curves.get("overall") is not None:
        ax.plot(x, curves["overall"], lw=2.6, color="black", label="overall")
    for key, p in (("top_0_1pct_share", 0.001), ("top_1pct_share", 0.01), ("top_10pct_share", 0.1)):
        share = report["overall"].get(key)
        if share is not None:
            ax.plot([p], [share], "o", color="black", ms=4)
            ax.annotate(f"{100 * share:.0f}%", (p, share), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlim(x[0], 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("fraction of rows, most accessed first (per table; overall: all tables pooled)")
    ax.set_ylabel("share of accesses")
    data = report.get("data", {})
    ax.set_title(f"embedding access skew: {data.get('path', '')} ({data.get('split', '')})", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ncol = 2 if len(tables) > 14 else 1
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, ncol=ncol, frameon=False)
    return save_figure(fig, path)
