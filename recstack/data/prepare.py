"""Criteo TSV (plain or gzip) -> a binary dataset, in one streaming pass over the input.

The main process reads chunks of complete lines; a pool of worker processes parses them; results are
taken in input order, so rows are stored in input (= time) order. Vocabulary mode: each worker spills
its chunk's rows (raw uint64 keys, missing flags, dense, labels) to a temporary file in the output
directory, so that only the reject accounting travels back; after the pass, each categorical column
is counted over the training rows only (the tail split never shapes the vocabulary) and encoded, one
column per worker; then the main process writes the dataset in row order. Hash mode encodes in the
workers and writes during the pass.

Every line read is either kept or rejected with a reason: rows_read == rows_kept + rows_rejected.

The frame shared with other readers (`build_dataset`, `RejectLog`, `RowSink`, `tail_split`) lives here.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from recstack.data.criteo import (
    CAT_NAMES,
    DENSE_NAMES,
    LABEL_NAME,
    REJECT_REASONS,
    ParsedChunk,
    RawChunk,
    detect_has_label,
    iter_raw_chunks,
    parse_raw_chunk,
)
from recstack.data.store import FIRST_VOCAB_ID, SCHEMA_FILE, DatasetWriter, SparseFeature
from recstack.data.vocab import (
    HASH_BUCKETS_RANGE,
    MAX_COUNT,
    SpillChunks,
    SpillLayout,
    VocabIndex,
    count_values,
    encode_hash,
    encode_vocab,
    id_dtype,
    is_int_in,
    write_spill_chunk,
)
from recstack.errors import DataError
from recstack.progress import progress_bar, say

DEFAULT_VOCAB_MIN_COUNT = 4
"""Keep a categorical value when it occurs at least 4 times in the training rows; rarer ones share
OOV_ID. An embedding row seen 1-3 times per epoch gets almost no gradient signal and mostly memorizes
noise, while such values make up most of the distinct values of every large Criteo column, so the
threshold shrinks tables several-fold and gives rare values one well-trained shared row. Published
Criteo pipelines use thresholds from 1 to 10 (AutoInt, FuxiCTR: 10); 4 still leaves small samples
(12k rows) a useful vocabulary, where 10 would fold most of their values into OOV."""

MAX_OUTPUT_ROWS = 2**31 - 1
"""The most rows a converter that multiplies its input (sampled negatives, rounds) may be asked for. The
MovieLens and behaviour converters build each round's rows in memory (ids, labels, the sampled
negatives: tens of bytes a row, more with histories), so 2**31 rows are already near 100 GB; the largest
public inputs stay well below (ml-25m at 4 negatives x 10 rounds: 1.2e9 rows). Asking for more (1e9
negatives per positive) is a typo, refused before any allocation rather than ending in an out-of-memory kill."""

WORKERS_PER_CPU = 4
"""Parse workers allowed per CPU: more only add processes, each with two chunks in flight (16 MB+)."""

EXAMPLES_PER_REASON = 5
SPILL_DIR = ".prepare-tmp"
ENCODE_BLOCK_ROWS = 1 << 20
_MB = 1e6


# --------------------------------------------------------------------------------------------
# Rejects


class RejectLog:
    """Counts rejects by reason and keeps the first few of each; with `strict`, the first reject (or a
    file-level problem such as a truncated gzip) raises DataError instead."""

    def __init__(self, reasons: Sequence[str], strict: bool = False):
        self.reasons = tuple(reasons)
        self.strict = strict
        self.by_reason: dict[str, int] = {name: 0 for name in self.reasons}
        self.examples: dict[str, list[dict[str, Any]]] = {}
        self.notes: list[str] = []

    @property
    def rows_rejected(self) -> int:
        return sum(self.by_reason.values())

    def add(self, file: str, lines: np.ndarray, codes: np.ndarray) -> None:
        """Rejected `lines` of `file` with reason codes (indices into `reasons`), in line order."""
        if len(lines) == 0:
            return
        codes = np.asarray(codes, dtype=np.int64)
        if self.strict:
            raise DataError(
                f"{file}, line {int(lines[0])}: rejected ({self.reasons[codes[0]]})",
                hint="fix the input, or run without --strict to skip and count bad rows",
            )
        counts = np.bincount(codes, minlength=len(self.reasons))
        for code in np.flatnonzero(counts):  # a few distinct reasons, never one loop step per line
            name = self.reasons[code]
            self.by_reason[name] += int(counts[code])
            examples = self.examples.setdefault(name, [])
            room = EXAMPLES_PER_REASON - len(examples)
            for i in np.flatnonzero(codes == code)[: max(room, 0)]:
                examples.append({"file": file, "line": int(lines[i]), "reason": name})

    def note(self, message: str) -> None:
        if self.strict:
            raise DataError(message, hint="fix the input, or run without --strict to keep the rows before it")
        self.notes.append(message)

    def summary(self) -> str:
        parts = [f"{n:,} {name}" for name, n in self.by_reason.items() if n]
        return ", ".join(parts) or "no rejects"


# --------------------------------------------------------------------------------------------
# Rows -> dataset


@dataclass
class _ColumnJob:
    """Build one column's vocabulary over the train rows and encode all rows (runs in a worker)."""

    spill: SpillChunks
    column: int
    ids: Path
    num_train: int
    min_count: int


def _vocab_and_encode(job: _ColumnJob) -> np.ndarray:
    values, counts = count_values(job.spill.column(job.column, job.num_train))
    vocab = values[counts >= job.min_count]
    index = VocabIndex(vocab)
    with open(job.ids, "wb") as fh:
        for raw, missing in job.spill.column(job.column):
            encode_vocab(raw, missing, index).tofile(fh)
    return vocab


def hash_columns(cat: np.ndarray, missing: np.ndarray, buckets: int) -> np.ndarray:
    """Hashed ids [n, K] (columns contiguous) of raw keys [n, K]."""
    ids = np.empty(cat.shape, dtype=id_dtype(buckets), order="F")
    for j in range(cat.shape[1]):
        ids[:, j] = encode_hash(cat[:, j], missing[:, j], buckets)
    return ids


class RowSink:
    """Where kept rows go. Hash mode encodes them and writes through a DatasetWriter at once; vocabulary
    mode spills them (raw keys and all) to temporary chunk files, and `finish` builds the vocabularies
    over the training rows, then writes the dataset."""

    def __init__(
        self,
        out: Path,
        dense_names: list[str],
        label_names: list[str],
        cat_names: list[str],
        *,
        hash_buckets: int | None = None,
        min_count: int = 1,
    ):
        self.out = out
        self.dense_names, self.label_names, self.cat_names = dense_names, label_names, cat_names
        self.hash_buckets = hash_buckets
        self.min_count = min_count
        self.num_rows = 0
        self.writer: DatasetWriter | None = None
        self.spill: SpillChunks | None = None
        if hash_buckets is not None:
            dtype = str(id_dtype(hash_buckets))
            sparse = [SparseFeature(name, hash_buckets, 1, dtype) for name in cat_names]
            self.writer = DatasetWriter(out, dense_names, label_names, sparse)
        else:
            layout = SpillLayout(len(label_names), len(dense_names), len(cat_names))
            self.spill = SpillChunks(out / SPILL_DIR, layout)

    def append(self, dense: np.ndarray, labels: np.ndarray, cat: np.ndarray, missing: np.ndarray) -> None:
        """dense float32 [n, D], labels float32 [n, T], cat uint64 [n, K] raw keys, missing bool [n, K]."""
        if self.hash_buckets is not None:
            self.append_ids(dense, labels, hash_columns(cat, missing, self.hash_buckets))
            return
        assert self.spill is not None
        self.spill.append(labels, dense, cat, missing)
        self.num_rows += int(dense.shape[0])

    def append_ids(self, dense: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> None:
        """Hash mode: rows whose ids [n, K] are already computed (`hash_columns`, e.g. in a worker)."""
        assert self.writer is not None, "append_ids is for hash mode"
        self.writer.append(dense, labels, {name: ids[:, j] for j, name in enumerate(self.cat_names)})
        self.num_rows += int(dense.shape[0])

    def add_spilled(self, path: Path, n: int) -> None:
        """Vocabulary mode: a chunk a worker wrote to `path` (from `next_spill_path`), in input order."""
        assert self.spill is not None
        self.spill.add(path, n)
        self.num_rows += n

    def next_spill_path(self) -> Path | None:
        return None if self.spill is None else self.spill.next_path()

    def finish(self, num_train: int, pool=None, show_progress: bool = True) -> DatasetWriter:
        """Vocabulary mode: per column (in the pool when given), count rows [0, num_train) and encode every
        row; then write the dataset. Returns the writer, ready for `finish(splits, info)`."""
        if self.writer is None:
            vocabs = self._vocabularies(num_train, pool, show_progress)
            self._write(vocabs, show_progress)
        assert self.writer is not None
        return self.writer

    def _ids_path(self, name: str) -> Path:
        assert self.spill is not None
        return self.spill.dir / f"ids.{name}.bin"

    def _vocabularies(self, num_train: int, pool, show_progress: bool) -> dict[str, np.ndarray]:
        """Each column's vocabulary; its ids land beside the spilled chunks (`_ids_path`)."""
        assert self.spill is not None
        jobs = [
            _ColumnJob(self.spill, j, self._ids_path(name), num_train, self.min_count)
            for j, name in enumerate(self.cat_names)
        ]
        vocabs = {}
        with maybe_progress(show_progress, "vocabulary", len(jobs), "columns") as bar:
            results = ordered_map(_vocab_and_encode, jobs, pool, depth=len(jobs))
            for name, vocab in zip(self.cat_names, results, strict=True):
                vocabs[name] = vocab
                bar.update(1)
        return vocabs

    def _write(self, vocabs: dict[str, np.ndarray], show_progress: bool) -> None:
        assert self.spill is not None
        sizes = {name: FIRST_VOCAB_ID + len(vocabs[name]) for name in self.cat_names}
        sparse = [SparseFeature(name, sizes[name], 1, str(id_dtype(sizes[name]))) for name in self.cat_names]
        self.writer = DatasetWriter(self.out, self.dense_names, self.label_names, sparse)
        for name in self.cat_names:
            self.writer.write_vocab(name, vocabs[name])
        ids = {
            s.name: np.memmap(self._ids_path(s.name), dtype=s.dtype, mode="r", shape=(self.num_rows,)) for s in sparse
        }
        start = 0
        with maybe_progress(show_progress, "write", self.num_rows / _MB, "M rows") as bar:
            for path, n in self.spill.chunks:
                labels, dense = self.spill.layout.read_rows(path, n)
                self.writer.append(dense, labels, {name: column[start : start + n] for name, column in ids.items()})
                start += n
                bar.update(n / _MB)

    def num_embeddings(self) -> dict[str, int]:
        assert self.writer is not None
        return {s.name: s.num_embeddings for s in self.writer.sparse}

    def close(self, failed: bool) -> None:
        """Remove the spill files; after a failure, also the partial dataset files (never a schema)."""
        if self.spill is not None:
            self.spill.remove()
        if failed and self.writer is not None:
            self.writer.close_files()
            for name in ("dense.bin", "labels.bin"):
                (self.out / name).unlink(missing_ok=True)
            shutil.rmtree(self.out / "sparse", ignore_errors=True)
            shutil.rmtree(self.out / "vocab", ignore_errors=True)


class _Silent:
    def update(self, advance: float = 0, **fields: object) -> None:
        pass


@contextmanager
def maybe_progress(show: bool, description: str, total: float, unit: str):
    """A progress bar, or nothing when the caller asked for silence."""
    if not show:
        yield _Silent()
        return
    with progress_bar(description, total, unit=unit) as bar:
        yield bar


def tail_split(num_rows: int, split_tail: float) -> tuple[int, dict[str, list[int]]]:
    """(num_train, splits): `train` = the first rows, `test` = the last round(split_tail * N) rows."""
    _check_fraction(split_tail)
    num_test = int(round(split_tail * num_rows))
    num_train = num_rows - num_test
    if num_train <= 0:
        raise DataError(f"--split-tail {split_tail} leaves no training rows out of {num_rows}; "
                        f"use at most {1 - 1 / num_rows:.6g}")
    if split_tail > 0 and num_test == 0:
        raise DataError(f"--split-tail {split_tail} of {num_rows} rows gives no test rows; "
                        f"use at least {1 / num_rows:.6g}, or 0 for no test split")
    splits = {"train": [0, num_train]}
    if split_tail > 0:
        splits["test"] = [num_train, num_rows]
    return num_train, splits


def _check_fraction(split_tail: float) -> None:
    if not 0.0 <= split_tail < 1.0:
        raise DataError(f"--split-tail must be in [0, 1), got {split_tail}")


def check_output_rows(rows: int, product: str, lower: str) -> None:
    """A DataError when a converter would write more than MAX_OUTPUT_ROWS rows. `product` spells how
    the count arises (e.g. "8,934 targets x (1 + --negatives 1000000000)"), `lower` what to lower."""
    if rows > MAX_OUTPUT_ROWS:
        raise DataError(f"{product} = {rows:,} rows, over the limit of {MAX_OUTPUT_ROWS:,} rows a converter "
                        f"writes (they are built in memory); lower {lower}")


def check_inputs(inputs: str | Path | Iterable[str | Path]) -> list[Path]:
    """Existing, readable files, or a DataError naming the first that is not."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    paths = [Path(p) for p in inputs]
    if not paths:
        raise DataError("no input files given")
    for path in paths:
        if not path.exists():
            raise DataError(f"input file {path} does not exist")
        if not path.is_file():
            raise DataError(f"input {path} is not a regular file")
        if not os.access(path, os.R_OK):
            raise DataError(f"input file {path} is not readable (check its permissions)")
    return paths


def check_out(out: str | Path, overwrite: bool) -> None:
    """Refuse to prepare into a directory that already holds something, unless `overwrite` (callers
    check their inputs first: a missing input is the first thing to say)."""
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        what = "a dataset" if (out / SCHEMA_FILE).exists() else "files"
        raise DataError(f"--out {out} already holds {what}; give --overwrite to replace it, or another --out")


def _unpublish(out: Path) -> bool:
    """Remove the schema of any dataset already at `out`, so a failed run never leaves one that looks
    complete. Returns whether `out` existed."""
    existed = out.exists()
    if existed and not out.is_dir():
        raise DataError(f"output {out} exists and is not a directory")
    (out / SCHEMA_FILE).unlink(missing_ok=True)
    return existed


def reject_info(report: dict[str, Any]) -> dict[str, Any]:
    """The reject accounting as stored in a schema's `info`."""
    keys = ("rows_read", "rows_kept", "rows_rejected", "rejects_by_reason", "reject_examples", "notes")
    return {k: report[k] for k in keys}


def build_dataset(
    out: Path,
    *,
    dense_names: list[str],
    label_names: list[str],
    cat_names: list[str],
    log: RejectLog,
    stream: Callable[[RowSink, Any], tuple[int, int]],
    describe: Callable[[dict[str, Any]], dict[str, Any]],
    files: list[Path],
    hash_buckets: int | None,
    vocab_min_count: int,
    split_tail: float,
    workers: int = 1,
    show_progress: bool = True,
    splitter: Callable[[int], tuple[int, dict[str, list[int]]]] | None = None,
) -> dict[str, Any]:
    """The frame every reader shares: unpublish an old dataset at `out`; `stream(sink, pool)` feeds all
    rows into a RowSink and returns (bytes of text read, input bytes read); then split, build the
    vocabularies, write, and publish the schema with `describe(report)` as its info. After a failure
    nothing there looks complete, and temporary files are gone.

    Returns the data report: rows_read, rows_kept, rows_rejected, rejects_by_reason (every known reason,
    0 included), reject_examples (reason -> first 5 {file, line, reason}), notes (file-level problems),
    bytes_read (text bytes parsed, uncompressed), input_bytes (bytes of the input files), seconds,
    seconds_pass (the streaming pass alone), mb_per_s (bytes_read per second, end to end), out, files,
    splits, num_embeddings (feature -> table size), mode, and vocab_min_count or hash_buckets."""
    started = time.perf_counter()
    _check_fraction(split_tail)  # before any work
    existed = _unpublish(out)
    failed = True
    sink = None
    try:
        with _worker_pool(workers) as pool:
            sink = RowSink(
                out, dense_names, label_names, cat_names, hash_buckets=hash_buckets, min_count=vocab_min_count
            )
            bytes_read, input_bytes = stream(sink, pool)
            streamed = time.perf_counter()
            if sink.num_rows == 0:
                counted = {"rows_read": log.rows_rejected, "rows_kept": 0, "rows_rejected": log.rows_rejected,
                           "rejects_by_reason": dict(log.by_reason),
                           "reject_examples": {k: list(v) for k, v in log.examples.items()},
                           "notes": list(log.notes), "files": [str(f) for f in files]}
                read = log.summary() if log.rows_rejected else "the input holds no rows"
                why = "; ".join([read, *log.notes])  # a gzip broken before its first line says so
                raise DataError(f"no usable rows in {', '.join(map(str, files))} ({why})", report=counted)
            # `splitter` (rows -> (num_train, splits)): a reader that streamed its train rows first
            num_train, splits = splitter(sink.num_rows) if splitter else tail_split(sink.num_rows, split_tail)
            writer = sink.finish(num_train, pool, show_progress)
        timing = (time.perf_counter() - started, streamed - started)
        report = _data_report(log, sink, bytes_read, input_bytes, timing, out, files, splits)
        writer.finish(splits, describe(report))
        failed = False
    finally:
        if sink is not None:
            sink.close(failed)
        if failed and not existed:
            shutil.rmtree(out, ignore_errors=True)
    if show_progress:
        kept, rejected = report["rows_kept"], report["rows_rejected"]
        say(f"prepared {kept:,} rows, rejected {rejected:,} ({log.summary()}), {report['mb_per_s']:.0f} MB/s -> {out}")
    return report


def _data_report(
    log: RejectLog,
    sink: RowSink,
    bytes_read: int,
    input_bytes: int,
    timing: tuple[float, float],
    out: Path,
    files: list[Path],
    splits: dict[str, list[int]],
) -> dict[str, Any]:
    seconds, seconds_pass = timing
    if sink.hash_buckets is not None:
        mode: dict[str, Any] = {"mode": "hash", "hash_buckets": sink.hash_buckets}
    else:
        mode = {"mode": "vocab", "vocab_min_count": sink.min_count}
    return {
        "rows_read": sink.num_rows + log.rows_rejected,
        "rows_kept": sink.num_rows,
        "rows_rejected": log.rows_rejected,
        "rejects_by_reason": dict(log.by_reason),
        "reject_examples": {k: list(v) for k, v in log.examples.items()},
        "notes": list(log.notes),
        "bytes_read": bytes_read,
        "input_bytes": input_bytes,
        "seconds": round(seconds, 3),
        "seconds_pass": round(seconds_pass, 3),
        "mb_per_s": round(bytes_read / _MB / max(seconds, 1e-9), 2),
        "out": str(out),
        "files": [str(f) for f in files],
        "splits": splits,
        "num_embeddings": sink.num_embeddings(),
        **mode,
    }


# --------------------------------------------------------------------------------------------
# Parallel work, in order


def max_workers() -> int:
    return WORKERS_PER_CPU * (os.cpu_count() or 1)


def _start_method() -> str:
    # fork starts workers at once (spawn would re-import the caller, torch included, in each);
    # workers only run numpy, so threads in the parent do not matter to them
    return "fork" if "fork" in mp.get_all_start_methods() else "spawn"


@contextmanager
def _worker_pool(workers: int):
    if workers <= 1:
        yield None
        return
    with mp.get_context(_start_method()).Pool(workers) as pool:
        yield pool


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], pool, depth: int) -> Iterator[Any]:
    """fn over items, in the pool when given, results in input order, at most `depth` in flight (so a
    fast reader never runs ahead of the workers by more than that)."""
    if pool is None:
        yield from map(fn, items)
        return
    pending: deque = deque()
    for item in items:
        pending.append(pool.apply_async(fn, (item,)))
        if len(pending) >= depth:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


# --------------------------------------------------------------------------------------------
# Criteo


def prepare_criteo(
    inputs: Sequence[str | Path] | str | Path,
    out: str | Path,
    *,
    vocab_min_count: int = DEFAULT_VOCAB_MIN_COUNT,
    hash_buckets: int | None = None,
    split_tail: float = 0.0,
    strict: bool = False,
    workers: int = 2,
    chunk_bytes: int = 8 << 20,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Convert Criteo TSV files (plain or gzip, read in the order given) into a dataset at `out`.

    Dense I1..I13 -> log(1 + max(x, 0)) (missing -> 0); categorical C1..C26 -> ids: a vocabulary of
    values seen >= `vocab_min_count` times in the training rows (see DEFAULT_VOCAB_MIN_COUNT), or,
    with `hash_buckets`, hashed ids. `split_tail` > 0 holds out the last fraction of rows as `test`.
    `workers` processes parse (1: all in this process). Returns the data report; `strict` turns the
    first reject into a DataError.
    """
    paths = check_inputs(inputs)
    low, high = HASH_BUCKETS_RANGE
    if hash_buckets is not None and not is_int_in(hash_buckets, low, high):
        raise DataError(f"--hash-buckets must be an integer in [{low}, {high}] (rows of one hashed table), "
                        f"got {hash_buckets}")
    if not is_int_in(vocab_min_count, 1, MAX_COUNT):
        raise DataError(f"--vocab-min-count must be an integer >= 1, got {vocab_min_count}")
    if chunk_bytes < 1:
        raise DataError(f"chunk_bytes must be positive, got {chunk_bytes}")
    if not 1 <= workers <= max_workers():
        raise DataError(f"--workers must be in [1, {max_workers()}] ({WORKERS_PER_CPU} per CPU of this machine: "
                        f"parsing is CPU-bound, and each worker holds chunks in memory), got {workers}")
    log = RejectLog(REJECT_REASONS, strict)

    def stream(sink: RowSink, pool) -> tuple[int, int]:
        input_bytes = sum(p.stat().st_size for p in paths)
        text_bytes = 0
        started = time.perf_counter()
        with maybe_progress(show_progress, "prepare", input_bytes / _MB, "MB") as bar:
            with closing(_labeled_chunks(paths, chunk_bytes, sink, pool, max(workers, 1))) as results:
                for result in results:
                    _take_chunk(result, sink, log)
                    text_bytes += result.chunk.text_bytes
                    rate = text_bytes / _MB / max(time.perf_counter() - started, 1e-9)
                    bar.update(result.chunk.input_bytes / _MB, status=f"{rate:.0f} MB/s")
        return text_bytes, input_bytes

    return build_dataset(
        Path(out),
        dense_names=DENSE_NAMES,
        label_names=[LABEL_NAME],
        cat_names=CAT_NAMES,
        log=log,
        stream=stream,
        describe=_criteo_info,
        files=paths,
        hash_buckets=hash_buckets,
        vocab_min_count=vocab_min_count,
        split_tail=split_tail,
        workers=workers,
        show_progress=show_progress,
    )


@dataclass
class _ChunkResult:
    """What a parse worker sends back: the chunk's accounting, and its rows: dense and labels with
    hashed ids (hash mode), or only where the worker spilled them (vocabulary mode)."""

    chunk: ParsedChunk
    ids: np.ndarray | None = None
    spilled: tuple[Path, int] | None = None


def _parse_task(item: tuple[RawChunk, Path | None], hash_buckets: int | None) -> _ChunkResult:
    """Runs in a worker: parse, then encode (hash mode) or spill (vocabulary mode) there, so that little
    more than the reject accounting travels back to the main process."""
    raw, spill_path = item
    chunk = parse_raw_chunk(raw, has_label=True)
    assert chunk.labels is not None
    no_keys = {"cat": chunk.cat[:0], "missing": chunk.missing[:0]}
    if hash_buckets is not None:
        return _ChunkResult(replace(chunk, **no_keys), ids=hash_columns(chunk.cat, chunk.missing, hash_buckets))
    if chunk.num_kept == 0 or spill_path is None:
        return _ChunkResult(chunk)
    n = write_spill_chunk(spill_path, chunk.labels[:, None], chunk.dense, chunk.cat, chunk.missing)
    rows = replace(chunk, labels=chunk.labels[:0], dense=chunk.dense[:0], **no_keys)
    return _ChunkResult(rows, spilled=(spill_path, n))


def _labeled_chunks(paths: list[Path], chunk_bytes: int, sink: RowSink, pool, workers: int) -> Iterator[_ChunkResult]:
    """Parsed chunks in input order; refuses unlabeled (39-field) input."""
    raw = iter_raw_chunks(paths, chunk_bytes)
    head = []
    for chunk in raw:
        head.append(chunk)
        if chunk.data:
            if detect_has_label(chunk.data) is False:
                raise DataError(
                    f"{chunk.file} has 39 fields per line: it has no label column",
                    hint="prepare needs labeled rows; score unlabeled files with predict",
                )
            break
    items = ((chunk, sink.next_spill_path()) for chunk in chain(head, raw))
    parse = partial(_parse_task, hash_buckets=sink.hash_buckets)
    yield from ordered_map(parse, items, pool, depth=2 * workers)


def _take_chunk(result: _ChunkResult, sink: RowSink, log: RejectLog) -> None:
    chunk = result.chunk
    log.add(chunk.file, chunk.reject_lines, chunk.reject_reasons)
    for note in chunk.notes:
        log.note(note)
    if result.ids is not None:
        assert chunk.labels is not None
        sink.append_ids(chunk.dense, chunk.labels[:, None], result.ids)
    elif result.spilled is not None:
        sink.add_spilled(*result.spilled)


def _criteo_info(report: dict[str, Any]) -> dict[str, Any]:
    if report["mode"] == "hash":
        encoding = f"hashed ids {FIRST_VOCAB_ID} + splitmix64(key) mod ({report['hash_buckets']} - {FIRST_VOCAB_ID})"
    else:
        encoding = (
            f"vocabulary ids (keys seen >= {report['vocab_min_count']} times in the train split; "
            f"vocab/<C>.npy holds the key of id {FIRST_VOCAB_ID} + i)"
        )
    return {
        "source": {
            "format": "criteo-tsv",
            "files": report["files"],
            "bytes_read": report["bytes_read"],
            "input_bytes": report["input_bytes"],
        },
        "preprocessing": (
            "label 0/1; dense I1..I13 = log(1 + max(x, 0)) as float32, empty -> 0; categorical C1..C26 = "
            f"hex keys -> {encoding}; id 0 = rare or unseen, 1 = empty"
        ),
        **{k: report[k] for k in ("mode", "hash_buckets", "vocab_min_count") if k in report},
        "rejects": reject_info(report),
    }
