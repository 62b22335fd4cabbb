"""MovieLens leave-one-out: the split, the negatives and the test groups checked against the raw
ratings read independently; reject accounting on a corrupted copy; the samplers at their limit;
ItemPop; and the NeuMF recipe (a short training beats ItemPop; the full recipe reaches the target)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from recstack.cli import main
from recstack.data.movielens import (
    REJECT_REASONS,
    RatedPairs,
    item_pop_metrics,
    prepare_movielens,
    sample_distinct_unrated,
    sample_unrated,
)
from recstack.data.store import FIRST_VOCAB_ID, Dataset
from recstack.errors import DataError
from tests.conftest import REPO, shared_data

ML100K_USERS, ML100K_RATINGS = 943, 100_000


def read_raw(path) -> list[tuple[int, int, int]]:
    """(user, item, time) of every line, the plain way."""
    rows = []
    for line in path.read_text().splitlines():
        user, item, _, stamp = line.split("\t")
        rows.append((int(user), int(item), int(stamp)))
    return rows


def raw_columns(dataset: Dataset, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw user ids, raw item ids and labels of a split."""
    a, b = dataset.split(split)
    users = dataset.vocab("user")[dataset.values["user"][a:b, 0] - FIRST_VOCAB_ID].astype(np.int64)
    items = dataset.vocab("item")[dataset.values["item"][a:b, 0] - FIRST_VOCAB_ID].astype(np.int64)
    return users, items, np.asarray(dataset.labels[a:b, 0])


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    out = tmp_path_factory.mktemp("ml100k") / "data"
    report = prepare_movielens(shared_data("movielens", "ml-100k"), out, rounds=2, seed=3, show_progress=False)
    return Dataset(out), report


def test_leave_one_out_split(ml100k):
    dataset, report = ml100k
    raw = read_raw(shared_data("movielens", "ml-100k", "u.data"))
    latest: dict[int, tuple[int, int, int]] = {}  # user -> (time, line, item): the max is the held-out one
    for line, (user, item, stamp) in enumerate(raw):
        latest[user] = max(latest.get(user, (-1, -1, -1)), (stamp, line, item))
    test_users, test_items, test_labels = raw_columns(dataset, "test")
    groups = test_users.reshape(-1, 100)
    assert groups.shape[0] == ML100K_USERS == len(latest)
    assert (groups == groups[:, :1]).all(), "a group holds one user"
    positives = test_labels.reshape(-1, 100)
    assert (positives[:, 0] == 1).all() and (positives[:, 1:] == 0).all(), "the positive first, then 99 negatives"
    assert {u: i for u, i in zip(groups[:, 0], test_items.reshape(-1, 100)[:, 0])} == {u: v[2] for u, v in latest.items()}

    users, items, labels = raw_columns(dataset, "train")
    held_out = {(u, v[2]) for u, v in latest.items()}
    assert held_out.isdisjoint(zip(users.tolist(), items.tolist())), "no training row holds a test positive"
    rounds, per_round = 2, ML100K_RATINGS - ML100K_USERS
    assert report["train_positives"] == per_round and len(labels) == rounds * per_round * 5
    assert int(labels.sum()) == rounds * per_round
    # every other rating is a training positive, in each round
    train_pairs = sorted(zip(users[labels == 1].tolist(), items[labels == 1].tolist()))
    expected = sorted((u, i) for u, i, _ in raw if (u, i) not in held_out)
    assert train_pairs == sorted(expected * rounds)
    assert dataset.schema.info["ranking"] == {"split": "test", "group_size": 100}


def test_negatives_are_never_rated_and_test_negatives_distinct(ml100k):
    dataset, _ = ml100k
    rated = {(u, i) for u, i, _ in read_raw(shared_data("movielens", "ml-100k", "u.data"))}
    users, items, labels = raw_columns(dataset, "train")
    negative_pairs = set(zip(users[labels == 0].tolist(), items[labels == 0].tolist()))
    assert negative_pairs.isdisjoint(rated)
    test_users, test_items, test_labels = raw_columns(dataset, "test")
    assert set(zip(test_users[test_labels == 0].tolist(), test_items[test_labels == 0].tolist())).isdisjoint(rated)
    candidates = test_items.reshape(-1, 100)
    assert all(len(set(row)) == 100 for row in candidates.tolist())
    # fresh negatives in each round: the two rounds' negatives for the same positives differ
    per_round = len(labels) // 2
    first, second = items[:per_round][labels[:per_round] == 0], items[per_round:][labels[per_round:] == 0]
    assert np.mean(first == second) < 0.01


def test_samplers_at_their_limit():
    """A user who rated all but `count` items gets exactly those; a single redraw loop terminates."""
    num_items, count = 30, 5
    rated_items = np.arange(count, num_items)  # user 0 rated items 5..29; user 1 rated item 0
    rated = RatedPairs(np.r_[np.zeros(rated_items.size, int), 1], np.r_[rated_items, 0], num_items)
    rng = np.random.default_rng(0)
    drawn = sample_distinct_unrated(rng, np.array([0, 1]), count, rated)
    assert sorted(drawn[0]) == list(range(count))
    assert len(set(drawn[1])) == count and 0 not in drawn[1]
    singles = sample_unrated(rng, np.zeros(1000, int), rated)
    assert set(singles.tolist()) == set(range(count))


def test_item_pop_by_hand():
    popularity = np.array([11, 10, 9, 8, 7, 6, 6, 4, 3, 2, 1, 0])  # items 5 and 6 tie
    train_items = np.repeat(np.arange(12), popularity)
    # positives 0, 11, 5 before the other items: ranks 0, 11 (a miss) and 6 (the tie ranks above)
    candidates = np.array([[p, *(i for i in range(12) if i != p)] for p in (0, 11, 5)])
    got = item_pop_metrics(train_items, candidates, 12)
    assert got["hr_at_10"] == pytest.approx(2 / 3)
    assert got["ndcg_at_10"] == pytest.approx((1 + 1 / np.log2(8)) / 3)


def test_item_pop_on_ml100k(ml100k):
    _, report = ml100k
    itempop = report["baselines"]["itempop"]
    assert 0.35 < itempop["hr_at_10"] < 0.45, itempop  # the literature's ~0.40
    assert 0.18 < itempop["ndcg_at_10"] < 0.27, itempop


def write_corrupted(tmp_path):
    good = shared_data("movielens", "ml-100k", "u.data").read_bytes().splitlines(keepends=True)[:300]
    bad = [
        b"1\t2\t3\n",                  # 3: wrong_field_count
        b"\n",                         # 4: wrong_field_count (empty)
        b"x1\t2\t3\t881250949\n",      # 5: bad_user_id
        b"7\t\t3\t881250949\n",        # 6: bad_item_id
        b"7\t2\tgood\t881250949\n",    # 7: bad_rating
        b"7\t2\t3\t88125O949\n",       # 8: bad_timestamp (a letter O)
        b"7\t2\t3\t8\t9\n",            # 9: wrong_field_count
        b"900\t901\t4\t881250949\r\n",  # 10: kept (CRLF)
        b"900\t901\t5\t881250950\n",   # 11: kept; line 10 becomes a duplicate_rating
        b"7\t2\t3.5\t881250949\x00\n",  # 12: bad_timestamp (binary)
    ]
    path = tmp_path / "u.data"
    path.write_bytes(b"".join(good[:2] + bad + good[2:]).rstrip(b"\n"))  # the last line has no newline
    return path, len(good) + len(bad)


def test_reject_accounting(tmp_path):
    path, lines = write_corrupted(tmp_path)
    report_path = tmp_path / "report.json"
    assert main(["data", "prepare", "movielens", "--input", str(path), "--out", str(tmp_path / "out"),
                 "--rounds", "1", "--test-negatives", "9", "--report", str(report_path), "--quiet"]) == 0
    report = json.loads(report_path.read_text())
    assert report["rows_read"] == lines == report["rows_kept"] + report["rows_rejected"]
    assert report["rejects_by_reason"] == {
        "wrong_field_count": 3, "bad_user_id": 1, "bad_item_id": 1, "bad_rating": 1, "bad_timestamp": 2,
        "duplicate_rating": 1,
    }
    assert set(report["rejects_by_reason"]) == set(REJECT_REASONS)
    assert [e["line"] for e in report["reject_examples"]["wrong_field_count"]] == [3, 4, 9]
    assert report["reject_examples"]["duplicate_rating"][0]["line"] == 10
    dataset = Dataset(tmp_path / "out")
    assert dataset.schema.info["rejects"]["rows_rejected"] == report["rows_rejected"]
    assert dataset.schema.info["ranking"]["group_size"] == 10
    # every kept rating but one per user is a training positive
    assert report["train_positives"] == report["rows_kept"] - report["users"]

    with pytest.raises(DataError, match="line 3"):
        prepare_movielens(path, tmp_path / "strict", strict=True, show_progress=False)


def test_unusable_input_is_one_line(tmp_path, capsys):
    assert main(["data", "prepare", "movielens", "--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "holds none of u.data, ratings.dat" in err and err.count("\n") == 1
    (tmp_path / "u.data").write_bytes(b"a\tb\n")
    report = tmp_path / "r.json"
    assert main(["data", "prepare", "movielens", "--input", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--report", str(report), "--quiet"]) == 2
    assert json.loads(report.read_text())["rows_rejected"] == 1


def test_ml1m_format(tmp_path):
    """`::` fields; user 1 rated items 1-10 and 12, user 2 items 1-11, later items later."""
    rated = {1: [*range(1, 11), 12], 2: list(range(1, 12))}
    lines = [f"{u}::{i}::4::{978300000 + 100 * u + i}" for u, items in rated.items() for i in items]
    (tmp_path / "ratings.dat").write_text("\n".join(lines) + "\n")
    report = prepare_movielens(tmp_path, tmp_path / "out", rounds=1, test_negatives=1, show_progress=False)
    assert (report["rows_read"], report["rows_kept"], report["users"], report["items"]) == (22, 22, 2, 12)
    users, items, labels = raw_columns(Dataset(tmp_path / "out"), "test")
    # each user's latest item, then the one item the user never rated
    assert users.tolist() == [1, 1, 2, 2] and items.tolist() == [12, 11, 11, 12] and labels.tolist() == [1, 0, 1, 0]
    with pytest.raises(DataError, match="2 user.s. have fewer than 2 unrated items"):
        prepare_movielens(tmp_path, tmp_path / "out2", test_negatives=2, show_progress=False)


def train_recipe(data, tmp_path, seed: int) -> dict:
    report_path = tmp_path / f"train-{seed}.json"
    subprocess.run([sys.executable, "-m", "recstack.cli", "train", "--config", str(REPO / "configs" / "ncf-movielens.yaml"),
                    "--data", str(data), "--seed", str(seed), "--report", str(report_path), "--quiet"], check=True)
    return json.loads(report_path.read_text())["metrics"]


def test_one_ncf_epoch_beats_item_pop(tmp_path):
    """The recipe's model and settings on one round of negatives (seconds): well above ItemPop."""
    data = tmp_path / "data"
    report = prepare_movielens(shared_data("movielens", "ml-100k"), data, rounds=1, show_progress=False)
    itempop = report["baselines"]["itempop"]
    metrics = train_recipe(data, tmp_path, seed=0)
    assert metrics["ranking_users"] == ML100K_USERS
    assert metrics["hr_at_10"] > itempop["hr_at_10"] + 0.05, (metrics, itempop)
    assert metrics["ndcg_at_10"] > itempop["ndcg_at_10"] + 0.03, (metrics, itempop)


@pytest.mark.slow
def test_recipe_reaches_target(tmp_path):
    data = tmp_path / "data"
    cli = [sys.executable, "-m", "recstack.cli"]
    subprocess.run([*cli, "data", "prepare", "movielens", "--input", str(shared_data("movielens", "ml-100k")),
                    "--out", str(data), "--quiet"], check=True)
    metrics = train_recipe(data, tmp_path, seed=0)
    assert metrics["hr_at_10"] >= 0.62, metrics
    assert metrics["ndcg_at_10"] >= 0.36, metrics


def run_cli(args: list[str]) -> int:
    """main(), with argparse's refusals (SystemExit) read as their exit code."""
    try:
        return main(args)
    except SystemExit as exc:
        return int(exc.code)


@pytest.mark.parametrize("option, value, message", [
    ("--seed", "-1", "argument --seed: expected a seed in [0, 4294967295], got -1"),
    ("--negatives", "0", "argument --negatives: expected a positive integer, got 0"),
    ("--negatives", "-3", "argument --negatives: expected a positive integer"),
    ("--rounds", "0", "argument --rounds: expected a positive integer"),
    ("--test-negatives", "nan", "argument --test-negatives: expected a positive integer, got 'nan'"),
    ("--negatives", "1000000000", "(1 + --negatives 1000000000)"),
    ("--rounds", "100000000", "--rounds 100000000 x"),
])
def test_options_out_of_range_are_refused_before_any_work(tmp_path, capsys, option, value, message):
    path, _ = write_corrupted(tmp_path)
    assert run_cli(["data", "prepare", "movielens", "--input", str(path), "--out", str(tmp_path / "out"),
                    "--quiet", option, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "error" in err[-1]
    if not message.startswith("argument"):  # the size check: one line that names the limit and what to lower
        assert len(err) == 1 and "over the limit of 2,147,483,647 rows" in err[0] and "lower --negatives" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    (b"", r"no usable ratings in .*u.data \(the file is empty\)"),
    (b"1\t2\t3\t4\n2\t3\t3\t5\n", "no training ratings in .*a user needs at least 2 ratings .all 2 users here have 1."),
])
def test_input_without_training_ratings_is_one_data_error(tmp_path, content, message):
    (tmp_path / "u.data").write_bytes(content)
    with pytest.raises(DataError, match=message) as caught:
        prepare_movielens(tmp_path, tmp_path / "out", test_negatives=1, show_progress=False)
    assert caught.value.report["rows_read"] == content.count(b"\n")  # the report still counts what was read
    assert not (tmp_path / "out").exists()
