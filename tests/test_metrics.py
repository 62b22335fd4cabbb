import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from recstack.scoring.metrics import (
    MetricAccumulator,
    accuracy,
    auc,
    binary_metrics,
    calibration,
    hit_rate_at_k,
    logloss,
    ndcg_at_k,
    normalized_entropy,
    positive_rank,
)

EPS = 1e-7


def _data(n: int, seed: int, levels: int | None = None, rate: float = 0.3):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(np.float32)
    p = rng.random(n)
    if levels is not None:  # many ties
        p = np.round(p * levels) / levels
    p = np.clip(0.6 * p + 0.4 * y * rng.random(n), 0, 1).astype(np.float32)  # some signal
    return y, p


def _ne_direct(y, p, eps=EPS):
    y = np.asarray(y, np.float64)
    p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
    ll = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    r = y.mean()
    return ll / -(r * np.log(r) + (1 - r) * np.log(1 - r))


def _auc_pairs(y, s):
    """O(n^2) definition: P(s_pos > s_neg) + 0.5 P(tie)."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(s, np.float64)
    pos, neg = s[y][:, None], s[~y][None, :]
    return ((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size)


@pytest.mark.parametrize("n,levels", [(5000, None), (5000, 10), (5000, 2), (20000, 100), (3, None)])
@pytest.mark.parametrize("seed", [0, 1])
def test_against_sklearn(n, levels, seed):
    y, p = _data(n, seed, levels)
    if y.min() == y.max():
        y[0] = 1 - y[0]
    assert auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    pc = np.clip(p.astype(np.float64), EPS, 1 - EPS)
    assert logloss(y, p) == pytest.approx(log_loss(y, pc, labels=[0, 1]), rel=1e-12)
    assert accuracy(y, p) == pytest.approx(accuracy_score(y, p >= 0.5))
    assert accuracy(y, p, threshold=0.3) == pytest.approx(accuracy_score(y, p >= 0.3))
    assert normalized_entropy(y, p) == pytest.approx(_ne_direct(y, p), rel=1e-12)
    assert calibration(y, p) == pytest.approx(p.astype(np.float64).mean() / y.mean(), rel=1e-6)


def test_auc_all_tied_is_half():
    y = np.array([0, 1, 0, 1, 1])
    assert auc(y, np.full(5, 0.3)) == 0.5


def test_auc_tiny_and_pairs():
    assert auc([0, 1], [0.1, 0.9]) == 1.0
    assert auc([0, 1], [0.9, 0.1]) == 0.0
    assert auc([1, 0], [0.5, 0.5]) == 0.5
    y, s = np.array([1, 0, 1, 0, 0, 1]), np.array([0.5, 0.5, 0.2, 0.9, 0.2, 0.9])
    assert auc(y, s) == pytest.approx(_auc_pairs(y, s))
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_auc_is_rank_based():
    y, p = _data(2000, 3, levels=20)
    logits = np.log(np.clip(p, 1e-6, 1 - 1e-6) / (1 - np.clip(p, 1e-6, 1 - 1e-6)))
    assert auc(y, logits) == pytest.approx(auc(y, p), abs=1e-12)


def test_one_class_only():
    y = np.ones(10)
    p = np.linspace(0.1, 0.9, 10)
    assert math.isnan(auc(y, p))
    assert math.isnan(normalized_entropy(y, p))
    assert math.isnan(auc(np.zeros(10), p))
    assert math.isnan(normalized_entropy(np.zeros(10), p))
    assert math.isnan(calibration(np.zeros(10), p))
    assert logloss(y, p) == pytest.approx(log_loss(y, p, labels=[0, 1]))
    m = binary_metrics(np.zeros(10), p)
    assert m["count"] == 10 and m["base_rate"] == 0.0 and math.isnan(m["auc"]) and math.isnan(m["ne"])


def test_empty():
    m = binary_metrics(np.empty(0), np.empty(0))
    assert m["count"] == 0
    for key in ("auc", "logloss", "ne", "accuracy", "calibration", "base_rate"):
        assert math.isnan(m[key])


def test_extreme_probabilities_are_clipped():
    y = np.array([1, 0, 1, 0, 1, 0], dtype=np.float64)
    p = np.array([0.0, 1.0, 1.0, 0.0, 0.5, 0.5])
    ll = logloss(y, p)
    assert math.isfinite(ll)
    expected = log_loss(y, np.clip(p, EPS, 1 - EPS))
    assert ll == pytest.approx(expected, rel=1e-12)
    assert ll == pytest.approx((2 * -math.log(EPS) + 2 * -math.log1p(-EPS) + 2 * math.log(2)) / 6, rel=1e-9)
    assert normalized_entropy(y, p) == pytest.approx(ll / math.log(2), rel=1e-12)
    assert logloss(y, p, eps=1e-3) < ll
    # perfect confident predictions: loss is -log(1 - eps), not 0 and not NaN
    assert logloss([0, 1], [0.0, 1.0]) == pytest.approx(-math.log1p(-EPS))


def test_ne_base_rate_predictor_is_one():
    y, _ = _data(1000, 5)
    p = np.full(y.shape, y.mean())
    assert normalized_entropy(y, p) == pytest.approx(1.0, rel=1e-9)


def test_binary_metrics_keys_and_values():
    y, p = _data(3000, 7, levels=50)
    m = binary_metrics(y, p)
    assert set(m) == {"auc", "logloss", "ne", "accuracy", "calibration", "base_rate", "count"}
    assert m["count"] == 3000 and isinstance(m["count"], int)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["logloss"] == pytest.approx(logloss(y, p), rel=1e-15)
    assert m["ne"] == pytest.approx(_ne_direct(y, p), rel=1e-12)
    assert m["accuracy"] == accuracy(y, p)
    assert m["calibration"] == calibration(y, p)
    assert m["base_rate"] == pytest.approx(y.mean())


def test_torch_inputs():
    y, p = _data(1000, 8)
    ty, tp = torch.from_numpy(y), torch.from_numpy(p).requires_grad_(True)
    assert binary_metrics(ty, tp) == binary_metrics(y, p)
    assert auc(ty.bool(), tp.to(torch.bfloat16)) == pytest.approx(
        auc(y, torch.from_numpy(p).to(torch.bfloat16).float().numpy())
    )
    assert auc(ty[:, None], tp[:, None]) == auc(y, p)  # [N, 1] is accepted


def test_bad_inputs():
    with pytest.raises(ValueError, match="0 or 1"):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="length"):
        logloss([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        auc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="1-D"):
        auc(np.zeros((4, 2)), np.zeros((4, 2)))


def test_accumulator_matches_one_shot():
    y, p = _data(10_000, 9, levels=30)
    acc = MetricAccumulator(capacity=100)
    for start in range(0, 10_000, 777):
        acc.update(torch.from_numpy(y[start : start + 777]), torch.from_numpy(p[start : start + 777]))
    assert acc.count == 10_000
    got = acc.compute()
    assert "tasks" not in got
    assert got == binary_metrics(y, p)
    ly, lp = acc.arrays()
    np.testing.assert_array_equal(ly[:, 0], y)
    acc.reset()
    assert acc.count == 0
    acc.update(y[:10], p[:10])
    assert acc.compute() == binary_metrics(y[:10], p[:10])


def test_accumulator_multi_task():
    rng = np.random.default_rng(10)
    n, t = 5000, 3
    y = (rng.random((n, t)) < [0.1, 0.5, 0.02]).astype(np.float32)
    p = np.round(rng.random((n, t)) * 20).astype(np.float32) / 20
    acc = MetricAccumulator(task_names=["click", "like", "share"], capacity=64)
    for start in range(0, n, 512):
        acc.update(y[start : start + 512], p[start : start + 512])
    got = acc.compute()
    assert set(got["tasks"]) == {"click", "like", "share"}
    for j, name in enumerate(["click", "like", "share"]):
        assert got["tasks"][name] == binary_metrics(y[:, j], p[:, j])
        assert got["tasks"][name]["auc"] == pytest.approx(roc_auc_score(y[:, j], p[:, j]), abs=1e-12)
    for key, value in binary_metrics(y[:, 0], p[:, 0]).items():
        assert got[key] == value
    unnamed = MetricAccumulator()
    unnamed.update(y, p)
    assert list(unnamed.compute()["tasks"]) == ["task0", "task1", "task2"]


def test_accumulator_missing_labels_and_dtype_promotion():
    y = np.array([[1, 0], [0, np.nan], [1, 1], [0, 0]], dtype=np.float32)
    p = np.array([[0.9, 0.2], [0.1, 0.5], [0.8, 0.7], [0.3, 0.1]], dtype=np.float32)
    acc = MetricAccumulator()
    acc.update(y[:2], p[:2])
    acc.update(y[2:], p[2:].astype(np.float64))
    assert acc.arrays()[1].dtype == np.float64
    got = acc.compute()
    assert got["tasks"]["task1"]["count"] == 3
    assert got["tasks"]["task1"] == binary_metrics([0, 1, 0], p[[0, 2, 3], 1])
    with pytest.raises(ValueError, match="tasks"):
        acc.update(y[:, :1], p[:, :1])


def test_accumulator_empty():
    m = MetricAccumulator().compute()
    assert m["count"] == 0 and math.isnan(m["auc"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]) | st.floats(0, 1)),
        min_size=2,
        max_size=60,
    )
)
def test_property_auc_and_logloss(pairs):
    y = np.array([a for a, _ in pairs], dtype=np.float64)
    p = np.array([b for _, b in pairs], dtype=np.float64)
    got = auc(y, p)
    if y.min() == y.max():
        assert math.isnan(got)
    else:
        assert got == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert got == pytest.approx(_auc_pairs(y, p), abs=1e-12)
        assert auc(y, -p) == pytest.approx(1 - got, abs=1e-12)  # reversing the order mirrors AUC
        assert normalized_entropy(y, p) == pytest.approx(_ne_direct(y, p), rel=1e-10)
    assert logloss(y, p) == pytest.approx(log_loss(y, np.clip(p, EPS, 1 - EPS), labels=[0, 1]), rel=1e-10)
    assert accuracy(y, p) == pytest.approx(accuracy_score(y, p >= 0.5))
    acc = MetricAccumulator(capacity=1)
    for i in range(0, len(y), 7):
        acc.update(y[i : i + 7], p[i : i + 7])
    one_shot = binary_metrics(y, p)
    got_acc = acc.compute()
    for key, value in one_shot.items():
        assert got_acc[key] == value or (math.isnan(value) and math.isnan(got_acc[key]))


# ---------------------------------------------------------------------------------------------
# ranking


def test_ranking_simple():
    scores = np.array(
        [
            [0.9, 0.1, 0.2, 0.3],  # positive (col 0) ranks 0
            [0.2, 0.5, 0.1, 0.3],  # ranks 2
            [0.5, 0.5, 0.5, 0.5],  # all tied: rank 3 pessimistic, 0 optimistic
        ]
    )
    np.testing.assert_array_equal(positive_rank(scores), [0, 2, 3])
    np.testing.assert_array_equal(positive_rank(scores, ties="optimistic"), [0, 2, 0])
    assert hit_rate_at_k(scores, 0, k=1) == pytest.approx(1 / 3)
    assert hit_rate_at_k(scores, 0, k=3) == pytest.approx(2 / 3)
    assert hit_rate_at_k(scores, 0, k=4) == 1.0
    assert hit_rate_at_k(scores, 0, k=1, ties="optimistic") == pytest.approx(2 / 3)
    assert ndcg_at_k(scores, 0, k=3) == pytest.approx((1.0 + 1 / math.log2(4)) / 3)
    assert ndcg_at_k(scores, 0, k=4) == pytest.approx((1.0 + 1 / math.log2(4) + 1 / math.log2(5)) / 3)


def test_ranking_positive_index_array_and_torch():
    rng = np.random.default_rng(11)
    scores = rng.random((200, 100))
    pos = rng.integers(0, 100, 200)
    # brute force
    ranks = np.array([(scores[u] > scores[u, pos[u]]).sum() for u in range(200)])
    for k in (1, 5, 10):
        assert hit_rate_at_k(scores, pos, k) == pytest.approx(np.mean(ranks < k))
        expected = np.mean([1 / math.log2(r + 2) if r < k else 0.0 for r in ranks])
        assert ndcg_at_k(torch.from_numpy(scores), torch.from_numpy(pos), k) == pytest.approx(expected)


def test_ranking_bad_inputs():
    with pytest.raises(ValueError):
        hit_rate_at_k(np.zeros((2, 3)), 0, k=0)
    with pytest.raises(ValueError):
        positive_rank(np.zeros((2, 3)), 3)
    with pytest.raises(ValueError):
        positive_rank(np.zeros(3))
