"""Progress bars and tables for people; silent with --quiet. When stdout is not a terminal (a log
file, a pipe, a job scheduler), a bar becomes a plain line every PLAIN_INTERVAL_S seconds (done/total,
rate, elapsed, ETA, status), so a long run shows it is alive without filling the log with redraws."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_quiet = False
PLAIN_INTERVAL_S = 10.0
"""Seconds between the plain progress lines printed when stdout is not a terminal."""
_clock = time.monotonic
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


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class _LineBar:
    """A bar for logs: one plain line at most every PLAIN_INTERVAL_S seconds, and one at the end of
    work that printed any (so a short run stays silent)."""

    def __init__(self, description: str, total: float | None, unit: str, status: str):
        self.description, self.total, self.unit, self.status = description, total, unit, status
        self.done = 0.0
        self.start = self.last = _clock()
        self.printed = False

    def update(self, advance: float = 0, **fields: object) -> None:
        self.done += advance
        if "status" in fields:
            self.status = str(fields["status"])
        now = _clock()
        if now - self.last >= PLAIN_INTERVAL_S:
            self.last = now
            self._print(now)

    def finish(self) -> None:
        if self.printed:
            self._print(_clock(), final=True)

    def _print(self, now: float, final: bool = False) -> None:
        elapsed = now - self.start
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            done = f"{self.done:,.0f}/{self.total:,.0f}{unit} ({100 * self.done / self.total:.0f}%)"
        else:
            done = f"{self.done:,.0f}{unit}"
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.description}: {done}", f"{rate:,.1f}/s", f"elapsed {_duration(elapsed)}"]
        if self.total and rate > 0 and not final:
            parts.append(f"ETA {_duration(max(self.total - self.done, 0) / rate)}")
        if self.status:
            parts.append(self.status)
        print(", ".join(parts) + (" (done)" if final else ""), file=sys.stdout, flush=True)
        self.printed = True


@contextmanager
def progress_bar(description: str, total: float | None, unit: str = "", status: str = "") -> Iterator[_Bar | _NullBar]:
    """A bar with rate and ETA; `bar.update(advance, status="loss 0.45")`."""
    if _quiet:
        yield _NullBar()
        return
    if not sys.stdout.isatty():
        bar = _LineBar(description, total, unit, status)
        yield bar
        bar.finish()
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
