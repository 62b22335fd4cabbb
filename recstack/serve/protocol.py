"""What the load generator drives: anything that accepts a query now and completes it later (the
in-process inference engine, or an HTTP client of the server).

Times are `time.perf_counter()` seconds. A query's latency runs from its *scheduled* arrival, not
from when it was actually submitted, so a target that falls behind cannot hide its queueing
(no coordinated omission).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from recstack.data.batch import Batch


@dataclass
class Query:
    id: int
    size: int
    """Candidate items to rank."""
    arrival: float
    """Scheduled arrival time."""
    batch: Batch | None = None
    """The candidates' features ([size] rows); None lets the target draw synthetic ones."""


@dataclass
class Completion:
    query_id: int
    arrival: float
    finished: float
    """When the last of the query's sub-requests completed (or the rejection was answered)."""
    size: int = 0
    rejected: bool = False
    """Shed by a full queue (HTTP 503)."""
    error: str | None = None
    on_accelerator: bool = False
    sub_requests: int = 1

    @property
    def latency(self) -> float:
        return self.finished - self.arrival


class QueryTarget(Protocol):
    def submit(self, query: Query, done: Callable[[Completion], None]) -> None:
        """Accept the query without blocking on its work; call `done` (from any thread) once."""

    def close(self) -> None:
        """Finish in-flight queries and release workers."""
