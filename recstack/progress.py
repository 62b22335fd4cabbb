"""Progress bars and tables for people; silent with --quiet (and when not a terminal, bars degrade
to nothing, so logs stay clean)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_quiet = False
console = Console(stderr=False, highlight=False)


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def say(message: str) -> None:
    if not _quiet:
        console.print(message)


class _NullBar:
    def update(self, advance: float = 0, **fields: object) -> None:
        pass


class _Bar:
    def __init__(self, progress: Progress, task: int):
        self._progress = progress
        self._task = task

    def update(self, advance: float = 0, **fields: object) -> None:
        self._progress.update(self._task, advance=advance, **fields)


@contextmanager
def progress_bar(description: str, total: float | None, unit: str = "", status: str = "") -> Iterator[_Bar | _NullBar]:
    """A bar with rate and ETA; `bar.update(advance, status="loss 0.45")`."""
    if _quiet or not sys.stdout.isatty():
        yield _NullBar()
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn() if unit == "" else TextColumn("{task.completed:,.0f}/{task.total:,.0f} " + unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, status=status)
        yield _Bar(progress, task)
