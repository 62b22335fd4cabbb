"""A sharded collection's logical state as DTensors: each table's rows and optimizer state over the
ranks that hold them, so torch.distributed.checkpoint writes every shard once and reshards on load
(N -> M ranks with another plan, or one process with plain tensors of the whole tables).

    table_wise     Replicate() on a mesh of its one owner (the other ranks have no entry)
    data_parallel  Replicate() on every rank (written once)
    row_wise       Shard(0): rows split as torch.chunk splits them, which DTensor's layout is
    column_wise    Shard(1) for the rows; the optimizer state is per element (Adagrad: Shard(1)) or
                   per row (row-wise Adagrad: the same on every rank, Replicate())
The local tensors are views of the collection's buffers, so a checkpoint loads in place.
"""

from __future__ import annotations

from functools import cache

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard

from recstack.embeddings.base import TableConfig
from recstack.embeddings.sharding import COLUMN_WISE, ROW_WISE, TABLE_WISE


@cache
def _mesh(ranks: tuple[int, ...]) -> DeviceMesh:
    return DeviceMesh("cpu", list(ranks))


def table_dtensors(collection, table: TableConfig) -> dict[str, DTensor]:
    """`weight` and `optimizer_state` of one table of a ShardedEmbeddingCollection on this rank."""
    sharding = collection.plan.of(table.name)
    if sharding.sharding == TABLE_WISE and collection.rank not in sharding.ranks:
        return {}
    state = collection.table_state(table.name)
    mesh = _mesh(tuple(sharding.ranks))
    rows, dim = table.num_embeddings, table.embedding_dim
    width = state.optimizer_state.shape[1]
    if sharding.sharding == ROW_WISE:
        placements = {"weight": Shard(0), "optimizer_state": Shard(0)}
    elif sharding.sharding == COLUMN_WISE:
        placements = {"weight": Shard(1), "optimizer_state": Shard(1) if width and width == state.weight.shape[1]
                      and collection.optimizer.kind == "adagrad" else Replicate()}
        if placements["optimizer_state"] == Shard(1):
            width = dim
    else:
        placements = {"weight": Replicate(), "optimizer_state": Replicate()}
    shapes = {"weight": (rows, dim), "optimizer_state": (rows, width)}
    out = {}
    for field, local in (("weight", state.weight), ("optimizer_state", state.optimizer_state)):
        shape = torch.Size(shapes[field])
        out[field] = DTensor.from_local(local, mesh, [placements[field]], run_check=False, shape=shape,
                                        stride=(shape[1], 1))
    return out
