"""Pictures for people (PNG, matplotlib's Agg backend, never a window). matplotlib is optional
(`pip install 'recstack[plots]'`): without it a plot function returns a one-line reason instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recstack.errors import ConfigError

NO_MATPLOTLIB = "matplotlib is not installed, so no plot was written (pip install 'recstack[plots]')"
PLOT_FORMATS = ("png", "svg", "pdf", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp", "gif")
"""Picture formats matplotlib writes with no extra tools (pgf needs LaTeX; raw and rgba are not pictures)."""


def plot_path(path: str | Path, option: str = "--plot") -> Path:
    """The file a plot goes to: `path` as given when it ends in one of PLOT_FORMATS, with .png added when it
    has no extension. A folder, a place that cannot be written or another extension is a ConfigError:
    call this before the work."""
    from recstack.report import check_output_path

    given = Path(path)
    if str(path).endswith("/"):  # a folder still to be made
        raise ConfigError(f"{option} {path} is a directory; name a file (e.g. {given / 'plot.png'})")
    check_output_path(given, option, "plot.png")
    suffix = given.suffix.lower().removeprefix(".")
    if not suffix:
        return given.with_name(given.name + ".png")
    if suffix not in PLOT_FORMATS:
        raise ConfigError(
            f"{option} {path}: cannot write a .{suffix} picture; end the name in "
            f"{', '.join('.' + f for f in PLOT_FORMATS)} (no extension: .png)"
        )
    return given


def _figure(width: float, height: float) -> Any:
    """A Figure on its own Agg canvas: no pyplot, so no global backend switch and no window."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | Path) -> tuple[Path, None]:
    """Lay out and write a figure (creating its folder) to `plot_path(path)`; returns plot functions'
    (the file written, no reason)."""
    fig.tight_layout()
    path = plot_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path, None


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
