"""The hot/cold partition of a split, built once and stored in the dataset directory (`HotCold`,
`build_hot_cold`, `load_hot_cold`).

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
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recstack.data.hotcold.budget import capacity_rows, parse_bytes, parse_fraction, row_bytes
from recstack.data.hotcold.counting import DEFAULT_CHUNK_ROWS, count_accesses
from recstack.data.hotcold.selection import hot_levels, input_levels, recall, select_hot
from recstack.data.store import Dataset, open_npy
from recstack.errors import DataError
from recstack.memory import format_bytes

HOTCOLD_DIR = "hotcold"
SUMMARY_FILE = "summary.json"
HOTCOLD_FORMAT = "recstack-hotcold"
HOTCOLD_VERSION = 1
_NPY_HEADER_BYTES = 128

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
