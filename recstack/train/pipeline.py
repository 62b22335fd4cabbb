"""One training step, the same for the trainer, FAE's schedule and the profiler.

The step moves what the dense layers read (dense features, labels) to the model's device, and the
ids to where the collections want them (`EmbeddingCollection.ids_device`: a tiered collection keeps
them on the host, where it remaps them); then forward, backward, the dense optimizer's step and the
collections' sparse step. Its phases are named for the profiler (`DATA`, `OPTIMIZER`).
"""

from __future__ import annotations

import warnings
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
    """`step(batch, sparse_lr)` -> the batch's loss (detached, on the device).

    On several ranks (`distributed`), each rank steps on its share of the global batch: its loss is
    scaled to its part of the global mean (share rows / global rows), the dense layers are wrapped in
    DistributedDataParallel with gradients summed (not averaged) over the ranks, and the collections
    exchange ids and gradients themselves; together that is the one-process step on the global batch."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device | str,
                 loss: LossFn | None = None, distributed: bool = False):
        """`loss`: loss(logits, labels); None uses the model's own `training_loss` (a model with
        extra terms, such as DIEN's auxiliary loss, defines it)."""
        self.model, self.optimizer, self.device, self.loss = model, optimizer, torch.device(device), loss
        self.collections = embedding_collections(model)
        wanted = {c.ids_device for c in self.collections} - {None}
        self.ids_device = wanted.pop() if len(wanted) == 1 else None
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.objective: nn.Module = _Objective(model, loss)
        self.distributed = distributed
        self.global_rows = 0
        """Rows of the last step's global batch (every rank's share)."""
        if distributed:
            self.objective = data_parallel(self.objective, self.device)

    def to_device(self, batch: Batch) -> Batch:
        """Dense features to the model's device and dtype, labels to its device, ids to the collections'."""
        sparse = batch.sparse if self.ids_device is None else batch.sparse.to(self.ids_device, non_blocking=True)
        dense = batch.dense.to(self.device, non_blocking=True)
        if dense.dtype != self.dtype:
            dense = dense.to(self.dtype)
        return Batch(dense, sparse, batch.labels.to(self.device, non_blocking=True))

    def __call__(self, batch: Batch, sparse_lr: float) -> torch.Tensor:
        with record_function(DATA):
            batch = self.to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.objective(batch)
        if self.distributed:
            share = self._share(batch)
            (loss * share).backward()
        else:
            self.global_rows = batch.batch_size
            loss.backward()
        with record_function(OPTIMIZER):
            self.optimizer.step()
            for collection in self.collections:
                collection.apply_gradients(sparse_lr)
        return loss.detach()

    def _share(self, batch: Batch) -> float:
        """This rank's rows over the global batch's (an all-reduce of one number)."""
        import torch.distributed as dist

        from recstack.distributed import comm_device

        rows = torch.tensor([float(batch.batch_size)], dtype=torch.float64, device=comm_device())
        dist.all_reduce(rows)
        self.global_rows = int(rows)
        return batch.batch_size / float(rows)


class _Objective(nn.Module):
    """The training loss as a module's forward, so DistributedDataParallel sees the step."""

    def __init__(self, model: nn.Module, loss: LossFn | None):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, batch: Batch) -> torch.Tensor:
        if self.loss is None:
            return self.model.training_loss(batch)[0]
        return self.loss(self.model(batch), batch.labels)


def _sum_gradients(process_group, bucket):
    """DDP's all-reduce, summing: each rank's loss is already its share of the global mean."""
    import torch.distributed as dist

    future = dist.all_reduce(bucket.buffer(), group=process_group, async_op=True).get_future()
    return future.then(lambda f: f.value()[0])


def data_parallel(module: nn.Module, device: torch.device) -> nn.Module:
    """`module` in DistributedDataParallel over its dense parameters; the collections' tables are
    theirs to exchange, so DDP neither broadcasts nor reduces them."""
    from torch.nn.parallel import DistributedDataParallel

    tables = [f"{name}.{buffer}" for name, c in module.named_modules() if c in embedding_collections(module)
              for buffer, _ in c.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, tables)
    import torch.distributed as dist

    # broadcast_buffers=False keeps the rank-local tables out of DDP's syncs (its FutureWarning says to keep
    # using it for rank-local buffers until an init-sync option exists)
    warnings.filterwarnings("ignore", message=r"`broadcast_buffers` is deprecated", category=FutureWarning)
    # a process group of its own: DDP's all-reduces run as gradients become ready, interleaved with
    # the collections' backward all-to-alls, and collectives of one group must come in one order
    wrapped = DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None,
                                      broadcast_buffers=False, process_group=dist.new_group())
    wrapped.register_comm_hook(None, _sum_gradients)
    return wrapped
