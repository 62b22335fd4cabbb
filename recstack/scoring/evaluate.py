"""Metrics of a model on a contiguous range of a dataset's rows, in order, on one rank or many.

With `world_size` ranks every rank scores its share of each batch of the range (the loader's
rank share, so all ranks run the same number of forwards: a sharded model's exchanges need every
rank), and the (label, probability) arrays are gathered and put back in the range's order, so
every rank computes the metrics of the whole range (ranking metrics read candidate blocks in order).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from recstack.data.batch import Batch
from recstack.data.implicit import load_full_ranking
from recstack.data.loader import BatchLoader
from recstack.data.store import Dataset
from recstack.errors import ConfigError
from recstack.scoring.full_ranking import full_ranking_metrics
from recstack.scoring.metrics import MetricAccumulator, hit_rate_at_k, ndcg_at_k


def ranking_groups(dataset: Dataset, rows: tuple[int, int]) -> int | None:
    """Candidates per user when these rows are a ranking split: blocks of one positive (first) and
    its sampled negatives, as the dataset's schema declares (`info.ranking`); else None."""
    ranking = dataset.schema.info.get("ranking")
    if not ranking or list(dataset.split(ranking["split"])) != list(rows):
        return None
    size = int(ranking["group_size"])
    return size if size > 1 and (rows[1] - rows[0]) % size == 0 else None


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
    HR@10 and NDCG@10 on a ranking split, and Recall@K and NDCG@K over all items where the dataset
    declares a full ranking of these rows. With world_size > 1, torch.distributed must be set up:
    every rank calls this and gets the metrics of the whole range."""
    was_training = model.training
    model.eval()
    task_names = getattr(model, "task_names", None)
    accumulator = MetricAccumulator(task_names if task_names and len(task_names) > 1 else None)
    loader = BatchLoader(dataset, rows, batch_size, shuffle=False, drop_last=False, prefetch=2, rank=rank,
                         world_size=world_size)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    per_batch = []
    for batch in loader.epoch(0):
        batch = batch.to(device)
        if batch.dense.dtype != dtype:
            batch = Batch(batch.dense.to(dtype), batch.sparse, batch.labels)
        probs = torch.sigmoid(model(batch)).float().cpu().numpy()
        if not np.isfinite(probs).all():  # the inputs are finite (the dataset checks them): the weights are not
            raise ConfigError("the model predicts NaN: its training diverged (lower train.lr or train.sparse_lr)")
        accumulator.update(batch.labels.cpu().numpy(), probs)
        per_batch.append(batch.batch_size)
    model.train(was_training)
    if world_size > 1:
        accumulator = _gathered(accumulator, per_batch, world_size)
    metrics = accumulator.compute()
    group = ranking_groups(dataset, rows)
    if group is not None:
        _, probs = accumulator.arrays()
        scores = probs[:, 0].reshape(-1, group)
        metrics.update(hr_at_10=hit_rate_at_k(scores, 0, 10), ndcg_at_10=ndcg_at_k(scores, 0, 10),
                       ranking_users=int(scores.shape[0]), ranking_candidates=group)
    full = load_full_ranking(dataset)
    if full is not None and list(dataset.split(dataset.schema.info["full_ranking"]["split"])) == list(rows):
        metrics.update(full_ranking_metrics(model, full, [s.name for s in dataset.schema.sparse],
                                            len(dataset.schema.label_names), batch_size, device, rank=rank,
                                            world_size=world_size))
    return metrics


def _gathered(local: MetricAccumulator, per_batch: list[int], world_size: int) -> MetricAccumulator:
    """Every rank's (labels, probabilities), back in the rows' order: batch by batch, rank by rank."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() != world_size:
        raise ConfigError(f"evaluation on {world_size} ranks needs torch.distributed initialized with that world size")
    parts: list[Any] = [None] * world_size
    labels, probs = local.arrays()
    dist.all_gather_object(parts, (np.ascontiguousarray(labels), np.ascontiguousarray(probs), per_batch))
    merged = MetricAccumulator(local.task_names)
    offsets = [0] * world_size
    for i in range(len(per_batch)):
        for r, (rank_labels, rank_probs, counts) in enumerate(parts):
            n = counts[i]
            if n:
                merged.update(rank_labels[offsets[r] : offsets[r] + n], rank_probs[offsets[r] : offsets[r] + n])
                offsets[r] += n
    return merged
