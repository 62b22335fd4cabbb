"""Metrics of a model on a contiguous range of a dataset's rows, in order, on one rank or many.

With `world_size` ranks each rank scores one contiguous share of the range and the (label,
probability) arrays are gathered in rank order, so every rank computes the metrics of the whole
range, in the range's order (ranking metrics read users' candidate blocks in order).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from recstack.data.loader import BatchLoader
from recstack.data.store import Dataset
from recstack.errors import ConfigError
from recstack.scoring.metrics import MetricAccumulator, hit_rate_at_k, ndcg_at_k


def ranking_groups(dataset: Dataset, rows: tuple[int, int]) -> int | None:
    """Candidates per user when these rows are a ranking split: blocks of one positive (first) and
    its sampled negatives, as the dataset's schema declares (`info.ranking`); else None."""
    ranking = dataset.schema.info.get("ranking")
    if not ranking or list(dataset.split(ranking["split"])) != list(rows):
        return None
    size = int(ranking["group_size"])
    return size if size > 1 and (rows[1] - rows[0]) % size == 0 else None


def rank_rows(rows: tuple[int, int], rank: int, world_size: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous share of [a, b)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1} (world size {world_size})")
    a, b = rows
    n = b - a
    return a + rank * n // world_size, a + (rank + 1) * n // world_size


@torch.no_grad()
def evaluate_rows(
    model: nn.Module,
    dataset: Dataset,
    rows: tuple[int, int],
    batch_size: int,
    device: torch.device,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Any]:
    """AUC, log loss, NE and accuracy (per task for multi-task models) of the model on rows [a, b);
    HR@10 and NDCG@10 on a ranking split. With world_size > 1, torch.distributed must be set up:
    every rank calls this and gets the metrics of the whole range."""
    was_training = model.training
    model.eval()
    task_names = getattr(model, "task_names", None)
    accumulator = MetricAccumulator(task_names if task_names and len(task_names) > 1 else None)
    loader = BatchLoader(dataset, rank_rows(rows, rank, world_size), batch_size, shuffle=False, drop_last=False,
                         prefetch=2)
    for batch in loader.epoch(0):
        batch = batch.to(device)
        probs = torch.sigmoid(model(batch)).float().cpu().numpy()
        if not np.isfinite(probs).all():  # the inputs are finite (the dataset checks them): the weights are not
            raise ConfigError("the model predicts NaN: its training diverged (lower train.lr or train.sparse_lr)")
        accumulator.update(batch.labels.cpu().numpy(), probs)
    model.train(was_training)
    if world_size > 1:
        accumulator = _gathered(accumulator, world_size)
    metrics = accumulator.compute()
    group = ranking_groups(dataset, rows)
    if group is not None:
        _, probs = accumulator.arrays()
        scores = probs[:, 0].reshape(-1, group)
        metrics.update(hr_at_10=hit_rate_at_k(scores, 0, 10), ndcg_at_10=ndcg_at_k(scores, 0, 10),
                       ranking_users=int(scores.shape[0]), ranking_candidates=group)
    return metrics


def _gathered(local: MetricAccumulator, world_size: int) -> MetricAccumulator:
    """Every rank's (labels, probabilities), in rank order, in one accumulator."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() != world_size:
        raise ConfigError(f"evaluation on {world_size} ranks needs torch.distributed initialized with that world size")
    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, local.arrays())
    merged = MetricAccumulator(local.task_names)
    for labels, probs in parts:
        if len(labels):
            merged.update(labels, probs)
    return merged
