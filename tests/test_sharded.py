"""Model-parallel training on torch.distributed (gloo, 127.0.0.1 only) equals training in one process.

The core check of issue 13: for each sharding type, 2 ranks (and 2 ranks x 2 "nodes") training a
model in float64 from the same initial parameters on the same global batches end with parameters
allclose to one process's. A skipped gradient exchange, a row updated on the wrong rank or a lost
optimizer step shows far above the tolerance (the broken variants below prove the test can fail)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recstack.config import resolve
from recstack.data.loader import BatchLoader
from recstack.data.store import Dataset
from recstack.data.synth import generate
from recstack.distributed import LOOPBACK_ENV, free_port
from recstack.embeddings.sharding import SHARDING_TYPES, ShardingPlan
from recstack.models.zoo import build_model
from recstack.train.pipeline import TrainStep
from recstack.train.trainer import dense_optimizer

WORKER = Path(__file__).with_name("sharded_worker.py")
STEPS = 6
TIGHT = {"rtol": 1e-9, "atol": 1e-11}


def torchrun(nproc: int, spec: Path, nnodes: int = 1, timeout: float = 240) -> None:
    """`nproc` ranks per launcher, `nnodes` launchers on this machine (2 "nodes" over loopback)."""
    port = str(free_port())
    env = {**os.environ, **LOOPBACK_ENV, "OMP_NUM_THREADS": "1"}
    launchers = [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                          "--nnodes", str(nnodes), "--node-rank", str(node), "--master-addr", "127.0.0.1",
                          "--master-port", port, str(WORKER), str(spec)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for node in range(nnodes)
    ]
    for launcher in launchers:
        out, _ = launcher.communicate(timeout=timeout)
        assert launcher.returncode == 0, out[-4000:]


SMALL = {
    "tiny": {},
    "dcn-v2": {"model.embedding_dim": 8, "model.bottom_mlp": "16,8", "model.top_mlp": "16,1", "model.cross_rank": 4,
               "model.cross_layers": 2},
    "din": {"model.embedding_dim": 8, "model.attention_mlp": "8", "model.top_mlp": "16,1",
            "model.max_sequence_length": 5, "model.scale": 0.0001},
}
"""Small versions of the presets (the data is the tiny or din synthetic set)."""


def overrides(preset: str, optimizer: str) -> dict:
    return {"model.preset": preset, "train.sparse_optimizer": optimizer, "train.batch_size": 32,
            "train.sparse_lr": 0.1, "train.lr": 0.01, **SMALL[preset]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    generate("tiny", 1024, path, seed=3)
    return path


@pytest.fixture(scope="module")
def din_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("din")
    generate("din", 1024, path, seed=3, scale=0.0001)
    return path


def reference(config, data: Path, initial: dict, steps: int) -> dict:
    """One process, the same global batches."""
    torch.manual_seed(0)
    dataset = Dataset(data)
    model = build_model(config, dataset.schema).double()
    model.load_state_dict(initial)
    model.train()
    step = TrainStep(model, dense_optimizer(model, config.train), "cpu")
    loader = BatchLoader(dataset, dataset.split("train"), config.train.batch_size, shuffle=True, seed=config.seed,
                         prefetch=0)
    for i, batch in enumerate(loader.epoch(0)):
        if i == steps:
            break
        step(batch, config.train.sparse_lr)
    return model


def sharded_run(tmp_path: Path, config, data: Path, plan: ShardingPlan, initial: dict, nproc: int = 2,
                nnodes: int = 1, broken: str = "") -> list[dict]:
    torch.save(initial, tmp_path / "initial.pt")
    sharded = resolve(None, {**{k: v for k, v in config_overrides(config).items()}, "embeddings.kind": "sharded"})
    spec = {"config": sharded.to_dict(), "data": str(data), "plan": plan.to_dict(), "initial": str(tmp_path / "initial.pt"),
            "steps": STEPS, "out": str(tmp_path), "break": broken}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    torchrun(nproc, tmp_path / "spec.json", nnodes)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(nproc * nnodes)]


def config_overrides(config) -> dict:
    return config._test_overrides


def make_config(preset: str, optimizer: str, data: Path):
    o = {**overrides(preset, optimizer), "data.path": str(data)}
    config = resolve(None, o)
    config._test_overrides = o
    return config


def assert_equal_to_reference(ranks: list[dict], model) -> None:
    expected = dict(model.named_parameters())
    for r in ranks:
        for name, value in r["dense"].items():
            torch.testing.assert_close(value, expected[name].detach(), **TIGHT, msg=name)
    collection = model.embeddings
    covered = {}
    for r in ranks:
        for name, ((r0, r1), (c0, c1), weight, opt) in r["shards"].items():
            if weight.numel() == 0:
                continue
            full = collection.table_state(name)
            torch.testing.assert_close(weight, full.weight[r0:r1, c0:c1], **TIGHT, msg=f"{name} rows")
            want_opt = full.optimizer_state[r0:r1]
            if opt.shape[1] != want_opt.shape[1]:
                want_opt = want_opt[:, c0:c1]
            torch.testing.assert_close(opt, want_opt, **TIGHT, msg=f"{name} optimizer state")
            covered[name] = covered.get(name, 0) + (r1 - r0) * (c1 - c0)
    for t in collection.tables:
        assert covered.get(t.name, 0) >= t.num_embeddings * t.embedding_dim, f"table {t.name} not covered"


@pytest.mark.parametrize("sharding, optimizer", [(s, "rowwise_adagrad") for s in SHARDING_TYPES] +
                         [("column_wise", "adagrad"), ("row_wise", "sgd"), ("data_parallel", "adagrad")])
def test_two_ranks_train_like_one_process(tmp_path, tiny, sharding, optimizer):
    config = make_config("tiny", optimizer, tiny)
    torch.manual_seed(0)
    initial = build_model(config, Dataset(tiny).schema).double().state_dict()
    model = reference(config, tiny, initial, STEPS)
    plan = ShardingPlan.uniform(model.embeddings.tables, 2, sharding)
    ranks = sharded_run(tmp_path, config, tiny, plan, initial)
    assert_equal_to_reference(ranks, model)


@pytest.mark.parametrize("broken", ["no_gradient_exchange", "wrong_rows"])
def test_the_comparison_catches_a_broken_exchange(tmp_path, tiny, broken):
    config = make_config("tiny", "rowwise_adagrad", tiny)
    torch.manual_seed(0)
    initial = build_model(config, Dataset(tiny).schema).double().state_dict()
    model = reference(config, tiny, initial, STEPS)
    plan = ShardingPlan.uniform(model.embeddings.tables, 2, "row_wise")
    ranks = sharded_run(tmp_path, config, tiny, plan, initial, broken=broken)
    with pytest.raises(AssertionError):
        assert_equal_to_reference(ranks, model)


def mixed_plan(tables, world_size: int = 2) -> ShardingPlan:
    """Every type at once: table i gets type i mod 4 (table-wise owners alternate)."""
    plan = ShardingPlan(world_size)
    from recstack.embeddings.sharding import TableSharding

    for i, t in enumerate(tables):
        kind = SHARDING_TYPES[i % len(SHARDING_TYPES)]
        ranks = (i % world_size,) if kind == "table_wise" else tuple(range(world_size))
        plan.tables[t.name] = TableSharding(kind, ranks)
    return plan


@pytest.mark.parametrize("preset", ["dcn-v2", "din"])
def test_dcn_and_din_with_sequences_train_like_one_process(tmp_path, tiny, din_data, preset):
    data = din_data if preset == "din" else tiny
    config = make_config(preset, "rowwise_adagrad", data)
    torch.manual_seed(0)
    initial = build_model(config, Dataset(data).schema).double().state_dict()
    model = reference(config, data, initial, STEPS)
    if preset == "din":
        assert model.embeddings.sequence_names, "DIN reads a behaviour sequence"
    ranks = sharded_run(tmp_path, config, data, mixed_plan(model.embeddings.tables), initial)
    assert_equal_to_reference(ranks, model)


def test_two_ranks_on_each_of_two_nodes(tmp_path, tiny):
    """Two launchers on 127.0.0.1 with --nnodes 2: the multi-node path, four ranks."""
    config = make_config("tiny", "rowwise_adagrad", tiny)
    torch.manual_seed(0)
    initial = build_model(config, Dataset(tiny).schema).double().state_dict()
    model = reference(config, tiny, initial, STEPS)
    ranks = sharded_run(tmp_path, config, tiny, mixed_plan(model.embeddings.tables, 4), initial, nproc=2, nnodes=2)
    assert len(ranks) == 4
    assert_equal_to_reference(ranks, model)
