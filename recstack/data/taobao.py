"""Taobao UserBehavior -> a behaviour dataset with the Amazon converter's features (recstack.data.amazon),
so DIN and DIEN train on either unchanged.

Input: `user,item,category,behavior,unix_time` lines, behavior one of pv (a click), buy, cart, fav.

Each user's clicks, in time order (ties in file order), make the samples: every click after the first
is a positive target whose history is the user's clicks strictly before it (the last `max_history`),
and `negatives` items drawn uniformly from the catalogue (every clicked item) other than the positive
follow it with label 0 and the same history. Each user's last target (with its negatives) goes to the
`test` split, the others to `train`, ordered by the target's time so that a validation tail
(data.val_fraction) is the most recent clicks. Items and categories are numbered by vocabularies over
the whole catalogue (vocab/target_item.npy, vocab/target_cate.npy hold the raw ids); an item's
category is the one of its first click. Users: as Amazon (a vocabulary over the train split).

Other behaviours are valid rows, counted by kind and not turned into samples. Lines that do not parse
are rejected with a reason from TAOBAO_REJECT_REASONS: rows_read == rows_kept + rows_rejected.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from recstack import argtypes
from recstack.data.amazon import (
    DEFAULT_USER_MIN_COUNT,
    LINE_REJECT_REASONS,
    BehaviourRows,
    accounting,
    data_report,
    log_rejects,
    parse_file,
    require_rows,
    word_code,
    write_behaviour_dataset,
)
from recstack.errors import DataError

TAOBAO_REJECT_REASONS: tuple[str, ...] = (*LINE_REJECT_REASONS, "unknown_behavior")
"""unknown_behavior: the behaviour field is none of BEHAVIORS."""
BEHAVIORS = ("pv", "buy", "cart", "fav")
CLICK = "pv"
DEFAULT_MAX_HISTORY = 50
DEFAULT_NEGATIVES = 1
_USER, _ITEM, _CATE, _BEHAVIOR, _TIME = range(5)


def click_samples(
    user: np.ndarray, time_: np.ndarray, *, max_history: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clicks (any order) -> per sample: the target's index, its history's start and length, whether
    it is its user's last (the test sample); and `order`, the clicks sorted by (user, time, input
    position), which the indices point into: the history of target g is order[start : g]."""
    order = np.lexsort((time_, user))  # stable: equal times keep their input order
    sorted_user = user[order]
    first = np.r_[True, sorted_user[1:] != sorted_user[:-1]]
    user_start = np.maximum.accumulate(np.where(first, np.arange(order.size), 0))
    position = np.arange(order.size) - user_start
    last = np.r_[first[1:], True]  # the last click of its user
    targets = np.flatnonzero(position >= 1)
    lengths = np.minimum(position[targets], min(max_history, order.size))  # any cap beyond the clicks is none
    return targets, targets - lengths, lengths, last[targets], order


def sample_negatives(positive: np.ndarray, catalogue_size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """[n, count] uniform draws from range(catalogue_size) other than each row's positive."""
    if catalogue_size < 2:
        raise DataError("negative sampling needs at least two distinct clicked items")
    draws = rng.integers(0, catalogue_size - 1, size=(positive.size, count))
    return draws + (draws >= positive[:, None])


def prepare_taobao(
    input_path: str | Path,
    out: str | Path,
    *,
    max_history: int = DEFAULT_MAX_HISTORY,
    negatives: int = DEFAULT_NEGATIVES,
    user_min_count: int = DEFAULT_USER_MIN_COUNT,
    seed: int = 0,
    strict: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Convert a UserBehavior CSV into a behaviour dataset at `out`; returns the data report."""
    from recstack.data.prepare import RejectLog, check_inputs, check_output_rows
    from recstack.data.store import FIRST_VOCAB_ID, gather_ranges
    from recstack.progress import say

    started = time.perf_counter()
    for name, value in (("max_history", max_history), ("negatives", negatives), ("user_min_count", user_min_count)):
        if value < 1:
            raise DataError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if seed < 0:
        raise DataError(f"--seed must be >= 0, got {seed}")
    (path,) = check_inputs(input_path)
    parsed = parse_file(path, "D,D,D,W,D")
    codes = {name: i for i, name in enumerate(TAOBAO_REJECT_REASONS)}
    behavior = parsed.fields[:, _BEHAVIOR]
    known = np.isin(behavior, [word_code(b) for b in BEHAVIORS])
    log = RejectLog(TAOBAO_REJECT_REASONS, strict)
    log_rejects(log, path, parsed, np.where(known, -1, codes["unknown_behavior"]))
    rows = parsed.fields[known]
    lines_by_file = {path.name: parsed.num_lines}
    require_rows(path, rows.shape[0], parsed.num_lines, log, lines_by_file)
    clicks = rows[rows[:, _BEHAVIOR] == word_code(CLICK)]
    if clicks.shape[0] == 0:
        raise DataError(f"no clicks ({CLICK} rows) in {path} ({log.summary()})", report=accounting(log, lines_by_file))

    items, item_rank, first_click = _catalogue(clicks[:, _ITEM])
    cates, cate_rank = np.unique(clicks[first_click, _CATE], return_inverse=True)
    item_categories = np.r_[np.zeros(FIRST_VOCAB_ID, np.int64), FIRST_VOCAB_ID + cate_rank]
    conflicting = _items_with_several_categories(item_rank, clicks[:, _CATE])

    targets, starts, lengths, is_test, order = click_samples(clicks[:, _USER], clicks[:, _TIME], max_history=max_history)
    if is_test.all():
        most = int(np.unique(clicks[:, _USER], return_counts=True)[1].max())
        raise DataError(f"no training samples in {path}: a user's clicks after the first are targets and the last "
                        f"goes to test, so some user needs at least 3 clicks (the most here: {most})",
                        report=accounting(log, lines_by_file))
    check_output_rows(targets.size * (1 + negatives), f"{targets.size:,} click targets x (1 + --negatives {negatives})",
                      "--negatives")
    sorted_items = FIRST_VOCAB_ID + item_rank[order]
    sorted_users, sorted_times = clicks[order, _USER], clicks[order, _TIME]
    rng = np.random.default_rng(seed)
    negative = FIRST_VOCAB_ID + sample_negatives(item_rank[order][targets], items.size, negatives, rng)

    def rows_of(picked: np.ndarray) -> BehaviourRows:
        """Samples `picked` (indices into targets), each as its positive then its negatives."""
        k = 1 + negatives
        repeat = np.repeat(picked, k)
        candidates = np.c_[sorted_items[targets[picked]], negative[picked]].reshape(-1)
        return BehaviourRows(
            user=sorted_users[targets[repeat]],
            item=candidates,
            history=gather_ranges(sorted_items, starts[repeat], lengths[repeat]),
            history_lengths=lengths[repeat],
            labels=np.tile(np.r_[1.0, np.zeros(negatives)].astype(np.float32), picked.size),
        )

    train = np.flatnonzero(~is_test)
    train = train[np.argsort(sorted_times[targets[train]], kind="stable")]
    splits = {"train": rows_of(train), "test": rows_of(np.flatnonzero(is_test))}
    by_behavior = {b: int((rows[:, _BEHAVIOR] == word_code(b)).sum()) for b in BEHAVIORS}
    summary = {"behaviors": by_behavior, "users": int(np.unique(clicks[:, _USER]).size), "items": int(items.size),
               "categories": int(cates.size), "items_with_several_categories": conflicting,
               "targets": {"train": int(train.size), "test": int(is_test.sum())}}
    info = {
        "source": {"format": "taobao-user-behavior", "files": [str(path)]},
        "raw_keys": "integer",  # the server maps a raw id through the vocabulary as this integer
        "preprocessing": (
            f"per-user click ({CLICK}) sequences in time order; every click after the first is a positive with "
            f"the user's earlier clicks (last {max_history}) as history, plus {negatives} uniform negative(s) "
            "from the clicked catalogue; each user's last target -> test; item and category ids = "
            f"{FIRST_VOCAB_ID} + rank in vocab/target_item.npy, vocab/target_cate.npy; an item's category is "
            "that of its first click"
        ),
        "max_history": max_history, "negatives": negatives, "seed": seed, "user_min_count": user_min_count,
        **summary, **accounting(log, lines_by_file),
    }
    written = write_behaviour_dataset(Path(out), splits, item_categories, user_min_count, info,
                                      {"target_item": items, "target_cate": cates})
    report = {**data_report(info, parsed.text_bytes, started, Path(out), written, [path]), **summary}
    if show_progress:
        say(f"prepared {summary['targets']['train'] + summary['targets']['test']:,} click targets "
            f"({written['rows_written']:,} rows with negatives) from {report['rows_kept']:,} lines, rejected "
            f"{report['rows_rejected']:,} ({log.summary()}) -> {out}")
    return report


def _catalogue(items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted distinct items, rank of every click's item, index of each item's first click)."""
    distinct, first, rank = np.unique(items, return_index=True, return_inverse=True)
    return distinct, rank, first


def _items_with_several_categories(item_rank: np.ndarray, cates: np.ndarray) -> int:
    pairs = np.unique(np.c_[item_rank, cates], axis=0)
    return int((np.bincount(pairs[:, 0]) > 1).sum())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from recstack.data.report import add_out_arguments

    parser.add_argument("--input", required=True, metavar="FILE", help="UserBehavior CSV: user,item,category,behavior,time")
    add_out_arguments(parser)
    parser.add_argument("--max-history", type=argtypes.positive_int, default=DEFAULT_MAX_HISTORY, metavar="N",
                        help=f"keep each target's last N earlier clicks (default {DEFAULT_MAX_HISTORY})")
    parser.add_argument("--negatives", type=argtypes.positive_int, default=DEFAULT_NEGATIVES, metavar="K",
                        help=f"sampled negative items per positive (default {DEFAULT_NEGATIVES})")
    parser.add_argument("--user-min-count", type=argtypes.positive_int, default=DEFAULT_USER_MIN_COUNT, metavar="N",
                        help=f"users with fewer train rows share the OOV id (default {DEFAULT_USER_MIN_COUNT})")
    parser.add_argument("--seed", type=argtypes.seed, default=0, help="seed of the negative sampling")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad line")
    parser.add_argument("--report", metavar="FILE", help="write the JSON report here")
    parser.add_argument("--quiet", action="store_true", help="no progress or tables")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from recstack.data.report import run_converter

    return run_converter("data prepare taobao", args, extra, lambda: prepare_taobao(
        args.input, args.out, max_history=args.max_history, negatives=args.negatives,
        user_min_count=args.user_min_count, seed=args.seed, strict=args.strict, show_progress=not args.quiet))
