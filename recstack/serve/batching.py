"""Query splitting and dynamic batching.

A query of N candidate rows becomes ceil(N / b) sub-requests, each a row slice of its Batch; a
worker takes queued sub-requests in arrival order and merges them into one Batch of at most
`max_batch` rows, waiting at most `max_wait` after the oldest arrived for more to come. Slicing and
merging work on whole tensors (one gather per call), never per row.
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


def gather_segments(values: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """values[starts[i] : starts[i] + lengths[i]] for all i, concatenated, in one gather."""
    lengths = lengths.to(torch.int64)
    total = int(lengths.sum())
    if total == 0:
        return values[:0]
    out_starts = torch.cumsum(lengths, 0) - lengths
    index = torch.repeat_interleave(starts.to(torch.int64) - out_starts, lengths) + torch.arange(total)
    return values[index]


class RowSlicer:
    """Row slices of one Batch; the bag offsets are computed once (at the first slice) for all of them."""

    def __init__(self, batch: Batch):
        self.batch = batch
        self._offsets: torch.Tensor | None = None

    def slice(self, start: int, stop: int) -> Batch:
        batch, sparse = self.batch, self.batch.sparse
        if start == 0 and stop == batch.batch_size:
            return batch
        if self._offsets is None:  # two workers may both compute it: the same tensor either way
            self._offsets = sparse.offsets()
        key_starts = torch.arange(len(sparse.keys), dtype=torch.int64) * sparse.batch_size
        lo = self._offsets[key_starts + start]
        counts = self._offsets[key_starts + stop] - lo
        lengths = sparse.lengths.view(len(sparse.keys), sparse.batch_size)[:, start:stop].reshape(-1)
        weights = None if sparse.weights is None else gather_segments(sparse.weights, lo, counts)
        return Batch(
            dense=batch.dense[start:stop],
            sparse=JaggedFeatures(sparse.keys, gather_segments(sparse.values, lo, counts), lengths, stop - start, weights),
            labels=batch.labels[start:stop],
        )


def concat_batches(batches: Sequence[Batch]) -> Batch:
    """Rows of several batches (same feature keys) in one Batch, in order."""
    if len(batches) == 1:
        return batches[0]
    keys = batches[0].sparse.keys
    num_keys = len(keys)
    for b in batches[1:]:
        if b.sparse.keys != keys:
            raise ValueError(f"cannot merge batches with feature keys {b.sparse.keys} and {keys}")
    per_key = [b.sparse.lengths.view(num_keys, b.batch_size) for b in batches]
    # ids of batch i, key f are one segment of the concatenated values; the output wants them key-major
    totals = torch.stack([lengths.sum(1, dtype=torch.int64) for lengths in per_key])  # [batches, keys]
    batch_base = torch.cumsum(totals.sum(1), 0) - totals.sum(1)
    starts = batch_base.unsqueeze(1) + torch.cumsum(totals, 1) - totals
    values = gather_segments(torch.cat([b.sparse.values for b in batches]), starts.T.reshape(-1), totals.T.reshape(-1))
    weights = None
    if all(b.sparse.weights is not None for b in batches):
        weights = gather_segments(torch.cat([b.sparse.weights for b in batches]), starts.T.reshape(-1), totals.T.reshape(-1))
    size = sum(b.batch_size for b in batches)
    return Batch(
        dense=torch.cat([b.dense for b in batches]),
        sparse=JaggedFeatures(keys, values, torch.cat(per_key, 1).reshape(-1), size, weights),
        labels=torch.cat([b.labels for b in batches]),
    )


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
    def batch(self) -> Batch:
        return self.rows.slice(self.start, self.start + self.size)


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
            self._cond.wait(remaining)
        return taken

    def close(self) -> None:
        """Wake every worker; `take` returns what is left, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
