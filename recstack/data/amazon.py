"""Amazon Electronics in the DIN format -> a behaviour dataset; and the behaviour-dataset layout that
the Taobao converter writes too, so DIN and DIEN read either unchanged.

Input (the files DIN's `build_dataset.py` writes, e.g. ../shared/data/amazon-electronics-din/):

    train_set*.csv   user,"[hist items]",target_item,label        (label 0 or 1)
    test_set*.csv    user,"[hist items]","(positive, negative)"   -> two rows: label 1, then label 0
    cate_list.csv    one category id per line: line i holds item i's category

Output features (all ids int32): `user` (pooled; a vocabulary over the train split: users with fewer
than `user_min_count` train rows share OOV_ID), `target_item`, `target_cate` (pooled), `hist_item`
and `hist_cate` (behaviour sequences, oldest first, on the tables of target_item and target_cate).
Items keep their ids (the DIN files number them 0..N-1); every category is looked up in cate_list.
Splits: `train` (the train file, in order), `test` (the test file's doubled rows).

Lines are parsed a chunk at a time with numpy, with no per-line Python (`parse_lines`): every byte is
classified, digit and letter runs become number and word tokens, and each line's token sequence is
compared with the row template at once. A line that does not fit is rejected with a reason from
AMAZON_REJECT_REASONS and counted; rows_read == rows_kept + rows_rejected (lines of both files).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recstack import argtypes
from recstack.errors import DataError

LINE_REJECT_REASONS: tuple[str, ...] = (
    "empty_line", "bad_character", "malformed_line", "number_too_long", "line_too_long",
)
"""What `parse_lines` rejects: a blank line; a byte outside digits, letters, spaces, quotes and the
template's punctuation; tokens that do not follow the template (a missing field or bracket, a
non-number where a number belongs); a number of more than 18 digits; a line of more than
MAX_LINE_BYTES."""
AMAZON_REJECT_REASONS: tuple[str, ...] = (*LINE_REJECT_REASONS, "bad_label", "unknown_item")
"""bad_label: not 0 or 1; unknown_item: an item id beyond cate_list (no category to join)."""

DEFAULT_USER_MIN_COUNT = 2
"""Users with fewer train rows share OOV_ID: a user seen once gets one gradient step and mostly noise
(in the mini sample 95% of the train users are seen once, and 95% of the test users never)."""
CHUNK_BYTES = 16 << 20
MAX_LINE_BYTES = 1 << 20
"""Longer lines are rejected (`line_too_long`) and only their first MAX_LINE_BYTES + 1 bytes are held:
DIN and UserBehavior lines are under 10 KB, and parsing costs about 35 bytes of memory per byte of a
chunk, so a file without newlines (binary data) must not be parsed as one giant line."""
MAX_DIGITS = 18
MAX_CATEGORY_ID = int(np.iinfo(np.int32).max) - 1
"""Category ids are kept as given: stored as int32, they index a table of max id + 1 rows."""
FEATURES = ("user", "target_item", "target_cate", "hist_item", "hist_cate")
_SKIPPED = b' "\r\n'
_PUNCTUATION = b",[]()"
_NUMBER, _WORD = ord("D"), ord("W")


# --------------------------------------------------------------------------------------------
# Lines -> tokens -> fields


@dataclass
class ParsedLines:
    """The lines of one file that fit a row template, and the rejects."""

    fields: np.ndarray
    """int64 [n, K]: the template's fixed number and word fields of every kept line, in template order
    (a word is its first 7 bytes packed little-endian, see `word_code`; longer words read as -1)."""
    list_values: np.ndarray
    """int64: the numbers of every kept line's list field, concatenated (empty without one)."""
    list_lengths: np.ndarray
    """int64 [n]: numbers in each kept line's list."""
    lines: np.ndarray
    """int64 [n]: 1-based line numbers of the kept lines."""
    reject_lines: np.ndarray
    reject_codes: np.ndarray
    """Index into LINE_REJECT_REASONS of each rejected line."""
    text_bytes: int = 0

    @property
    def num_lines(self) -> int:
        return int(self.lines.size + self.reject_lines.size)

    def take(self, keep: np.ndarray) -> ParsedLines:
        """The kept lines where `keep` (bool [n]) is True; the others are dropped (the caller counts
        them: num_lines no longer does)."""
        in_list = np.repeat(keep, self.list_lengths)
        return ParsedLines(self.fields[keep], self.list_values[in_list], self.list_lengths[keep], self.lines[keep],
                           self.reject_lines, self.reject_codes, self.text_bytes)


def word_code(word: str) -> int:
    """The code `parse_lines` gives a word field."""
    raw = word.encode()
    return int.from_bytes(raw, "little") if len(raw) <= 7 else -1


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of True in a bool array (ends exclusive)."""
    edges = np.diff(mask.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _number_values(a: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Decimal value of every digit run (runs longer than MAX_DIGITS give garbage; callers reject them)."""
    if starts.size == 0:
        return np.zeros(0, np.int64)
    lengths = ends - starts
    run = np.repeat(np.arange(starts.size), lengths)
    position = np.arange(run.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    exponent = np.minimum(lengths[run] - 1 - position, MAX_DIGITS)
    digits = (a[np.repeat(starts, lengths) + position] - ord("0")).astype(np.int64)
    return np.add.reduceat(digits * (10 ** np.arange(MAX_DIGITS + 1, dtype=np.int64))[exponent],
                           np.cumsum(lengths) - lengths)


def _word_values(a: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    lengths = ends - starts
    code = np.zeros(starts.size, np.int64)
    for k in range(7):
        has = lengths > k
        code[has] |= a[starts[has] + k].astype(np.int64) << (8 * k)
    code[lengths > 7] = -1
    return code


def template_width(template: str) -> int:
    """Fixed number and word fields of a template: the columns of ParsedLines.fields (even with no lines)."""
    return template.count("D") + template.count("W")


def parse_lines(data: bytes, template: str, first_line: int = 1, max_line_bytes: int = MAX_LINE_BYTES) -> ParsedLines:
    """Parse complete lines against a template of tokens: `D` a number, `W` a word, punctuation
    `,[]()` itself, and at most one `L`: a list of numbers separated by commas (possibly empty).
    Spaces and double quotes are ignored (CSV quoting), so `1,"[2, 3]",4` fits `D,[L],D`."""
    a = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(a == ord("\n"))
    num_lines = newlines.size + (1 if a.size and a[-1] != ord("\n") else 0)
    digit = (a >= ord("0")) & (a <= ord("9"))
    lower = a | 0x20
    letter = (lower >= ord("a")) & (lower <= ord("z"))
    punctuation = np.isin(a, np.frombuffer(_PUNCTUATION, np.uint8))
    other = ~(digit | letter | punctuation | np.isin(a, np.frombuffer(_SKIPPED, np.uint8)))

    # tokens: a number or a word (a run of digits or letters, at its first byte), or a punctuation byte
    number_starts, number_ends = _runs(digit)
    word_starts, word_ends = _runs(letter)
    token_pos = np.sort(np.concatenate([number_starts, word_starts, np.flatnonzero(punctuation)]))
    token_line = np.searchsorted(newlines, token_pos)
    token_kind = a[token_pos].copy()
    token_value = np.zeros(token_pos.size, np.int64)
    too_long = np.zeros(token_pos.size, bool)
    numbers, words = np.searchsorted(token_pos, number_starts), np.searchsorted(token_pos, word_starts)
    token_kind[numbers], token_kind[words] = _NUMBER, _WORD
    token_value[numbers] = _number_values(a, number_starts, number_ends)
    token_value[words] = _word_values(a, word_starts, word_ends)
    too_long[numbers] = number_ends - number_starts > MAX_DIGITS

    tokens_per_line = np.bincount(token_line, minlength=num_lines)
    line_first_token = np.cumsum(tokens_per_line) - tokens_per_line
    index_in_line = np.arange(token_pos.size) - line_first_token[token_line]
    prefix, _, suffix = template.partition("L")
    has_list = "L" in template
    list_tokens = tokens_per_line - len(prefix) - len(suffix)
    shape_ok = (list_tokens >= 0) & ((list_tokens == 0) | (list_tokens % 2 == 1)) if has_list else list_tokens == 0
    # the token each position of a line should hold: prefix, then D,D,...,D of the list, then suffix
    expected = np.full(token_pos.size, _NUMBER, np.uint8)
    head = index_in_line < len(prefix)
    expected[head] = np.frombuffer(prefix.encode(), np.uint8)[index_in_line[head]]
    from_end = tokens_per_line[token_line] - 1 - index_in_line
    tail = (from_end < len(suffix)) & ~head
    expected[tail] = np.frombuffer(suffix.encode(), np.uint8)[len(suffix) - 1 - from_end[tail]]
    middle = ~head & ~tail
    expected[middle & ((index_in_line - len(prefix)) % 2 == 1)] = ord(",")
    mismatch = np.bincount(token_line, weights=token_kind != expected, minlength=num_lines) > 0

    reason = np.full(num_lines, -1, np.int64)
    code = {name: i for i, name in enumerate(LINE_REJECT_REASONS)}
    reason[np.bincount(token_line, weights=too_long, minlength=num_lines) > 0] = code["number_too_long"]
    reason[mismatch | ~shape_ok] = code["malformed_line"]
    reason[tokens_per_line == 0] = code["empty_line"]
    reason[np.bincount(np.searchsorted(newlines, np.flatnonzero(other)), minlength=num_lines) > 0] = code["bad_character"]
    line_ends = np.append(newlines, a.size)[:num_lines]
    reason[np.diff(line_ends, prepend=-1) - 1 > max_line_bytes] = code["line_too_long"]

    kept = reason < 0
    line_numbers = np.arange(first_line, first_line + num_lines)
    keep_token = kept[token_line] & ((token_kind == _NUMBER) | (token_kind == _WORD))
    values, lines_of = token_value[keep_token], token_line[keep_token]
    in_list = middle[keep_token] if has_list else np.zeros(values.size, bool)
    fixed = values[~in_list].reshape(int(kept.sum()), template_width(template))
    return ParsedLines(
        fields=fixed,
        list_values=values[in_list],
        list_lengths=np.bincount(lines_of[in_list], minlength=num_lines)[kept],
        lines=line_numbers[kept],
        reject_lines=line_numbers[~kept],
        reject_codes=reason[~kept],
        text_bytes=len(data),
    )


def iter_line_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES,
                     max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[bytes, int]]:
    """(complete lines, 1-based number of the first) of a text file, about chunk_bytes at a time. A line
    longer than max_line_bytes is cut to its first max_line_bytes + 1 bytes (parse_lines rejects it),
    so memory stays bounded whatever the file holds."""
    line = 1
    rest = b""
    skipping = False  # inside an overlong line whose head is in `rest`: drop bytes up to its newline
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            if skipping:
                nl = block.find(b"\n")
                if nl < 0:
                    continue
                block, skipping = block[nl:], False  # the newline ends the cut line
            data = rest + block
            cut = data.rfind(b"\n") + 1
            if cut:
                yield data[:cut], line
                line += data.count(b"\n", 0, cut)
            rest = data[cut:]
            if len(rest) > max_line_bytes:
                rest, skipping = rest[: max_line_bytes + 1], True
    if rest:
        yield rest, line


def parse_file(path: Path, template: str, chunk_bytes: int = CHUNK_BYTES,
               max_line_bytes: int = MAX_LINE_BYTES) -> ParsedLines:
    """`parse_lines` over a whole file, a chunk at a time, results concatenated."""
    parts = [parse_lines(data, template, first, max_line_bytes)
             for data, first in iter_line_chunks(path, chunk_bytes, max_line_bytes)]
    if not parts:
        return parse_lines(b"", template)
    return ParsedLines(
        fields=np.concatenate([p.fields for p in parts]),
        list_values=np.concatenate([p.list_values for p in parts]),
        list_lengths=np.concatenate([p.list_lengths for p in parts]),
        lines=np.concatenate([p.lines for p in parts]),
        reject_lines=np.concatenate([p.reject_lines for p in parts]),
        reject_codes=np.concatenate([p.reject_codes for p in parts]),
        text_bytes=sum(p.text_bytes for p in parts),
    )


# --------------------------------------------------------------------------------------------
# The behaviour dataset (Amazon and Taobao)


@dataclass
class BehaviourRows:
    """Rows of a behaviour dataset before categories are joined: raw user keys, the target item, its
    user's earlier items (oldest first), and the label."""

    user: np.ndarray
    item: np.ndarray
    history: np.ndarray
    """Item ids of every row's history, concatenated."""
    history_lengths: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.item.size)


def user_vocabulary(train_users: np.ndarray, min_count: int) -> np.ndarray:
    """Sorted raw keys of the users with at least min_count train rows (id = FIRST_VOCAB_ID + position)."""
    keys, counts = np.unique(train_users, return_counts=True)
    return keys[counts >= min_count]


def encode_users(users: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    from recstack.data.store import FIRST_VOCAB_ID, OOV_ID

    position = np.searchsorted(vocabulary, users)
    found = position < vocabulary.size
    found[found] = vocabulary[position[found]] == users[found]
    return np.where(found, FIRST_VOCAB_ID + position, OOV_ID)


def write_behaviour_dataset(
    out: Path,
    splits: dict[str, BehaviourRows],
    item_categories: np.ndarray,
    user_min_count: int,
    info: dict[str, Any],
    vocabularies: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write the splits in order (users encoded by a vocabulary over the first split; each item's
    category joined from item_categories, indexed by item id) and publish the schema. `vocabularies`:
    raw keys of target_item / target_cate ids, when the ids are vocabulary ids. Returns sizes for the report."""
    from recstack.data.store import FIRST_VOCAB_ID, DatasetWriter, SparseFeature

    first = next(iter(splits.values()))
    vocabulary = user_vocabulary(first.user, user_min_count)
    num_items, num_cates = int(item_categories.size), int(item_categories.max(initial=0)) + 1
    sizes = {"user": FIRST_VOCAB_ID + int(vocabulary.size), "target_item": num_items, "target_cate": num_cates,
             "hist_item": num_items, "hist_cate": num_cates}
    sparse = [
        SparseFeature("user", sizes["user"]),
        SparseFeature("target_item", num_items),
        SparseFeature("target_cate", num_cates),
        SparseFeature("hist_item", num_items, None, table="target_item", sequence=True),
        SparseFeature("hist_cate", num_cates, None, table="target_cate", sequence=True),
    ]
    writer = DatasetWriter(out, [], ["label"], sparse)
    for name, raw in {"user": vocabulary, **(vocabularies or {})}.items():
        writer.write_vocab(name, raw)
    bounds, start = {}, 0
    for name, rows in splits.items():
        n = len(rows)
        writer.append(np.zeros((n, 0), np.float32), rows.labels, {
            "user": encode_users(rows.user, vocabulary),
            "target_item": rows.item,
            "target_cate": item_categories[rows.item],
            "hist_item": (rows.history, rows.history_lengths),
            "hist_cate": (item_categories[rows.history], rows.history_lengths),
        })
        bounds[name] = [start, start + n]
        start += n
    writer.finish(bounds, info)
    return {"splits": bounds, "num_embeddings": sizes, "users_in_vocabulary": int(vocabulary.size),
            "rows_written": start}


def accounting(log, lines_by_file: dict[str, int]) -> dict[str, Any]:
    """Lines read, kept and rejected (by reason, with examples): rows_read == rows_kept + rows_rejected."""
    lines = sum(lines_by_file.values())
    return {"rows_read": lines, "rows_kept": lines - log.rows_rejected, "rows_rejected": log.rows_rejected,
            "rejects_by_reason": dict(log.by_reason), "reject_examples": {k: list(v) for k, v in log.examples.items()},
            "notes": list(log.notes), "lines_by_file": lines_by_file}


def require_rows(path: Path, kept: int, lines: int, log, lines_by_file: dict[str, int]) -> None:
    """A DataError (with the accounting for the report) when a file gave no usable rows."""
    if kept == 0:
        why = ("the file is empty" if lines == 0
               else f"none of its {lines:,} line(s) is usable; rejects so far: {log.summary()}")
        raise DataError(f"no usable rows in {path} ({why})", report=accounting(log, lines_by_file))


def data_report(info: dict[str, Any], text_bytes: int, started: float, out: Path, written: dict[str, Any],
                files: list[Path]) -> dict[str, Any]:
    """The report every behaviour converter writes (the keys of recstack.data.prepare's)."""
    keys = ("rows_read", "rows_kept", "rows_rejected", "rejects_by_reason", "reject_examples", "notes", "lines_by_file")
    seconds = time.perf_counter() - started
    return {**{k: info[k] for k in keys}, "bytes_read": text_bytes, "seconds": round(seconds, 3),
            "mb_per_s": round(text_bytes / 1e6 / max(seconds, 1e-9), 2), "out": str(out),
            "files": [str(f) for f in files], **written}


# --------------------------------------------------------------------------------------------
# Amazon


def _find(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        what = ", ".join(p.name for p in found) or "none"
        raise DataError(f"{directory} must hold exactly one {pattern} (found: {what})")
    return found[0]


def read_categories(path: Path) -> np.ndarray:
    """cate_list: line i = item i's category. A bad line would shift every later item, so it stops the run."""
    parsed = parse_file(path, "D")
    if parsed.reject_lines.size:
        line, code = int(parsed.reject_lines[0]), int(parsed.reject_codes[0])
        raise DataError(f"{path}, line {line}: {LINE_REJECT_REASONS[code]}; every line must hold one category id")
    if parsed.lines.size == 0:
        raise DataError(f"{path} holds no categories")
    categories = parsed.fields[:, 0]
    too_big = np.flatnonzero(categories > MAX_CATEGORY_ID)
    if too_big.size:
        line = int(parsed.lines[too_big[0]])
        raise DataError(f"{path}, line {line}: category id {int(categories[too_big[0]])} is over {MAX_CATEGORY_ID} "
                        "(ids are stored as int32 and index a table of max id + 1 rows)")
    return categories


def _check_rows(parsed: ParsedLines, item_fields: list[int], label_field: int | None, num_items: int,
                codes: dict[str, int]) -> np.ndarray:
    """Reason code per kept line (-1: fine) for labels other than 0/1 and items without a category."""
    reason = np.full(parsed.lines.size, -1, np.int64)
    items_ok = np.ones(parsed.lines.size, bool)
    for j in item_fields:
        items_ok &= parsed.fields[:, j] < num_items
    history_bad = np.bincount(np.repeat(np.arange(parsed.lines.size), parsed.list_lengths),
                              weights=parsed.list_values >= num_items, minlength=parsed.lines.size) > 0
    reason[~items_ok | history_bad] = codes["unknown_item"]
    if label_field is not None:
        reason[(parsed.fields[:, label_field] != 0) & (parsed.fields[:, label_field] != 1)] = codes["bad_label"]
    return reason


def _usable_lines(path: Path, template: str, item_fields: list[int], label_field: int | None, *, num_items: int,
                  codes: dict[str, int], log, lines_by_file: dict[str, int]) -> ParsedLines:
    """A file's lines that parse and pass `_check_rows`; the others go to `log`. None usable: a DataError."""
    parsed = parse_file(path, template)
    lines_by_file[path.name] = parsed.num_lines
    bad = _check_rows(parsed, item_fields, label_field, num_items, codes)
    log_rejects(log, path, parsed, bad)
    require_rows(path, int((bad < 0).sum()), parsed.num_lines, log, lines_by_file)
    return parsed.take(bad < 0)


def log_rejects(log, path: Path, parsed: ParsedLines, semantic: np.ndarray) -> None:
    """Syntax and semantic rejects of one file, in line order (so --strict names the first)."""
    bad = semantic >= 0
    lines = np.concatenate([parsed.reject_lines, parsed.lines[bad]])
    codes = np.concatenate([parsed.reject_codes, semantic[bad]])
    order = np.argsort(lines, kind="stable")
    log.add(str(path), lines[order], codes[order])


def prepare_amazon(
    input_dir: str | Path,
    out: str | Path,
    *,
    user_min_count: int = DEFAULT_USER_MIN_COUNT,
    strict: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Convert a DIN-format Amazon directory into a behaviour dataset at `out`; returns the data report."""
    from recstack.data.prepare import RejectLog, check_inputs
    from recstack.progress import say

    started = time.perf_counter()
    directory = Path(input_dir)
    if not directory.is_dir():
        raise DataError(f"--input {directory} is not a directory (it should hold train_set*.csv, test_set*.csv and cate_list.csv)")
    if user_min_count < 1:
        raise DataError(f"--user-min-count must be >= 1, got {user_min_count}")
    train_path, test_path = _find(directory, "train_set*.csv"), _find(directory, "test_set*.csv")
    cate_path = _find(directory, "cate_list.csv")
    files = check_inputs([train_path, test_path, cate_path])
    categories = read_categories(cate_path)
    codes = {name: i for i, name in enumerate(AMAZON_REJECT_REASONS)}
    log = RejectLog(AMAZON_REJECT_REASONS, strict)

    lines_by_file: dict[str, int] = {}
    read = dict(num_items=categories.size, codes=codes, log=log, lines_by_file=lines_by_file)
    train = _usable_lines(train_path, "D,[L],D,D", [1], 2, **read)  # user, history, target, label
    test = _usable_lines(test_path, "D,[L],(D,D)", [1, 2], None, **read)  # user, history, (positive, negative)

    splits = {
        "train": BehaviourRows(train.fields[:, 0], train.fields[:, 1], train.list_values, train.list_lengths,
                               train.fields[:, 2].astype(np.float32)),
        "test": _doubled(test),
    }
    info = {
        "source": {"format": "amazon-din", "files": [str(f) for f in files]},
        "raw_keys": "integer",  # the server maps a raw id through the vocabulary as this integer
        "preprocessing": (
            "DIN-format Amazon Electronics; items keep their ids, categories joined from cate_list (line i = "
            f"item i); users: vocabulary over the train split, users with < {user_min_count} train rows -> OOV id 0; "
            "each test line -> (positive, label 1), (negative, label 0); histories oldest first, uncapped"
        ),
        "user_min_count": user_min_count,
        **accounting(log, lines_by_file),
    }
    written = write_behaviour_dataset(Path(out), splits, categories, user_min_count, info)
    report = data_report(info, train.text_bytes + test.text_bytes, started, Path(out), written, files)
    report["user_min_count"] = user_min_count
    if show_progress:
        say(f"prepared {report['rows_kept']:,} lines into {written['rows_written']:,} rows, rejected "
            f"{report['rows_rejected']:,} ({log.summary()}) -> {out}")
    return report


def _doubled(test: ParsedLines) -> BehaviourRows:
    """Each test line twice, interleaved: its positive (label 1), then its negative (label 0)."""
    from recstack.data.store import gather_ranges

    n = len(test.lines)
    starts = np.cumsum(test.list_lengths) - test.list_lengths
    twice = np.repeat(np.arange(n), 2)
    return BehaviourRows(
        user=test.fields[twice, 0],
        item=test.fields[:, 1:3].reshape(-1),
        history=gather_ranges(test.list_values, starts[twice], test.list_lengths[twice]),
        history_lengths=test.list_lengths[twice],
        labels=np.tile(np.array([1.0, 0.0], np.float32), n),
    )


# --------------------------------------------------------------------------------------------
# `recstack data prepare amazon`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from recstack.data.report import add_out_arguments

    parser.add_argument("--input", required=True, metavar="DIR", help="directory with train_set*.csv, test_set*.csv, cate_list.csv")
    add_out_arguments(parser)
    parser.add_argument("--user-min-count", type=argtypes.positive_int, default=DEFAULT_USER_MIN_COUNT, metavar="N",
                        help=f"users with fewer train rows share the OOV id (default {DEFAULT_USER_MIN_COUNT})")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad line")
    parser.add_argument("--report", metavar="FILE", help="write the JSON report here")
    parser.add_argument("--quiet", action="store_true", help="no progress or tables")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from recstack.data.report import run_converter

    return run_converter("data prepare amazon", args, extra,
                         lambda: prepare_amazon(args.input, args.out, user_min_count=args.user_min_count,
                                                strict=args.strict, show_progress=not args.quiet))
