"""Checkpoints of a job whose tables are sharded over ranks: a directory per checkpoint.

    ckpt-0000000120/
      meta.pt    what one file holds otherwise (config, schema, vocabularies, trainer position,
                 dense optimizer), the dense layers' state, each rank's RNG state, the plan
      tables/    torch.distributed.checkpoint of every table's logical state, each rank writing
                 its own shards (DTensors: recstack.embeddings.distributed_state)

It is written under `ckpt-....tmp/` and renamed by rank 0 once every rank's shards and the meta file
are on disk, so a killed rank leaves the previous checkpoint the latest. Loading reshards: the
tables load into any plan on any number of ranks, or into plain tables in one process (evaluate,
predict, serve), because the DCP metadata records each shard's place in its table.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.distributed.tensor import DTensor

from recstack.checkpoint.format import META, TABLES, _first_line, fsync_directory, save
from recstack.errors import CheckpointError


def is_table_key(key: str) -> bool:
    return key.startswith("tables.") or ".tables." in key


def save_sharded(path: Path, payload: dict[str, Any], model: torch.nn.Module, rng_per_rank: list[Any]) -> Path:
    """Write a sharded checkpoint at `path` (every rank calls this; rank 0 writes the meta file)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    rank = dist.get_rank()
    tmp = path.with_name(path.name + ".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    state = model.state_dict()
    dcp.save({k: v for k, v in state.items() if is_table_key(k)}, checkpoint_id=str(tmp / TABLES))
    if rank == 0:
        dense = {k: v for k, v in state.items() if not is_table_key(k)}
        save(tmp / META, {**payload, "model": dense, "rng_per_rank": rng_per_rank, "sharded": True})
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        fsync_directory(path.parent)
    dist.barrier()
    return path


def load_tables(model: torch.nn.Module, tables_dir: str | Path, path: str | Path) -> None:
    """Every table of `model` from a sharded checkpoint's shards, whatever the model's placement."""
    import torch.distributed.checkpoint as dcp

    state = {k: v for k, v in model.state_dict().items() if is_table_key(k)}
    try:
        with warnings.catch_warnings():  # in one process DCP says it loads in one process: that is the intent
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
            dcp.load(state, checkpoint_id=str(tables_dir))
    except Exception as exc:  # DCP wraps a missing key or a shape mismatch in its own exceptions
        raise CheckpointError(f"checkpoint {path}: its tables do not fit the model ({_first_line(exc)})") from None
    if not any(isinstance(v, DTensor) for v in state.values()):
        model.load_state_dict(state, strict=False)  # the views were filled in place; this tells a tiered collection
