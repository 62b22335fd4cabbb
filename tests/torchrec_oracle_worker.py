"""One rank of tests/test_torchrec_oracle.py (started by torchrun): the same tables, initial rows,
table-wise plan and batch in TorchRec's DistributedModelParallel and in recstack's
ShardedEmbeddingCollection; write this rank's pooled embeddings from both, and the tables this
rank owns in both after one SGD step, for the test to compare."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from recstack.data.batch import JaggedFeatures
from recstack.distributed import join, leave
from recstack.embeddings.base import SparseOptimizerConfig, TableConfig, TableState
from recstack.embeddings.sharded import ShardedEmbeddingCollection
from recstack.embeddings.sharding import ShardingPlan


def main() -> None:
    from recstack.bench.torchrec_compare import load_weights as load_torchrec
    from recstack.bench.torchrec_compare import owned_weights, pooled_torchrec, torchrec_collection

    spec = json.loads(Path(sys.argv[1]).read_text())
    world = join("cpu")
    tables = [TableConfig(t["name"], t["rows"], t["dim"], feature_names=t["features"]) for t in spec["tables"]]
    plan = ShardingPlan.from_dict(spec["plan"])
    data = torch.load(spec["data"], weights_only=True)
    initial, lr = data["initial"], spec["lr"]
    mine = data["ranks"][world.rank]
    features = JaggedFeatures(mine["keys"], mine["values"], mine["lengths"], mine["batch"])
    upstream = mine["grad"]  # d loss / d pooled, [B, F, D]: the same loss on both sides

    ours = ShardedEmbeddingCollection(tables, plan, SparseOptimizerConfig(kind="sgd"), dtype=torch.float32)
    for t in tables:
        ours.load_table_state(t.name, TableState(initial[t.name].float(), torch.zeros(t.num_embeddings, 0)))
    ours.train()
    theirs = torchrec_collection(tables, plan, lr)
    theirs.train()
    load_torchrec(theirs, {k: v.float() for k, v in initial.items()})

    pooled_ours = ours(features)
    pooled_theirs = pooled_torchrec(theirs, features, ours.feature_names)
    # TorchRec divides sharded tables' gradients by the world size (GRADIENT_DIVISION); recstack's
    # TrainStep scales each rank's loss instead: the same step on both sides
    (pooled_ours * upstream).sum().div(world.world_size).backward()
    ours.apply_gradients(lr)
    (pooled_theirs * upstream).sum().backward()  # the fused EXACT_SGD steps TorchRec's rows here
    out = {
        "feature_names": ours.feature_names,
        "pooled": {"recstack": pooled_ours.detach(), "torchrec": pooled_theirs.detach()},
        "tables": {"recstack": {t.name: ours.table_state(t.name).weight.clone() for t in tables
                                if ours.table_state(t.name).weight.numel()},
                   "torchrec": owned_weights(theirs)},
    }
    torch.save(out, Path(spec["out"]) / f"rank{world.rank}.pt")
    leave()


if __name__ == "__main__":
    main()
