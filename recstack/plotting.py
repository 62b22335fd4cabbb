"""Writing pictures (PNG and the other formats matplotlib writes alone, on its Agg backend, never a
window). matplotlib is optional (`pip install 'recstack[plots]'`): `figure` raises ImportError without
it, and plot functions answer NO_MATPLOTLIB instead of a file. The bottom layer: serve and analyze draw
their own plots with these."""

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


def figure(width: float, height: float) -> Any:
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
