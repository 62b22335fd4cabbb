"""MovieLens ratings -> an implicit-feedback dataset with the leave-one-out protocol of NCF
(He et al. 2017), and the ItemPop baseline on it.

Input: ml-100k's `u.data` (`user \\t item \\t rating \\t unix_time`) or ml-1m's `ratings.dat` (the same
fields separated by `::`). Every rating is a positive (implicit feedback; the rating value only has to
be a number). Protocol:

- Test: each user's latest rating (largest timestamp; among equal timestamps, the later line of the
  file) is held out. The test split holds, per user, 1 + test_negatives rows: the held-out item first
  (label 1), then `test_negatives` distinct items the user never rated (label 0), drawn once with the
  seed. The schema declares `ranking: {split: test, group_size}`, so the trainer reports HR@10 and
  NDCG@10 of the positive among its candidates.
- Train: every other rating (label 1), each with `negatives` items the user never rated (label 0,
  uniform over the items, with replacement), drawn afresh in each of `rounds` rounds: the train split
  holds `rounds` copies of the positives with fresh negatives, so one epoch over it is `rounds` NCF
  epochs (the loader shuffles rows).

"Never rated" counts all of a user's ratings, the held-out one included. Negatives are drawn in bulk,
checked against the sorted keys of the rated (user, item) pairs (searchsorted), and only the hits are
redrawn. The test negatives and the training negatives come from two streams of the seed, so
`negatives` and `rounds` never change the test set. Raw user and item ids map to
FIRST_VOCAB_ID + their position among the sorted distinct raw ids (vocab/<feature>.npy holds them).
Items are those with at least one rating.

Parsing is vectorized over the whole file (no per-line Python). Every line is kept or rejected with a
reason from REJECT_REASONS: rows_read == rows_kept + rows_rejected. A (user, item) pair rated more than
once keeps its latest rating; the others are rejected as `duplicate_rating`.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recstack import argtypes
from recstack.errors import DataError

USER, ITEM, LABEL = "user", "item", "label"
RATING_FILES = ("u.data", "ratings.dat")
"""What --input DIR is searched for, in this order."""

REJECT_REASONS: tuple[str, ...] = (
    "wrong_field_count",
    "bad_user_id",
    "bad_item_id",
    "bad_rating",
    "bad_timestamp",
    "duplicate_rating",
)
"""wrong_field_count: not 4 fields (an empty line included); bad_user_id / bad_item_id / bad_timestamp:
not a decimal integer of 1-18 digits; bad_rating: not a decimal number; duplicate_rating: an earlier
rating of a (user, item) pair rated again later."""
_CODE = {name: code for code, name in enumerate(REJECT_REASONS)}
MAX_DIGITS = 18  # every 18-digit decimal fits int64
MAX_RATING_CHARS = 8
HR_K = 10
DEFAULT_ROUNDS = 10
"""Ten NCF epochs of fresh negatives: what configs/ncf-movielens.yaml trains on ml-100k in one pass
(HR@10 levels off after about 8 on ml-100k; 20 gains nothing beyond the seed-to-seed spread)."""

_NL, _CR, _TAB, _DOT, _ZERO = 10, 13, 9, 46, 48


# --------------------------------------------------------------------------------------------
# Parsing


@dataclass
class Ratings:
    """Well-formed rating lines: raw ids, timestamps and 1-based line numbers, in file order."""

    user: np.ndarray
    item: np.ndarray
    time: np.ndarray
    line: np.ndarray

    def take(self, index: np.ndarray) -> Ratings:
        return Ratings(self.user[index], self.item[index], self.time[index], self.line[index])


def _decode_uint(buf: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decimal integers in buf[lo:hi] of every field: (values int64, ok: 1-18 digits and nothing else).
    One vectorized step per digit position, none per field."""
    length = hi - lo
    ok = (length >= 1) & (length <= MAX_DIGITS)
    value = np.zeros(lo.shape, dtype=np.int64)
    for j in range(int(length[ok].max()) if ok.any() else 0):
        active = ok & (j < length)
        digit = buf[np.where(active, lo + j, 0)].astype(np.int64) - _ZERO
        ok &= ~active | ((digit >= 0) & (digit <= 9))
        value = np.where(active, value * 10 + digit, value)
    return value, ok


def _is_decimal(buf: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Whether buf[lo:hi] reads as a decimal number: digits with at most one '.' among them."""
    length = hi - lo
    ok = (length >= 1) & (length <= MAX_RATING_CHARS)
    digits = np.zeros(lo.shape, dtype=np.int64)
    dots = np.zeros(lo.shape, dtype=np.int64)
    for j in range(MAX_RATING_CHARS):
        active = ok & (j < length)
        char = buf[np.where(active, lo + j, 0)]
        is_digit = active & (char >= _ZERO) & (char <= _ZERO + 9)
        is_dot = active & (char == _DOT)
        ok &= ~active | is_digit | is_dot
        digits += is_digit
        dots += is_dot
    return ok & (digits >= 1) & (dots <= 1)


def is_double_colon(data: bytes) -> bool:
    """Whether the file is `::`-separated (ml-1m), judged by its first line."""
    return b"::" in data[: data.find(b"\n")] if b"\n" in data else b"::" in data


def parse_ratings(data: bytes) -> tuple[Ratings, np.ndarray, np.ndarray]:
    """Parse a ratings file's bytes (tab- or `::`-separated, LF or CRLF line ends).

    Returns (well-formed ratings, rejected 1-based line numbers, their reason codes)."""
    if is_double_colon(data):
        data = data.replace(b"::", b"\t")
    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buf == _NL)
    line_end = newlines if buf.size == 0 or buf[-1] == _NL else np.append(newlines, buf.size)
    starts = np.concatenate([np.zeros(min(line_end.size, 1), np.int64), line_end[:-1] + 1])
    ends = line_end - ((line_end > starts) & (buf[np.maximum(line_end - 1, 0)] == _CR))  # drop a CR before LF
    numbers = np.arange(1, line_end.size + 1, dtype=np.int64)

    tabs = np.flatnonzero(buf == _TAB)
    tab_line = np.searchsorted(line_end, tabs)
    shaped = np.bincount(tab_line, minlength=line_end.size) == 3
    t = tabs[shaped[tab_line]].reshape(-1, 3)
    lo = starts[shaped]
    bounds = [(lo, t[:, 0]), (t[:, 0] + 1, t[:, 1]), (t[:, 1] + 1, t[:, 2]), (t[:, 2] + 1, ends[shaped])]
    user, user_ok = _decode_uint(buf, *bounds[0])
    item, item_ok = _decode_uint(buf, *bounds[1])
    rating_ok = _is_decimal(buf, *bounds[2])
    stamp, time_ok = _decode_uint(buf, *bounds[3])

    # the first failing check names the reason
    code = np.select(
        [~user_ok, ~item_ok, ~rating_ok, ~time_ok],
        [_CODE["bad_user_id"], _CODE["bad_item_id"], _CODE["bad_rating"], _CODE["bad_timestamp"]],
        -1,
    )
    good = code < 0
    shaped_numbers = numbers[shaped]
    rejected_lines = np.concatenate([numbers[~shaped], shaped_numbers[~good]])
    reasons = np.concatenate([np.full((~shaped).sum(), _CODE["wrong_field_count"]), code[~good]])
    order = np.argsort(rejected_lines, kind="stable")
    ratings = Ratings(user[good], item[good], stamp[good], shaped_numbers[good])
    return ratings, rejected_lines[order], reasons[order]


def latest_in_groups(keys: list[np.ndarray], stamp: np.ndarray, line: np.ndarray) -> np.ndarray:
    """bool mask: the latest row of each group of equal `keys` (largest timestamp; among equal
    timestamps, the later line)."""
    order = np.lexsort((line, stamp, *reversed(keys)))
    last = np.ones(order.size, dtype=bool)
    last[:-1] = np.logical_or.reduce([k[order][1:] != k[order][:-1] for k in keys])
    latest = np.zeros(order.size, dtype=bool)
    latest[order[last]] = True
    return latest


def latest_per_pair(ratings: Ratings) -> tuple[np.ndarray, np.ndarray]:
    """(kept, duplicates): indices of each (user, item) pair's latest rating, and of its earlier ones."""
    latest = latest_in_groups([ratings.user, ratings.item], ratings.time, ratings.line)
    return np.flatnonzero(latest), np.flatnonzero(~latest)


def leave_one_out(user: np.ndarray, stamp: np.ndarray, line: np.ndarray) -> np.ndarray:
    """bool mask: each user's latest rating, the held-out test positive."""
    return latest_in_groups([user], stamp, line)


# --------------------------------------------------------------------------------------------
# Negative sampling


class RatedPairs:
    """Membership of (user, item) pairs, as sorted int64 keys user * num_items + item."""

    def __init__(self, user: np.ndarray, item: np.ndarray, num_items: int):
        self.num_items = int(num_items)
        self.keys = np.unique(user.astype(np.int64) * self.num_items + item)

    def contains(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        query = user.astype(np.int64) * self.num_items + item
        at = np.searchsorted(self.keys, query)
        return self.keys[np.minimum(at, self.keys.size - 1)] == query


def sample_unrated(rng: np.random.Generator, users: np.ndarray, rated: RatedPairs) -> np.ndarray:
    """One item per entry of `users`, uniform over the items that user never rated (every user must
    have one): draw all at once, then redraw only the hits on rated pairs."""
    items = rng.integers(0, rated.num_items, size=users.shape)
    redo = np.flatnonzero(rated.contains(users, items))
    while redo.size:
        items[redo] = rng.integers(0, rated.num_items, size=redo.size)
        redo = redo[rated.contains(users[redo], items[redo])]
    return items


def sample_distinct_unrated(rng: np.random.Generator, users: np.ndarray, count: int, rated: RatedPairs) -> np.ndarray:
    """[len(users), count] items, distinct within a row, that the row's user never rated (each user
    must have at least `count`): redraw rated hits and repeats (all but a value's first slot) until
    none is left, checking again only the rows that had one."""
    items = rng.integers(0, rated.num_items, size=(users.size, count))
    rows = np.arange(users.size)
    while rows.size:
        sub = items[rows]
        order = np.argsort(sub, axis=1, kind="stable")
        ranked = np.take_along_axis(sub, order, axis=1)
        repeat = np.zeros(sub.shape, dtype=bool)
        np.put_along_axis(repeat, order[:, 1:], ranked[:, 1:] == ranked[:, :-1], axis=1)
        redo = repeat | rated.contains(np.broadcast_to(users[rows, None], sub.shape), sub)
        sub[redo] = rng.integers(0, rated.num_items, size=int(redo.sum()))
        items[rows] = sub
        rows = rows[redo.any(axis=1)]
    return items


# --------------------------------------------------------------------------------------------
# ItemPop


def item_pop_metrics(train_items: np.ndarray, candidates: np.ndarray, num_items: int) -> dict[str, float]:
    """ItemPop: score every test candidate by its number of training positives. candidates [U, C]
    (the positive in column 0). HR@10 and NDCG@10 with the trainer's tie rule (pessimistic: every
    candidate as popular as the positive ranks above it).

    Computed here rather than with recstack.scoring.metrics (a layer above data): the positive's rank
    is the number of other candidates at least as popular, the rule of scoring.metrics.positive_rank
    with ties="pessimistic", and HR/NDCG@10 are that module's hit_rate_at_k / ndcg_at_k of it."""
    popularity = np.bincount(train_items, minlength=num_items).astype(np.float64)
    scores = popularity[candidates]
    rank = np.count_nonzero(scores >= scores[:, :1], axis=1) - 1
    hit = rank < HR_K
    return {"hr_at_10": float(np.mean(hit)), "ndcg_at_10": float(np.mean(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)))}


# --------------------------------------------------------------------------------------------
# The converter


def find_ratings_file(path: str | Path) -> Path:
    """The ratings file: `path` itself, or the first of RATING_FILES inside a directory."""
    path = Path(path)
    if path.is_dir():
        for name in RATING_FILES:
            if (path / name).is_file():
                return path / name
        raise DataError(f"{path} holds none of {', '.join(RATING_FILES)}", hint="point --input at an ml-100k or ml-1m folder")
    from recstack.data.prepare import check_inputs

    return check_inputs(path)[0]


def read_ratings(path: Path, data: bytes, log) -> Ratings:
    """The usable ratings of a file's bytes; every other line goes to the RejectLog `log`."""
    parsed, bad_lines, bad_codes = parse_ratings(data)
    log.add(str(path), bad_lines, bad_codes)
    kept, duplicates = latest_per_pair(parsed)
    log.add(str(path), parsed.line[duplicates], np.full(duplicates.size, _CODE["duplicate_rating"]))
    return parsed.take(kept)


@dataclass
class ImplicitSplit:
    """An implicit-feedback protocol's parts in 0-based user and item ids: training positives, and test
    groups of one positive among sampled negatives."""

    num_users: int
    num_items: int
    train_rated: RatedPairs
    """What training negatives avoid."""
    train_user: np.ndarray
    train_item: np.ndarray
    candidate_user: np.ndarray
    """[groups]: the user of each test group."""
    candidates: np.ndarray
    """[groups, 1 + test_negatives]: a group's test positive, then its test negatives."""


def split_leave_one_out(user: np.ndarray, item: np.ndarray, ratings: Ratings, test_negatives: int,
                        rng: np.random.Generator) -> ImplicitSplit:
    """Hold out each user's latest rating and draw its test negatives (users and items 0-based, dense)."""
    num_users, num_items = int(user.max()) + 1, int(item.max()) + 1
    rated = RatedPairs(user, item, num_items)
    unrated = num_items - np.bincount(user, minlength=num_users)
    if unrated.min() < test_negatives:
        short = int((unrated < test_negatives).sum())
        raise DataError(
            f"{short} user(s) have fewer than {test_negatives} unrated items (of {num_items}) to draw "
            "test negatives from", hint="lower --test-negatives",
        )
    held_out = leave_one_out(user, ratings.time, ratings.line)
    test_item = np.empty(num_users, dtype=np.int64)
    test_item[user[held_out]] = item[held_out]  # one per user
    negatives = sample_distinct_unrated(rng, np.arange(num_users), test_negatives, rated)
    return ImplicitSplit(num_users, num_items, rated, user[~held_out], item[~held_out], np.arange(num_users),
                         np.concatenate([test_item[:, None], negatives], axis=1))


def prepare_movielens(
    input_path: str | Path,
    out: str | Path,
    *,
    negatives: int = 4,
    rounds: int = DEFAULT_ROUNDS,
    test_negatives: int = 99,
    seed: int = 0,
    strict: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Convert MovieLens ratings into a leave-one-out dataset at `out` (see the module docstring).

    Returns the data report: the reject accounting (rows_read, rows_kept, rows_rejected,
    rejects_by_reason, reject_examples, notes), files, bytes_read, seconds, out, splits,
    num_embeddings, users, items, train_positives, the sampling parameters, and
    baselines.itempop (HR@10, NDCG@10). `strict` turns the first reject into a DataError."""
    from recstack.data.prepare import RejectLog
    from recstack.progress import say

    check_sampling(negatives=negatives, rounds=rounds, test_negatives=test_negatives, seed=seed)
    started = time.perf_counter()
    path = find_ratings_file(input_path)
    data = path.read_bytes()
    log = RejectLog(REJECT_REASONS, strict)
    ratings = read_ratings(path, data, log)
    report: dict[str, Any] = {
        "rows_read": int(ratings.line.size) + log.rows_rejected,
        "rows_kept": int(ratings.line.size),
        "rows_rejected": log.rows_rejected,
        "rejects_by_reason": dict(log.by_reason),
        "reject_examples": {k: list(v) for k, v in log.examples.items()},
        "notes": list(log.notes),
        "files": [str(path)],
    }
    if ratings.line.size == 0:
        why = log.summary() if log.rows_rejected else "the file is empty"
        raise DataError(f"no usable ratings in {path} ({why})", report=report)
    raw_users, user = np.unique(ratings.user, return_inverse=True)
    raw_items, item = np.unique(ratings.item, return_inverse=True)
    if ratings.line.size == raw_users.size:
        raise DataError(f"no training ratings in {path}: each user's latest rating is held out for test, so a user "
                        f"needs at least 2 ratings (all {raw_users.size:,} users here have 1)", report=report)
    _check_output_size(ratings.line.size, raw_users.size, raw_items.size, negatives, rounds, test_negatives)
    try:
        split = split_leave_one_out(user, item, ratings, test_negatives, np.random.default_rng(seed))
    except DataError as exc:
        exc.report = report
        raise
    rng = np.random.default_rng([seed, 1])  # the training negatives' own stream
    itempop = item_pop_metrics(split.train_item, split.candidates, split.num_items)
    writer, splits = write_implicit_rows(Path(out), split, raw_users, raw_items, negatives, rounds, rng)
    seconds = time.perf_counter() - started
    report.update({
        "bytes_read": len(data),
        "input_bytes": len(data),
        "seconds": round(seconds, 3),
        "mb_per_s": round(len(data) / 1e6 / max(seconds, 1e-9), 2),
        "out": str(out),
        "splits": splits,
        "num_embeddings": {s.name: s.num_embeddings for s in writer.sparse},
        "users": split.num_users,
        "items": split.num_items,
        "train_positives": int(split.train_user.size),
        "negatives": negatives,
        "rounds": rounds,
        "test_negatives": test_negatives,
        "seed": seed,
        "baselines": {"itempop": itempop},
    })
    writer.finish(splits, _info(report, is_double_colon(data)))  # publishes the schema
    if show_progress:
        say(f"prepared {split.num_users:,} users x {split.num_items:,} items: {split.train_user.size:,} training "
            f"positives x {rounds} round(s) with {negatives} negatives each, {split.num_users:,} test groups of "
            f"{1 + test_negatives}; ItemPop HR@10 {itempop['hr_at_10']:.4f}, NDCG@10 {itempop['ndcg_at_10']:.4f} -> {out}")
    return report


def check_sampling(**options: int) -> None:
    """The sampling options in range (the command line checks them too; this is for callers of the API)."""
    for name, value in options.items():
        least = 0 if name == "seed" else 1
        if value < least:
            raise DataError(f"--{name.replace('_', '-')} must be >= {least}, got {value}")


def _check_output_size(num_ratings: int, num_users: int, num_items: int, negatives: int, rounds: int,
                       test_negatives: int) -> None:
    """Refuse, before sampling, options whose rows would not fit (see prepare.MAX_OUTPUT_ROWS)."""
    from recstack.data.prepare import check_output_rows

    positives = num_ratings - num_users  # each user's latest rating is held out
    group = 1 + min(test_negatives, num_items)  # more test negatives than items: split_leave_one_out says so
    check_output_rows(rounds * positives * (1 + negatives) + num_users * group,
                      f"--rounds {rounds} x {positives:,} training positives x (1 + --negatives {negatives}) + "
                      f"{num_users:,} users x (1 + --test-negatives {test_negatives})",
                      "--negatives, --rounds or --test-negatives")


def write_implicit_rows(out: Path, split: ImplicitSplit, raw_users: np.ndarray, raw_items: np.ndarray,
                        negatives: int, rounds: int, rng: np.random.Generator):
    """Rows: `rounds` x (the training positives, then their fresh negatives), then the test groups.
    Returns (the DatasetWriter, still to `finish`, and the splits)."""
    from recstack.data.store import FIRST_VOCAB_ID, DatasetWriter, SparseFeature

    sparse = [SparseFeature(USER, FIRST_VOCAB_ID + split.num_users, 1, "int32"),
              SparseFeature(ITEM, FIRST_VOCAB_ID + split.num_items, 1, "int32")]
    writer = DatasetWriter(out, [], [LABEL], sparse)  # first removes the schema of any dataset at `out`

    def append(users: np.ndarray, items: np.ndarray, labels: np.ndarray) -> None:
        writer.append(np.zeros((users.size, 0), np.float32), labels,
                      {USER: users + FIRST_VOCAB_ID, ITEM: items + FIRST_VOCAB_ID})

    negative_users = np.repeat(split.train_user, negatives)
    labels = np.concatenate([np.ones(split.train_user.size, np.float32), np.zeros(negative_users.size, np.float32)])
    for _ in range(rounds):
        append(np.concatenate([split.train_user, negative_users]),
               np.concatenate([split.train_item, sample_unrated(rng, negative_users, split.train_rated)]), labels)
    num_train = writer.num_rows
    group = split.candidates.shape[1]
    test_labels = np.zeros(split.candidates.shape, np.float32)
    test_labels[:, 0] = 1.0
    append(np.repeat(split.candidate_user, group), split.candidates.reshape(-1), test_labels.reshape(-1))
    writer.write_vocab(USER, raw_users.astype(np.uint64))
    writer.write_vocab(ITEM, raw_items.astype(np.uint64))
    return writer, {"train": [0, num_train], "test": [num_train, writer.num_rows]}


def _info(report: dict[str, Any], double_colon: bool) -> dict[str, Any]:
    from recstack.data.prepare import reject_info

    fmt = "movielens-ratings-dat (::, as ml-1m)" if double_colon else "movielens-u-data (tab, as ml-100k)"
    return {
        "source": {"format": fmt, "files": report["files"], "bytes_read": report["bytes_read"]},
        "raw_keys": "integer",  # the server maps a raw id through the vocabulary as this integer
        "preprocessing": (
            "implicit feedback, leave-one-out (NCF): every rating is a positive; each user's latest rating "
            "(ties: the later line) is the test positive, followed by test_negatives distinct unrated items; "
            "each training positive gets `negatives` unrated items per round, `rounds` rounds; "
            "ids = 2 + position among the sorted raw ids (vocab/<feature>.npy)"
        ),
        "protocol": {k: report[k] for k in ("users", "items", "train_positives", "negatives", "rounds",
                                            "test_negatives", "seed")},
        "ranking": {"split": "test", "group_size": 1 + report["test_negatives"]},
        "baselines": report["baselines"],
        "rejects": reject_info(report),
    }


# --------------------------------------------------------------------------------------------
# `recstack data prepare movielens`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from recstack.data.report import add_out_arguments

    parser.add_argument("--input", required=True, metavar="DIR", help="an ml-100k or ml-1m folder (or its u.data / ratings.dat)")
    add_out_arguments(parser)
    add_sampling_arguments(parser, DEFAULT_ROUNDS, "one pass = R NCF epochs", "held-out item")


def add_sampling_arguments(parser: argparse.ArgumentParser, rounds: int, rounds_meaning: str, test_item: str) -> None:
    """The negative-sampling options of the implicit-feedback converters, and --strict/--report/--quiet."""
    parser.add_argument("--negatives", type=argtypes.positive_int, default=4, metavar="K",
                        help="sampled negatives per training positive (default 4)")
    parser.add_argument("--rounds", type=argtypes.positive_int, default=rounds, metavar="R",
                        help=f"copies of the positives, each with fresh negatives: {rounds_meaning} (default {rounds})")
    parser.add_argument("--test-negatives", type=argtypes.positive_int, default=99, metavar="N",
                        help=f"sampled negatives ranked against each {test_item} (default 99)")
    parser.add_argument("--seed", type=argtypes.seed, default=0, help="seed of the negative sampling (default 0)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad line")
    parser.add_argument("--report", metavar="FILE", help="write the JSON report here")
    parser.add_argument("--quiet", action="store_true", help="no progress or tables")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from recstack.data.report import run_converter

    return run_converter("data prepare movielens", args, extra, lambda: prepare_movielens(
        args.input, args.out, negatives=args.negatives, rounds=args.rounds, test_negatives=args.test_negatives,
        seed=args.seed, strict=args.strict, show_progress=not args.quiet))
