"""NeuMF: the fused logit against a direct computation from the embedding rows and layer weights,
training on synthetic NCF data (both embedding collections learn), and the one-line error for data
without `user` and `item` features."""

from __future__ import annotations

import pytest
import torch

from recstack.config import ModelConfig, resolve
from recstack.data.batch import Batch, JaggedFeatures
from recstack.data.loader import BatchLoader
from recstack.data.store import Dataset, SparseFeature
from recstack.data.synth import generate
from recstack.errors import ConfigError
from recstack.models.base import DataLayout, ModelContext
from recstack.models.ncf import NeuMF, build
from recstack.models.zoo import build_model

USERS, ITEMS, GENRES = 7, 9, 4


def make_context(mf_dim: int, features: tuple[str, ...] = ("genre", "item", "user")) -> ModelContext:
    rows = {"user": USERS, "item": ITEMS, "genre": GENRES, "u": USERS, "i": ITEMS}
    config = ModelConfig(name="ncf", embedding_dim=4, mf_dim=mf_dim, top_mlp=[6, 5])
    return ModelContext(config, DataLayout([], ["label"], [SparseFeature(f, rows[f]) for f in features]))


def make_batch(size: int, seed: int) -> Batch:
    """Sparse keys in another order than the model's, plus a feature NeuMF must ignore."""
    g = torch.Generator().manual_seed(seed)
    ids = {name: torch.randint(0, n, (size,), generator=g) for name, n in (("genre", GENRES), ("item", ITEMS), ("user", USERS))}
    sparse = JaggedFeatures(list(ids), torch.cat(list(ids.values())), torch.ones(3 * size, dtype=torch.int32), size)
    return Batch(torch.zeros(size, 0), sparse, torch.randint(0, 2, (size,), generator=g).float())


def reference_logits(model: NeuMF, batch: Batch) -> torch.Tensor:
    """GMF product, ReLU tower, one linear layer, written out from the rows and weights."""
    ids = batch.sparse.to_dict()
    user, item = ids["user"][0], ids["item"][0]
    p, q = model.embeddings.table_weight("user")[user], model.embeddings.table_weight("item")[item]
    x = torch.cat([model.mlp_embeddings.table_weight("user")[user], model.mlp_embeddings.table_weight("item")[item]], 1)
    for layer in (m for m in model.tower if isinstance(m, torch.nn.Linear)):
        x = torch.relu(x @ layer.weight.T + layer.bias)
    (fusion,) = [m for m in model.predict if isinstance(m, torch.nn.Linear)]
    return (torch.cat([p * q, x], 1) @ fusion.weight.T + fusion.bias).squeeze(1)


@pytest.mark.parametrize("mf_dim, expected_mf_width", [(3, 3), (0, 4)])
def test_fusion_matches_direct_computation(mf_dim, expected_mf_width):
    torch.manual_seed(0)
    model = build(make_context(mf_dim))
    assert model.embeddings.tables[0].embedding_dim == expected_mf_width
    assert model.mlp_embeddings.tables[0].embedding_dim == 4
    with torch.no_grad():  # rows far from the tiny initial ones, so every term weighs in
        for collection in model.embedding_collections():
            collection.weight.normal_()
    batch = make_batch(16, seed=1)
    logits = model(batch)
    assert logits.shape == (16,)
    torch.testing.assert_close(logits, reference_logits(model, batch))


def test_loss_falls_and_both_collections_learn(tmp_path):
    generate("ncf", 8192, tmp_path / "data", scale=0.001, show_progress=False)
    dataset = Dataset(tmp_path / "data")
    config = resolve(None, {"model.preset": "ncf", "model.embedding_dim": 8, "model.mf_dim": 8,
                            "model.top_mlp": "16,8", "train.sparse_lr": 0.1})
    torch.manual_seed(0)
    model = build_model(config, dataset.schema)
    before = [c.weight.clone() for c in model.embedding_collections()]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loader = BatchLoader(dataset, dataset.split("train"), 256, seed=0, prefetch=0)
    losses = []
    for epoch in range(2):
        for batch in loader.epoch(epoch):
            optimizer.zero_grad()
            loss, _ = model.training_loss(batch)
            loss.backward()
            optimizer.step()
            model.apply_gradients(config.train.sparse_lr)
            losses.append(loss.item())
    assert len(losses) >= 50
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.03, (first, last, len(losses))
    assert len(before) == 2
    for old, collection in zip(before, model.embedding_collections()):
        assert not torch.equal(old, collection.weight), "the sparse optimizer updates the MF and the MLP tables"


@pytest.mark.parametrize("features, missing", [(("u", "i"), "user, item"), (("user", "genre"), "item")])
def test_missing_user_or_item_is_a_config_error(features, missing):
    with pytest.raises(ConfigError, match=f"lacks {missing}") as raised:
        build(make_context(4, features))
    assert "\n" not in str(raised.value)
