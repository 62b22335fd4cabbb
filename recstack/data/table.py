"""Any CTR table (CSV, TSV or Parquet) -> a binary dataset, described by a small YAML schema:

    format: csv            # csv | tsv | parquet; default: from the file's extension
    header: true           # false: columns are named by 0-based index
    delimiter: ","         # optional; default "," for csv, tab for tsv
    label: click           # or `labels: [click, purchase]` for multi-task
    dense: [price, age]
    categorical: [user_id, item_id, city]
    dense_transform: log1p # log1p (default: negatives clipped to 0, then log(1 + x)) | none
    vocab_min_count: 1     # default 1
    hash_buckets: 1000003  # optional: hashed ids instead of vocabularies

Categorical values are strings (a Parquet integer reads as its decimal text); each maps to a uint64 raw
key by a stable 64-bit hash (BLAKE2b, 8 bytes), so the vocabulary and hash encoders of `vocab.py` apply
unchanged, and a saved vocabulary can encode new rows at predict time (`encode_table_rows`).
An empty value (or a Parquet null) is missing: MISSING_ID for a categorical, 0 for a dense value.

Rows that do not fit are rejected with a reason from TABLE_REJECT_REASONS and counted; rows_read counts
records (a quoted CSV field may span lines) and always equals rows_kept + rows_rejected.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recstack.data.criteo import GzipEnded, gzip_note, input_blocks
from recstack.data.prepare import RejectLog, RowSink, build_dataset, check_inputs, maybe_progress, reject_info
from recstack.data.vocab import (
    HASH_BUCKETS_RANGE,
    MAX_COUNT,
    VocabIndex,
    encode_hash,
    encode_vocab,
    is_int_in,
    mix64,
)
from recstack.errors import ConfigError, DataError
from recstack.yamlfile import read_yaml

TABLE_REJECT_REASONS: tuple[str, ...] = (
    "wrong_field_count",
    "bad_label",
    "non_numeric_dense",
    "missing_column",
    "malformed_row",
    "truncated_gzip",
)
"""wrong_field_count: a CSV row with another number of fields than the header (or first row);
bad_label: empty or not a finite number; non_numeric_dense: not a finite number; missing_column: a
record (encode_table_rows) lacks a column the schema names; malformed_row: the CSV reader could not
read the record (bad quoting, a field over the csv module's size limit); truncated_gzip: the partial
last line of a gzip stream that broke (the lines before it are kept, and a note says where)."""
_CODE = {name: code for code, name in enumerate(TABLE_REJECT_REASONS)}

FORMATS = ("csv", "tsv", "parquet")
TRANSFORMS = ("log1p", "none")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".parquet": "parquet", ".pq": "parquet"}
_SPEC_KEYS = {
    "format", "header", "delimiter", "label", "labels", "dense", "categorical",
    "dense_transform", "vocab_min_count", "hash_buckets",
}  # fmt: skip
BATCH_ROWS = 1 << 16
READ_BYTES = 1 << 20

Column = str | int


@dataclass
class TableSpec:
    format: str
    header: bool = True
    delimiter: str | None = None
    labels: list[Column] = field(default_factory=list)
    dense: list[Column] = field(default_factory=list)
    categorical: list[Column] = field(default_factory=list)
    dense_transform: str = "log1p"
    vocab_min_count: int = 1
    hash_buckets: int | None = None
    split_key: Column | None = None
    """A column read only to split by (`--split-key`): not a feature."""

    @property
    def label_names(self) -> list[str]:
        return [_column_name(c) for c in self.labels]

    @property
    def dense_names(self) -> list[str]:
        return [_column_name(c) for c in self.dense]

    @property
    def feature_names(self) -> list[str]:
        """Sparse feature names (file-safe, unique), one per categorical column, in order."""
        names: list[str] = []
        for column in self.categorical:
            base = re.sub(r"[^A-Za-z0-9_.-]", "_", _column_name(column)).lstrip(".") or "feature"
            name, k = base, 1
            while name in names:
                k += 1
                name = f"{base}_{k}"
            names.append(name)
        return names

    def columns(self) -> list[Column]:
        """Every column the schema names, each once, in order."""
        key = [] if self.split_key is None else [self.split_key]
        return list(dict.fromkeys([*self.labels, *self.dense, *self.categorical, *key]))


def _column_name(column: Column) -> str:
    return column if isinstance(column, str) else f"col{column}"


def load_table_spec(schema: str | Path | Mapping[str, Any], input_path: str | Path | None = None) -> TableSpec:
    """Read and check a table schema (a YAML file or an already-loaded mapping); a ConfigError names the
    first key that does not fit and what it accepts."""
    where = _schema_name(schema)
    if not isinstance(schema, Mapping):
        schema = read_yaml(schema, "table schema") or {}
    if not isinstance(schema, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys (format, label, dense, categorical, ...), "
                          f"got a {type(schema).__name__}")
    unknown = sorted(set(map(str, schema)) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_SPEC_KEYS))})"
        )
    if "label" in schema and "labels" in schema:
        raise ConfigError(f"{where}: give either `label` or `labels`, not both")
    key = _KeyReader(schema, where)
    header = key.get("header", True, lambda v: isinstance(v, bool), "true or false")
    fmt = key.get("format", None, lambda v: v is None or _lower(v) in FORMATS, f"one of {', '.join(FORMATS)}")
    spec = TableSpec(
        format=_lower(fmt) or _format_from_path(input_path, where),
        header=header,
        delimiter=key.get("delimiter", None, _is_delimiter, "one character other than a quote or a line break"),
        labels=_column_list(schema.get("labels", schema.get("label", [])), header, where,
                            "labels" if "labels" in schema else "label"),
        dense=_column_list(schema.get("dense", []), header, where, "dense"),
        categorical=_column_list(schema.get("categorical", []), header, where, "categorical"),
        dense_transform=_lower(key.get("dense_transform", "log1p", lambda v: _lower(v) in TRANSFORMS, "log1p or none")),
        vocab_min_count=key.get("vocab_min_count", 1, lambda v: is_int_in(v, 1, MAX_COUNT), "an integer >= 1"),
        hash_buckets=key.get("hash_buckets", None, lambda v: v is None or is_int_in(v, *HASH_BUCKETS_RANGE),
                             "an integer in [{}, {}] (rows of one hashed table)".format(*HASH_BUCKETS_RANGE)),
    )
    _check_spec(spec, where)
    return spec


def _schema_name(schema: str | Path | Mapping[str, Any]) -> str:
    return "table schema" if isinstance(schema, Mapping) else str(schema)


@dataclass
class _KeyReader:
    """Typed values of a schema mapping: a value that fails its check is a ConfigError naming the key."""

    schema: Mapping[str, Any]
    where: str

    def get(self, key: str, default: Any, ok, accepts: str) -> Any:
        value = self.schema.get(key, default)
        if not ok(value):
            raise ConfigError(f"{self.where}: `{key}` must be {accepts}, got {value!r}")
        return value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _is_delimiter(value: Any) -> bool:
    return value is None or (isinstance(value, str) and len(value) == 1 and value not in '"\r\n')


def _format_from_path(path: str | Path | None, where: str) -> str:
    if path is not None:
        suffixes = [s.lower() for s in Path(path).suffixes if s.lower() != ".gz"]
        if suffixes and suffixes[-1] in _EXTENSIONS:
            return _EXTENSIONS[suffixes[-1]]
    raise ConfigError(f"{where}: set `format` (one of {', '.join(FORMATS)}); it cannot be told from the file name")


def _column_list(value: Any, header: bool, where: str, key: str) -> list[Column]:
    items = value if isinstance(value, list) else [value]
    out: list[Column] = []
    for item in items:
        if header and isinstance(item, str):
            out.append(item)
        elif not header and is_int_in(item, 0, MAX_COUNT):
            out.append(item)
        else:
            expected = "column names" if header else "0-based column indices (the table has no header)"
            raise ConfigError(f"{where}: `{key}` must list {expected}, got {item!r}")
    repeated = sorted({str(c) for c in out if out.count(c) > 1})
    if repeated:
        raise ConfigError(f"{where}: `{key}` names {', '.join(repeated)} more than once; name each column once")
    return out


def _check_spec(spec: TableSpec, where: str) -> None:
    if not spec.dense and not spec.categorical:
        raise ConfigError(f"{where}: name at least one `dense` or `categorical` column")
    leaked = [c for c in spec.labels if c in spec.dense or c in spec.categorical]
    if leaked:
        raise ConfigError(f"{where}: label column(s) {', '.join(map(str, leaked))} also listed as features; "
                          "a model given its label as input learns nothing useful")
    both = [c for c in spec.dense if c in spec.categorical]
    if both:
        raise ConfigError(f"{where}: column(s) {', '.join(map(str, both))} listed both as dense and as categorical; "
                          "a feature is one or the other (one name per model input): list each column once")
    if spec.format == "parquet" and not spec.header:
        raise ConfigError(f"{where}: a Parquet file always has column names; remove `header: false`")


# --------------------------------------------------------------------------------------------
# Values -> arrays


def _as_objects(values: Sequence[Any]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def _empty_mask(arr: np.ndarray) -> np.ndarray:
    return np.equal(arr, None) | np.equal(arr, "")


def _to_float(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 values, missing, bad): empty/None is missing (value 0); bad = not a finite number."""
    arr = _as_objects(values)
    missing = _empty_mask(arr)
    arr[missing] = 0.0
    try:
        out = arr.astype(np.float64)  # float() on every value: fast when all parse
    except (ValueError, TypeError):
        out = np.array([_float_or_nan(v) for v in arr], dtype=np.float64)
    bad = ~np.isfinite(out)
    out[bad] = 0.0
    return out, missing, bad


def _float_or_nan(value: Any) -> float:
    try:
        return float(value)
    except (ValueError, TypeError):
        return float("nan")


def hash_keys(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 raw keys, missing) for categorical values: BLAKE2b-64 of each value's text, computed
    once per distinct value."""
    arr = _as_objects(values)
    missing = _empty_mask(arr)
    arr[missing] = ""
    text = arr.astype(str)
    distinct, inverse = np.unique(text, return_inverse=True)
    digests = b"".join(
        hashlib.blake2b(s.encode("utf-8", "surrogateescape"), digest_size=8).digest() for s in distinct.tolist()
    )
    keys = np.frombuffer(digests, dtype="<u8").astype(np.uint64)[inverse.reshape(-1)]
    keys[missing] = 0
    return keys, missing


@dataclass
class ParsedTable:
    """Kept rows of one batch and the rejects, like criteo.ParsedChunk."""

    labels: np.ndarray | None
    """float32 [n, T], or None when labels were not asked for."""
    dense: np.ndarray
    """float32 [n, D], transformed."""
    cat: np.ndarray
    """uint64 [n, K] raw keys."""
    missing: np.ndarray
    """bool [n, K]."""
    kept: np.ndarray
    """int64 [n]: index of each kept row among the batch's rows."""
    lines: np.ndarray
    """int64 [n]: line (CSV) or row (Parquet) number of each kept row, 1-based."""
    reject_lines: np.ndarray
    reject_reasons: np.ndarray
    """int8 codes into TABLE_REJECT_REASONS."""
    file: str = ""
    input_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    """File-level notes, e.g. a gzip stream that broke (the rows before it are kept)."""
    split_keys: np.ndarray | None = None
    """uint64 [n]: the hashed value of the spec's split_key column, when it has one."""


def parse_columns(
    columns: Mapping[Column, Sequence[Any]],
    num_rows: int,
    spec: TableSpec,
    *,
    with_labels: bool = True,
    absent: np.ndarray | None = None,
) -> tuple[ParsedTable, np.ndarray]:
    """Convert one batch of column values. `absent` [n, columns] marks values a record did not have
    (missing_column). Returns (kept rows, reason code per input row, -1 for kept)."""
    reason = np.full(num_rows, -1, dtype=np.int8)
    if absent is not None:
        needed = [i for i, c in enumerate(spec.columns()) if with_labels or c not in spec.labels]
        reason[absent[:, needed].any(1)] = _CODE["missing_column"]

    def reject(mask: np.ndarray, name: str) -> None:
        reason[mask & (reason < 0)] = _CODE[name]

    labels = None
    if with_labels:
        labels = np.zeros((num_rows, len(spec.labels)), np.float32)
        for j, column in enumerate(spec.labels):
            values, missing, bad = _to_float(columns[column])
            # click labels: 0 or 1 (the loss and the metrics are binary)
            reject(missing | bad | ((values != 0) & (values != 1)), "bad_label")
            labels[:, j] = values
    dense = np.zeros((num_rows, len(spec.dense)), np.float32)
    for j, column in enumerate(spec.dense):
        values, _, bad = _to_float(columns[column])
        reject(bad, "non_numeric_dense")
        if spec.dense_transform == "log1p":
            values = np.log1p(np.maximum(values, 0.0))
        dense[:, j] = values
    cat = np.zeros((num_rows, len(spec.categorical)), np.uint64, order="F")
    missing_cat = np.zeros((num_rows, len(spec.categorical)), bool, order="F")
    for j, column in enumerate(spec.categorical):
        cat[:, j], missing_cat[:, j] = hash_keys(columns[column])
    kept = np.flatnonzero(reason < 0)
    split_keys = None if spec.split_key is None else hash_keys(columns[spec.split_key])[0][kept]
    parsed = ParsedTable(
        labels=None if labels is None else labels[kept],
        dense=dense[kept],
        cat=cat[kept],
        missing=missing_cat[kept],
        kept=kept,
        lines=kept.astype(np.int64),
        reject_lines=np.zeros(0, np.int64),
        reject_reasons=np.zeros(0, np.int8),
        split_keys=split_keys,
    )
    return parsed, reason


# --------------------------------------------------------------------------------------------
# Files -> batches of columns


@dataclass
class _Batch:
    columns: dict[Column, list[Any]]
    lines: list[int]
    rejects: list[tuple[int, str]]
    input_bytes: int
    notes: list[str] = field(default_factory=list)


def _resolve(spec: TableSpec, names: list[str] | None, width: int, path: Path) -> dict[Column, int]:
    """Column -> field index in each row; a column the file lacks is a DataError."""
    where: dict[Column, int] = {}
    for column in spec.columns():
        if isinstance(column, int):
            if column >= width:
                raise DataError(f"{path}: column index {column} is out of range (rows have {width} fields)")
            where[column] = column
        elif names is None or column not in names:
            shown = ", ".join(names[:20]) if names else "none"
            hint = "the header reads as one field: check `format` or `delimiter`" if width == 1 else None
            raise DataError(f"{path}: has no column {column!r} (columns: {shown})", hint=hint)
        else:
            where[column] = names.index(column)
    return where


class _CompleteLines(io.RawIOBase):
    """The bytes of a plain or gzip file (read by criteo's `input_blocks`) as a stream that ends cleanly
    when a gzip stream breaks: the bytes after the last newline before the damage are dropped (the
    partial line; `dropped` counts them) and `broken` says what went wrong, so the CSV reader sees the
    complete lines before the damage and then the end of the file."""

    def __init__(self, path: Path):
        self.consumed = [0]  # input bytes read (compressed for gzip), for progress
        self.fh, self._blocks = input_blocks(path, READ_BYTES, self.consumed)
        self._ready = memoryview(b"")  # complete lines not delivered yet
        self._tail: list[bytes] = []  # bytes after the last newline seen: held back until it arrives
        self.broken: str | None = None
        self.dropped = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._ready and self._blocks is not None:
            self._next_block()
        n = min(len(buffer), len(self._ready))
        buffer[:n] = self._ready[:n]
        self._ready = self._ready[n:]
        return n

    def _next_block(self) -> None:
        assert self._blocks is not None
        try:
            block = next(self._blocks)
        except StopIteration:  # the end of the file: its last line needs no newline
            self._ready, self._tail, self._blocks = memoryview(b"".join(self._tail)), [], None
            return
        except GzipEnded as exc:
            self.broken, self.dropped = str(exc), sum(map(len, self._tail))
            self._tail, self._blocks = [], None
            return
        cut = block.rfind(b"\n") + 1
        if cut == 0:
            self._tail.append(block)
            return
        self._ready = memoryview(b"".join([*self._tail, block[:cut]]))
        self._tail = [block[cut:]]

    def close(self) -> None:
        self.fh.close()
        super().close()


def _open_text(path: Path) -> tuple[_CompleteLines, io.TextIOWrapper]:
    raw = _CompleteLines(path)
    return raw, io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8", errors="surrogateescape", newline="")


def _csv_batches(path: Path, spec: TableSpec, batch_rows: int) -> Iterator[_Batch]:
    delimiter = spec.delimiter or ("\t" if spec.format == "tsv" else ",")
    raw, text = _open_text(path)
    with raw, text:
        # TSV has no quoting convention: a quote character is data there
        quoting = csv.QUOTE_NONE if spec.format == "tsv" else csv.QUOTE_MINIMAL
        reader = csv.reader(text, delimiter=delimiter, quoting=quoting, strict=True)
        first = _next_row(reader)
        if first is None and raw.broken:
            raise DataError(gzip_note(str(path), 0, raw.broken))
        if first is None or isinstance(first, csv.Error):
            raise DataError(f"{path}: cannot read a first row ({first or 'the file is empty'})")
        if spec.header and not _is_utf8(first):
            raise DataError(f"{path}: its header line is not UTF-8 text; is it a {spec.format.upper()} file?")
        names = [first[0].lstrip("\ufeff"), *first[1:]] if spec.header else None
        where = _resolve(spec, names, len(first), path)
        width = len(first)
        pending: list[list[str]] = [] if spec.header else [first]
        lines: list[int] = [] if spec.header else [reader.line_num]
        rejects: list[tuple[int, str]] = []
        position = 0
        while True:
            row = _next_row(reader)
            if row is None:
                break
            if isinstance(row, csv.Error):
                rejects.append((reader.line_num, "malformed_row"))
            elif len(row) != width:
                rejects.append((reader.line_num, "wrong_field_count"))
            else:
                pending.append(row)
                lines.append(reader.line_num)
            if len(pending) + len(rejects) >= batch_rows:
                yield _make_batch(pending, lines, rejects, where, raw.consumed[0] - position)
                position = raw.consumed[0]
                pending, lines, rejects = [], [], []
        notes = []
        if raw.broken:
            notes.append(gzip_note(str(path), reader.line_num, raw.broken))
            if raw.dropped:
                rejects.append((reader.line_num + 1, "truncated_gzip"))
        yield _make_batch(pending, lines, rejects, where, raw.consumed[0] - position, notes)


def _is_utf8(fields: list[str]) -> bool:
    """Whether text read with errors="surrogateescape" came from valid UTF-8 (no escaped bytes)."""
    try:
        "".join(fields).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _next_row(reader) -> list[str] | csv.Error | None:
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as exc:
        return exc


def _make_batch(rows: list[list[str]], lines: list[int], rejects, where: dict[Column, int], input_bytes: int,
                notes: list[str] | None = None) -> _Batch:
    columns = {column: [row[i] for row in rows] for column, i in where.items()}
    return _Batch(columns, lines, rejects, input_bytes, notes or [])


def _parquet_batches(path: Path, spec: TableSpec, batch_rows: int) -> Iterator[_Batch]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet needs pyarrow", hint="pip install 'recstack[parquet]'") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types for damaged files
        raise DataError(f"cannot read Parquet file {path}: {exc}") from None
    names = list(pf.schema_arrow.names)
    where = _resolve(spec, names, len(names), path)
    total_rows = max(pf.metadata.num_rows, 1)
    size = path.stat().st_size
    row = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=sorted({names[i] for i in where.values()})):
        columns = {column: batch.column(names[i]).to_pylist() for column, i in where.items()}
        n = batch.num_rows
        yield _Batch(columns, list(range(row + 1, row + n + 1)), [], int(size * n / total_rows))
        row += n


def iter_table_chunks(
    path: str | Path,
    spec: TableSpec,
    *,
    with_labels: bool = True,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[ParsedTable]:
    """Parsed batches of a table file, in order, each with its rejects (by line or row number)."""
    path = Path(path)
    batches = (
        _parquet_batches(path, spec, batch_rows) if spec.format == "parquet" else _csv_batches(path, spec, batch_rows)
    )
    for batch in batches:
        parsed, reason = parse_columns(batch.columns, len(batch.lines), spec, with_labels=with_labels)
        lines = np.asarray(batch.lines, dtype=np.int64)
        rejected = np.flatnonzero(reason >= 0)
        reject_lines = np.concatenate([lines[rejected], np.array([ln for ln, _ in batch.rejects], np.int64)])
        reject_codes = np.concatenate([reason[rejected], np.array([_CODE[r] for _, r in batch.rejects], np.int8)])
        order = np.argsort(reject_lines, kind="stable")
        parsed.lines = lines[parsed.kept]
        parsed.reject_lines, parsed.reject_reasons = reject_lines[order], reject_codes[order]
        parsed.file = str(path)
        parsed.input_bytes = batch.input_bytes
        parsed.notes = batch.notes
        yield parsed


# --------------------------------------------------------------------------------------------
# Predict: raw records through a saved vocabulary


@dataclass
class EncodedRows:
    dense: np.ndarray
    """float32 [n, D] for the kept records."""
    ids: dict[str, np.ndarray]
    """sparse feature name -> ids [n]."""
    labels: np.ndarray | None
    kept: np.ndarray
    """Index of each kept record in the input."""
    rejected: np.ndarray
    reasons: list[str]
    """Reject reason of each rejected record."""


def encode_table_rows(
    records: Sequence[Mapping[Column, Any]],
    spec: TableSpec,
    *,
    vocabs: Mapping[str, np.ndarray | VocabIndex] | None = None,
    hash_buckets: int | None = None,
    with_labels: bool = False,
) -> EncodedRows:
    """Encode records (column -> raw value, e.g. parsed JSON) the way `prepare_table` encoded its rows:
    through saved vocabularies (feature name -> sorted uint64 keys, `Dataset.vocab(name)`), or hashed.
    Records that do not fit are reported (rejected, reasons), never raised."""
    columns_needed = spec.columns()
    absent = np.array([[c not in r for c in columns_needed] for r in records], dtype=bool).reshape(len(records), -1)
    columns = {c: [r.get(c) for r in records] for c in columns_needed}
    parsed, reason = parse_columns(columns, len(records), spec, with_labels=with_labels, absent=absent)
    ids = encode_parsed(parsed, spec, vocabs=vocabs, hash_buckets=hash_buckets)
    rejected = np.flatnonzero(reason >= 0)
    return EncodedRows(
        dense=parsed.dense,
        ids=ids,
        labels=parsed.labels,
        kept=parsed.kept,
        rejected=rejected,
        reasons=[TABLE_REJECT_REASONS[c] for c in reason[rejected]],
    )


def encode_parsed(
    parsed: ParsedTable,
    spec: TableSpec,
    *,
    vocabs: Mapping[str, np.ndarray | VocabIndex] | None = None,
    hash_buckets: int | None = None,
) -> dict[str, np.ndarray]:
    """Ids per sparse feature for a parsed batch (from `iter_table_chunks` or `parse_columns`)."""
    if (vocabs is None) == (hash_buckets is None):
        raise ValueError("give exactly one of vocabs and hash_buckets")
    columns = {name: (parsed.cat[:, j], parsed.missing[:, j]) for j, name in enumerate(spec.feature_names)}
    if vocabs is not None:
        return {name: encode_vocab(raw, missing, vocabs[name]) for name, (raw, missing) in columns.items()}
    assert hash_buckets is not None
    return {name: encode_hash(raw, missing, hash_buckets) for name, (raw, missing) in columns.items()}


# --------------------------------------------------------------------------------------------


def held_out_rows(chunk: ParsedTable, fraction: float, seed: int) -> np.ndarray:
    """bool [n]: which kept rows of a chunk go to the test split of a seeded random split: by row (its
    line or row number) or, with a split key, by the key's value (all rows of one key on one side).
    A row's side depends only on (seed, row or key), so two passes over a file agree."""
    value = chunk.lines.astype(np.uint64) if chunk.split_keys is None else chunk.split_keys
    u = mix64(value ^ mix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF)))
    return (u >> np.uint64(11)).astype(np.float64) * 2.0**-53 < fraction


def _rows(chunk: ParsedTable, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    assert chunk.labels is not None
    return chunk.dense[mask], chunk.labels[mask], chunk.cat[mask], chunk.missing[mask]


def prepare_table(
    input: str | Path,
    schema_yaml: str | Path | Mapping[str, Any],
    out: str | Path,
    *,
    strict: bool = False,
    split_tail: float = 0.0,
    split_random: float = 0.0,
    split_key: str | int | None = None,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Convert one CSV/TSV/Parquet table into a dataset at `out`; returns the data report (the same
    keys as `prepare_criteo`).

    Splits: `split_tail` F keeps the last fraction F of the rows as `test` (out of time, for a file in
    time order); `split_random` F sends each row to `test` with probability F, seeded by `seed`, or,
    with `split_key` (a column: a user, a day), each value of that column, so that all rows of one key
    land in one split. A random split reads the file twice (train rows, then test rows: a split is a
    contiguous range of rows). Without either, the only split is `train`."""
    paths = check_inputs(input)
    if len(paths) != 1:
        raise DataError(f"prepare_table reads one table file, got {len(paths)}")
    path = paths[0]
    spec = load_table_spec(schema_yaml, path)
    if not spec.labels:
        raise ConfigError(f"{_schema_name(schema_yaml)}: names no `label` (or `labels`) column; prepare needs one")
    if split_random and split_tail:
        raise DataError("give either --split-tail (the last rows) or --split-random (seeded rows or keys), not both")
    if not 0.0 <= split_random < 1.0:
        raise DataError(f"--split-random must be in [0, 1), got {split_random}")
    if split_key is not None:
        if not split_random:
            raise DataError("--split-key needs --split-random F: the fraction of the key's values held out as test")
        if not spec.header and isinstance(split_key, str):
            if not split_key.isdigit():
                raise DataError(f"--split-key {split_key!r}: a table without a header names columns by index (0, 1, ...)")
            split_key = int(split_key)
        spec.split_key = split_key
    log = RejectLog(TABLE_REJECT_REASONS, strict)
    num_test = [0]

    def stream(sink: RowSink, pool) -> tuple[int, int]:
        input_bytes = path.stat().st_size
        passes = (None,) if not split_random else (False, True)  # train rows, then test rows
        with maybe_progress(show_progress, "prepare", len(passes) * input_bytes / 1e6, "MB") as bar:
            for held_out in passes:
                for chunk in iter_table_chunks(path, spec):
                    if held_out is not True:  # rejects and notes once
                        log.add(chunk.file, chunk.reject_lines, chunk.reject_reasons)
                        for note in chunk.notes:
                            log.note(note)
                    assert chunk.labels is not None
                    if held_out is None:
                        sink.append(chunk.dense, chunk.labels, chunk.cat, chunk.missing)
                    else:
                        test = held_out_rows(chunk, split_random, seed)
                        sink.append(*_rows(chunk, test if held_out else ~test))
                        num_test[0] += int(test.sum()) if held_out else 0
                    bar.update(chunk.input_bytes / 1e6)
        return input_bytes, input_bytes

    def random_split(num_rows: int) -> tuple[int, dict[str, list[int]]]:
        num_train = num_rows - num_test[0]
        by = f"by --split-key {split_key}" if split_key is not None else "by row"
        if num_test[0] == 0 or num_train == 0:
            side = "test" if num_test[0] == 0 else "training"
            raise DataError(f"--split-random {split_random} {by} (seed {seed}) leaves no {side} rows out of {num_rows}"
                            + ("; the key has too few distinct values for this fraction" if split_key is not None else ""))
        return num_train, {"train": [0, num_train], "test": [num_train, num_rows]}

    def describe(report: dict[str, Any]) -> dict[str, Any]:
        info = _schema_info(report, spec)
        if split_random:
            info["split"] = {"kind": "random", "fraction": split_random, "seed": seed,
                             "key": None if split_key is None else str(split_key)}
        else:
            info["split"] = {"kind": "tail", "fraction": split_tail}
        return info

    return build_dataset(
        Path(out),
        dense_names=spec.dense_names,
        label_names=spec.label_names,
        cat_names=spec.feature_names,
        log=log,
        stream=stream,
        describe=describe,
        files=[path],
        hash_buckets=spec.hash_buckets,
        vocab_min_count=spec.vocab_min_count,
        split_tail=split_tail,
        show_progress=show_progress,
        splitter=random_split if split_random else None,
    )


def _schema_info(report: dict[str, Any], spec: TableSpec) -> dict[str, Any]:
    mode = {k: report[k] for k in ("mode", "hash_buckets", "vocab_min_count") if k in report}
    transform = "log(1 + max(x, 0))" if spec.dense_transform == "log1p" else "as is"
    return {
        "source": {"format": spec.format, "files": report["files"], "bytes_read": report["bytes_read"]},
        "table_schema": {
            "format": spec.format,
            "header": spec.header,
            "delimiter": spec.delimiter,
            "labels": spec.labels,
            "dense": spec.dense,
            "categorical": spec.categorical,
            "features": spec.feature_names,
            "dense_transform": spec.dense_transform,
        },
        "preprocessing": (
            f"dense = {transform} as float32, empty -> 0; categorical = BLAKE2b-64 of the value's text -> "
            + (
                "hashed ids"
                if mode["mode"] == "hash"
                else f"vocabulary ids (count >= {spec.vocab_min_count} in the train split)"
            )
            + "; 0 = rare or unseen, 1 = empty"
        ),
        **mode,
        "rejects": reject_info(report),
    }
