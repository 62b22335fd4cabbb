"""One training step, the same for the trainer, FAE's schedule and the profiler.

The step moves what the dense layers read (dense features, labels) to the model's device, and the
ids to where the collections want them (`EmbeddingCollection.ids_device`: a tiered collection keeps
them on the host, where it remaps them); then forward, backward, the dense optimizer's step and the
collections' sparse step. Its phases are named for the profiler (`DATA`, `OPTIMIZER`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.profiler import record_function

from recstack.data.batch import Batch
from recstack.embeddings.base import embedding_collections

DATA = "recstack::data"
"""The profiler range of moving a batch to the device."""
OPTIMIZER = "recstack::optimizer"
"""The profiler range of the dense and sparse optimizer steps."""

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TrainStep:
    """`step(batch, sparse_lr)` -> the batch's loss (detached, on the device)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device | str,
                 loss: LossFn | None = None):
        """`loss`: loss(logits, labels); None uses the model's own `training_loss` (a model with
        extra terms, such as DIEN's auxiliary loss, defines it)."""
        self.model, self.optimizer, self.device, self.loss = model, optimizer, torch.device(device), loss
        wanted = {c.ids_device for c in embedding_collections(model)} - {None}
        self.ids_device = wanted.pop() if len(wanted) == 1 else None

    def to_device(self, batch: Batch) -> Batch:
        sparse = batch.sparse if self.ids_device is None else batch.sparse.to(self.ids_device, non_blocking=True)
        return Batch(batch.dense.to(self.device, non_blocking=True), sparse,
                     batch.labels.to(self.device, non_blocking=True))

    def __call__(self, batch: Batch, sparse_lr: float) -> torch.Tensor:
        with record_function(DATA):
            batch = self.to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        if self.loss is None:
            loss, _ = self.model.training_loss(batch)
        else:
            loss = self.loss(self.model(batch), batch.labels)
        loss.backward()
        with record_function(OPTIMIZER):
            self.optimizer.step()
            for collection in embedding_collections(self.model):
                collection.apply_gradients(sparse_lr)
        return loss.detach()
