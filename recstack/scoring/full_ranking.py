"""Full-ranking metrics (LightGCN's protocol): each test user's every item is scored, the items the
user trained on are excluded, and the top K is compared with the user's test items.

    Recall@K = |top K ∩ test items| / |test items|
    NDCG@K   = sum over hits at 0-based position p of 1 / log2(p + 2), divided by the same sum over
               positions 0 .. min(|test items|, K) - 1 (every test item ranked first)

both averaged over the users with at least one test item. The model scores (user, item) rows of a
dataset whose only sparse features are `user` and `item` (recstack.data.implicit). With world_size
ranks, each rank scores its share of every chunk of rows, so that all ranks run the same forwards (a
sharded model's exchanges need every rank), and the scores are gathered.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from recstack.data.batch import Batch, JaggedFeatures
from recstack.data.implicit import FullRanking
from recstack.data.movielens import ITEM, USER
from recstack.data.store import FIRST_VOCAB_ID


def ideal_dcg(relevant: np.ndarray, k: int) -> np.ndarray:
    """[U]: the DCG of ranking min(relevant, k) relevant items first."""
    discounts = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))])
    return discounts[np.minimum(relevant, k)]


def topk_metrics(scores: np.ndarray, train: list[np.ndarray], test: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Recall@k and NDCG@k of each row of scores [U, items], its `train` items excluded and its `test`
    items relevant (0-based item ids)."""
    scores = scores.astype(np.float64, copy=True)
    for row, items in enumerate(train):
        scores[row, items] = -np.inf
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable"), axis=1)
    recall = np.empty(len(test))
    ndcg = np.empty(len(test))
    gains = 1.0 / np.log2(np.arange(k) + 2.0)
    for row, items in enumerate(test):
        hit = np.isin(top[row], items)
        recall[row] = hit.sum() / items.size
        ndcg[row] = gains[hit].sum() / ideal_dcg(np.array([items.size]), k)[0]
    return recall, ndcg


@torch.no_grad()
def full_ranking_metrics(
    model: nn.Module,
    ranking: FullRanking,
    sparse_keys: list[str],
    num_labels: int,
    batch_size: int,
    device: torch.device,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Any]:
    """recall_at_K, ndcg_at_K and full_ranking_users over every test user of `ranking`."""
    if sorted(sparse_keys) != sorted([USER, ITEM]):
        raise ValueError(f"full ranking scores (user, item) rows, not rows of {sparse_keys}")
    was_training = model.training
    model.eval()
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    num_items = ranking.num_items
    users = np.flatnonzero(np.diff(ranking.test_indptr) > 0)
    per_chunk = max(1, batch_size // num_items)
    recall, ndcg = [], []
    for start in range(0, users.size, per_chunk):
        chunk = users[start : start + per_chunk]
        rows = chunk.size * num_items
        lo, hi = (rows * rank) // world_size, (rows * (rank + 1)) // world_size
        ids = {USER: np.repeat(chunk, num_items)[lo:hi], ITEM: np.tile(np.arange(num_items), chunk.size)[lo:hi]}
        sparse = JaggedFeatures.from_dict({key: (ids[key] + FIRST_VOCAB_ID, np.ones(hi - lo)) for key in sparse_keys})
        labels = torch.zeros(hi - lo) if num_labels == 1 else torch.zeros(hi - lo, num_labels)
        batch = Batch(torch.zeros(hi - lo, 0, dtype=dtype), sparse, labels).to(device)
        scores = model(batch).float().reshape(hi - lo, -1)[:, 0].cpu().numpy()
        if world_size > 1:
            scores = _gathered(scores, world_size)
        train = [ranking.train_items[ranking.train_indptr[u] : ranking.train_indptr[u + 1]] for u in chunk]
        test = [ranking.test_items[ranking.test_indptr[u] : ranking.test_indptr[u + 1]] for u in chunk]
        r, n = topk_metrics(scores.reshape(chunk.size, num_items), train, test, ranking.k)
        recall.append(r)
        ndcg.append(n)
    model.train(was_training)
    k = ranking.k
    if not users.size:
        return {f"recall_at_{k}": math.nan, f"ndcg_at_{k}": math.nan, "full_ranking_users": 0}
    return {f"recall_at_{k}": float(np.concatenate(recall).mean()), f"ndcg_at_{k}": float(np.concatenate(ndcg).mean()),
            "full_ranking_users": int(users.size), "full_ranking_items": num_items}


def _gathered(local: np.ndarray, world_size: int) -> np.ndarray:
    import torch.distributed as dist

    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, local)
    return np.concatenate(parts)
