"""The hot set under a capacity (the most accessed rows of all tables jointly), each input's hot/cold
class, and how well a sampled profile recalls the exact hot set."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from recstack.data.hotcold.counting import (
    DEFAULT_CHUNK_ROWS,
    AccessCounts,
    _check_ids,
    _chunks,
    _progress,
    _table_chunk,
)
from recstack.data.store import Dataset

# ---------------------------------------------------------------------------------------------
# Hot-set selection
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HotSet:
    """The joint top-K rows, described by where the order (count desc, table, row) is cut: every row
    with count > threshold is hot; of the rows with count == threshold, those of tables before
    `boundary_table` and those of `boundary_table` with id <= `boundary_row` are hot."""

    capacity: int
    size: int
    threshold: int
    boundary_table: int
    boundary_row: int

    def mask(self, t: int, counts: np.ndarray) -> np.ndarray:
        """bool [num_embeddings]: which rows of table t (with access counts `counts`) are hot."""
        hot = counts > self.threshold
        if t < self.boundary_table:
            hot |= counts == self.threshold
        elif t == self.boundary_table:
            head = slice(0, self.boundary_row + 1)
            hot[head] |= counts[head] == self.threshold
        return hot

    def contains(self, t: int, ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """bool per id: is row ids[j] of table t hot."""
        c = counts[ids]
        hot = c > self.threshold
        if t < self.boundary_table:
            hot |= c == self.threshold
        elif t == self.boundary_table:
            hot |= (c == self.threshold) & (ids <= self.boundary_row)
        return hot


def select_hot(counts: AccessCounts, capacity: int) -> HotSet:
    """The first `capacity` rows of all tables jointly by count (ties: lower table index, then lower
    row id), rows never seen excluded."""
    capacity = max(int(capacity), 0)
    values, mults = counts.joint_runs()
    seen = int(mults.sum())
    never = int(values[0]) + 1 if values.size else 1  # a threshold no row passes
    if capacity == 0 or seen == 0:
        return HotSet(capacity, 0, never, -1, -1)
    last = len(counts.counts) - 1
    if capacity >= seen:
        return HotSet(capacity, seen, int(values[-1]), last, counts.num_embeddings[last] - 1)
    cum = np.cumsum(mults)
    j = int(np.searchsorted(cum, capacity))  # first run that reaches the capacity
    threshold = int(values[j])
    need = capacity - (int(cum[j - 1]) if j else 0)  # rows of the tied run to take, 1..mults[j]
    for t in range(len(counts.counts)):
        tv, tm = counts.runs(t)
        k = int(np.searchsorted(-tv, -threshold))
        ties = int(tm[k]) if k < tv.size and tv[k] == threshold else 0
        if need <= ties:
            row = int(np.flatnonzero(counts.counts[t] == threshold)[need - 1])
            return HotSet(capacity, capacity, threshold, t, row)
        need -= ties
    raise AssertionError("joint runs and per-table runs disagree")  # pragma: no cover


def hot_levels(counts: AccessCounts, hot_sets: Sequence[HotSet]) -> list[np.ndarray]:
    """uint8 per table row: the index of the first of the nested `hot_sets` (ascending capacity)
    that holds the row, len(hot_sets) for rows in none."""
    if len(hot_sets) > 254:
        raise ValueError("at most 254 nested hot sets")
    if any(b.capacity < a.capacity for a, b in zip(hot_sets, hot_sets[1:])):
        raise ValueError("hot sets must come in ascending capacity")
    levels = []
    for t, c in enumerate(counts.counts):
        level = np.full(c.size, len(hot_sets), dtype=np.uint8)
        for i in range(len(hot_sets) - 1, -1, -1):
            level[hot_sets[i].mask(t, c)] = i
        levels.append(level)
    return levels


# ---------------------------------------------------------------------------------------------
# Input classification
# ---------------------------------------------------------------------------------------------


def _bag_max(level: np.ndarray, lengths: np.ndarray | None, n: int) -> np.ndarray:
    """Per input, the largest level of its lookups (0 for no lookups)."""
    if lengths is None:
        return level.reshape(n, -1).max(axis=1, initial=0)
    out = np.zeros(n, dtype=level.dtype)
    nonempty = lengths > 0
    if level.size:
        starts = (np.cumsum(lengths) - lengths)[nonempty]
        out[nonempty] = np.maximum.reduceat(level, starts)
    return out


def input_levels(
    ds: Dataset,
    split: str,
    level_sets: Sequence[Sequence[np.ndarray]],
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    show_progress: bool = False,
    description: str = "classifying inputs",
) -> Iterator[tuple[int, int, list[np.ndarray]]]:
    """For every chunk [a, b) of the split and every level set (per-table uint8 row levels, as from
    `hot_levels`): each input's largest level over all its lookups. An input is hot for nested hot set
    i exactly when its level is <= i."""
    start, stop = ds.split(split)
    features = ds.schema.sparse
    with _progress(show_progress, description, stop - start) as bar:
        for a, b in _chunks(start, stop, chunk_rows):
            n = b - a
            out = [np.zeros(n, dtype=np.uint8) for _ in level_sets]
            for t, s in enumerate(features):
                ids, lengths = _table_chunk(ds, s, a, b)
                _check_ids(ds, s, ids, lengths, a, b)
                for k, levels in enumerate(level_sets):
                    np.maximum(out[k], _bag_max(levels[t][ids], lengths, n), out=out[k])
            yield a, b, out
            if bar is not None:
                bar.update(n)


def hot_input_fractions(
    ds: Dataset,
    split: str,
    level_sets: Sequence[Sequence[np.ndarray]],
    num_levels: int,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    show_progress: bool = False,
) -> list[np.ndarray]:
    """Per level set, float64 [num_levels]: the fraction of the split's inputs that are hot for each
    of the nested hot sets."""
    start, stop = ds.split(split)
    hist = [np.zeros(num_levels + 1, dtype=np.int64) for _ in level_sets]
    for _, _, levels in input_levels(ds, split, level_sets, chunk_rows=chunk_rows, show_progress=show_progress):
        for h, lv in zip(hist, levels):
            h += np.bincount(lv, minlength=num_levels + 1)
    n = max(stop - start, 1)
    return [np.cumsum(h)[:num_levels] / n for h in hist]


def recall(
    exact: AccessCounts, exact_set: HotSet, sampled: AccessCounts, sampled_set: HotSet, *, weighted: bool = False
) -> float | None:
    """|sampled hot set & exact hot set| / |exact hot set|; `weighted`: the same with every row weighted
    by its exact access count (the share of the exact hot set's accesses that the sampled set also
    holds). None when the exact set is empty."""
    if exact_set.size == 0:
        return None
    both = 0
    whole = 0
    for t in range(len(exact.counts)):
        in_exact = exact_set.mask(t, exact.counts[t])
        in_both = in_exact & sampled_set.mask(t, sampled.counts[t])
        if weighted:
            both += int(exact.counts[t][in_both].sum())
            whole += int(exact.counts[t][in_exact].sum())
        else:
            both += int(np.count_nonzero(in_both))
    return both / (whole if weighted else exact_set.size)


def seen_share(exact: AccessCounts, exact_set: HotSet, sampled: AccessCounts) -> float | None:
    """The share of the exact hot set that the sample saw at all: no hot set chosen from the sample's
    counts can recall more (rows it never saw are excluded, as never-seen rows always are). None
    when the exact set is empty."""
    if exact_set.size == 0:
        return None
    seen = sum(int(np.count_nonzero(exact_set.mask(t, exact.counts[t]) & (sampled.counts[t] > 0)))
               for t in range(len(exact.counts)))
    return seen / exact_set.size
