"""One rank of tests/test_sharded.py's runs (started by torchrun): train a model whose tables are
sharded by a plan, from given initial parameters, on this rank's share of the global batches, and
write this rank's parameters (dense layers and its table shards) for the test to compare."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from recstack.config import from_dict
from recstack.data.loader import BatchLoader
from recstack.data.store import Dataset
from recstack.distributed import join, leave
from recstack.embeddings.base import embedding_collections
from recstack.embeddings.sharding import ShardingPlan
from recstack.models.zoo import build_model
from recstack.train.pipeline import TrainStep
from recstack.train.trainer import dense_optimizer


def break_on_purpose(how: str) -> None:
    """Variants the test must catch: the backward's gradient exchange skipped, or rows updated on
    the wrong rank (each row-wise shard's ids shifted by one row)."""
    from recstack.embeddings import sharded

    if how == "no_gradient_exchange":
        exchange = sharded.ShardedEmbeddingCollection._all_to_all_grad
        sharded.ShardedEmbeddingCollection._all_to_all_grad = lambda self, *a: exchange(self, *a).detach()
    elif how == "wrong_rows":
        route = sharded.ShardedEmbeddingCollection._route

        def shifted(self, b, parts, weights):
            routed = route(self, b, parts, weights)
            size = max(b.rows[1] - b.rows[0], 1)
            return sharded._Routed(torch.remainder(routed.ids + 1, size), routed.bags, routed.weights, routed.position)

        sharded.ShardedEmbeddingCollection._route = shifted


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    break_on_purpose(spec.get("break", ""))
    world = join("cpu")
    torch.manual_seed(0)
    config = from_dict(spec["config"])
    dataset = Dataset(spec["data"])
    model = build_model(config, dataset.schema, sharding=ShardingPlan.from_dict(spec["plan"])).double()
    model.load_state_dict(torch.load(spec["initial"], weights_only=True))
    model.train()
    step = TrainStep(model, dense_optimizer(model, config.train), "cpu", distributed=True)
    loader = BatchLoader(dataset, dataset.split("train"), config.train.batch_size, shuffle=True, seed=config.seed,
                         prefetch=0, rank=world.rank, world_size=world.world_size)
    for i, batch in enumerate(loader.epoch(0)):
        if i == spec["steps"]:
            break
        step(batch, config.train.sparse_lr)
    out = {"dense": {name: p.detach().clone() for name, p in model.named_parameters()}, "shards": {}, "comm": {}}
    for collection in embedding_collections(model):
        for t in collection.tables:
            state = collection.table_state(t.name)
            rows, cols = collection._shard_of.get(t.name, ((0, t.num_embeddings), (0, t.embedding_dim)))
            out["shards"][t.name] = (rows, cols, state.weight.clone(), state.optimizer_state.clone())
        out["comm"] = dict(collection.comm.bytes)
    torch.save(out, Path(spec["out"]) / f"rank{world.rank}.pt")
    leave()


if __name__ == "__main__":
    main()
