"""TorchRec beside recstack's sharded embeddings: the same tables, plan, weights and batches.

TorchRec is an optional extra (`pip install -e .[torchrec]`, then `pip install torchrec==1.8.0
--no-deps`; see pyproject.toml): nothing here imports it until it is asked for, and `require()`
refuses with one line when it is missing.

Two users:
- tests/test_torchrec_oracle.py: TorchRec as an oracle for recstack's table-wise sharding (pooled
  embeddings and the tables after one SGD step), through `torchrec_collection`, `load_weights`,
  `owned_weights` and `to_kjt`;
- `recstack bench dist --vs torchrec`: `main` below is one rank of a torchrun job that times an
  embedding-only training step (forward, backward, SGD on the touched rows) of TorchRec's
  DistributedModelParallel and of recstack's ShardedEmbeddingCollection, alternately, on the same
  preset's tables and the same batches.

Conventions that differ, and how the two are lined up:
- TorchRec divides the gradients of sharded tables by the world size in its backward all-to-all
  (torchrec.distributed.comm_ops' GRADIENT_DIVISION, on by default), to match DDP's averaging of
  dense gradients; recstack instead scales each rank's loss to its share of the global batch mean
  (TrainStep). So a per-rank loss L gives TorchRec the rows' step of L / world_size in recstack.
- TorchRec's SGD is fused into its backward (EXACT_SGD in FBGEMM's table-batched embeddings);
  recstack's steps in `apply_gradients`.
- TorchRec's CPU kernels store float32 (FBGEMM has no float64 table), so the comparison is float32.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from recstack.errors import ConfigError

INSTALL_HINT = ("pip install fbgemm-gpu-cpu==1.8.0 && pip install torchrec==1.8.0 --no-deps && "
                "pip install -e .[torchrec]")


def require() -> Any:
    """The torchrec module, or a one-line ConfigError saying how to install it."""
    try:
        import torchrec
        from torchrec.distributed.model_parallel import DistributedModelParallel  # noqa: F401
    except Exception as exc:  # ImportError, or fbgemm's own load errors (a CUDA wheel on a CPU machine)
        raise ConfigError(f"--vs torchrec needs TorchRec, which does not import here ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); install it: {INSTALL_HINT}") from None
    return torchrec


class _Holder(torch.nn.Module):
    """The module DistributedModelParallel wraps: the collection at path "ebc"."""

    def __init__(self, ebc: torch.nn.Module):
        super().__init__()
        self.ebc = ebc

    def forward(self, features: Any) -> Any:
        return self.ebc(features)


def torchrec_collection(tables: list[Any], plan: Any, lr: float) -> torch.nn.Module:
    """TorchRec's DistributedModelParallel over an EmbeddingBagCollection of recstack's `tables`
    (TableConfig list: sum pooling, one dimension), sharded table-wise as recstack's `plan` says
    (a ShardingPlan whose tables are all table_wise), with FBGEMM's fused EXACT_SGD at `lr`.
    Call inside a torch.distributed job (gloo); its rows start as TorchRec draws them: see
    `load_weights`."""
    require()
    import torch.distributed as dist
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType
    from torchrec.distributed.embedding_types import EmbeddingComputeKernel
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.sharding_plan import construct_module_sharding_plan, table_wise
    from torchrec.distributed.types import ShardingPlan as TorchrecPlan

    from recstack.embeddings.sharding import TABLE_WISE

    for t in tables:
        if t.pooling != "sum" or t.fold:
            raise ConfigError(f"table {t.name}: the TorchRec comparison takes sum-pooled tables without folding")
        if plan.of(t.name).sharding != TABLE_WISE:
            raise ConfigError(f"table {t.name}: TorchRec on CPU is compared table-wise only, not {plan.of(t.name).sharding}")
    configs = [EmbeddingBagConfig(name=t.name, embedding_dim=t.embedding_dim, num_embeddings=t.num_embeddings,
                                  feature_names=list(t.feature_names), pooling=PoolingType.SUM) for t in tables]
    holder = _Holder(EmbeddingBagCollection(tables=configs, device=torch.device("meta")))
    sharder = EmbeddingBagCollectionSharder(fused_params={"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": lr})
    world = dist.get_world_size()
    fused = EmbeddingComputeKernel.FUSED.value  # FBGEMM's kernel with the optimizer in backward (the default, dense, has none)
    module_plan = construct_module_sharding_plan(
        holder.ebc, {t.name: table_wise(rank=plan.of(t.name).ranks[0], compute_kernel=fused) for t in tables}, sharder=sharder,
        local_size=world, world_size=world, device_type="cpu")
    return DistributedModelParallel(holder, device=torch.device("cpu"), plan=TorchrecPlan({"ebc": module_plan}),
                                    sharders=[sharder])


def _owned(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """table -> this rank's local shard of its weight (whole tables: table-wise), for the tables it owns."""
    out = {}
    for key, value in model.state_dict().items():
        if not key.endswith(".weight") or ".embedding_bags." not in key:
            continue
        name = key.split(".embedding_bags.")[1].removesuffix(".weight")
        shards = value.local_shards() if hasattr(value, "local_shards") else []
        if shards:
            out[name] = shards[0].tensor
    return out


@torch.no_grad()
def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Set the rows of the tables this rank owns from whole tables (name -> [rows, dim])."""
    for name, mine in _owned(model).items():
        mine.copy_(weights[name].to(mine.dtype))


def owned_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the tables this rank owns (name -> [rows, dim])."""
    return {name: w.detach().clone() for name, w in _owned(model).items()}


def to_kjt(features: Any) -> Any:
    """recstack's JaggedFeatures (feature-major lengths) as TorchRec's KeyedJaggedTensor (the same layout)."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    return KeyedJaggedTensor.from_lengths_sync(keys=list(features.keys), values=features.values.to(torch.int64),
                                               lengths=features.lengths.to(torch.int32))


def pooled_torchrec(model: torch.nn.Module, features: Any, feature_names: list[str]) -> torch.Tensor:
    """TorchRec's pooled embeddings as recstack lays them out: [B, F, D] in `feature_names` order."""
    out = model(to_kjt(features)).to_dict()
    return torch.stack([out[f] for f in feature_names], 1)


# --- the benchmark: one rank of `recstack bench dist --vs torchrec` ------------------------------


def _timed(step, batches: list[Any], rounds: int) -> list[float]:
    """Seconds per pass over `batches`, `rounds` times, every rank starting each pass together."""
    import torch.distributed as dist

    times = []
    for _ in range(rounds):
        dist.barrier()
        start = time.perf_counter()
        for b in batches:
            step(b)
        dist.barrier()
        times.append(time.perf_counter() - start)
    return times


def main(spec_path: str) -> None:
    """Rank main of the comparison (started by torchrun; the spec is JSON written by dist_bench)."""
    from recstack.config import resolve
    from recstack.data.loader import BatchLoader
    from recstack.data.store import Dataset
    from recstack.distributed import join, leave
    from recstack.embeddings.base import embedding_collections
    from recstack.embeddings.sharding import TABLE_WISE, ShardingPlan
    from recstack.models.zoo import build_model

    spec = json.loads(Path(spec_path).read_text())
    world = join("cpu")
    torch.manual_seed(spec["seed"])
    config = resolve(None, spec["overrides"])
    dataset = Dataset(spec["data"])
    probe = build_model(config, dataset.schema, device="meta")
    tables = list(embedding_collections(probe)[0].tables)
    plan = ShardingPlan.uniform(tables, world.world_size, TABLE_WISE)
    ours = build_model(config, dataset.schema, sharding=plan)
    collection = embedding_collections(ours)[0]
    collection.train()
    theirs = torchrec_collection(tables, plan, spec["lr"])
    theirs.train()
    # the same starting rows: every rank holds the tables it owns in both
    load_weights(theirs, {t.name: collection.table_state(t.name).weight for t in tables
                          if plan.of(t.name).ranks[0] == world.rank})
    loader = BatchLoader(dataset, dataset.split("train"), config.train.batch_size, shuffle=False, seed=config.seed,
                         prefetch=0, rank=world.rank, world_size=world.world_size)
    batches = []
    for b in loader.epoch(0):
        if len(batches) == spec["steps"]:
            break
        batches.append(b.sparse.select(collection.feature_names))
    scale = 1.0 / world.world_size  # TorchRec divides by the world size itself (see the module docstring)

    def recstack_step(features) -> None:
        (collection(features).sum() * scale).backward()
        collection.apply_gradients(spec["lr"])

    def torchrec_step(features) -> None:
        theirs(to_kjt(features)).values().sum().backward()  # the fused SGD steps the rows in backward

    warm = batches[: min(3, len(batches))]
    _timed(recstack_step, warm, 1)
    _timed(torchrec_step, warm, 1)
    ours_s, theirs_s = [], []
    for _ in range(spec["rounds"]):  # alternate, so both see the same machine state
        ours_s += _timed(recstack_step, batches, 1)
        theirs_s += _timed(torchrec_step, batches, 1)
    samples = config.train.batch_size * len(batches)
    if world.is_main:
        result = {
            "torchrec": {"samples_per_s": samples / statistics.median(theirs_s), "seconds": theirs_s,
                         "version": version("torchrec")},
            "recstack_embeddings": {"samples_per_s": samples / statistics.median(ours_s), "seconds": ours_s},
            "steps": len(batches), "global_batch": config.train.batch_size, "ranks": world.world_size,
            "sharding": "table_wise", "plan": plan.to_dict(), "lr": spec["lr"],
            "tables": [{"name": t.name, "rows": t.num_embeddings, "dim": t.embedding_dim} for t in tables],
        }
        result["ratio"] = result["recstack_embeddings"]["samples_per_s"] / result["torchrec"]["samples_per_s"]
        Path(spec["out"]).write_text(json.dumps(result))
    leave()


if __name__ == "__main__":
    main(sys.argv[1])
