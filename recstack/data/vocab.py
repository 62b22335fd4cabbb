"""Categorical encoding shared by every reader: raw 64-bit keys -> embedding ids.

A reader turns each categorical value into a uint64 *raw key* (Criteo: the hex value itself;
other tables: a stable 64-bit hash of the string) plus a missing flag. Two encodings then apply:

- vocabulary: ids from a sorted array of kept raw keys (`encode_vocab`), built from counts over
  the training rows (`build_vocab`); OOV_ID for rare or unseen keys, MISSING_ID for empty fields;
- hashing: FIRST_VOCAB_ID + mix64(key) mod (buckets - FIRST_VOCAB_ID) (`encode_hash`), no pass
  over the data needed.

`VocabIndex` makes vocabulary lookups of many keys fast; `SpillChunks` is the on-disk form of the
rows a reader keeps until the vocabulary over the training rows is known. Everything here works on
whole arrays; no per-value Python.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from recstack.data.store import FIRST_VOCAB_ID, MISSING_ID, OOV_ID

MAX_HASH_BUCKETS = 2**31 - 1
"""The most hash buckets a reader accepts. A hashed table is allocated whole at training time: 2**31 - 1
rows (the most int32 ids address, as the synthetic generator's MAX_TABLE_ROWS) of 16-dim float32 rows
are already 128 GiB, beyond one machine's memory; a larger value is a typo, not a plan."""
HASH_BUCKETS_RANGE = (FIRST_VOCAB_ID + 1, MAX_HASH_BUCKETS)
"""hash_buckets accepted by every reader: ids FIRST_VOCAB_ID.. need at least one bucket beyond them."""
MAX_COUNT = 2**63 - 1
"""The largest count (vocab_min_count) an int64 counter can compare with."""

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)


def is_int_in(value: object, low: int, high: int) -> bool:
    """An int (not a bool, not a float however integral) in [low, high]: the check for counts and sizes
    read from YAML or JSON, where 3.7 or `true` must not pass as a number."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijective uint64 -> uint64 mix, so nearby keys land far apart."""
    z = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MUL1
        z = (z ^ (z >> np.uint64(27))) * _MUL2
        return z ^ (z >> np.uint64(31))


def id_dtype(num_embeddings: int) -> np.dtype:
    """int32 ids while they fit (half the bytes of int64 on disk and in batches)."""
    return np.dtype(np.int32) if num_embeddings <= np.iinfo(np.int32).max else np.dtype(np.int64)


class VocabIndex:
    """A sorted vocabulary with a bucket table over its key range, for fast lookups of many keys.

    np.searchsorted does ~log2(V) dependent, cache-missing probes per key once a vocabulary outgrows the
    CPU caches; here the top bits of (key - min) pick a bucket of about one entry, and a few vectorized
    binary-search steps finish inside it (2-3x faster for million-entry vocabularies).
    """

    def __init__(self, vocab_sorted: np.ndarray):
        self.vocab = np.ascontiguousarray(vocab_sorted, dtype=np.uint64)
        size = len(self.vocab)
        if size == 0:
            return
        self.low, self.high = self.vocab[0], self.vocab[-1]
        bucket_bits = max(int(size - 1).bit_length(), 1)
        span_bits = int(self.high - self.low).bit_length()
        self.shift = np.uint64(max(span_bits - bucket_bits, 0))
        per_bucket = np.bincount(self._bucket(self.vocab), minlength=1 << bucket_bits)
        self.starts = np.concatenate([[0], np.cumsum(per_bucket)])
        self.steps = int(per_bucket.max()).bit_length()  # binary-search steps for the fullest bucket

    def __len__(self) -> int:
        return len(self.vocab)

    def _bucket(self, keys: np.ndarray) -> np.ndarray:
        return ((keys - self.low) >> self.shift).astype(np.int64)

    def positions(self, keys: np.ndarray) -> np.ndarray:
        """Position of each key in the vocabulary, -1 where absent."""
        keys = np.asarray(keys, dtype=np.uint64)
        out = np.full(keys.shape, -1, dtype=np.int64)
        if len(self.vocab) == 0:
            return out
        in_range = (keys >= self.low) & (keys <= self.high)
        probe = np.where(in_range, keys, self.low)
        bucket = self._bucket(probe)
        lo, hi = self.starts[bucket], self.starts[bucket + 1]
        last = len(self.vocab) - 1
        for _ in range(self.steps):  # lower bound of the key within [lo, hi)
            active = lo < hi
            mid = (lo + hi) >> 1
            right = active & (self.vocab[np.minimum(mid, last)] < probe)
            lo = np.where(right, mid + 1, lo)
            hi = np.where(active & ~right, mid, hi)
        found = in_range & (self.vocab[np.minimum(lo, last)] == keys)
        out[found] = lo[found]
        return out


def encode_vocab(raw: np.ndarray, missing: np.ndarray, vocab_sorted: np.ndarray | VocabIndex) -> np.ndarray:
    """int32 ids: MISSING_ID where missing, FIRST_VOCAB_ID + position of the key in the sorted
    vocabulary where present, OOV_ID for keys not in it. Pass a VocabIndex to encode many blocks."""
    index = vocab_sorted if isinstance(vocab_sorted, VocabIndex) else VocabIndex(vocab_sorted)
    pos = index.positions(raw)
    ids = np.where(pos >= 0, pos + FIRST_VOCAB_ID, OOV_ID).astype(id_dtype(FIRST_VOCAB_ID + len(index)))
    ids[np.asarray(missing, dtype=bool)] = MISSING_ID
    return ids


def encode_hash(raw: np.ndarray, missing: np.ndarray, buckets: int) -> np.ndarray:
    """Hashed ids in [FIRST_VOCAB_ID, buckets): num_embeddings = buckets. OOV_ID is never used."""
    if buckets <= FIRST_VOCAB_ID:
        raise ValueError(f"hash buckets must be > {FIRST_VOCAB_ID}, got {buckets}")
    h = mix64(raw) % np.uint64(buckets - FIRST_VOCAB_ID)
    ids = (h + np.uint64(FIRST_VOCAB_ID)).astype(id_dtype(buckets))
    ids[np.asarray(missing, dtype=bool)] = MISSING_ID
    return ids


def _merge_counts(
    values_a: np.ndarray, counts_a: np.ndarray, values_b: np.ndarray, counts_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Union of two sorted (unique values, counts) pairs, adding the counts of shared values."""
    values = np.concatenate([values_a, values_b])
    counts = np.concatenate([counts_a, counts_b])
    # a stable sort of two sorted runs is a linear merge (timsort finds the runs)
    order = np.argsort(values, kind="stable")
    values, counts = values[order], counts[order]
    if values.size == 0:
        return values, counts
    starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    return values[starts], np.add.reduceat(counts, starts)


def count_values(
    blocks: Iterable[tuple[np.ndarray, np.ndarray]], block_rows: int = 1 << 24
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct non-missing keys and their counts over (raw, missing) blocks of any size.
    Keys are gathered into batches of about `block_rows`, each sorted once and merged into the running
    counts, so memory stays bounded for columns larger than memory."""
    values = np.zeros(0, dtype=np.uint64)
    counts = np.zeros(0, dtype=np.int64)
    pending: list[np.ndarray] = []
    size = 0
    for raw, missing in chain(blocks, [(None, None)]):
        if raw is not None:
            present = np.asarray(raw, dtype=np.uint64)[~np.asarray(missing, dtype=bool)]
            pending.append(present)
            size += present.size
        if pending and (size >= block_rows or raw is None):
            u, c = np.unique(np.concatenate(pending), return_counts=True)
            values, counts = _merge_counts(values, counts, u, c.astype(np.int64))
            pending, size = [], 0
    return values, counts


def build_vocab(raw: np.ndarray, missing: np.ndarray, min_count: int) -> np.ndarray:
    """Sorted uint64 keys seen at least `min_count` times (missing entries never count)."""
    values, counts = count_values([(raw, missing)])
    return values[counts >= min_count]


# --------------------------------------------------------------------------------------------
# Spilled rows: what a reader keeps on disk until the vocabulary is known


@dataclass(frozen=True)
class SpillLayout:
    """Byte layout of one spilled chunk of n rows: labels float32 [n, T], dense float32 [n, D], then
    per categorical column its raw keys (uint64 [K, n]) and its missing flags (bool [K, n])."""

    num_labels: int
    num_dense: int
    num_cats: int

    def read_rows(self, path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels [n, T], dense [n, D]) of a chunk."""
        labels = np.fromfile(path, dtype=np.float32, count=n * self.num_labels).reshape(n, self.num_labels)
        dense = np.fromfile(path, dtype=np.float32, count=n * self.num_dense, offset=4 * n * self.num_labels)
        return labels, dense.reshape(n, self.num_dense)

    def read_column(self, path: Path, n: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """(raw keys [n], missing [n]) of categorical column j of a chunk."""
        base = 4 * n * (self.num_labels + self.num_dense)
        raw = np.fromfile(path, dtype=np.uint64, count=n, offset=base + 8 * n * j)
        missing = np.fromfile(path, dtype=bool, count=n, offset=base + 8 * n * self.num_cats + n * j)
        return raw, missing


def write_spill_chunk(path: Path, labels: np.ndarray, dense: np.ndarray, cat: np.ndarray, missing: np.ndarray) -> int:
    """Write one chunk in SpillLayout (from any process); returns its row count."""
    with open(path, "wb") as fh:
        for array, dtype in ((labels, np.float32), (dense, np.float32), (cat.T, np.uint64), (missing.T, bool)):
            np.ascontiguousarray(array, dtype=dtype).tofile(fh)  # cat and missing are column-major on disk
    return int(dense.shape[0])


class SpillChunks:
    """An ordered list of spilled chunks in one temporary directory. Chunks may be written by worker
    processes (`next_path`, then `add` in input order) or here (`append`)."""

    def __init__(self, directory: Path, layout: SpillLayout):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.layout = layout
        self.chunks: list[tuple[Path, int]] = []
        self._next = 0

    @property
    def num_rows(self) -> int:
        return sum(n for _, n in self.chunks)

    def next_path(self) -> Path:
        self._next += 1
        return self.dir / f"chunk-{self._next:08d}.bin"

    def add(self, path: Path, n: int) -> None:
        self.chunks.append((path, n))

    def append(self, labels: np.ndarray, dense: np.ndarray, cat: np.ndarray, missing: np.ndarray) -> None:
        path = self.next_path()
        self.add(path, write_spill_chunk(path, labels, dense, cat, missing))

    def column(self, j: int, num_rows: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(raw, missing) of column j, chunk by chunk, for the first `num_rows` rows (default all)."""
        left = self.num_rows if num_rows is None else num_rows
        for path, n in self.chunks:
            if left <= 0:
                return
            raw, missing = self.layout.read_column(path, n, j)
            yield raw[:left], missing[:left]
            left -= n

    def remove(self) -> None:
        """Delete the directory and everything in it."""
        shutil.rmtree(self.dir, ignore_errors=True)
