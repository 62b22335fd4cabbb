"""The binary dataset format: raw little-endian arrays, memory-mapped, described by `schema.json`.

Layout of a dataset directory:

    schema.json                 what is below, with shapes, splits and provenance
    dense.bin                   float32 [N, D]   dense features, already transformed
    labels.bin                  float32 [N, T]   one column per task
    sparse/<key>.values.bin     int32 or int64   ids of every row, concatenated
    sparse/<key>.offsets.bin    int64 [N + 1]    only for variable-length (multi-hot) keys;
                                                 fixed-length keys (`length: L`) have none
    vocab/<key>.npy             uint64, sorted   raw value of id i + FIRST_VOCAB_ID (optional)

Writers stream rows in with `append` and publish the schema last (atomically), so a directory
without `schema.json` is an unfinished write and never loads. Readers slice or gather rows
with numpy and no per-sample Python.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recstack.data.batch import Batch, JaggedFeatures
from recstack.errors import DataError

FORMAT = "recstack-dataset"
VERSION = 1
SCHEMA_FILE = "schema.json"

# Id conventions for vocabulary-mapped categorical features.
OOV_ID = 0
"""Rare (below the vocabulary's min count) and unseen values."""
MISSING_ID = 1
"""An empty field."""
FIRST_VOCAB_ID = 2


@dataclass
class SparseFeature:
    name: str
    num_embeddings: int
    """Number of distinct ids (the table size a model needs): every id is < num_embeddings."""
    length: int | None = 1
    """Fixed bag size, or None for variable-length bags (stored with offsets)."""
    dtype: str = "int32"
    table: str | None = None
    """Embedding table the ids index; features naming the same table share its rows (a target item
    and the items of a behaviour history). None: a table of its own, named like the feature."""
    sequence: bool = False
    """An ordered behaviour sequence (oldest first): attention models read it unpooled."""

    @property
    def table_name(self) -> str:
        return self.table or self.name


@dataclass
class Schema:
    num_rows: int
    dense_names: list[str]
    label_names: list[str]
    sparse: list[SparseFeature]
    splits: dict[str, list[int]] = field(default_factory=dict)
    """split name -> [start_row, end_row); rows are stored in source (time) order."""
    vocab: dict[str, str] = field(default_factory=dict)
    """sparse key -> vocabulary file (relative path)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Provenance: source files, preprocessing, reject counts, generator parameters."""
    format: str = FORMAT
    version: int = VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Schema:
        if raw.get("format") != FORMAT:
            raise DataError(f"not a recstack dataset (format is {raw.get('format')!r})")
        if int(raw.get("version", 0)) > VERSION:
            raise DataError(f"dataset format version {raw['version']} is newer than this recstack reads ({VERSION})")
        sparse = [SparseFeature(**s) for s in raw["sparse"]]
        return cls(
            num_rows=int(raw["num_rows"]),
            dense_names=list(raw["dense_names"]),
            label_names=list(raw["label_names"]),
            sparse=sparse,
            splits={k: [int(a), int(b)] for k, (a, b) in raw.get("splits", {}).items()},
            vocab=dict(raw.get("vocab", {})),
            info=dict(raw.get("info", {})),
            version=int(raw.get("version", VERSION)),
        )

    @property
    def sparse_names(self) -> list[str]:
        return [s.name for s in self.sparse]

    def feature(self, name: str) -> SparseFeature:
        for s in self.sparse:
            if s.name == name:
                return s
        raise KeyError(name)


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(payload, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class DatasetWriter:
    """Stream rows into a dataset directory; `finish` publishes the schema.

    Sparse values for a fixed-length key are given as an array [n, L] (or [n] for L = 1);
    for a variable-length key as (flat values, lengths [n]).
    """

    def __init__(
        self,
        out_dir: str | Path,
        dense_names: list[str],
        label_names: list[str],
        sparse: list[SparseFeature],
        overwrite: bool = True,
    ):
        self.out = Path(out_dir)
        if (self.out / SCHEMA_FILE).exists() and not overwrite:
            raise DataError(f"{self.out} already holds a dataset; choose another --out or remove it")
        if self.out.exists():
            for name in (SCHEMA_FILE, "dense.bin", "labels.bin"):
                (self.out / name).unlink(missing_ok=True)
            shutil.rmtree(self.out / "sparse", ignore_errors=True)
            shutil.rmtree(self.out / "vocab", ignore_errors=True)
        (self.out / "sparse").mkdir(parents=True, exist_ok=True)
        self.dense_names = list(dense_names)
        self.label_names = list(label_names)
        self.sparse = [SparseFeature(**asdict(s)) for s in sparse]
        self.num_rows = 0
        self._dense = open(self.out / "dense.bin", "wb")
        self._labels = open(self.out / "labels.bin", "wb")
        self._values = {s.name: open(self.out / "sparse" / f"{s.name}.values.bin", "wb") for s in self.sparse}
        self._offsets: dict[str, Any] = {}
        self._value_count: dict[str, int] = {s.name: 0 for s in self.sparse}
        for s in self.sparse:
            if s.length is None:
                fh = open(self.out / "sparse" / f"{s.name}.offsets.bin", "wb")
                fh.write(np.zeros(1, dtype=np.int64).tobytes())
                self._offsets[s.name] = fh

    def append(
        self,
        dense: np.ndarray,
        labels: np.ndarray,
        sparse: dict[str, np.ndarray | tuple[np.ndarray, np.ndarray]],
    ) -> None:
        n = int(dense.shape[0])
        dense = np.ascontiguousarray(dense, dtype=np.float32).reshape(n, len(self.dense_names))
        labels = np.ascontiguousarray(labels, dtype=np.float32).reshape(n, len(self.label_names))
        self._dense.write(memoryview(dense))
        self._labels.write(memoryview(labels))
        for s in self.sparse:
            item = sparse[s.name]
            if s.length is None:
                values, lengths = item  # type: ignore[misc]
                lengths = np.asarray(lengths, dtype=np.int64)
                if lengths.shape != (n,):
                    raise ValueError(f"{s.name}: lengths must have shape ({n},)")
                offsets = self._value_count[s.name] + np.cumsum(lengths)
                self._offsets[s.name].write(offsets.astype(np.int64).tobytes())
            else:
                values = np.asarray(item)
                if values.size != n * s.length:
                    raise ValueError(f"{s.name}: expected {n} x {s.length} ids, got {values.size}")
            values = np.ascontiguousarray(values, dtype=s.dtype).reshape(-1)
            self._values[s.name].write(memoryview(values))
            self._value_count[s.name] += int(values.size)
        self.num_rows += n

    def close_files(self) -> None:
        for fh in [self._dense, self._labels, *self._values.values(), *self._offsets.values()]:
            if not fh.closed:
                fh.flush()
                os.fsync(fh.fileno())
                fh.close()

    def write_vocab(self, name: str, raw_values: np.ndarray) -> None:
        """Store the sorted raw values of a key's vocabulary (id = FIRST_VOCAB_ID + position)."""
        (self.out / "vocab").mkdir(exist_ok=True)
        np.save(self.out / "vocab" / f"{name}.npy", np.asarray(raw_values, dtype=np.uint64))

    def finish(self, splits: dict[str, list[int]] | None = None, info: dict[str, Any] | None = None) -> Schema:
        self.close_files()
        vocab = {}
        if (self.out / "vocab").is_dir():
            vocab = {p.stem: f"vocab/{p.name}" for p in sorted((self.out / "vocab").glob("*.npy"))}
        schema = Schema(
            num_rows=self.num_rows,
            dense_names=self.dense_names,
            label_names=self.label_names,
            sparse=self.sparse,
            splits=splits or {"train": [0, self.num_rows]},
            vocab=vocab,
            info=info or {},
        )
        for name, (a, b) in schema.splits.items():
            if not 0 <= a <= b <= self.num_rows:
                raise ValueError(f"split {name} [{a}, {b}) is outside 0..{self.num_rows}")
        _write_json_atomic(self.out / SCHEMA_FILE, schema.to_json())
        return schema


class Dataset:
    """A prepared dataset, memory-mapped. `gather(rows)` builds a Batch for any row indices."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        schema_path = self.path / SCHEMA_FILE
        if not schema_path.is_file():
            if self.path.is_dir():
                raise DataError(f"{self.path} holds no {SCHEMA_FILE}: not a prepared dataset, or its write did not finish")
            raise DataError(f"dataset directory {self.path} does not exist (make one with `recstack data prepare` or `recstack data synth`)")
        try:
            self.schema = Schema.from_json(json.loads(schema_path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{schema_path} is damaged ({type(exc).__name__}: {exc})") from None
        n = self.schema.num_rows
        self.dense = self._map("dense.bin", np.float32, (n, len(self.schema.dense_names)))
        self.labels = self._map("labels.bin", np.float32, (n, len(self.schema.label_names)))
        self.values: dict[str, np.ndarray] = {}
        self.offsets: dict[str, np.ndarray] = {}
        for s in self.schema.sparse:
            if s.length is None:
                self.offsets[s.name] = self._map(f"sparse/{s.name}.offsets.bin", np.int64, (n + 1,))
                count = int(self.offsets[s.name][-1]) if n else 0
                self.values[s.name] = self._map(f"sparse/{s.name}.values.bin", np.dtype(s.dtype), (count,))
            else:
                self.values[s.name] = self._map(f"sparse/{s.name}.values.bin", np.dtype(s.dtype), (n, s.length))

    def _map(self, rel: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        path = self.path / rel
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if not path.is_file():
            raise DataError(f"dataset {self.path} is missing {rel}")
        actual = path.stat().st_size
        if actual != expected:
            raise DataError(f"dataset {self.path}: {rel} has {actual} bytes, the schema implies {expected}")
        if expected == 0:
            return np.zeros(shape, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)

    def __len__(self) -> int:
        return self.schema.num_rows

    def split(self, name: str) -> tuple[int, int]:
        if name not in self.schema.splits:
            known = ", ".join(sorted(self.schema.splits)) or "none"
            raise DataError(f"dataset {self.path} has no split {name!r} (it has: {known})")
        a, b = self.schema.splits[name]
        return a, b

    def vocab(self, name: str) -> np.ndarray | None:
        rel = self.schema.vocab.get(name)
        return None if rel is None else np.load(self.path / rel)

    def gather(self, rows: np.ndarray | slice) -> Batch:
        """A Batch of the given rows (a slice reads contiguously; an index array gathers)."""
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(len(self))
            dense = np.array(self.dense[start:stop])
            labels = np.array(self.labels[start:stop])
            batch_size = stop - start
        else:
            rows = np.asarray(rows, dtype=np.int64)
            dense = self.dense[rows]
            labels = self.labels[rows]
            batch_size = int(rows.size)
        values_parts = []
        length_parts = []
        for s in self.schema.sparse:
            v, lengths = self._gather_sparse(s, rows)
            values_parts.append(v)
            length_parts.append(lengths)
        # one pass: concatenate and widen to int64 together
        values = np.concatenate(values_parts, dtype=np.int64) if values_parts else np.zeros(0, np.int64)
        lengths = np.concatenate(length_parts, dtype=np.int32) if length_parts else np.zeros(0, np.int32)
        label_tensor = torch.from_numpy(labels)
        if label_tensor.shape[1] == 1:
            label_tensor = label_tensor[:, 0]
        return Batch(
            dense=torch.from_numpy(dense),
            sparse=JaggedFeatures(
                keys=self.schema.sparse_names,
                values=torch.from_numpy(values.astype(np.int64, copy=False)),
                lengths=torch.from_numpy(lengths.astype(np.int32, copy=False)),
                batch_size=batch_size,
            ),
            labels=label_tensor,
        )

    def _gather_sparse(self, s: SparseFeature, rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        values = self.values[s.name]
        if s.length is not None:
            if isinstance(rows, slice):
                picked = np.array(values[rows]).reshape(-1)
            elif s.length == 1:
                # np.take on the flat memmap is about 2x faster than fancy-indexing its [N, 1] view
                picked = np.take(values.reshape(-1), rows)
            else:
                flat = (rows[:, None] * s.length + np.arange(s.length)).reshape(-1)
                picked = np.take(values.reshape(-1), flat)
            n = picked.size // s.length
            return picked, np.full(n, s.length, dtype=np.int32)
        offsets = self.offsets[s.name]
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(len(self))
            lo, hi = int(offsets[start]), int(offsets[stop])
            return np.array(values[lo:hi]), np.diff(offsets[start : stop + 1]).astype(np.int32)
        starts = offsets[rows]
        lengths = offsets[rows + 1] - starts
        return gather_ranges(values, starts, lengths), lengths.astype(np.int32)


def gather_ranges(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate values[starts[i] : starts[i] + lengths[i]] for all i, without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=values.dtype)
    # position j of the output reads starts[bag(j)] + (j - first output position of bag(j))
    bag_starts = np.cumsum(lengths) - lengths
    index = np.repeat(starts - bag_starts, lengths) + np.arange(total, dtype=np.int64)
    return values[index]
