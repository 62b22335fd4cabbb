"""DIN: the activation unit's weights and the interest vector against a direct per-sample computation,
padding that cannot leak into the output, plain pooling, the loss falling on synthetic DIN data, and
the Amazon recipe beating its two baselines."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch

from recstack.config import resolve
from recstack.data.batch import Batch, JaggedFeatures
from recstack.data.store import Dataset, SparseFeature
from recstack.data.synth import generate
from recstack.embeddings import DenseEmbeddingCollection, TableConfig
from recstack.errors import ConfigError, DataError
from recstack.models.base import DataLayout
from recstack.models.din import DIN, BehaviourFeatures, behaviour_features
from recstack.models.zoo import build_model
from tests.conftest import REPO, shared_data

DIM = 4
USERS, ITEMS, CATES = 7, 30, 5
FEATURES = BehaviourFeatures(sequences=["hist_item", "hist_cate"], targets=["target_item", "target_cate"],
                             others=["user"])


def make_din(pooling: str = "attention", max_len: int = 6) -> DIN:
    torch.manual_seed(0)
    tables = [
        TableConfig("user", USERS, DIM),
        TableConfig("target_item", ITEMS, DIM, feature_names=["target_item"], sequence_names=["hist_item"]),
        TableConfig("target_cate", CATES, DIM, feature_names=["target_cate"], sequence_names=["hist_cate"]),
    ]
    model = DIN(DenseEmbeddingCollection(tables), FEATURES, num_dense=2, attention_mlp=[8, 4], top_mlp=[8, 1],
                pooling=pooling, max_sequence_length=max_len)
    with torch.no_grad():  # larger rows than the default init, so that scores differ visibly
        model.embeddings.weight.normal_()
    return model.eval()


def make_batch(lengths: list[int], seed: int = 0, cate_lengths: list[int] | None = None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    hist = torch.randint(0, ITEMS, (sum(lengths),), generator=g)
    cate_lengths = cate_lengths or lengths
    features = {
        "user": (torch.randint(0, USERS, (b,), generator=g), torch.ones(b)),
        "target_item": (torch.randint(0, ITEMS, (b,), generator=g), torch.ones(b)),
        "target_cate": (torch.randint(0, CATES, (b,), generator=g), torch.ones(b)),
        "hist_item": (hist, torch.tensor(lengths)),
        "hist_cate": (torch.randint(0, CATES, (sum(cate_lengths),), generator=g), torch.tensor(cate_lengths)),
    }
    return Batch(torch.rand(b, 2, generator=g), JaggedFeatures.from_dict(features), torch.randint(0, 2, (b,), generator=g).float())


def reference_sample(model: DIN, batch: Batch, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights of the kept positions, interest) of sample i, straight from the table rows."""
    emb = model.embeddings
    features = batch.sparse.to_dict()

    def ids(name: str) -> list[int]:
        values, lengths = features[name]
        start = int(lengths[:i].sum())
        return values[start : start + int(lengths[i])].tolist()[-model.max_sequence_length:]

    def row(table: str, id_: int) -> torch.Tensor:
        return emb.table_weight(table)[id_]

    target = torch.cat([row("target_item", ids("target_item")[0]), row("target_cate", ids("target_cate")[0])])
    history = [torch.cat([row("target_item", a), row("target_cate", c)]) for a, c in zip(ids("hist_item"), ids("hist_cate"))]
    weights = torch.stack([model.attention.mlp(torch.cat([h, target, h - target, h * target]).unsqueeze(0))[0, 0]
                           for h in history]) if history else torch.zeros(0)
    interest = sum((w * h for w, h in zip(weights, history)), torch.zeros(2 * DIM))
    return weights, interest


@torch.no_grad()
def test_attention_weights_and_interest_match_per_sample_reference():
    model = make_din(max_len=6)
    batch = make_batch([3, 0, 9, 1, 6], seed=1)  # an empty history, and one longer than max_len (last 6 kept)
    behaviour = model.behaviour(batch)
    weights, interest = model.attention_weights(behaviour), model.interest(behaviour)
    assert weights.shape == (5, 6)
    for i, kept in enumerate([3, 0, 6, 1, 6]):
        expected_weights, expected_interest = reference_sample(model, batch, i)
        torch.testing.assert_close(weights[i, :kept], expected_weights)
        assert (weights[i, kept:] == 0).all(), "padded positions weigh 0"
        torch.testing.assert_close(interest[i], expected_interest)
    # no softmax: the weights are raw scores, not a distribution
    assert not torch.allclose(weights[0, :3].sum(), torch.tensor(1.0))


@torch.no_grad()
def test_padded_positions_cannot_change_the_output():
    model = make_din()
    batch = make_batch([2, 5, 1], seed=2)
    behaviour = model.behaviour(batch)
    logits = model.head(behaviour, model.interest(behaviour))
    noisy = behaviour.history.clone()
    noisy[~behaviour.mask] = torch.randn(int((~behaviour.mask).sum()), 2 * DIM) * 100
    behaviour.history = noisy
    torch.testing.assert_close(model.head(behaviour, model.interest(behaviour)), logits)
    # and each sample scores the same alone as inside a padded batch
    features = batch.sparse.to_dict()
    for i in range(3):
        one = {k: (v[int(n[:i].sum()) : int(n[: i + 1].sum())], n[i : i + 1]) for k, (v, n) in features.items()}
        alone = Batch(batch.dense[i : i + 1], JaggedFeatures.from_dict(one), batch.labels[i : i + 1])
        torch.testing.assert_close(model(alone), logits[i : i + 1])


@torch.no_grad()
@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_plain_pooling_replaces_attention(pooling):
    model = make_din(pooling)
    assert model.attention is None
    batch = make_batch([3, 0, 2], seed=3)
    behaviour = model.behaviour(batch)
    summed = behaviour.history.sum(1)  # padded positions hold zeros
    expected = summed / behaviour.mask.sum(1, keepdim=True).clamp(min=1) if pooling == "mean" else summed
    torch.testing.assert_close(model.interest(behaviour), expected)


def test_sequences_of_different_lengths_are_a_one_line_error():
    model = make_din()
    with pytest.raises(DataError, match="differ in length"):
        model(make_batch([2, 3], cate_lengths=[2, 2]))


def test_a_sequence_without_a_target_is_a_config_error():
    layout = DataLayout([], ["label"], [SparseFeature("user", 5), SparseFeature("hist", 9, None, sequence=True)])
    with pytest.raises(ConfigError, match="no pooled feature indexes table 'hist'"):
        behaviour_features(layout, "DIN")
    layout.sparse = [SparseFeature("user", 5)]
    with pytest.raises(ConfigError, match="behaviour-sequence"):
        behaviour_features(layout, "DIN")


@contextmanager
def one_thread():
    """Ops this small only pay for intra-op threads (a lot, on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_steps(preset: str, tmp_path, steps: int = 40, **model_keys) -> tuple[float, float]:
    """Mean training loss of the first and the last 5 of `steps` passes over 8 fixed batches of synthetic data."""
    data = tmp_path / preset
    generate(preset, 2048, data, scale=0.0005, show_progress=False)
    overrides = {"model.preset": preset, "model.scale": 0.0005, **{f"model.{k}": v for k, v in model_keys.items()}}
    config = resolve(None, overrides)
    dataset = Dataset(data)
    torch.manual_seed(0)
    model = build_model(config, dataset.schema)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = [dataset.gather(slice(i * 256, (i + 1) * 256)) for i in range(8)]
    losses = []
    with one_thread():
        for step in range(steps):
            optimizer.zero_grad()
            loss, _ = model.training_loss(batches[step % 8])
            loss.backward()
            optimizer.step()
            model.apply_gradients(0.1)
            losses.append(float(loss.detach()))
    return sum(losses[:5]) / 5, sum(losses[-5:]) / 5


def test_din_loss_falls_on_synthetic_data(tmp_path):
    first, last = train_steps("din", tmp_path)
    assert last < 0.85 * first, (first, last)


@pytest.mark.parametrize("model", ["din", pytest.param("dien", marks=pytest.mark.slow)])
def test_amazon_recipe_beats_sum_pooling_and_popularity(tmp_path, model):
    """configs/<model>-amazon.yaml on the Amazon sample, with its two baselines in the same run (DIN
    about 15 s; DIEN about 40 s, so slow-marked)."""
    data = tmp_path / "amazon"
    cli = [sys.executable, "-m", "recstack.cli"]
    subprocess.run([*cli, "data", "prepare", "amazon", "--input", str(shared_data("amazon-electronics-din")),
                    "--out", str(data), "--quiet"], check=True)
    report_path = tmp_path / "report.json"
    subprocess.run([*cli, "train", "--config", str(REPO / "configs" / f"{model}-amazon.yaml"), "--data", str(data),
                    "--baseline", "model.sequence_pooling=sum", "--baseline", "popularity",
                    "--report", str(report_path), "--quiet"], check=True)
    report = json.loads(report_path.read_text())
    ours = report["metrics"]["auc"]
    summed = report["baselines"]["model.sequence_pooling=sum"]["metrics"]["auc"]
    popularity = report["baselines"]["popularity"]["metrics"]["auc"]
    assert report["metrics"]["count"] == 10_000 and report["data"]["rows"]["val"] == [8_000, 10_000]
    assert report["training"]["best_val_auc"] == report["metrics_by_split"]["val"]["auc"]  # the kept model
    assert ours > summed and ours > popularity, (ours, summed, popularity)


def test_baselines_run_beside_the_main_model(tmp_path):
    """`recstack train --baseline ...`: a config variant and item popularity, in one report."""
    from collections import Counter

    from recstack.scoring.metrics import auc
    from recstack.train.run import train

    data = tmp_path / "din"
    generate("din", 2048, data, scale=0.0005, show_progress=False)
    config = resolve(None, {"model.preset": "din", "data.path": str(data), "data.val_fraction": 0.25,
                            "train.batch_size": 256, "model.max_sequence_length": 10})
    with one_thread():
        report = train(config, run_dir=tmp_path / "run", baselines=["model.sequence_pooling=sum", "popularity"])
    variant, popularity = report["baselines"]["model.sequence_pooling=sum"], report["baselines"]["popularity"]
    assert variant["overrides"] == {"model.sequence_pooling": "sum"}
    assert variant["metrics"]["count"] == report["metrics"]["count"] and variant["metrics"]["auc"] != report["metrics"]["auc"]
    # popularity: the candidate item's count among the positives of the training rows (validation excluded)
    ds = Dataset(data)
    train_end, (test_start, test_end) = report["data"]["rows"]["train"][1], ds.split("test")
    assert tuple(report["data"]["rows"]["val"]) == (train_end, ds.split("train")[1])
    counts = Counter(int(i) for i, y in zip(ds.values["item"][:train_end, 0], ds.labels[:train_end, 0]) if y == 1)
    scores = [counts[int(i)] for i in ds.values["item"][test_start:test_end, 0]]
    assert popularity["feature"] == "item"
    assert popularity["metrics"]["auc"] == pytest.approx(auc(ds.labels[test_start:test_end, 0], scores))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        train(config, run_dir=tmp_path / "run2", baselines=["sum"])
    with pytest.raises(ConfigError, match="unknown config key"):
        train(config, run_dir=tmp_path / "run3", baselines=["model.no_such_key=1"])
