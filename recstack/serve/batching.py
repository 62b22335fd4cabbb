"""Query splitting and dynamic batching.

A query of N candidate rows becomes ceil(N / b) sub-requests, each a row slice of its Batch; a
worker takes queued sub-requests in arrival order and merges them into one Batch of at most
`max_batch` rows, waiting at most `max_wait` after the oldest arrived for more to come. The worker
cuts and merges them in one step (`merge_rows`: per feature key, a view of each part's id range,
then one cat), so the ids are copied once, never per row, and never on the submitting thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from recstack.data.batch import Batch, JaggedFeatures


def split_bounds(size: int, sub_batch: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of at most `sub_batch` rows covering 0..size (0: one range)."""
    if sub_batch <= 0 or size <= sub_batch:
        return [(0, size)]
    return [(a, min(a + sub_batch, size)) for a in range(0, size, sub_batch)]


class RowSlicer:
    """One Batch whose row ranges get cut out (and merged with other batches' ranges) by
    `merge_rows`; its bag offsets are computed once, at the first cut."""

    def __init__(self, batch: Batch):
        self.batch = batch
        self._offsets: list[int] | None = None

    def key_bounds(self, start: int, stop: int) -> list[tuple[int, int]]:
        """Per feature key, the [lo, hi) of `values` that rows [start, stop) hold."""
        sparse = self.batch.sparse
        if self._offsets is None:  # two workers may both compute it: the same list either way
            self._offsets = sparse.offsets().tolist()
        b, offsets = sparse.batch_size, self._offsets
        return [(offsets[f * b + start], offsets[f * b + stop]) for f in range(len(sparse.keys))]

    def slice(self, start: int, stop: int) -> Batch:
        return merge_rows([(self, start, stop)])


def merge_rows(parts: Sequence[tuple[RowSlicer, int, int]]) -> Batch:
    """Rows [start, stop) of each part's batch, in order, as one Batch. The ids are copied once: per
    key, views of each part's id range, then one cat (sub-requests are cut and merged in one go)."""
    if len(parts) == 1 and parts[0][1] == 0 and parts[0][2] == parts[0][0].batch.batch_size:
        return parts[0][0].batch
    batches = [slicer.batch for slicer, _, _ in parts]
    keys = batches[0].sparse.keys
    for b in batches[1:]:
        if b.sparse.keys != keys:
            raise ValueError(f"cannot merge batches with feature keys {b.sparse.keys} and {keys}")
    bounds = [slicer.key_bounds(a, z) for slicer, a, z in parts]
    # the output is key-major: key 0 of every part, then key 1 of every part, ...
    ranges = [(b.sparse, *bounds[i][f]) for f in range(len(keys)) for i, b in enumerate(batches)]
    values = torch.cat([sparse.values[lo:hi] for sparse, lo, hi in ranges])
    weights = None
    if all(b.sparse.weights is not None for b in batches):
        weights = torch.cat([sparse.weights[lo:hi] for sparse, lo, hi in ranges])
    lengths = torch.cat([b.sparse.lengths.view(len(keys), b.batch_size)[:, a:z] for b, (_, a, z) in zip(batches, parts)], 1)
    return Batch(
        dense=torch.cat([b.dense[a:z] for b, (_, a, z) in zip(batches, parts)]),
        sparse=JaggedFeatures(keys, values, lengths.reshape(-1), sum(z - a for _, a, z in parts), weights),
        labels=torch.cat([b.labels[a:z] for b, (_, a, z) in zip(batches, parts)]),
    )


def concat_batches(batches: Sequence[Batch]) -> Batch:
    """Rows of several batches (same feature keys) in one Batch, in order."""
    return merge_rows([(RowSlicer(b), 0, b.batch_size) for b in batches])


@dataclass
class SubRequest:
    """Rows [start, start + size) of one query, waiting for a worker. The rows are cut out of the
    query's batch only when a worker takes them: whoever submits (the server's event loop, the load
    generator's clock) hands over a query in O(1)."""

    owner: Any
    """The query's bookkeeping (the engine's business)."""
    start: int
    size: int
    rows: RowSlicer
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def part(self) -> tuple[RowSlicer, int, int]:
        return self.rows, self.start, self.start + self.size


class BatchQueue:
    """FIFO of sub-requests from which workers take merged batches.

    One worker at a time collects: it takes the oldest sub-request, then more in order while they
    fit in `max_batch` rows, and waits for arrivals until the oldest has waited `max_wait_s`; the
    batch leaves as soon as it is full or the next one would not fit. A sub-request larger than
    `max_batch` leaves alone. `queued_items` counts rows not yet handed to a model (waiting or
    being collected): what load shedding bounds.
    """

    def __init__(self, max_batch: int, max_wait_s: float):
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._pending: deque[SubRequest] = deque()
        self._cond = threading.Condition()
        self._collecting = False
        self._closed = False
        self.queued_items = 0
        self.queued_requests = 0

    def put(self, requests: Sequence[SubRequest]) -> None:
        with self._cond:
            self._pending.extend(requests)
            self.queued_items += sum(r.size for r in requests)
            self.queued_requests += len(requests)
            self._cond.notify_all()

    def take(self) -> list[SubRequest] | None:
        """The next merged batch of sub-requests; None once closed and empty."""
        with self._cond:
            while not self._closed and (self._collecting or not self._pending):
                self._cond.wait()
            if not self._pending:
                return None
            self._collecting = True
            try:
                taken = self._collect()
            finally:
                self._collecting = False
                self.queued_items -= sum(r.size for r in taken)
                self.queued_requests -= len(taken)
                self._cond.notify_all()
            return taken

    def _collect(self) -> list[SubRequest]:
        pending = self._pending
        taken = [pending.popleft()]
        size = taken[0].size
        deadline = taken[0].enqueued + self.max_wait_s
        while size < self.max_batch:
            while pending and size + pending[0].size <= self.max_batch:
                taken.append(pending.popleft())
                size += taken[-1].size
            if size >= self.max_batch or pending or self._closed:
                break  # full, or the next one does not fit
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._cond.wait(min(remaining, threading.TIMEOUT_MAX))  # a longer wait raises OverflowError
        return taken

    def close(self) -> None:
        """Wake every worker; `take` returns what is left, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
