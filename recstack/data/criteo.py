"""Criteo Kaggle / Terabyte TSV: a vectorized parser, a streaming chunk reader, and the encoders.

A line is `label \\t I1..I13 \\t C1..C26` (40 fields) or, in the Kaggle test file, the same without
the label (39 fields). Any field may be empty. Label: exactly "0" or "1". Dense I: a decimal integer,
possibly negative, up to 18 digits; missing -> 0, negatives clipped to 0, then log(1 + x) as float32.
Categorical C: 1..16 hex digits (either case) -> the uint64 value, the raw key; empty -> missing.

Parsing takes a whole chunk of lines at once, with no per-line Python: the bytes as a uint8 array;
one pass finds every tab, newline and non-printable byte; field counts per line follow from the
separator positions; then the fields of every well-shaped line are decoded together, 8 characters
at a time as one uint64 word (SWAR arithmetic validates and converts all 8 digits in a few integer
operations). A line that does not fit is rejected with one reason from `REJECT_REASONS`, checked in
this order: line_too_long, binary_garbage, truncated_line / wrong_field_count, bad_label,
non_integer_dense, non_hex_categorical. The reader adds truncated_gzip. A reject never stops a run.

Line endings: LF, and CRLF (a CR right before the LF is dropped, so files saved on Windows parse the
same). Any other byte outside printable ASCII and tab (a CR elsewhere, NUL, DEL, bytes >= 0x80) makes
the line `binary_garbage`.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recstack.data.vocab import VocabIndex, encode_hash, encode_vocab
from recstack.errors import DataError

__all__ = [
    "CAT_NAMES",
    "DENSE_NAMES",
    "GzipEnded",
    "LABEL_NAME",
    "MAX_LINE_BYTES",
    "ParsedChunk",
    "REJECT_REASONS",
    "RawChunk",
    "VocabIndex",
    "detect_has_label",
    "encode_chunk",
    "encode_hash",
    "encode_vocab",
    "gzip_blocks",
    "input_blocks",
    "iter_criteo_chunks",
    "iter_raw_chunks",
    "open_input",
    "parse_chunk",
    "parse_raw_chunk",
    "plain_blocks",
]

N_DENSE = 13
N_CAT = 26
DENSE_NAMES = [f"I{i}" for i in range(1, N_DENSE + 1)]
CAT_NAMES = [f"C{i}" for i in range(1, N_CAT + 1)]
LABEL_NAME = "label"

MAX_LINE_BYTES = 64 << 10
"""Longer lines are rejected (`line_too_long`); real Criteo lines are under 1 KiB."""
MAX_DENSE_DIGITS = 18  # every 18-digit decimal fits int64
MAX_HEX_DIGITS = 16  # uint64

REJECT_REASONS: tuple[str, ...] = (
    "wrong_field_count",
    "bad_label",
    "non_integer_dense",
    "non_hex_categorical",
    "truncated_line",
    "line_too_long",
    "binary_garbage",
    "truncated_gzip",
)
"""Stable reason names; a reject's code is its index here."""
REASON_CODE = {name: code for code, name in enumerate(REJECT_REASONS)}

# SWAR ("SIMD within a register") on uint64 words of 8 ASCII bytes, first byte in the low bits
_HIGH = np.uint64(0x8080808080808080)
_ZERO_CHARS = np.uint64(0x3030303030303030)  # "00000000"


@dataclass
class ParsedChunk:
    """Kept rows of one chunk (in input order) and its rejects."""

    labels: np.ndarray | None
    """float32 [n] (0 or 1), or None for unlabeled input."""
    dense: np.ndarray
    """float32 [n, 13], log(1 + max(x, 0)); missing -> 0."""
    cat: np.ndarray
    """uint64 [n, 26] raw keys (0 where missing); columns are contiguous (Fortran order)."""
    missing: np.ndarray
    """bool [n, 26]: the field was empty."""
    lines: np.ndarray
    """int64 [n]: 1-based line number of each kept row in `file`."""
    reject_lines: np.ndarray
    """int64 [r]: line numbers of rejected lines, ascending."""
    reject_reasons: np.ndarray
    """int8 [r]: index into REJECT_REASONS."""
    file: str = ""
    text_bytes: int = 0
    """Bytes of text this chunk accounts for (uncompressed)."""
    input_bytes: int = 0
    """Bytes of the input file consumed for this chunk (compressed for gzip): progress."""
    notes: list[str] = field(default_factory=list)
    """File-level notes, e.g. a gzip stream that ended early."""

    @property
    def num_kept(self) -> int:
        return int(self.lines.size)

    @property
    def num_rejected(self) -> int:
        return int(self.reject_lines.size)

    @property
    def num_lines(self) -> int:
        return self.num_kept + self.num_rejected

    def reject_names(self) -> list[str]:
        return [REJECT_REASONS[c] for c in self.reject_reasons]


def _num_fields(has_label: bool) -> int:
    return N_DENSE + N_CAT + (1 if has_label else 0)


def _bytes_ge(x: np.ndarray, n: int) -> np.ndarray:
    """Per byte of x (every byte < 0x80): its high bit set where the byte is >= n."""
    return ((x | _HIGH) - np.uint64(n * 0x0101010101010101)) & _HIGH


def _decode_dec8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8 ASCII decimal digits per word -> (value, ok)."""
    ok = (_bytes_ge(w, 0x30) & ~_bytes_ge(w, 0x3A)) == _HIGH
    d = w & np.uint64(0x0F0F0F0F0F0F0F0F)
    d = (d * np.uint64(10) + (d >> np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)  # pairs of digits
    d = (d * np.uint64(100) + (d >> np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)  # groups of 4
    d = (d * np.uint64(10000) + (d >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
    return d, ok


def _decode_hex8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8 ASCII hex digits (either case) per word -> (value, ok)."""
    lower = w | np.uint64(0x2020202020202020)  # A-F -> a-f; digits unchanged
    digit = _bytes_ge(lower, 0x30) & ~_bytes_ge(lower, 0x3A)
    letter = _bytes_ge(lower, 0x61) & ~_bytes_ge(lower, 0x67)
    ok = (digit | letter) == _HIGH
    d = (lower & np.uint64(0x0F0F0F0F0F0F0F0F)) + ((lower >> np.uint64(6)) & np.uint64(0x0101010101010101)) * np.uint64(
        9
    )
    d = ((d << np.uint64(4)) | (d >> np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)  # nibble pairs -> bytes
    d = ((d << np.uint64(8)) | (d >> np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    d = ((d << np.uint64(16)) | (d >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
    return d, ok


# for a field with n of the word's 8 characters (they sit in the high bytes): which bits to keep,
# and "0" characters for the rest
_KEEP = np.array([(0xFFFFFFFFFFFFFFFF << (8 * (8 - n))) & 0xFFFFFFFFFFFFFFFF for n in range(9)], dtype=np.uint64)
_FILL = _ZERO_CHARS & ~_KEEP


def _field_words(words: np.ndarray, ends: np.ndarray, lens: np.ndarray, k: int) -> np.ndarray:
    """The k-th group of 8 characters counted from each field's end, as one word; the positions before
    the field's start read as "0", so shorter fields decode like zero-padded ones."""
    w = words[ends - 8 * k] if k else words[ends]
    n = np.minimum(lens - 8 * k, 8) if k else np.minimum(lens, 8)
    return (w & _KEEP[n]) | _FILL[n]


def _parse_digits(
    words: np.ndarray, ends: np.ndarray, lens: np.ndarray, decode8, scale8: int, max_digits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Decode fields of up to `max_digits` digits, 8 at a time. Returns (uint64 values, bad)."""
    shape = ends.shape
    ends, lens = ends.reshape(-1), lens.reshape(-1)
    values, ok = decode8(_field_words(words, ends, lens, 0))
    bad = ~ok | (lens > max_digits)
    for k in range(1, -(-max_digits // 8)):
        longer = np.flatnonzero(lens > 8 * k)  # rare in real data: only these pay for more words
        if longer.size == 0:
            break
        v, ok = decode8(_field_words(words, ends[longer], lens[longer], k))
        values[longer] += v * np.uint64(scale8**k)
        bad[longer] |= ~ok
    return values.reshape(shape), bad.reshape(shape)


def _parse_dense(a: np.ndarray, words: np.ndarray, ends: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log(1 + max(x, 0)) as float32 for decimal integers; empty -> 0. Returns (values, bad)."""
    negative = (lens > 0) & (a[ends - lens] == ord("-"))
    digit_lens = lens - negative
    values, bad = _parse_digits(words, ends, digit_lens, _decode_dec8, 10**8, MAX_DENSE_DIGITS)
    bad |= negative & (digit_lens == 0)  # a lone "-"
    values[negative] = 0  # clip negatives (Criteo has -1, -2 in I2)
    return np.log1p(values.astype(np.float64)).astype(np.float32), bad


def _parse_cat(words: np.ndarray, ends: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hex keys as uint64. Returns (values, missing, bad)."""
    values, bad = _parse_digits(words, ends, lens, _decode_hex8, 1 << 32, MAX_HEX_DIGITS)
    return values, lens == 0, bad


def _word_view(a: np.ndarray) -> np.ndarray:
    """words[i] = the 8 bytes a[i - 8 : i] as a little-endian uint64 (bytes before a[0] read as 0)."""
    padded = np.zeros(a.size + 8, dtype=np.uint8)
    padded[8:] = a
    return np.ndarray(shape=(a.size + 1,), dtype="<u8", buffer=padded, strides=(1,))


def _empty_chunk(has_label: bool) -> ParsedChunk:
    return ParsedChunk(
        labels=np.zeros(0, np.float32) if has_label else None,
        dense=np.zeros((0, N_DENSE), np.float32),
        cat=np.zeros((0, N_CAT), np.uint64, order="F"),
        missing=np.zeros((0, N_CAT), bool, order="F"),
        lines=np.zeros(0, np.int64),
        reject_lines=np.zeros(0, np.int64),
        reject_reasons=np.zeros(0, np.int8),
    )


@dataclass
class _Lines:
    """Where the lines and fields of a chunk are."""

    sep: np.ndarray
    """Positions of every tab and line end (an unterminated last line ends at len(a))."""
    line_sep: np.ndarray
    """Per line: the index in `sep` of its end."""
    start: np.ndarray
    """Per line: its first byte."""
    end: np.ndarray
    """Per line: the LF that ends it (len(a) for an unterminated last line)."""
    content_end: np.ndarray
    """`end`, less a CR right before the LF."""
    garbage: np.ndarray
    """Per line: holds a byte outside printable ASCII other than tab (and the CR of a CRLF)."""


def _find_lines(a: np.ndarray) -> _Lines:
    # one pass finds every byte that is not printable ASCII: tabs, LFs, and anything suspicious
    special = np.flatnonzero((a - np.uint8(32)) >= 95)  # uint8 wraps: < 32, DEL, >= 128
    kind = a[special]
    is_sep = (kind == ord("\t")) | (kind == ord("\n"))
    sep = special[is_sep]
    sep_is_nl = kind[is_sep] == ord("\n")
    if a[-1] != ord("\n"):  # the input's last line has no newline: end it at len(a)
        sep = np.append(sep, a.size)
        sep_is_nl = np.append(sep_is_nl, True)
    line_sep = np.flatnonzero(sep_is_nl)
    end = sep[line_sep]
    start = np.concatenate([[0], end[:-1] + 1])
    cr_end = (end > start) & (a[end - 1] == ord("\r"))
    content_end = end - cr_end

    garbage = np.zeros(end.size, dtype=bool)
    odd = special[~is_sep]
    if odd.size:
        line = np.searchsorted(end, odd)  # the line ending at or after the byte
        crlf = cr_end[line] & (odd == end[line] - 1)
        garbage[line[~crlf]] = True
    return _Lines(sep, line_sep, start, end, content_end, garbage)


def _line_reasons(a: np.ndarray, lines: _Lines, n_fields: int, max_line_bytes: int) -> np.ndarray:
    """Per line: the code of the first reason that rejects it from its shape alone, else -1."""
    n_lines = lines.end.size
    reason = np.full(n_lines, -1, dtype=np.int8)

    def reject(mask: np.ndarray, name: str) -> None:
        reason[mask & (reason < 0)] = REASON_CODE[name]

    reject(lines.content_end - lines.start > max_line_bytes, "line_too_long")
    reject(lines.garbage, "binary_garbage")
    wrong_count = np.diff(lines.line_sep, prepend=-1) != n_fields
    if a[-1] != ord("\n") and wrong_count[-1]:  # an input cut mid-line
        reject(np.arange(n_lines) == n_lines - 1, "truncated_line")
    reject(wrong_count, "wrong_field_count")
    return reason


_BLOCK_LINES = 4096  # decode fields this many lines at a time: temporaries stay in cache


def _parse_fields(
    a: np.ndarray, words: np.ndarray, lines: _Lines, good: np.ndarray, n_fields: int, check_label: bool = True
):
    """Decode the fields of well-shaped lines `good`. Returns (labels [n] (zeros when unlabeled),
    dense [13, n], cat [26, n], missing [26, n], reason [n]), reason -1 where every field is valid."""
    # field k of a line ends at separator line_sep - (n_fields - 1) + k; arrays are [field, line]
    field_sep = lines.line_sep[good][None, :] + np.arange(1 - n_fields, 1)[:, None]
    ends = lines.sep[field_sep]
    ends[-1] = lines.content_end[good]
    lens = np.empty_like(ends)
    lens[0] = ends[0] - lines.start[good]
    lens[1:] = ends[1:] - ends[:-1] - 1  # a field starts right after the previous field's tab

    reason = np.full(good.size, -1, dtype=np.int8)
    labels = np.zeros(good.size, dtype=np.float32)
    if n_fields == _num_fields(True):
        first = a[lines.start[good]]  # a line with 40 fields has a first byte
        if check_label:
            reason[(lens[0] != 1) | ((first != ord("0")) & (first != ord("1")))] = REASON_CODE["bad_label"]
        labels[first == ord("1")] = 1.0
    d = slice(n_fields - N_CAT - N_DENSE, n_fields - N_CAT)
    c = slice(n_fields - N_CAT, n_fields)
    dense, bad_dense = _parse_dense(a, words, ends[d], lens[d])
    cat, missing, bad_cat = _parse_cat(words, ends[c], lens[c])
    reason[bad_dense.any(0) & (reason < 0)] = REASON_CODE["non_integer_dense"]
    reason[bad_cat.any(0) & (reason < 0)] = REASON_CODE["non_hex_categorical"]
    return labels, dense, cat, missing, reason


def parse_chunk(
    data: bytes | bytearray | memoryview,
    *,
    has_label: bool = True,
    first_line: int = 1,
    file: str = "",
    max_line_bytes: int = MAX_LINE_BYTES,
    check_label: bool = True,
) -> ParsedChunk:
    """Parse complete lines (the last one may lack its newline: it is the end of the input).

    `first_line` is the line number of the chunk's first line; kept rows and rejects carry line numbers.
    `check_label=False` reads a label column without judging it (scoring ignores labels).
    """
    a = np.frombuffer(data, dtype=np.uint8)
    if a.size == 0:
        out = _empty_chunk(has_label)
        out.file = file
        return out
    n_fields = _num_fields(has_label)
    lines = _find_lines(a)
    reason = _line_reasons(a, lines, n_fields, max_line_bytes)
    words = _word_view(a)

    good = np.flatnonzero(reason < 0)
    labels = np.zeros(good.size, np.float32)
    dense = np.zeros((N_DENSE, good.size), np.float32)
    cat = np.zeros((N_CAT, good.size), np.uint64)
    missing = np.zeros((N_CAT, good.size), bool)
    for start in range(0, good.size, _BLOCK_LINES):
        rows = slice(start, start + _BLOCK_LINES)
        block = _parse_fields(a, words, lines, good[rows], n_fields, check_label)
        labels[rows], dense[:, rows], cat[:, rows], missing[:, rows], reason[good[rows]] = block

    keep = np.flatnonzero(reason[good] < 0)
    rejected = np.flatnonzero(reason >= 0)
    return ParsedChunk(
        labels=labels[keep] if has_label else None,
        dense=np.ascontiguousarray(dense.take(keep, axis=1).T),
        cat=cat.take(keep, axis=1).T,  # [n, 26] view of [26, n]: columns stay contiguous
        missing=missing.take(keep, axis=1).T,
        lines=first_line + good[keep].astype(np.int64),
        reject_lines=first_line + rejected.astype(np.int64),
        reject_reasons=reason[rejected],
        file=file,
        text_bytes=int(a.size),
    )


def detect_has_label(data: bytes, max_lines: int = 1000) -> bool | None:
    """True if most of the first lines have 40 fields, False if most have 39, None if neither."""
    head = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(head == ord("\n"))
    if nl.size > max_lines:
        head = head[: nl[max_lines - 1] + 1]
        nl = nl[:max_lines]
    if head.size == 0:
        return None
    ends = nl if head[-1] == ord("\n") else np.append(nl, head.size)
    tabs = np.flatnonzero(head == ord("\t"))
    fields = np.bincount(np.searchsorted(ends, tabs), minlength=ends.size) + 1
    labeled = int(np.count_nonzero(fields == _num_fields(True)))
    unlabeled = int(np.count_nonzero(fields == _num_fields(False)))
    if max(labeled, unlabeled) * 2 <= ends.size:
        return None
    return labeled >= unlabeled


# --------------------------------------------------------------------------------------------
# Streaming: files -> chunks of complete lines


@dataclass
class RawChunk:
    """Complete lines of one file (the last may lack its newline at the end of the file), plus the
    lines the reader rejected itself (too long to buffer, cut by a truncated gzip stream)."""

    data: bytes
    file: str
    first_line: int
    """1-based line number of the first line in `data`."""
    rejects: list[tuple[int, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    text_bytes: int = 0
    input_bytes: int = 0


GZIP_READ_BYTES = 1 << 16


class GzipEnded(Exception):
    """A gzip stream that ends before its end-of-stream marker, or is corrupt; the message says which."""


GZIP_TRUNCATED = "the file is cut short (it ends before gzip's end-of-stream marker: an incomplete download or copy?)"


def _corrupt(exc: zlib.error) -> str:
    detail = str(exc).removeprefix("Error -3 while decompressing data: ")
    if "header" in detail or "compression method" in detail:
        return f"it starts like gzip (bytes 1f 8b) but has no valid gzip header (zlib: {detail})"
    if detail == "incorrect data check":  # the CRC at a member's end: the damage lies somewhere before it
        return ("the decompressed data fails gzip's checksum (zlib: incorrect data check), so the lines before "
                "this point may be damaged too")
    return f"the compressed data is corrupt there (zlib: {detail})"


GZIP_MAGIC = b"\x1f\x8b"


def plain_blocks(fh, block_bytes: int, consumed: list[int]) -> Iterator[bytes]:
    while block := fh.read(block_bytes):
        consumed[0] += len(block)
        yield block


def gzip_blocks(fh, block_bytes: int, consumed: list[int]) -> Iterator[bytes]:
    """Decompress (possibly multi-member) gzip ourselves, so that everything decoded before a
    truncation or corruption is still delivered before `GzipEnded` is raised."""
    decoder = zlib.decompressobj(wbits=31)
    member_started = False
    pending = b""
    read_size = GZIP_READ_BYTES  # small: a corrupt piece loses what it alone would have decoded
    while True:
        if not pending:
            pending = fh.read(read_size)
            consumed[0] += len(pending)
            if not pending:
                if member_started:
                    try:
                        tail = decoder.flush()  # output zlib still holds back
                    except zlib.error as exc:
                        raise GzipEnded(_corrupt(exc)) from None
                    if tail:
                        yield tail
                    if not decoder.eof:
                        raise GzipEnded(GZIP_TRUNCATED)
                return
        member_started = True
        try:
            out = decoder.decompress(pending, block_bytes)
        except zlib.error as exc:
            raise GzipEnded(_corrupt(exc)) from None
        if out:
            yield out
        if decoder.eof:
            pending = decoder.unused_data.lstrip(b"\x00")  # gzip allows zero padding between members
            decoder = zlib.decompressobj(wbits=31)
            member_started = False
        else:
            pending = decoder.unconsumed_tail


def open_input(path: Path):
    """(the file opened for binary reading, whether it is gzip: told by its magic bytes, not its name)."""
    if not path.exists():
        raise DataError(f"input file {path} does not exist")
    if path.is_dir():
        raise DataError(f"input {path} is a directory, not a file")
    try:
        fh = open(path, "rb")
        magic = fh.read(2)
        fh.seek(0)
    except OSError as exc:
        raise DataError(f"cannot read input file {path}: {exc.strerror or exc}") from None
    return fh, magic == GZIP_MAGIC


def input_blocks(path: Path, block_bytes: int, consumed: list[int]):
    """(file handle, iterator of decoded blocks) of a plain or gzip file; `consumed[0]` counts the input
    bytes read. A damaged gzip stream raises GzipEnded after its last good block: readers keep the
    complete lines before it and note the damage."""
    fh, is_gzip = open_input(path)
    return fh, (gzip_blocks if is_gzip else plain_blocks)(fh, block_bytes, consumed)


def _count_lines(data: bytes) -> int:
    return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n")))


def _file_chunks(path: Path, chunk_bytes: int, max_line_bytes: int) -> Iterator[RawChunk]:
    consumed = [0]  # input bytes read so far, updated by the block generators
    fh, blocks = input_blocks(path, chunk_bytes, consumed)
    name = str(path)
    reported = 0  # input bytes already attributed to a yielded chunk
    line = 1
    parts: list[bytes] = []  # blocks read but not yielded yet
    size = 0
    partial = 0  # bytes after the last newline in `parts`: the unfinished line
    skipped = 0  # bytes of an overlong line being skipped (0: not skipping)

    def emit(data: bytes, rejects: list[tuple[int, str]] | None = None, notes=None, extra=0) -> RawChunk:
        nonlocal reported
        chunk = RawChunk(data, name, line, rejects or [], notes or [], len(data) + extra, consumed[0] - reported)
        reported = consumed[0]
        return chunk

    try:
        with fh:
            for block in blocks:
                if skipped:  # drop the rest of an overlong line, then resync after its newline
                    nl = block.find(b"\n")
                    if nl < 0:
                        skipped += len(block)
                        continue
                    yield emit(b"", [(line, "line_too_long")], extra=skipped + nl + 1)
                    line += 1
                    skipped = 0
                    block = block[nl + 1 :]
                if not block:
                    continue
                nl = block.rfind(b"\n")
                parts.append(block)
                size += len(block)
                partial = len(block) - nl - 1 if nl >= 0 else partial + len(block)
                if partial > max_line_bytes + 1:  # too long even if it ends in CRLF: keep what is before it
                    data = b"".join(parts)[: size - partial]
                    skipped, parts, size, partial = partial, [], 0, 0
                    if data:
                        yield emit(data)
                        line += _count_lines(data)
                elif size >= chunk_bytes and nl >= 0:
                    data = b"".join([*parts[:-1], memoryview(block)[: nl + 1]])  # one copy
                    tail = block[nl + 1 :]
                    parts, size = ([tail] if tail else []), len(tail)
                    yield emit(data)
                    line += _count_lines(data)
    except GzipEnded as exc:
        yield from _truncated_tail(emit, b"".join(parts), skipped, line, name, str(exc))
        return
    except OSError as exc:
        raise DataError(f"cannot read input file {path}: {exc.strerror or exc}") from None
    if skipped:
        yield emit(b"", [(line, "line_too_long")], extra=skipped)
    elif parts or consumed[0] > reported:
        yield emit(b"".join(parts))


def _truncated_tail(emit, buf: bytes, skipped: int, line: int, name: str, why: str) -> Iterator[RawChunk]:
    """Complete lines decoded before a gzip stream broke are kept; the partial line is a reject."""
    cut = buf.rfind(b"\n") + 1
    complete, partial = buf[:cut], buf[cut:]
    partial_line = line + _count_lines(complete)
    rejects = [(partial_line, "truncated_gzip")] if (partial or skipped) else []
    yield emit(complete, rejects, [gzip_note(name, partial_line - 1, why)], extra=len(partial) + skipped)


def gzip_note(name: str, last_line: int, why: str) -> str:
    """The note a reader records when a gzip stream broke (`why`, from GzipEnded) after `last_line`
    complete lines."""
    if last_line == 0:
        return f"{name}: gzip stream ends early, before its first line: {why}; nothing could be read"
    return f"{name}: gzip stream ends early after line {last_line}: {why}; the lines before it were read"


def iter_raw_chunks(
    paths: Iterable[str | Path], chunk_bytes: int = 8 << 20, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[RawChunk]:
    """Chunks of about `chunk_bytes` complete lines from plain or gzip files (gzip is told by its magic
    bytes), in input order; line numbers restart at 1 in each file."""
    for path in paths:
        yield from _file_chunks(Path(path), chunk_bytes, max_line_bytes)


def parse_raw_chunk(
    raw: RawChunk, has_label: bool = True, max_line_bytes: int = MAX_LINE_BYTES, check_label: bool = True
) -> ParsedChunk:
    """`parse_chunk` on a reader chunk, with the reader's own rejects and notes merged in."""
    out = parse_chunk(
        raw.data, has_label=has_label, first_line=raw.first_line, file=raw.file, max_line_bytes=max_line_bytes,
        check_label=check_label,
    )
    if raw.rejects:
        lines = np.concatenate([out.reject_lines, np.array([ln for ln, _ in raw.rejects], np.int64)])
        codes = np.concatenate([out.reject_reasons, np.array([REASON_CODE[r] for _, r in raw.rejects], np.int8)])
        order = np.argsort(lines, kind="stable")
        out.reject_lines, out.reject_reasons = lines[order], codes[order]
    out.file = raw.file
    out.text_bytes = raw.text_bytes
    out.input_bytes = raw.input_bytes
    out.notes = list(raw.notes)
    return out


def iter_criteo_chunks(
    paths: Iterable[str | Path],
    chunk_bytes: int = 8 << 20,
    has_label: bool | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    check_label: bool = True,
) -> Iterator[ParsedChunk]:
    """Parsed chunks of Criteo files, in order. `has_label=None` decides from the first lines
    (40 fields: labeled, 39: unlabeled) once for the whole input."""
    for raw in iter_raw_chunks(paths, chunk_bytes, max_line_bytes):
        if has_label is None and raw.data:
            has_label = detect_has_label(raw.data) is not False
        yield parse_raw_chunk(raw, has_label is not False, max_line_bytes, check_label)


def encode_chunk(
    chunk: ParsedChunk,
    vocabs: Mapping[str, np.ndarray | VocabIndex] | None = None,
    hash_buckets: int | None = None,
) -> dict[str, np.ndarray]:
    """Ids for each categorical column C1..C26 of a parsed chunk: through saved vocabularies (name ->
    sorted uint64 keys, as a dataset's vocab/ holds them; pass VocabIndex values, built once, when
    encoding many chunks), or by hashing. What predict and evaluate on raw files need."""
    if (vocabs is None) == (hash_buckets is None):
        raise ValueError("give exactly one of vocabs and hash_buckets")
    columns = {name: (chunk.cat[:, j], chunk.missing[:, j]) for j, name in enumerate(CAT_NAMES)}
    if vocabs is not None:
        return {name: encode_vocab(raw, missing, vocabs[name]) for name, (raw, missing) in columns.items()}
    assert hash_buckets is not None
    return {name: encode_hash(raw, missing, hash_buckets) for name, (raw, missing) in columns.items()}
