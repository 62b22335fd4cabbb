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
import math
import os
import shutil
from collections.abc import Callable
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


RAW_KEYS = ("hex", "integer", "text")
"""How a raw categorical value becomes its vocabulary key (a schema's `info.raw_keys`): `hex`, the
Criteo TSV's hex keys; `integer`, files of integer ids (MovieLens, implicit lists, Amazon, Taobao),
the id itself; `text`, a table's values, the 64-bit hash of their text."""


def raw_key_kind(schema: Schema) -> str:
    """The schema's RAW_KEYS kind (datasets prepared before `info.raw_keys` existed: by their format)."""
    info = schema.info
    if info.get("raw_keys") in RAW_KEYS:
        return info["raw_keys"]
    source = str((info.get("source") or {}).get("format", ""))
    if source == "criteo-tsv":
        return "hex"
    return "integer" if source.startswith(("movielens", "implicit", "amazon", "taobao")) else "text"


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
    def from_json(cls, raw: Any) -> Schema:
        """The schema of a parsed schema.json; every field is checked for its type and range here,
        so a damaged or hand-edited file fails with the field's name before any array is read."""
        if not isinstance(raw, dict):
            raise DataError(f"not a recstack dataset schema (a JSON {type(raw).__name__}, not an object)")
        if raw.get("format") != FORMAT:
            raise DataError(f"not a recstack dataset (format is {raw.get('format')!r})")
        version = _field(raw, "version", _is_count(0), "a format version", default=VERSION)
        if version > VERSION:
            raise DataError(f"dataset format version {version} is newer than this recstack reads ({VERSION})")
        num_rows = _field(raw, "num_rows", _is_count(0), "an integer >= 0")
        dense_names = _field(raw, "dense_names", _is_names, "a list of feature names")
        label_names = _field(raw, "label_names", _is_names, "a list of label names")
        sparse = [_sparse_feature(item, i) for i, item in enumerate(_field(raw, "sparse", _is_list, "a list"))]
        duplicate = _first_duplicate([f.name for f in sparse])
        if duplicate is not None:
            raise DataError(f"sparse feature {duplicate!r} is listed twice")
        splits = _field(raw, "splits", _is_dict, "an object of split name -> [start, stop)", default={})
        for name, span in splits.items():
            if not (_is_list(span) and len(span) == 2 and all(_is_count(0)(x) for x in span)
                    and span[0] <= span[1] <= num_rows):
                raise DataError(f"split {name!r} is {_short(span)}; expected [start, stop) with "
                                f"0 <= start <= stop <= num_rows ({num_rows})")
        vocab = _field(raw, "vocab", _is_dict, "an object of sparse feature -> file", default={})
        for name, rel in vocab.items():
            if name not in [f.name for f in sparse] or not _is_inside(rel):
                raise DataError(f"vocab entry {name!r}: {_short(rel)} is not a file inside the dataset "
                                "for one of its sparse features")
        return cls(
            num_rows=num_rows,
            dense_names=list(dense_names),
            label_names=list(label_names),
            sparse=sparse,
            splits={k: [int(a), int(b)] for k, (a, b) in splits.items()},
            vocab=dict(vocab),
            info=dict(_field(raw, "info", _is_dict, "an object", default={})),
            version=version,
        )

    @property
    def sparse_names(self) -> list[str]:
        return [s.name for s in self.sparse]

    def feature(self, name: str) -> SparseFeature:
        for s in self.sparse:
            if s.name == name:
                return s
        raise KeyError(name)


ID_DTYPES = ("int32", "int64")


def _is_count(minimum: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _is_list(v: Any) -> bool:
    return isinstance(v, list)


def _is_dict(v: Any) -> bool:
    return isinstance(v, dict)


def _is_name(v: Any) -> bool:
    """A feature name, which is also a file name: no path separators, not '.' or '..'."""
    return isinstance(v, str) and v not in ("", ".", "..") and "/" not in v and "\\" not in v and "\0" not in v


def _is_names(v: Any) -> bool:
    return _is_list(v) and all(isinstance(x, str) for x in v)


def _is_inside(rel: Any) -> bool:
    return isinstance(rel, str) and bool(rel) and not Path(rel).is_absolute() and ".." not in Path(rel).parts


def _first_duplicate(names: list[str]) -> str | None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_REQUIRED = object()


def _field(raw: dict[str, Any], key: str, valid: Callable[[Any], bool], accepted: str, where: str = "",
           default: Any = _REQUIRED) -> Any:
    """raw[key] when `valid` accepts it; a DataError naming the field otherwise."""
    if key not in raw:
        if default is _REQUIRED:
            raise DataError(f"{where}{key!r} is missing")
        return default
    value = raw[key]
    if not valid(value):
        raise DataError(f"{where}{key} is {_short(value)}; expected {accepted}")
    return value


def _sparse_feature(raw: Any, index: int) -> SparseFeature:
    if not isinstance(raw, dict):
        raise DataError(f"sparse[{index}] is {_short(raw)}; expected an object")
    name = _field(raw, "name", _is_name, "a feature name (no '/')", f"sparse[{index}].")
    where = f"sparse feature {name!r}: "
    unknown = sorted(set(raw) - set(SparseFeature.__dataclass_fields__))
    if unknown:
        raise DataError(f"{where}unknown fields {unknown}")
    return SparseFeature(
        name=name,
        num_embeddings=_field(raw, "num_embeddings", _is_count(1), "an integer >= 1 (the table's rows)", where),
        length=_field(raw, "length", lambda v: v is None or _is_count(1)(v), "an integer >= 1, or null (bags)", where,
                      default=1),
        dtype=_field(raw, "dtype", lambda v: v in ID_DTYPES, " or ".join(ID_DTYPES), where, default="int32"),
        table=_field(raw, "table", lambda v: v is None or _is_name(v), "a table name or null", where, default=None),
        sequence=_field(raw, "sequence", lambda v: isinstance(v, bool), "true or false", where, default=False),
    )


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


def open_npy(path: Path, mmap: bool = True) -> np.ndarray:
    """A whole .npy file (memory-mapped: only its header is read now), or a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path} is missing")
    try:
        with open(path, "rb") as fh:
            np.lib.format.read_magic(fh)  # np.load would take other bytes for a pickle, and say so
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path} is not a whole .npy array ({exc})") from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    duplicate = _first_duplicate([k for k, _ in pairs])
    if duplicate is not None:  # json.loads would keep the last one silently
        raise DataError(f"the key {duplicate!r} appears twice in one object")
    return dict(pairs)


def read_schema(path: str | Path) -> Schema:
    """The schema of the dataset directory `path`; one DataError naming the file for any damage."""
    path = Path(path)
    schema_path = path / SCHEMA_FILE
    if not path.exists():
        raise DataError(f"dataset directory {path} does not exist "
                        "(make one with `recstack data prepare` or `recstack data synth`)")
    if not path.is_dir():
        raise DataError(f"{path} is a file, not a dataset directory "
                        f"(a prepared dataset is a directory with {SCHEMA_FILE})")
    if not schema_path.is_file():
        raise DataError(f"{path} holds no {SCHEMA_FILE}: not a prepared dataset, or its write did not finish")
    try:
        return Schema.from_json(json.loads(schema_path.read_bytes(), object_pairs_hook=_no_duplicate_keys))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{schema_path} is damaged: not JSON ({exc})") from None
    except DataError as exc:
        raise DataError(f"{schema_path}: {exc.message}", exc.hint) from None


class Dataset:
    """A prepared dataset, memory-mapped. `gather(rows)` builds a Batch for any row indices."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.schema = read_schema(self.path)
        n = self.schema.num_rows
        self.dense = self._map("dense.bin", np.float32, (n, len(self.schema.dense_names)))
        self.labels = self._map("labels.bin", np.float32, (n, len(self.schema.label_names)))
        self.values: dict[str, np.ndarray] = {}
        self.offsets: dict[str, np.ndarray] = {}
        for s in self.schema.sparse:
            if s.length is None:
                rel = f"sparse/{s.name}.offsets.bin"
                self.offsets[s.name] = offsets = self._map(rel, np.int64, (n + 1,))
                count = int(offsets[-1])
                if int(offsets[0]) != 0 or count < 0:
                    raise DataError(f"dataset {self.path}: {rel} runs from {int(offsets[0])} to {count}; "
                                    "offsets start at 0 and never fall (the file is damaged)")
                self.values[s.name] = self._map(f"sparse/{s.name}.values.bin", np.dtype(s.dtype), (count,))
            else:
                self.values[s.name] = self._map(f"sparse/{s.name}.values.bin", np.dtype(s.dtype), (n, s.length))
        for rel in self.schema.vocab.values():
            self._open_vocab(rel)  # its header and size, not its values
        # the exclusive upper bound of each sparse feature's ids, in schema order (checked per batch)
        self._id_bounds = np.array([s.num_embeddings for s in self.schema.sparse], dtype=np.uint64)

    def _map(self, rel: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        path = self.path / rel
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if not path.is_file():
            raise DataError(f"dataset {self.path} is missing {rel}")
        actual = path.stat().st_size
        if actual != expected:
            shape_text = " x ".join(map(str, shape))
            which = "shorter (truncated?)" if actual < expected else "longer"
            raise DataError(f"dataset {self.path}: {rel} has {actual} bytes, {which} than the {expected} that "
                            f"{SCHEMA_FILE} implies ({shape_text} {np.dtype(dtype).name})")
        if expected == 0:
            return np.zeros(shape, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r", shape=shape)

    def _open_vocab(self, rel: str) -> np.ndarray:
        """A vocabulary file, memory-mapped: a whole 1-d uint64 .npy, or a DataError naming it."""
        path = self.path / rel
        if not path.is_file():
            raise DataError(f"dataset {self.path} is missing {rel} (named by {SCHEMA_FILE})")
        values = open_npy(path)
        if values.dtype != np.dtype(np.uint64) or values.ndim != 1:
            raise DataError(f"dataset {self.path}: {rel} holds {values.dtype} {list(values.shape)}; "
                            "a vocabulary is a 1-d uint64 array")
        return values

    def __len__(self) -> int:
        return self.schema.num_rows

    def split(self, name: str) -> tuple[int, int]:
        if name not in self.schema.splits:
            known = ", ".join(sorted(self.schema.splits)) or "none"
            raise DataError(f"dataset {self.path} has no split {name!r} (it has: {known})")
        a, b = self.schema.splits[name]
        return a, b

    def vocab(self, name: str) -> np.ndarray | None:
        """The sorted raw values of a feature's vocabulary (None without one)."""
        rel = self.schema.vocab.get(name)
        if rel is None:
            return None
        values = np.array(self._open_vocab(rel))
        if values.size > 1 and not bool((values[1:] > values[:-1]).all()):  # an id is a position: order is meaning
            raise DataError(f"dataset {self.path}: {rel} is not sorted and distinct (the file is damaged)")
        return values

    def gather(self, rows: np.ndarray | slice) -> Batch:
        """A Batch of the given rows (a slice reads contiguously; an index array gathers). Its values
        are checked (ids in their tables, finite dense values, 0/1 labels): a damaged file fails here
        with its name, never deep inside a model or a metric."""
        if isinstance(rows, slice):
            start, stop, _ = rows.indices(len(self))
            dense = np.array(self.dense[start:stop])
            labels = np.array(self.labels[start:stop])
            batch_size = stop - start
            row_ids: np.ndarray | range = range(start, stop)
        else:
            rows = np.asarray(rows, dtype=np.int64)
            dense = self.dense[rows]
            labels = self.labels[rows]
            batch_size = int(rows.size)
            row_ids = rows
        values_parts = []
        length_parts = []
        for s in self.schema.sparse:
            v, lengths = self._gather_sparse(s, rows)
            values_parts.append(v)
            length_parts.append(lengths)
        # one pass: concatenate and widen to int64 together
        values = np.concatenate(values_parts, dtype=np.int64) if values_parts else np.zeros(0, np.int64)
        lengths = np.concatenate(length_parts, dtype=np.int32) if length_parts else np.zeros(0, np.int32)
        self._check_ids(values, [v.size for v in values_parts], length_parts, row_ids)
        self._check_dense(dense, row_ids)
        self._check_labels(labels, row_ids)
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

    # --- value checks of a gathered batch: vectorized, one pass over what was just read ---------------

    def _check_ids(self, values: np.ndarray, sizes: list[int], lengths: list[np.ndarray],
                   rows: np.ndarray | range) -> None:
        """Every id in [0, num_embeddings) of its feature. Viewed as unsigned, a negative id lies above
        every bound, so one maximum per feature (one reduceat over the batch) checks both ends."""
        counts = np.asarray(sizes, dtype=np.int64)
        present = np.flatnonzero(counts)
        if present.size == 0:
            return
        starts = np.cumsum(counts) - counts
        top = np.maximum.reduceat(values.view(np.uint64), starts[present])
        over = np.flatnonzero(top >= self._id_bounds[present])
        if over.size == 0:
            return
        f = int(present[over[0]])
        raise self.id_error(self.schema.sparse[f], values[starts[f] : starts[f] + counts[f]], lengths[f], rows)

    def id_error(self, s: SparseFeature, ids: np.ndarray, lengths: np.ndarray | None,
                 rows: np.ndarray | range) -> DataError:
        """The error for the first of `ids` (feature s's bags of `rows`, `lengths` ids each, None for
        s.length) outside s's table."""
        j = int(np.flatnonzero((ids < 0) | (ids >= s.num_embeddings))[0])
        bag = j // s.length if lengths is None else int(np.searchsorted(np.cumsum(lengths), j, side="right"))
        return DataError(
            f"dataset {self.path}: sparse/{s.name}.values.bin holds id {int(ids[j])} at row {int(rows[bag])}, outside "
            f"[0, {s.num_embeddings}) that {SCHEMA_FILE} gives feature {s.name} (the file is damaged, or the "
            "schema's num_embeddings is wrong)"
        )

    def _check_dense(self, dense: np.ndarray, rows: np.ndarray | range) -> None:
        """Finite dense values. A float64 sum of float32 values cannot overflow, so it is finite
        exactly when every value is: one pass, no temporary array."""
        if dense.size == 0 or math.isfinite(dense.sum(dtype=np.float64)):
            return
        i, c = np.argwhere(~np.isfinite(dense))[0]
        raise DataError(
            f"dataset {self.path}: dense.bin holds {dense[i, c]} at row {int(rows[int(i)])} (feature "
            f"{self.schema.dense_names[c]!r}); dense values must be finite (the file is damaged)"
        )

    def _check_labels(self, labels: np.ndarray, rows: np.ndarray | range) -> None:
        bad = (labels != 0) & (labels != 1)  # NaN included
        if not bad.any():
            return
        i, t = np.argwhere(bad)[0]
        raise DataError(
            f"dataset {self.path}: labels.bin holds {labels[i, t]} at row {int(rows[int(i)])} (label "
            f"{self.schema.label_names[t]!r}); labels must be 0 or 1 (the file is damaged)"
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
            bounds = np.array(offsets[start : stop + 1])
            starts, ends = bounds[:-1], bounds[1:]
        else:
            starts, ends = offsets[rows], offsets[rows + 1]
        lengths = self.bag_lengths(s, starts, ends)
        if isinstance(rows, slice):
            return np.array(values[int(bounds[0]) : int(bounds[-1])]), lengths.astype(np.int32)
        return gather_ranges(values, starts, lengths), lengths.astype(np.int32)

    def bag_lengths(self, s: SparseFeature, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """ends - starts of some bags of a variable-length feature, checked against its values file
        (offsets that fall or leave the file would read other rows' ids, or fail inside numpy)."""
        lengths = ends - starts
        if starts.size and (int(starts.min()) < 0 or int(ends.max()) > self.values[s.name].shape[0]
                            or int(lengths.min()) < 0):
            raise DataError(
                f"dataset {self.path}: sparse/{s.name}.offsets.bin is damaged: its offsets must rise from 0 to "
                f"{self.values[s.name].shape[0]}, and some go outside that range or backwards"
            )
        return lengths


def gather_ranges(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate values[starts[i] : starts[i] + lengths[i]] for all i, without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=values.dtype)
    # position j of the output reads starts[bag(j)] + (j - first output position of bag(j))
    bag_starts = np.cumsum(lengths) - lengths
    index = np.repeat(starts - bag_starts, lengths) + np.arange(total, dtype=np.int64)
    return values[index]
