"""Implicit-feedback list files -> a dataset with the given train/test split, scored two ways.

Input: a directory with `train.txt` and `test.txt` in the format of the published NCF/LightGCN-style
splits (ML-1M, Gowalla, Yelp2018, Amazon-Book): one line per user, `user item item ...`, decimal ids
separated by spaces or tabs. A user's line may list no items (a user with nothing to test).

The given split is kept as it is: every train pair is a training positive; every test pair is a test
positive. Two scores of the test pairs, the two protocols of that literature:

- Sampled ranking (NCF): the test split holds, per test pair, 1 + test_negatives rows: the test item
  first (label 1), then `test_negatives` distinct items the user has in neither file (label 0), drawn
  once with the seed. The schema declares `ranking: {split: test, group_size}`, so the trainer reports
  HR@10 and NDCG@10 of each test item among its candidates.
- Full ranking (LightGCN): every item the user has no training pair with is scored, and Recall@K and
  NDCG@K (K = 20) of the user's test items are averaged over the users with test items. The schema
  declares `full_ranking: {split: test, k}` and the two files' pairs are stored per user under
  `full_ranking/` (see `load_full_ranking`).

Training: each training positive gets `negatives` items the user has no training pair with (uniform,
with replacement), drawn afresh in each of `rounds` rounds, as the NCF and LightGCN reference code
draws them (from the training matrix only). Raw ids map to FIRST_VOCAB_ID + their position among the
sorted distinct raw ids of both files (vocab/<feature>.npy).

Every line is kept or rejected with a reason from REJECT_REASONS (rows are lines: rows_read ==
rows_kept + rows_rejected). Dropped pairs within kept lines are counted too: an item listed twice on a
line (`repeated_items`) and a test pair that is also a train pair (`test_pairs_in_train`, which would
otherwise be both excluded from and counted in full ranking).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recstack.data.movielens import (
    ImplicitSplit,
    RatedPairs,
    add_sampling_arguments,
    check_sampling,
    item_pop_metrics,
    sample_distinct_unrated,
    write_implicit_rows,
)
from recstack.errors import DataError

LIST_FILES = ("train.txt", "test.txt")
REJECT_REASONS: tuple[str, ...] = ("empty_line", "bad_user_id", "bad_item_id", "duplicate_user")
"""empty_line: nothing but spaces (the end of the file aside); bad_user_id / bad_item_id: not a decimal
integer of 1-18 digits (one bad item rejects its whole line: a user's list is kept whole or not at
all); duplicate_user: a second line of a user already listed in the same file."""
_CODE = {name: code for code, name in enumerate(REJECT_REASONS)}
MAX_DIGITS = 18
FULL_RANKING_K = 20
"""Recall@20 and NDCG@20, LightGCN's figures."""
FULL_RANKING_DIR = "full_ranking"


@dataclass
class UserLists:
    """The kept lines of one list file: raw ids of every (user, item) pair, and every listed user."""

    pair_user: np.ndarray
    pair_item: np.ndarray
    users: np.ndarray
    repeated_items: int
    lines: int


def _is_id(token: bytes) -> bool:
    return token.isdigit() and len(token) <= MAX_DIGITS


def parse_lists(data: bytes, file: str, log) -> UserLists:
    """Parse a list file's bytes (LF or CRLF line ends); rejected lines go to the RejectLog `log`."""
    lines = data.split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()  # the newline that ends the last line
    pair_user: list[np.ndarray] = []
    pair_item: list[np.ndarray] = []
    users: list[int] = []
    seen: set[int] = set()
    repeated = 0
    bad_lines: list[int] = []
    bad_codes: list[int] = []
    for number, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens:
            reason = "empty_line"
        elif not _is_id(tokens[0]):
            reason = "bad_user_id"
        elif not all(_is_id(t) for t in tokens[1:]):
            reason = "bad_item_id"
        elif int(tokens[0]) in seen:
            reason = "duplicate_user"
        else:
            user = int(tokens[0])
            seen.add(user)
            users.append(user)
            items = np.array([int(t) for t in tokens[1:]], dtype=np.int64)
            distinct = np.unique(items)
            repeated += items.size - distinct.size
            pair_user.append(np.full(distinct.size, user, dtype=np.int64))
            pair_item.append(distinct)
            continue
        bad_lines.append(number)
        bad_codes.append(_CODE[reason])
    log.add(file, np.array(bad_lines, dtype=np.int64), np.array(bad_codes, dtype=np.int64))
    empty = np.zeros(0, dtype=np.int64)
    return UserLists(np.concatenate(pair_user) if pair_user else empty,
                     np.concatenate(pair_item) if pair_item else empty,
                     np.array(users, dtype=np.int64), repeated, len(lines))


def find_list_files(path: str | Path) -> tuple[Path, Path]:
    """(train.txt, test.txt) inside the directory `path`."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"--input {path} is not a directory", hint="point it at the folder holding train.txt and test.txt")
    missing = [name for name in LIST_FILES if not (path / name).is_file()]
    if missing:
        raise DataError(f"{path} has no {' or '.join(missing)}", hint="an implicit split is a train.txt and a test.txt")
    return path / LIST_FILES[0], path / LIST_FILES[1]


# --------------------------------------------------------------------------------------------
# Full ranking: the pairs of each user, stored beside the rows


def per_user(user: np.ndarray, item: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of 0-based pairs: (indptr [num_users + 1], items sorted within each user)."""
    order = np.lexsort((item, user))
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(user, minlength=num_users), out=indptr[1:])
    return indptr, item[order].astype(np.int64)


def write_full_ranking(out: Path, split: ImplicitSplit, test_user: np.ndarray, test_item: np.ndarray) -> None:
    folder = out / FULL_RANKING_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, (user, item) in (("train", (split.train_user, split.train_item)), ("test", (test_user, test_item))):
        indptr, items = per_user(user, item, split.num_users)
        np.save(folder / f"{name}_indptr.npy", indptr)
        np.save(folder / f"{name}_items.npy", items)


@dataclass
class FullRanking:
    """What full-ranking evaluation needs of a dataset: ids are 0-based (add FIRST_VOCAB_ID to score)."""

    k: int
    num_items: int
    train_indptr: np.ndarray
    train_items: np.ndarray
    test_indptr: np.ndarray
    test_items: np.ndarray


def load_full_ranking(dataset) -> FullRanking | None:
    """The dataset's full-ranking pairs when its schema declares them, else None."""
    from recstack.data.store import open_npy

    info = dataset.schema.info.get("full_ranking")
    if not info:
        return None
    folder = Path(dataset.path) / FULL_RANKING_DIR
    arrays = {f"{name}_{part}": np.asarray(open_npy(folder / f"{name}_{part}.npy"))
              for name in ("train", "test") for part in ("indptr", "items")}
    return FullRanking(k=int(info["k"]), num_items=int(info["items"]), **arrays)


# --------------------------------------------------------------------------------------------
# The converter


def prepare_implicit(
    input_path: str | Path,
    out: str | Path,
    *,
    negatives: int = 4,
    rounds: int = 1,
    test_negatives: int = 99,
    seed: int = 0,
    strict: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Convert a train.txt/test.txt pair into a dataset at `out` (see the module docstring).

    Returns the data report: the reject accounting over both files' lines, the dropped pairs, files,
    bytes_read, seconds, out, splits, num_embeddings, users, items, train and test pairs, the sampling
    parameters and baselines.itempop (sampled HR@10, NDCG@10)."""
    from recstack.data.prepare import RejectLog, reject_info
    from recstack.progress import say

    check_sampling(negatives=negatives, rounds=rounds, test_negatives=test_negatives, seed=seed)
    started = time.perf_counter()
    files = find_list_files(input_path)
    log = RejectLog(REJECT_REASONS, strict)
    blobs = [path.read_bytes() for path in files]
    train, test = (parse_lists(blob, str(path), log) for blob, path in zip(blobs, files))
    report: dict[str, Any] = {
        "rows_read": train.lines + test.lines,
        "rows_kept": int(train.users.size + test.users.size),
        "rows_rejected": log.rows_rejected,
        "rejects_by_reason": dict(log.by_reason),
        "reject_examples": {k: list(v) for k, v in log.examples.items()},
        "notes": list(log.notes),
        "files": [str(p) for p in files],
    }
    if train.pair_user.size == 0:
        why = log.summary() if log.rows_rejected else "it lists no items"
        raise DataError(f"no training pairs in {files[0]} ({why})", report=report)

    raw_users = np.unique(np.concatenate([train.users, test.users]))
    raw_items = np.unique(np.concatenate([train.pair_item, test.pair_item]))
    num_users, num_items = raw_users.size, raw_items.size
    train_user, train_item = np.searchsorted(raw_users, train.pair_user), np.searchsorted(raw_items, train.pair_item)
    test_user, test_item = np.searchsorted(raw_users, test.pair_user), np.searchsorted(raw_items, test.pair_item)
    train_rated = RatedPairs(train_user, train_item, num_items)
    in_train = train_rated.contains(test_user, test_item)
    test_user, test_item = test_user[~in_train], test_item[~in_train]
    if test_user.size == 0:
        raise DataError(f"no test pairs in {files[1]} (beyond ones also in {files[0].name})", report=report)
    report["pairs_dropped"] = {"repeated_items": train.repeated_items + test.repeated_items,
                               "test_pairs_in_train": int(in_train.sum())}
    _check_output_size(train_user.size, test_user.size, negatives, rounds, test_negatives)

    rated = RatedPairs(np.concatenate([train_user, test_user]), np.concatenate([train_item, test_item]), num_items)
    unrated = num_items - np.bincount(np.concatenate([train_user, test_user]), minlength=num_users)
    short = unrated[test_user] < test_negatives
    if short.any():
        raise DataError(f"{np.unique(test_user[short]).size} test user(s) have fewer than {test_negatives} items "
                        f"(of {num_items}) outside their lists to draw test negatives from",
                        hint="lower --test-negatives", report=report)
    rng = np.random.default_rng(seed)
    candidates = np.concatenate([test_item[:, None], sample_distinct_unrated(rng, test_user, test_negatives, rated)], axis=1)
    split = ImplicitSplit(num_users, num_items, train_rated, train_user, train_item, test_user, candidates)
    itempop = item_pop_metrics(train_item, candidates, num_items)
    writer, splits = write_implicit_rows(Path(out), split, raw_users, raw_items, negatives, rounds,
                                         np.random.default_rng([seed, 1]))
    write_full_ranking(Path(out), split, test_user, test_item)
    seconds = time.perf_counter() - started
    size = sum(len(blob) for blob in blobs)
    report.update({
        "bytes_read": size,
        "input_bytes": size,
        "seconds": round(seconds, 3),
        "mb_per_s": round(size / 1e6 / max(seconds, 1e-9), 2),
        "out": str(out),
        "splits": splits,
        "num_embeddings": {s.name: s.num_embeddings for s in writer.sparse},
        "users": num_users,
        "items": num_items,
        "train_pairs": int(train_user.size),
        "test_pairs": int(test_user.size),
        "test_users": int(np.unique(test_user).size),
        "negatives": negatives,
        "rounds": rounds,
        "test_negatives": test_negatives,
        "seed": seed,
        "baselines": {"itempop": itempop},
    })
    info = {
        "source": {"format": "implicit lists (user item item ...)", "files": report["files"], "bytes_read": size},
        "raw_keys": "integer",  # the server maps a raw id through the vocabulary as this integer
        "preprocessing": (
            "implicit feedback, the given split: every train pair is a positive with `negatives` items outside "
            "the user's training pairs per round, `rounds` rounds; every test pair is a group of the test item "
            "and test_negatives distinct items outside both of the user's lists; "
            "ids = 2 + position among the sorted raw ids (vocab/<feature>.npy)"
        ),
        "protocol": {k: report[k] for k in ("users", "items", "train_pairs", "test_pairs", "test_users", "negatives",
                                            "rounds", "test_negatives", "seed")},
        "pairs_dropped": report["pairs_dropped"],
        "ranking": {"split": "test", "group_size": 1 + test_negatives},
        "full_ranking": {"split": "test", "k": FULL_RANKING_K, "items": num_items},
        "baselines": report["baselines"],
        "rejects": reject_info(report),
    }
    writer.finish(splits, info)  # publishes the schema
    if show_progress:
        say(f"prepared {num_users:,} users x {num_items:,} items: {train_user.size:,} training pairs x {rounds} "
            f"round(s) with {negatives} negatives each, {test_user.size:,} test pairs in groups of "
            f"{1 + test_negatives}; ItemPop HR@10 {itempop['hr_at_10']:.4f} -> {out}")
    return report


def _check_output_size(train_pairs: int, test_pairs: int, negatives: int, rounds: int, test_negatives: int) -> None:
    from recstack.data.prepare import check_output_rows

    check_output_rows(rounds * train_pairs * (1 + negatives) + test_pairs * (1 + test_negatives),
                      f"--rounds {rounds} x {train_pairs:,} training pairs x (1 + --negatives {negatives}) + "
                      f"{test_pairs:,} test pairs x (1 + --test-negatives {test_negatives})",
                      "--negatives, --rounds or --test-negatives")


# --------------------------------------------------------------------------------------------
# `recstack data prepare implicit`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from recstack.data.report import add_out_arguments

    parser.add_argument("--input", required=True, metavar="DIR", help="a folder with train.txt and test.txt")
    add_out_arguments(parser)
    add_sampling_arguments(parser, 1, "a pass over the train split = R epochs", "test item")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from recstack.data.report import run_converter

    return run_converter("data prepare implicit", args, extra, lambda: prepare_implicit(
        args.input, args.out, negatives=args.negatives, rounds=args.rounds, test_negatives=args.test_negatives,
        seed=args.seed, strict=args.strict, show_progress=not args.quiet))
