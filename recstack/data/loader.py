"""Mini-batches from a memory-mapped Dataset, in a deterministic order, prepared ahead by a thread.

The order of an epoch depends only on (seed, epoch): a permutation of the row range when
shuffling, the rows in order otherwise. Batch i holds positions [i*B, (i+1)*B) of that order, so a
run resumed at (epoch, batch) sees exactly the batches it would have seen. Indices are sorted
inside each batch: memory-mapped reads get more local, and a summed loss does not care.

The batch size is global: with `world_size` ranks, rank r reads its share of every global batch
(positions [r*n/W, (r+1)*n/W) of the batch's n sorted rows), so the batches, and what a model
learns from them, do not depend on how many ranks read them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from recstack.data.batch import Batch
from recstack.data.store import Dataset

_POLL_S = 0.05
"""How often a producer blocked on a full queue checks whether the consumer has gone."""


class BatchLoader:
    """Batches of rows [start, stop) of a dataset.

    `prefetch` batches are built ahead on a background thread (0: built synchronously, in the
    iterating thread). Building a batch is numpy slicing and gathering, which releases the GIL.
    """

    def __init__(
        self,
        dataset: Dataset,
        rows: tuple[int, int],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        prefetch: int = 4,
        transform: Callable[[Batch], Batch] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        """`transform`: applied to every batch where it is built (on the prefetch thread).
        `rank`, `world_size`: this reader's share of every global batch (see the module doc)."""
        start, stop = int(rows[0]), int(rows[1])
        if not 0 <= start <= stop <= len(dataset):
            raise ValueError(f"rows [{start}, {stop}) are outside the dataset's {len(dataset)} rows")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if prefetch < 0:
            raise ValueError("prefetch must be >= 0")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1} (world size {world_size})")
        self.dataset = dataset
        self.start, self.stop = start, stop
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.prefetch = int(prefetch)
        self.transform = transform
        self.rank, self.world_size = int(rank), int(world_size)

    @property
    def num_rows(self) -> int:
        return self.stop - self.start

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self.num_rows, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def order(self, epoch: int) -> np.ndarray | None:
        """The epoch's row order (absolute row ids), or None when rows are taken in order."""
        if not self.shuffle:
            return None
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
        perm += self.start
        return perm

    def batch_rows(self, order: np.ndarray | None, i: int) -> np.ndarray | slice:
        """Rows of batch i under `order`: sorted indices, or a slice when rows are in order."""
        lo = i * self.batch_size
        hi = min(lo + self.batch_size, self.num_rows)
        if order is None:
            lo, hi = self.rank_share(lo, hi)
            return slice(self.start + lo, self.start + hi)
        return self._share(np.sort(order[lo:hi]))

    def rank_share(self, lo: int, hi: int) -> tuple[int, int]:
        """This rank's part [a, b) of the global batch's positions [lo, hi)."""
        n = hi - lo
        return lo + self.rank * n // self.world_size, lo + (self.rank + 1) * n // self.world_size

    def _share(self, rows: np.ndarray) -> np.ndarray:
        """This rank's part of a global batch's sorted rows."""
        if self.world_size == 1:
            return rows
        a, b = self.rank_share(0, rows.size)
        return rows[a:b]

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """The batches of one epoch, from `start_batch` on (earlier batches are never read)."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch {start_batch} is outside 0..{len(self)}")
        return self._iterate(self.order(epoch), range(start_batch, len(self)))

    def sequential(self) -> Iterator[Batch]:
        """Every row of the range once, in order, short last batch included (for evaluation)."""
        return self._iterate(None, range(-(-self.num_rows // self.batch_size)))

    def _iterate(self, order: np.ndarray | None, indices: range) -> Iterator[Batch]:
        transform = self.transform  # as it is when the epoch starts

        def make(i: int) -> Batch:
            batch = self.dataset.gather(self.batch_rows(order, i))
            return batch if transform is None else transform(batch)

        if self.prefetch == 0:
            return (make(i) for i in indices)
        return prefetched(make, indices, self.prefetch)


class IndexBatchLoader(BatchLoader):
    """Batches of the dataset rows `rows` (an index array, e.g. FAE's hot or cold pool), with
    BatchLoader's rules: the epoch's order is rows[permutation], the permutation drawn from
    default_rng([seed, epoch]) (or [seed, epoch, stream] when `stream` is set, so two pools get
    independent orders). Over rows = arange(a, b) with no stream it yields BatchLoader((a, b))'s batches."""

    def __init__(self, dataset: Dataset, rows: np.ndarray, batch_size: int, *, stream: int | None = None, **kwargs):
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1:
            raise ValueError("rows must be a 1-d array of dataset row ids")
        if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= len(dataset)):
            raise ValueError(f"rows lie outside the dataset's {len(dataset)} rows")
        super().__init__(dataset, (0, len(dataset)), batch_size, **kwargs)
        self.rows = rows
        self.stream = stream

    @property
    def num_rows(self) -> int:
        return int(self.rows.size)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return self.rows
        key = [self.seed, epoch] if self.stream is None else [self.seed, epoch, self.stream]
        return self.rows[np.random.default_rng(key).permutation(self.num_rows)]

    def batch_rows(self, order: np.ndarray | None, i: int) -> np.ndarray:
        order = self.rows if order is None else order
        lo = i * self.batch_size
        return self._share(np.sort(order[lo : min(lo + self.batch_size, self.num_rows)]))


@dataclass
class _Failure:
    error: BaseException


_DONE = object()


def prefetched(make: Callable[[int], Batch], indices: range, depth: int) -> Iterator[Batch]:
    """Yield make(i) for i in indices, computed by one background thread at most `depth` ahead.

    An exception in `make` is re-raised in the consumer. When the consumer stops early (break,
    close, garbage collection), the thread stops within one batch and is joined: none is leaked.
    The thread starts on the first `next`, so an iterator never started holds no thread.
    """
    items: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        """Block until there is room or the consumer has gone; False when it has gone."""
        while not stop.is_set():
            try:
                items.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for i in indices:
                if stop.is_set() or not put(make(i)):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(_Failure(exc))

    thread = threading.Thread(target=produce, name="recstack-loader", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        _drain(items)  # frees a producer blocked on a full queue at once
        thread.join()


def _drain(items: queue.Queue[object]) -> None:
    try:
        while True:
            items.get_nowait()
    except queue.Empty:
        pass
