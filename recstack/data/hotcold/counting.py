"""Access profiling: how often each row of each table is looked up over a split, counted exactly or on a
Bernoulli sample of the inputs (see recstack.data.hotcold for the definitions), reading the split's
lookups in chunks."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np

from recstack.data.store import Dataset, SparseFeature

SAMPLE_BLOCK = 65536
"""Inputs per sampling generator."""
DEFAULT_CHUNK_ROWS = 1 << 17
"""Inputs read per step of a pass; memory per step is about this times the lookups per input x 10 bytes."""

# ---------------------------------------------------------------------------------------------
# Reading lookups in chunks
# ---------------------------------------------------------------------------------------------


def _chunks(start: int, stop: int, chunk_rows: int) -> list[tuple[int, int]]:
    chunk_rows = max(1, int(chunk_rows))
    return [(a, min(a + chunk_rows, stop)) for a in range(start, stop, chunk_rows)]


def _table_chunk(ds: Dataset, s: SparseFeature, a: int, b: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The ids of inputs [a, b) of one table, flat, and the bag lengths (None for a fixed length)."""
    values = ds.values[s.name]
    if s.length is not None:
        return np.asarray(values[a:b]).reshape(-1), None
    offsets = np.asarray(ds.offsets[s.name][a : b + 1])
    lengths = ds.bag_lengths(s, offsets[:-1], offsets[1:])
    return np.asarray(values[int(offsets[0]) : int(offsets[-1])]), lengths


def _check_ids(ds: Dataset, s: SparseFeature, ids: np.ndarray, lengths: np.ndarray | None, a: int, b: int) -> None:
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= s.num_embeddings):
        raise ds.id_error(s, ids, lengths, range(a, b))


def sample_mask(start: int, stop: int, fraction: float, seed: int) -> np.ndarray | None:
    """Which inputs of [start, stop) are in the sample (None: all of them)."""
    if fraction >= 1.0:
        return None
    parts = []
    for block in range(start // SAMPLE_BLOCK, -(-stop // SAMPLE_BLOCK)):
        u = np.random.default_rng([seed, block]).random(SAMPLE_BLOCK)
        lo = max(start - block * SAMPLE_BLOCK, 0)
        hi = min(stop - block * SAMPLE_BLOCK, SAMPLE_BLOCK)
        parts.append(u[lo:hi] < fraction)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def _accumulate(counts: np.ndarray, ids: np.ndarray) -> None:
    if ids.size == 0:
        return
    if ids.size * 4 >= counts.size:
        counts += np.bincount(ids, minlength=counts.size)
    else:  # few ids against a large table: do not touch every row
        unique, times = np.unique(ids, return_counts=True)
        counts[unique] += times


def _progress(show: bool, description: str, total: int):
    if not show:
        return nullcontext(None)
    from recstack.progress import progress_bar

    return progress_bar(description, total=total, unit="inputs")


# ---------------------------------------------------------------------------------------------
# Access counts
# ---------------------------------------------------------------------------------------------


@dataclass
class AccessCounts:
    """Exact or sampled per-row access counts of every table over `inputs` inputs."""

    names: list[str]
    counts: list[np.ndarray]
    """int64 [num_embeddings] per table."""
    inputs: int
    _runs: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def num_embeddings(self) -> list[int]:
        return [int(c.size) for c in self.counts]

    def runs(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Table t's positive counts, sorted, as runs: (distinct values descending, rows with each)."""
        if t not in self._runs:
            self._runs[t] = count_runs(self.counts[t])
        return self._runs[t]

    def joint_runs(self) -> tuple[np.ndarray, np.ndarray]:
        """The runs of all tables together."""
        parts = [self.runs(t) for t in range(len(self.counts))]
        return merge_runs([p[0] for p in parts], [p[1] for p in parts])

    def rows_seen(self, t: int | None = None) -> int:
        if t is None:
            return sum(self.rows_seen(i) for i in range(len(self.counts)))
        return int(self.runs(t)[1].sum())

    def accesses(self, t: int | None = None) -> int:
        if t is None:
            return sum(self.accesses(i) for i in range(len(self.counts)))
        return int(self.counts[t].sum())


def count_runs(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values, mults = np.unique(counts[counts > 0], return_counts=True)
    return values[::-1].astype(np.int64), mults[::-1].astype(np.int64)


def merge_runs(values: Sequence[np.ndarray], mults: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if not values:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    v = np.concatenate(values)
    m = np.concatenate(mults)
    if v.size == 0:
        return v, m
    order = np.argsort(-v, kind="stable")
    v, m = v[order], m[order]
    starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
    return v[starts], np.add.reduceat(m, starts)


def count_accesses(
    ds: Dataset,
    split: str = "train",
    *,
    sample: float | None = None,
    seed: int = 0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    show_progress: bool = False,
) -> tuple[AccessCounts, AccessCounts | None]:
    """Exact access counts over the split and, with `sample`, sampled counts, in one pass that holds
    one chunk of ids and the count arrays."""
    start, stop = ds.split(split)
    features = ds.schema.sparse
    exact = [np.zeros(s.num_embeddings, dtype=np.int64) for s in features]
    sampled = [np.zeros(s.num_embeddings, dtype=np.int64) for s in features] if sample is not None else None
    sampled_inputs = 0
    with _progress(show_progress, "counting accesses", stop - start) as bar:
        for a, b in _chunks(start, stop, chunk_rows):
            mask = sample_mask(a, b, sample, seed) if sample is not None else None
            if sample is not None:
                sampled_inputs += (b - a) if mask is None else int(mask.sum())
            for t, s in enumerate(features):
                ids, lengths = _table_chunk(ds, s, a, b)
                _check_ids(ds, s, ids, lengths, a, b)
                _accumulate(exact[t], ids)
                if sampled is None:
                    continue
                if mask is None:
                    _accumulate(sampled[t], ids)
                elif lengths is None:
                    _accumulate(sampled[t], ids.reshape(b - a, -1)[mask].reshape(-1))
                else:
                    _accumulate(sampled[t], ids[np.repeat(mask, lengths)])
            if bar is not None:
                bar.update(b - a)
    names = ds.schema.sparse_names
    sampled_counts = AccessCounts(names, sampled, sampled_inputs) if sampled is not None else None
    return AccessCounts(names, exact, stop - start), sampled_counts
