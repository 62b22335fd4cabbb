"""Hot and cold embedding rows and inputs (FAE, specs/TECHNIQUES.md section 1): the access-count
profiler, hot-set selection under a memory budget, and the hot/cold partition of a split's inputs,
stored once in the dataset directory so training reads it instead of re-classifying.

Definitions (the same everywhere in recstack):

- A *lookup* is one id of one sparse feature of one input (every member of a bag is a lookup).
  The access count of row i of table t is the number of lookups of (t, i) over the split.
- *Sampled* counts count the lookups of a random subset of the split's inputs: each input is in the
  sample independently with probability `sample` (Bernoulli sampling; FAE's profiler draws
  floor(x N) indices with replacement instead, which ranks rows the same way in expectation). Input
  r's coin comes from the generator of its block (r // SAMPLE_BLOCK, seeded by (seed, block)), so the
  sample does not depend on the chunk size and `sample=1.0` takes every input.
- The *hot set* for a capacity of K rows is the first K rows of all tables jointly in the order
  (count descending, table index ascending, row id ascending), never-seen rows (count 0) excluded,
  so it has min(K, rows seen) rows. K = floor(budget bytes / (dim * 4 + state bytes per row)): an
  fp32 row plus its optimizer state (FAE's code uses budget // (4 * dim), i.e. no state).
  Hot sets for larger K contain those for smaller K.
- An input is *hot* when every one of its lookups (all tables, all bag members) is in the hot set;
  an empty bag adds no lookup, so an input whose bags are all empty is hot. Every other input is cold.

Stored layout (`<dataset>/hotcold/`, written to a temporary folder and renamed into place, the
summary last):

    summary.json                  budget, capacity, hot rows, hot-input fraction, sample, files
    tables/<key>.hot_rows.npy     int64, sorted: the hot row ids of table <key>
    tables/<key>.remap.npy        int32 (int64 past 2^31 hot rows) [num_embeddings]: the global hot
                                  index of each row, -1 for rows that are not hot
    hot_offsets.npy               int64 [T + 1]: table t's hot rows are global hot indices
                                  hot_offsets[t] .. hot_offsets[t + 1] - 1, in row-id order, so a
                                  compact hot table is concat_t(E_t[hot_rows[t]])
    hot_inputs.npy                int64, sorted: dataset row indices of the split's hot inputs
    cold_inputs.npy               int64, sorted: the split's other inputs
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recstack.data.store import Dataset, SparseFeature, open_npy
from recstack.errors import DataError
from recstack.memory import format_bytes

SAMPLE_BLOCK = 65536
"""Inputs per sampling generator."""
DEFAULT_CHUNK_ROWS = 1 << 17
"""Inputs read per step of a pass; memory per step is about this times the lookups per input x 10 bytes."""
FP32_BYTES = 4
HOTCOLD_DIR = "hotcold"
SUMMARY_FILE = "summary.json"
HOTCOLD_FORMAT = "recstack-hotcold"
HOTCOLD_VERSION = 1
_NPY_HEADER_BYTES = 128

# ---------------------------------------------------------------------------------------------
# Arguments: byte sizes and fractions
# ---------------------------------------------------------------------------------------------

_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
    "t": 1 << 40, "tib": 1 << 40, "tb": 10**12,
}  # fmt: skip
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int) -> int:
    """'256MiB' -> 268435456, '1GB' -> 10**9, '1.5GiB', '4096', 4096. KiB/MiB/GiB/TiB (and bare
    K/M/G/T) are powers of 1024, KB/MB/GB/TB powers of 1000."""
    if isinstance(text, (int, np.integer)):
        if text < 0:
            raise DataError(f"a byte size must be >= 0, got {text}")
        return int(text)
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise DataError(f"cannot read the byte size {text!r} (write e.g. 4096, 1MiB, 256MiB, 1GB)")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_fraction(text: str | float) -> float:
    """'5%' -> 0.05, '0.05' -> 0.05; must lie in (0, 1]."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise DataError(f"cannot read the fraction {text!r} (write e.g. 5% or 0.05)") from None
    if not 0 < value <= 1:
        hint = " (write 5% for five percent)" if value > 1 and not raw.endswith("%") else ""
        raise DataError(f"a sample fraction must be in (0, 1], got {text!r}{hint}")
    return value


def row_bytes(dim: int, state_bytes_per_row: int = 4) -> int:
    """Bytes one hot row costs: fp32 weights plus optimizer state."""
    if dim < 1 or state_bytes_per_row < 0:
        raise DataError(f"need dim >= 1 and state bytes per row >= 0 (got {dim}, {state_bytes_per_row})")
    return dim * FP32_BYTES + state_bytes_per_row


def capacity_rows(budget_bytes: int, dim: int, state_bytes_per_row: int = 4) -> int:
    """K: how many hot rows fit the budget."""
    return int(budget_bytes) // row_bytes(dim, state_bytes_per_row)


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


# ---------------------------------------------------------------------------------------------
# The stored partition
# ---------------------------------------------------------------------------------------------


class _NpyWriter:
    """A 1-D .npy file written in pieces; the header (fixed size) gets the length at `close`."""

    def __init__(self, path: Path, dtype: Any):
        self.path = path
        self.dtype = np.dtype(dtype)
        self.length = 0
        self._fh = open(path, "wb")
        self._fh.write(b"\0" * _NPY_HEADER_BYTES)

    def append(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        self._fh.write(memoryview(values))
        self.length += int(values.size)

    def close(self) -> None:
        header = repr(
            {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.length,)}
        )
        body = _NPY_HEADER_BYTES - 10
        text = header.ljust(body - 1) + "\n"
        if len(text) != body:
            raise AssertionError("npy header too long")  # pragma: no cover
        self._fh.seek(0)
        self._fh.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", body) + text.encode("latin1"))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()


@dataclass
class HotCold:
    """A stored hot/cold partition (see the module docstring); large arrays are memory-mapped."""

    path: Path
    summary: dict[str, Any]
    table_names: list[str]
    hot_rows: dict[str, np.ndarray]
    remap: dict[str, np.ndarray]
    hot_offsets: np.ndarray
    hot_inputs: np.ndarray
    cold_inputs: np.ndarray

    @property
    def num_hot_rows(self) -> int:
        return int(self.hot_offsets[-1])

    @property
    def hot_input_fraction(self) -> float:
        return float(self.summary["hot_input_fraction"])

    def hot_index(self, name: str, ids: np.ndarray) -> np.ndarray:
        """Global hot indices of rows `ids` of table `name` (-1 where a row is not hot)."""
        return self.remap[name][np.asarray(ids)]


def _rel(name: str, kind: str) -> str:
    return f"tables/{name}.{kind}.npy"


def build_hot_cold(
    dataset_dir: str | Path,
    budget_bytes: int | str,
    *,
    sample: float | str | None = 0.05,
    dim: int = 16,
    state_bytes_per_row: int = 4,
    split: str = "train",
    seed: int = 0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Choose the hot set from sampled counts (FAE step 1-2), classify every input of the split
    (step 3), and write `hotcold/` into the dataset directory. Returns the summary (also written as
    hotcold/summary.json). `sample` None or 1.0 profiles every input."""
    started = time.perf_counter()
    ds = Dataset(dataset_dir)
    budget = parse_bytes(budget_bytes)
    fraction = 1.0 if sample is None else parse_fraction(sample)
    capacity = capacity_rows(budget, dim, state_bytes_per_row)
    start, stop = ds.split(split)

    exact, sampled = count_accesses(
        ds, split, sample=fraction, seed=seed, chunk_rows=chunk_rows, show_progress=show_progress
    )
    assert sampled is not None
    chosen = select_hot(sampled, capacity)
    best = select_hot(exact, capacity)
    features = ds.schema.sparse
    masks = [chosen.mask(t, sampled.counts[t]) for t in range(len(features))]

    final = ds.path / HOTCOLD_DIR
    tmp = ds.path / (HOTCOLD_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "tables").mkdir(parents=True)

    hot_rows = [np.flatnonzero(m).astype(np.int64) for m in masks]
    offsets = np.zeros(len(features) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([h.size for h in hot_rows])
    index_dtype = np.int32 if offsets[-1] < 2**31 else np.int64
    for t, s in enumerate(features):
        np.save(tmp / _rel(s.name, "hot_rows"), hot_rows[t])
        remap = np.full(s.num_embeddings, -1, dtype=index_dtype)
        remap[hot_rows[t]] = np.arange(offsets[t], offsets[t + 1], dtype=index_dtype)
        np.save(tmp / _rel(s.name, "remap"), remap)
        del remap
    np.save(tmp / "hot_offsets.npy", offsets)

    # one pass: the chosen set's partition, and what the exact top-K would give
    chosen_levels = [(~m).astype(np.uint8) for m in masks]
    del masks
    best_levels = hot_levels(exact, [best])
    hot_writer = _NpyWriter(tmp / "hot_inputs.npy", np.int64)
    cold_writer = _NpyWriter(tmp / "cold_inputs.npy", np.int64)
    best_hot = 0
    try:
        for a, _, (lv, best_lv) in input_levels(
            ds, split, [chosen_levels, best_levels], chunk_rows=chunk_rows, show_progress=show_progress
        ):
            hot_writer.append(np.flatnonzero(lv == 0) + a)
            cold_writer.append(np.flatnonzero(lv != 0) + a)
            best_hot += int(np.count_nonzero(best_lv == 0))
    finally:
        hot_writer.close()
        cold_writer.close()

    inputs = stop - start
    summary: dict[str, Any] = {
        "format": HOTCOLD_FORMAT,
        "version": HOTCOLD_VERSION,
        "dataset": {
            "num_rows": ds.schema.num_rows,
            "split": split,
            "split_rows": [start, stop],
            "num_embeddings": {s.name: s.num_embeddings for s in features},
        },
        "budget_bytes": budget,
        "budget": format_bytes(budget),
        "dim": dim,
        "state_bytes_per_row": state_bytes_per_row,
        "row_bytes": row_bytes(dim, state_bytes_per_row),
        "capacity_rows": capacity,
        "hot_rows": int(offsets[-1]),
        "hot_bytes": int(offsets[-1]) * row_bytes(dim, state_bytes_per_row),
        "hot_rows_per_table": {s.name: int(h.size) for s, h in zip(features, hot_rows)},
        "hot_offsets": offsets.tolist(),
        "inputs": inputs,
        "hot_inputs": hot_writer.length,
        "cold_inputs": cold_writer.length,
        "hot_input_fraction": hot_writer.length / inputs if inputs else None,
        "sample": fraction,
        "sampled_inputs": sampled.inputs,
        "seed": seed,
        "sampled_recall": recall(exact, best, sampled, chosen),
        "sampled_access_recall": recall(exact, best, sampled, chosen, weighted=True),
        "exact_hot_rows": best.size,
        "exact_hot_input_fraction": best_hot / inputs if inputs else None,
        "files": {
            "hot_rows": {s.name: _rel(s.name, "hot_rows") for s in features},
            "remap": {s.name: _rel(s.name, "remap") for s in features},
            "hot_offsets": "hot_offsets.npy",
            "hot_inputs": "hot_inputs.npy",
            "cold_inputs": "cold_inputs.npy",
        },
        "definitions": {
            "hot_set": "the capacity_rows rows with the largest sampled counts over all tables jointly "
            "(ties: table order, then row id), never-sampled rows excluded",
            "hot_input": "every lookup (all tables, all bag members) is a hot row; empty bags add none",
            "sampled_recall": "|hot set & exact top-K by exact counts| / |exact top-K|",
            "sampled_access_recall": "the same with rows weighted by their exact access counts",
            "exact_hot_input_fraction": "the hot-input fraction the exact top-K would give",
        },
        "seconds": time.perf_counter() - started,
    }
    (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return summary


def load_hot_cold(dataset_dir: str | Path, *, mmap: bool = True) -> HotCold:
    """The partition `build_hot_cold` stored; refuses one made for another shape of the dataset, or a
    damaged one (a DataError either way: training then builds it afresh)."""
    ds = Dataset(dataset_dir)
    folder = ds.path / HOTCOLD_DIR
    summary_path = folder / SUMMARY_FILE
    if not summary_path.is_file():
        raise DataError(f"{ds.path} has no hot/cold partition (make one with `recstack data hotcold --data {ds.path}`)")
    try:
        summary = json.loads(summary_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{summary_path} is damaged ({exc})", hint=_REBUILD) from None
    version = summary.get("version") if isinstance(summary, dict) else None
    if not isinstance(version, int) or version > HOTCOLD_VERSION or summary.get("format") != HOTCOLD_FORMAT:
        raise DataError(f"{summary_path} is not a hot/cold summary this recstack reads", hint=_REBUILD)
    made_for, files = summary.get("dataset"), summary.get("files")
    if not isinstance(made_for, dict) or not isinstance(files, dict) or not isinstance(made_for.get("split"), str):
        raise DataError(f"{summary_path} is damaged (its 'dataset' or 'files' entry)", hint=_REBUILD)
    split = made_for["split"]
    now = {
        "num_rows": ds.schema.num_rows,
        "split_rows": list(ds.schema.splits.get(split, [])),
        "num_embeddings": {s.name: s.num_embeddings for s in ds.schema.sparse},
    }
    if split not in ds.schema.splits or any(made_for.get(key) != value for key, value in now.items()):
        raise DataError(
            f"the hot/cold partition in {folder} was made for other data (rows, split {split!r} or tables changed)",
            hint=_REBUILD,
        )

    def load(kind: str, name: str | None = None, *, mapped: bool = mmap) -> np.ndarray:
        rel = files.get(kind) if name is None else (files.get(kind) or {}).get(name)
        if not isinstance(rel, str):
            raise DataError(f"{summary_path} is damaged (no file for {kind} {name or ''})", hint=_REBUILD)
        array = open_npy(folder / rel, mmap=mapped)
        if array.ndim != 1 or array.dtype.kind != "i":
            raise DataError(f"{folder / rel} holds {array.dtype} {list(array.shape)}, not a 1-d integer array",
                            hint=_REBUILD)
        return array

    names = ds.schema.sparse_names
    hotcold = HotCold(
        path=folder,
        summary=summary,
        table_names=names,
        hot_rows={n: load("hot_rows", n, mapped=False) for n in names},
        remap={n: load("remap", n) for n in names},
        hot_offsets=load("hot_offsets", mapped=False),
        hot_inputs=load("hot_inputs"),
        cold_inputs=load("cold_inputs"),
    )
    _check_partition(hotcold, ds, ds.split(split))
    return hotcold


_REBUILD = "rerun `recstack data hotcold`"


def _check_partition(hc: HotCold, ds: Dataset, split_rows: tuple[int, int]) -> None:
    """What a reader of the partition relies on: the hot rows (small: read whole) are sorted rows of
    their tables that hot_offsets counts; the remaps cover their tables; the hot and cold inputs
    (large: only their sizes and ends are read) share out the split. Damage fails here, not inside torch."""
    problem = None
    offsets = hc.hot_offsets
    sizes = [int(hc.hot_rows[n].size) for n in hc.table_names]
    if offsets.size != len(sizes) + 1 or offsets[0] != 0 or np.diff(offsets).tolist() != sizes:
        problem = "hot_offsets.npy does not count the hot rows of the tables"
    for s in ds.schema.sparse:
        rows = hc.hot_rows[s.name]
        if rows.size and (rows[0] < 0 or rows[-1] >= s.num_embeddings or bool((np.diff(rows) <= 0).any())):
            problem = f"the hot rows of {s.name} are not sorted rows of its {s.num_embeddings}-row table"
        elif hc.remap[s.name].size != s.num_embeddings:
            problem = f"the remap of {s.name} has {hc.remap[s.name].size} entries for its {s.num_embeddings} rows"
    a, b = split_rows
    hot, cold = hc.hot_inputs, hc.cold_inputs
    if hot.size + cold.size != b - a or any(x.size and (x[0] < a or x[-1] >= b) for x in (hot, cold)):
        problem = f"the hot and cold inputs ({hot.size:,} + {cold.size:,}) do not share out the split's rows [{a}, {b})"
    if problem:
        raise DataError(f"the hot/cold partition in {hc.path} is damaged: {problem}", hint=_REBUILD)


def hotcold_command(
    data: str | Path,
    budget: str,
    *,
    sample: str | float = 0.05,
    dim: int = 16,
    state_bytes_per_row: int = 4,
    split: str = "train",
    seed: int = 0,
    report_path: str | Path | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """`recstack data hotcold`: build, write the report, print a summary."""
    from recstack.progress import console
    from recstack.report import new_report, write_report

    config = {
        "data": str(data), "budget": budget, "sample": sample, "dim": dim,
        "state_bytes_per_row": state_bytes_per_row, "split": split, "seed": seed,
    }  # fmt: skip
    summary = build_hot_cold(
        data,
        budget,
        sample=sample,
        dim=dim,
        state_bytes_per_row=state_bytes_per_row,
        split=split,
        seed=seed,
        show_progress=not quiet,
    )
    report = new_report("data hotcold", config)
    report.update(summary)
    report["out"] = str(Path(data) / HOTCOLD_DIR)
    write_report(report_path, report)
    if not quiet:
        from rich.table import Table

        table = Table(title=f"hot/cold partition of {data} ({split})", show_header=False)
        table.add_column("what")
        table.add_column("value", justify="right")
        table.add_row("budget", f"{summary['budget']} = {summary['capacity_rows']:,} rows of {summary['row_bytes']} B")
        table.add_row("hot rows", f"{summary['hot_rows']:,}")
        frac = summary["hot_input_fraction"] or 0.0
        table.add_row("hot inputs", f"{summary['hot_inputs']:,} ({frac:.1%})")
        table.add_row("cold inputs", f"{summary['cold_inputs']:,}")
        table.add_row("sample", f"{summary['sample']:.3g} ({summary['sampled_inputs']:,} inputs)")
        if summary["sampled_recall"] is not None:
            table.add_row("recall of exact top-K", f"{summary['sampled_recall']:.3f}")
        if summary["exact_hot_input_fraction"] is not None:
            table.add_row("hot inputs with exact top-K", f"{summary['exact_hot_input_fraction']:.1%}")
        table.add_row("written to", report["out"])
        console.print(table)
    return report


__all__ = [
    "AccessCounts", "HotCold", "HotSet", "build_hot_cold", "capacity_rows", "count_accesses", "hot_input_fractions",
    "hot_levels", "input_levels", "load_hot_cold", "parse_bytes", "parse_fraction", "recall", "select_hot",
]  # fmt: skip
