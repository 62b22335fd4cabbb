"""Implicit-feedback lists (`user item item ...`): the given split kept pair for pair, the negatives
of both protocols checked against the lists read the plain way, line accounting on a corrupted copy,
full-ranking metrics against a direct computation, and the command line end to end (prepare, train
NCF, evaluate) on lists made from MovieLens 100K."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from recstack.cli import main
from recstack.data.implicit import load_full_ranking, prepare_implicit
from recstack.data.store import FIRST_VOCAB_ID, Dataset
from recstack.errors import DataError
from recstack.scoring.full_ranking import full_ranking_metrics, topk_metrics
from tests.conftest import shared_data


def write_lists(folder, train: dict[int, list[int]], test: dict[int, list[int]]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, lists in (("train.txt", train), ("test.txt", test)):
        (folder / name).write_text("".join(" ".join(map(str, [u, *items])) + "\n" for u, items in lists.items()))
    return folder


@pytest.fixture(scope="module")
def ml_lists(tmp_path_factory):
    """MovieLens 100K's first 200 users as lists: each user's ratings, every fifth (by line) held out."""
    train: dict[int, list[int]] = {}
    test: dict[int, list[int]] = {}
    for number, line in enumerate(shared_data("movielens", "ml-100k", "u.data").read_text().splitlines()):
        user, item = map(int, line.split("\t")[:2])
        if user <= 200:
            (test if number % 5 == 0 else train).setdefault(user, []).append(item)
    return write_lists(tmp_path_factory.mktemp("lists") / "ml", train, test), train, test


def raw_split(dataset: Dataset, split: str):
    a, b = dataset.split(split)
    users = dataset.vocab("user")[dataset.values["user"][a:b, 0] - FIRST_VOCAB_ID].astype(np.int64)
    items = dataset.vocab("item")[dataset.values["item"][a:b, 0] - FIRST_VOCAB_ID].astype(np.int64)
    return users, items, np.asarray(dataset.labels[a:b, 0])


def test_given_split_and_negatives(ml_lists, tmp_path):
    folder, train, test = ml_lists
    report = prepare_implicit(folder, tmp_path / "d", negatives=3, rounds=2, test_negatives=20, seed=1,
                              show_progress=False)
    dataset = Dataset(tmp_path / "d")
    train_pairs = {(u, i) for u, items in train.items() for i in items}
    test_pairs = {(u, i) for u, items in test.items() for i in items} - train_pairs
    known = train_pairs | test_pairs

    users, items, labels = raw_split(dataset, "train")
    positives = list(zip(users[labels == 1].tolist(), items[labels == 1].tolist()))
    assert sorted(positives) == sorted(list(train_pairs) * 2)  # every train pair, once a round
    assert (labels == 0).sum() == 3 * len(positives)
    # training negatives avoid the user's training pairs only (the reference code's rule)
    assert not {(u, i) for u, i, y in zip(users, items, labels) if y == 0} & train_pairs

    users, items, labels = raw_split(dataset, "test")
    groups = users.reshape(-1, 21), items.reshape(-1, 21), labels.reshape(-1, 21)
    assert (groups[2][:, 0] == 1).all() and (groups[2][:, 1:] == 0).all()
    assert sorted(zip(groups[0][:, 0].tolist(), groups[1][:, 0].tolist())) == sorted(test_pairs)
    for user_row, item_row in zip(*groups[:2]):
        assert (user_row == user_row[0]).all() and len(set(item_row.tolist())) == 21
        assert not {(int(user_row[0]), int(i)) for i in item_row[1:]} & known  # in neither list
    assert report["train_pairs"] == len(train_pairs) and report["test_pairs"] == len(test_pairs)
    assert dataset.schema.info["ranking"] == {"split": "test", "group_size": 21}


def test_full_ranking_pairs_stored_per_user(ml_lists, tmp_path):
    folder, train, test = ml_lists
    prepare_implicit(folder, tmp_path / "d", test_negatives=5, show_progress=False)
    dataset = Dataset(tmp_path / "d")
    full = load_full_ranking(dataset)
    raw_users, raw_items = dataset.vocab("user").astype(np.int64), dataset.vocab("item").astype(np.int64)
    assert full.num_items == raw_items.size
    for u, raw in enumerate(raw_users.tolist()):
        got_train = raw_items[full.train_items[full.train_indptr[u] : full.train_indptr[u + 1]]]
        got_test = raw_items[full.test_items[full.test_indptr[u] : full.test_indptr[u + 1]]]
        assert got_train.tolist() == sorted(set(train.get(raw, [])))
        assert got_test.tolist() == sorted(set(test.get(raw, [])) - set(train.get(raw, [])))


def test_rejects_are_counted(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "train.txt").write_bytes(b"1 10 11 11 12\r\n\n2 x 3\n3 10\n1 13\nu 4\n4 12 13\n")
    (folder / "test.txt").write_bytes(b"1 14 10\n3\n4 11\n")
    report = prepare_implicit(folder, tmp_path / "d", test_negatives=1, show_progress=False)
    assert report["rows_read"] == 10 == report["rows_kept"] + report["rows_rejected"]
    assert report["rejects_by_reason"] == {"empty_line": 1, "bad_user_id": 1, "bad_item_id": 1, "duplicate_user": 1}
    assert report["pairs_dropped"] == {"repeated_items": 1, "test_pairs_in_train": 1}
    assert report["train_pairs"] == 6 and report["test_pairs"] == 2  # (1, 14) and (4, 11)
    with pytest.raises(DataError, match="line 2"):
        prepare_implicit(folder, tmp_path / "s", test_negatives=1, strict=True, show_progress=False)
    with pytest.raises(DataError, match="fewer than 9 items"):
        prepare_implicit(folder, tmp_path / "n", test_negatives=9, show_progress=False)


def test_missing_files_and_empty_lists(tmp_path):
    only_train = tmp_path / "only"
    only_train.mkdir()
    (only_train / "train.txt").write_text("1 2\n")
    with pytest.raises(DataError, match="no test.txt"):
        prepare_implicit(only_train, tmp_path / "d", show_progress=False)
    with pytest.raises(DataError, match="no training pairs"):
        prepare_implicit(write_lists(tmp_path / "b", {1: []}, {1: [2]}), tmp_path / "d", show_progress=False)


def direct_metrics(scores: np.ndarray, train: list[list[int]], test: list[list[int]], k: int):
    """Recall@k and NDCG@k the plain way: sort every non-training item by score."""
    recall, ndcg = [], []
    for row, (seen, relevant) in enumerate(zip(train, test)):
        ranked = sorted((i for i in range(scores.shape[1]) if i not in seen), key=lambda i: -scores[row, i])[:k]
        hits = [p for p, i in enumerate(ranked) if i in relevant]
        recall.append(len(hits) / len(relevant))
        ideal = sum(1 / math.log2(p + 2) for p in range(min(len(relevant), k)))
        ndcg.append(sum(1 / math.log2(p + 2) for p in hits) / ideal)
    return np.array(recall), np.array(ndcg)


def test_topk_metrics_against_a_direct_computation():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(30, 50))
    train = [rng.choice(50, size=rng.integers(0, 10), replace=False).tolist() for _ in range(30)]
    test = [rng.choice([i for i in range(50) if i not in seen], size=rng.integers(1, 30), replace=False).tolist()
            for seen in train]
    recall, ndcg = topk_metrics(scores, [np.array(t, dtype=np.int64) for t in train], [np.array(t) for t in test], 20)
    want_recall, want_ndcg = direct_metrics(scores, train, test, 20)
    np.testing.assert_allclose(recall, want_recall)
    np.testing.assert_allclose(ndcg, want_ndcg)
    # a perfect ranking scores 1 on both; excluding training items is what makes it perfect
    perfect = np.zeros((1, 50))
    perfect[0, [3, 4]] = [2.0, 1.0]
    perfect[0, 7] = 5.0
    recall, ndcg = topk_metrics(perfect, [np.array([7])], [np.array([3, 4])], 1)
    assert recall[0] == 0.5 and ndcg[0] == 1.0


class TableScorer(nn.Module):
    """Scores (user, item) rows by a fixed matrix: the reference the metrics are computed for."""

    def __init__(self, matrix: np.ndarray):
        super().__init__()
        self.matrix = nn.Parameter(torch.as_tensor(matrix, dtype=torch.float32), requires_grad=False)

    def forward(self, batch):
        ids = batch.sparse.to_dict()
        return self.matrix[ids["user"][0] - FIRST_VOCAB_ID, ids["item"][0] - FIRST_VOCAB_ID]


def test_full_ranking_of_a_model(ml_lists, tmp_path):
    folder, _, _ = ml_lists
    prepare_implicit(folder, tmp_path / "d", test_negatives=5, show_progress=False)
    dataset = Dataset(tmp_path / "d")
    full = load_full_ranking(dataset)
    num_users = full.train_indptr.size - 1
    matrix = np.random.default_rng(2).normal(size=(num_users, full.num_items)).astype(np.float32)
    # a small batch size: users split over many forwards
    got = full_ranking_metrics(TableScorer(matrix), full, ["user", "item"], 1, 3 * full.num_items + 5,
                               torch.device("cpu"))
    users = [u for u in range(num_users) if full.test_indptr[u + 1] > full.test_indptr[u]]
    train = [set(full.train_items[full.train_indptr[u] : full.train_indptr[u + 1]].tolist()) for u in users]
    test = [set(full.test_items[full.test_indptr[u] : full.test_indptr[u + 1]].tolist()) for u in users]
    recall, ndcg = direct_metrics(matrix[users].astype(np.float64), train, test, 20)
    assert got["full_ranking_users"] == len(users)
    assert got["recall_at_20"] == pytest.approx(recall.mean()) and got["ndcg_at_20"] == pytest.approx(ndcg.mean())


def test_cli_prepare_train_evaluate(ml_lists, tmp_path, capsys):
    folder, _, _ = ml_lists
    data = tmp_path / "data"
    assert main(["data", "prepare", "implicit", "--input", str(folder), "--out", str(data), "--test-negatives", "50",
                 "--quiet"]) == 0
    assert main(["data", "prepare", "implicit", "--input", str(folder), "--out", str(data), "--quiet"]) == 2
    assert "give --overwrite" in capsys.readouterr().err
    report = tmp_path / "r.json"
    assert main(["train", "--config", "configs/ncf-movielens.yaml", "--data", str(data), "--checkpoint-dir",
                 str(tmp_path / "ckpt"), "--train.epochs", "2", "--report", str(report), "--quiet"]) == 0
    test = json.loads(report.read_text())["metrics_by_split"]["test"]
    assert test["ranking_candidates"] == 51 and 0 < test["hr_at_10"] <= 1
    assert test["full_ranking_users"] > 150 and 0 < test["recall_at_20"] <= 1 and 0 < test["ndcg_at_20"] <= 1
    evaluated = tmp_path / "e.json"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(data), "--report", str(evaluated),
                 "--quiet"]) == 0
    again = json.loads(evaluated.read_text())["metrics"]
    assert again["recall_at_20"] == pytest.approx(test["recall_at_20"])


def test_the_server_maps_raw_ids_through_the_vocabulary(ml_lists, tmp_path):
    from recstack.serve.api import RankRequest, RequestEncoder

    folder, _, _ = ml_lists
    prepare_implicit(folder, tmp_path / "d", test_negatives=5, show_progress=False)
    dataset = Dataset(tmp_path / "d")
    encoder = RequestEncoder(dataset.schema, {name: dataset.vocab(name) for name in dataset.schema.vocab})
    users, items = dataset.vocab("user"), dataset.vocab("item")
    sparse = encoder.encode(RankRequest(shared={"user": str(users[4])},
                                        candidates={"item": [int(items[0]), str(items[7]), 999_999]})).sparse.to_dict()
    assert sparse["user"][0].tolist() == [FIRST_VOCAB_ID + 4] * 3
    assert sparse["item"][0].tolist() == [FIRST_VOCAB_ID, FIRST_VOCAB_ID + 7, 0]
    assert encoder.describe()["raw_values"] == "the integer id as in the source file"
