"""Exact binary-classification and ranking metrics for recommendation models.

Everything is computed in numpy over the whole evaluation set (no per-batch averaging of
AUC, no per-sample Python); inputs may be numpy arrays, lists or torch tensors (any device and
float dtype), labels 0/1 (bool, int or float).

- `auc`: ROC AUC via the Mann-Whitney statistic with tied scores counted one half (the same
  number as average ranks), O(n log n), counts and sums in int64/float64. NaN when only one
  class is present.
- `logloss`: mean binary cross-entropy with probabilities clipped to [eps, 1 - eps].
- `normalized_entropy` (NE): logloss divided by the entropy of the base rate p = mean(labels),
  i.e. by the logloss of always predicting p (He et al. 2014, "Practical lessons from predicting
  clicks on ads at Facebook"). Lower is better; 1.0 means no better than the base rate. NaN when
  p is 0 or 1.
- `accuracy`: fraction of samples where (prob >= threshold) equals the label.
- `calibration`: mean(probs) / mean(labels); 1.0 is calibrated. NaN when there are no positives.
- `MetricAccumulator`: collects (labels, probs) over batches into growing numpy buffers and
  computes `binary_metrics` at the end, per task for multi-task models.
- `hit_rate_at_k`, `ndcg_at_k`: leave-one-out ranking metrics with one positive among C
  candidates per user (the NCF protocol).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "MetricAccumulator",
    "accuracy",
    "auc",
    "binary_metrics",
    "calibration",
    "hit_rate_at_k",
    "logloss",
    "ndcg_at_k",
    "normalized_entropy",
    "positive_rank",
]

DEFAULT_EPS = 1e-7


# --------------------------------------------------------------------------------------------
# input handling


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of an array-like or torch tensor (detached, on CPU, half floats widened)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if x.is_floating_point() and x.element_size() < 4:  # float16 / bfloat16 have no numpy twin
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _flat(x: Any, name: str) -> np.ndarray:
    a = _to_numpy(x)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (or [N, 1]), got shape {a.shape}; use MetricAccumulator for multi-task")
    return a


def _labels(labels: Any) -> np.ndarray:
    """Labels as a bool array; raises unless every label is 0 or 1."""
    y = _flat(labels, "labels")
    if y.dtype == np.bool_:
        return y
    if y.size and not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    return y != 0


def _scores(scores: Any, n: int, name: str) -> np.ndarray:
    s = _flat(scores, name)
    if s.shape[0] != n:
        raise ValueError(f"labels and {name} differ in length: {n} vs {s.shape[0]}")
    if s.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be numeric, got dtype {s.dtype}")
    if s.dtype.kind == "f" and s.size and np.isnan(s).any():
        raise ValueError(f"{name} contain NaN")
    return s


# --------------------------------------------------------------------------------------------
# kernels on validated arrays (y: bool [n], s/p: numeric [n])


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    n = y.shape[0]
    n_pos = int(np.count_nonzero(y))
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s)  # ties may land in any order: they are grouped below
    s_sorted = s[order]
    y_sorted = y[order]
    # last index of every run of equal scores
    ends = np.flatnonzero(s_sorted[1:] != s_sorted[:-1])
    ends = np.append(ends, n - 1)
    pos_cum = np.cumsum(y_sorted, dtype=np.int64)[ends]
    pos_g = np.diff(pos_cum, prepend=0)  # positives per group
    neg_g = np.diff(ends + 1 - pos_cum, prepend=0)  # negatives per group
    neg_below = np.cumsum(neg_g) - neg_g  # negatives with strictly lower score
    # sum over positives of (#neg below + 0.5 * #neg tied), in float64
    u = np.sum(pos_g.astype(np.float64) * (neg_below.astype(np.float64) + 0.5 * neg_g))
    return float(u / (float(n_pos) * float(n_neg)))


def _logloss(y: np.ndarray, p: np.ndarray, eps: float) -> float:
    if y.shape[0] == 0:
        return math.nan
    p = np.clip(p.astype(np.float64), eps, 1.0 - eps)
    q = np.where(y, p, 1.0 - p)  # probability given to the true class
    return float(-np.mean(np.log(q)))


def _base_entropy(rate: float) -> float:
    if not 0.0 < rate < 1.0:
        return math.nan
    return -(rate * math.log(rate) + (1.0 - rate) * math.log1p(-rate))


def _accuracy(y: np.ndarray, p: np.ndarray, threshold: float) -> float:
    if y.shape[0] == 0:
        return math.nan
    return float(np.count_nonzero((p >= threshold) == y) / y.shape[0])


def _calibration(y: np.ndarray, p: np.ndarray) -> float:
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0:
        return math.nan
    return float(np.sum(p, dtype=np.float64) / n_pos)  # mean(p) / mean(y): the n cancels


# --------------------------------------------------------------------------------------------
# public binary metrics


def auc(labels: Any, scores: Any) -> float:
    """ROC AUC = P(score of a random positive > score of a random negative) + 0.5 P(tie).

    Exact (Mann-Whitney U with average ranks for ties), O(n log n). Scores may be probabilities
    or logits (any monotone transform gives the same AUC). NaN when only one class is present.
    """
    y = _labels(labels)
    return _auc(y, _scores(scores, y.shape[0], "scores"))


def logloss(labels: Any, probs: Any, eps: float = DEFAULT_EPS) -> float:
    """Mean binary cross-entropy (natural log), probabilities clipped to [eps, 1 - eps]."""
    y = _labels(labels)
    return _logloss(y, _scores(probs, y.shape[0], "probs"), eps)


def normalized_entropy(labels: Any, probs: Any, eps: float = DEFAULT_EPS) -> float:
    """NE = logloss / H(p), H(p) = -(p log p + (1-p) log(1-p)), p = mean(labels).

    The logloss relative to a model that always predicts the base rate; NaN if p is 0 or 1.
    """
    y = _labels(labels)
    p = _scores(probs, y.shape[0], "probs")
    if y.shape[0] == 0:
        return math.nan
    return _logloss(y, p, eps) / _base_entropy(float(np.count_nonzero(y)) / y.shape[0])


def accuracy(labels: Any, probs: Any, threshold: float = 0.5) -> float:
    """Fraction of samples whose prediction (prob >= threshold) equals the label."""
    y = _labels(labels)
    return _accuracy(y, _scores(probs, y.shape[0], "probs"), threshold)


def calibration(labels: Any, probs: Any) -> float:
    """mean(probs) / mean(labels): 1.0 is calibrated, above 1 over-predicts. NaN without positives."""
    y = _labels(labels)
    return _calibration(y, _scores(probs, y.shape[0], "probs"))


def binary_metrics(labels: Any, probs: Any, eps: float = DEFAULT_EPS, threshold: float = 0.5) -> dict[str, float]:
    """All binary metrics at once (inputs validated once).

    Keys: auc, logloss, ne, accuracy, calibration, base_rate, count. Values are floats (count an
    int); undefined ones are NaN.
    """
    y = _labels(labels)
    n = int(y.shape[0])
    p = _scores(probs, n, "probs")
    n_pos = int(np.count_nonzero(y))
    base_rate = n_pos / n if n else math.nan
    ll = _logloss(y, p, eps)
    return {
        "auc": _auc(y, p),
        "logloss": ll,
        "ne": ll / _base_entropy(base_rate) if n else math.nan,
        "accuracy": _accuracy(y, p, threshold),
        "calibration": _calibration(y, p),
        "base_rate": base_rate,
        "count": n,
    }


# --------------------------------------------------------------------------------------------
# accumulation over batches


class MetricAccumulator:
    """Collects labels and probabilities over evaluation batches; `compute()` gives exact metrics.

    `update(labels, probs)` takes [B] or [B, 1] (one task) or [B, T] (T tasks) arrays or tensors;
    they are copied into numpy buffers that grow geometrically (amortized O(1) per sample, no
    per-sample Python). Probabilities are kept in float32 unless a float64 batch arrives. A NaN
    label means "no label for this task" and the sample is left out of that task's metrics.

    `compute()` returns `binary_metrics` of the first task at the top level; with more than one
    task (or with `task_names` given) it adds `"tasks": {name: binary_metrics}` for every task.
    """

    def __init__(self, task_names: Sequence[str] | None = None, capacity: int = 1 << 16, eps: float = DEFAULT_EPS):
        self.task_names = list(task_names) if task_names is not None else None
        self.eps = eps
        self._initial = max(1, int(capacity))
        self._labels: np.ndarray | None = None  # [T, capacity] float32
        self._probs: np.ndarray | None = None  # [T, capacity] float32 or float64
        self._n = 0

    @property
    def count(self) -> int:
        return self._n

    @property
    def num_tasks(self) -> int | None:
        return None if self._labels is None else self._labels.shape[0]

    def reset(self) -> None:
        """Forget all samples (buffers are kept for reuse)."""
        self._n = 0

    @staticmethod
    def _as_2d(x: Any, name: str) -> np.ndarray:
        a = _to_numpy(x)
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2:
            raise ValueError(f"{name} must be [B] or [B, T], got shape {a.shape}")
        return a

    def update(self, labels: Any, probs: Any) -> None:
        y = self._as_2d(labels, "labels")
        p = self._as_2d(probs, "probs")
        if y.shape != p.shape:
            raise ValueError(f"labels and probs differ in shape: {y.shape} vs {p.shape}")
        b, t = p.shape
        if self._labels is None:
            if self.task_names is not None and len(self.task_names) != t:
                raise ValueError(f"{len(self.task_names)} task names for {t} tasks")
            cap = max(self._initial, b)
            self._labels = np.empty((t, cap), dtype=np.float32)
            self._probs = np.empty((t, cap), dtype=np.result_type(p.dtype, np.float32))
        assert self._probs is not None
        if t != self._labels.shape[0]:
            raise ValueError(f"batch has {t} tasks, earlier batches had {self._labels.shape[0]}")
        wide = np.result_type(p.dtype, self._probs.dtype)
        if wide != self._probs.dtype:  # copy only the filled part (the rest is uninitialized)
            self._probs = _grow(self._probs, self._probs.shape[1], self._n, wide)
        need = self._n + b
        if need > self._labels.shape[1]:
            cap = max(need, 2 * self._labels.shape[1])
            self._labels = _grow(self._labels, cap, self._n)
            self._probs = _grow(self._probs, cap, self._n)
        self._labels[:, self._n : need] = y.T
        self._probs[:, self._n : need] = p.T
        self._n = need

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, probs) collected so far, each [N, T] (views, not copies)."""
        if self._labels is None or self._probs is None:
            return np.empty((0, 1), np.float32), np.empty((0, 1), np.float32)
        return self._labels[:, : self._n].T, self._probs[:, : self._n].T

    def compute(self) -> dict[str, Any]:
        if self._labels is None or self._probs is None:
            return binary_metrics(np.empty(0), np.empty(0), eps=self.eps)
        t = self._labels.shape[0]
        per_task = []
        for j in range(t):
            y = self._labels[j, : self._n]
            p = self._probs[j, : self._n]
            missing = np.isnan(y)
            if missing.any():
                y, p = y[~missing], p[~missing]
            per_task.append(binary_metrics(y, p, eps=self.eps))
        result: dict[str, Any] = dict(per_task[0])
        if t > 1 or self.task_names is not None:
            names = self.task_names or [f"task{j}" for j in range(t)]
            result["tasks"] = dict(zip(names, per_task, strict=True))
        return result


def _grow(buf: np.ndarray, cap: int, used: int, dtype: Any = None) -> np.ndarray:
    new = np.empty((buf.shape[0], cap), dtype=buf.dtype if dtype is None else dtype)
    new[:, :used] = buf[:, :used]
    return new


# --------------------------------------------------------------------------------------------
# ranking (leave-one-out: one positive among C candidates per user)


def positive_rank(scores: Any, positive_index: Any = 0, ties: str = "pessimistic") -> np.ndarray:
    """0-based rank of each user's positive among its C candidates, int64 [U].

    scores: [U, C]; positive_index: int or [U] column of the positive. With ties="pessimistic"
    (default) every other candidate scoring equal to the positive ranks above it, so a constant
    model gets no credit; ties="optimistic" ranks the positive above all its ties.
    """
    s = _to_numpy(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be [U, C], got shape {s.shape}")
    if s.dtype.kind == "f" and s.size and np.isnan(s).any():
        raise ValueError("scores contain NaN")
    users, cands = s.shape
    idx = np.broadcast_to(np.asarray(_to_numpy(positive_index), dtype=np.int64), (users,))
    if users and (idx.min() < 0 or idx.max() >= cands):
        raise ValueError(f"positive_index must be in [0, {cands})")
    pos = s[np.arange(users), idx][:, None]
    rank = np.count_nonzero(s > pos, axis=1).astype(np.int64)
    if ties == "pessimistic":
        rank += np.count_nonzero(s == pos, axis=1) - 1
    elif ties != "optimistic":
        raise ValueError(f"ties must be 'pessimistic' or 'optimistic', got {ties!r}")
    return rank


def hit_rate_at_k(scores: Any, positive_index: Any = 0, k: int = 10, ties: str = "pessimistic") -> float:
    """HR@k: fraction of users whose positive ranks in the top k of its candidates."""
    if k < 1:
        raise ValueError("k must be >= 1")
    rank = positive_rank(scores, positive_index, ties)
    return float(np.mean(rank < k)) if rank.size else math.nan


def ndcg_at_k(scores: Any, positive_index: Any = 0, k: int = 10, ties: str = "pessimistic") -> float:
    """NDCG@k with one relevant item: mean of 1 / log2(rank + 2) over users whose rank < k, else 0."""
    if k < 1:
        raise ValueError("k must be >= 1")
    rank = positive_rank(scores, positive_index, ties)
    if not rank.size:
        return math.nan
    gain = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    return float(np.mean(gain))
