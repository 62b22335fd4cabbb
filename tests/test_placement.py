"""The placement seam: the config's embeddings: section builds every collection of a model through one
factory (FAE's tiers included, for models with several collections and with sequences), checkpoints
hold the logical per-table state (old fused checkpoints still load), serving rebuilds training-only
kinds as the kind that serves them, and the training step is one object."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recstack import checkpoint
from recstack.config import resolve
from recstack.data.store import Dataset
from recstack.data.synth import generate
from recstack.embeddings import DenseEmbeddingCollection, TableConfig
from recstack.embeddings.base import embedding_collections
from recstack.embeddings.plan import Placement, build_collection, kinds
from recstack.embeddings.tiered import TieredEmbeddingCollection
from recstack.errors import ConfigError
from recstack.models.zoo import build_model, data_layout

TABLES = [TableConfig("a", 7, 4), TableConfig("b", 5, 4, pooling="mean")]


def test_the_factory_builds_each_registered_kind_and_refuses_unknown_ones():
    assert {"dense", "tiered"} <= set(kinds())
    assert isinstance(build_collection(TABLES, Placement()), DenseEmbeddingCollection)
    tiered = build_collection(TABLES, Placement(kind="tiered", hot_rows={"a": [1, 2]}, hot_device="cpu"))
    assert isinstance(tiered, TieredEmbeddingCollection) and tiered.untiered == {"b": "no hot rows"}
    with pytest.raises(ConfigError, match=r"unknown embeddings kind 'nope' \(for the wide tables\); kinds: dense"):
        build_collection(TABLES, Placement(collections={"wide": "nope"}), role="wide")
    with pytest.raises(ConfigError, match="tiered .* needs a hot/cold partition"):
        build_collection(TABLES, Placement(kind="tiered"))


def test_config_selects_kinds():
    assert resolve(None, {"fae.budget": "1MiB"}).embeddings.kind == "tiered"  # the budget turns FAE on
    assert resolve(None, {}).embeddings.kind == "dense"
    with pytest.raises(ConfigError, match="tiered .* needs fae.budget"):
        resolve(None, {"embeddings.kind": "tiered"})
    config = resolve(None, {"embeddings.collections": "wide=dense,main=dense", "model.preset": "wnd"})
    assert config.embeddings.collections == ["wide=dense", "main=dense"]


@pytest.fixture(scope="module")
def schemas(tmp_path_factory):
    out = {}
    for preset in ("wnd", "din"):
        path = tmp_path_factory.mktemp(preset)
        generate(preset, 256, path, seed=0, scale=0.001)
        out[preset] = Dataset(path).schema
    return out


@pytest.mark.parametrize("preset", ["wnd", "din"])
def test_fae_tiers_every_collection_of_any_pooled_model(schemas, preset):
    """Wide & Deep has two collections (deep and wide); DIN's item table is read by a behaviour
    sequence, so it stays on the full tier (with the reason), while its other tables are tiered."""
    config = resolve(None, {"model.preset": preset, "fae.budget": "1MiB", "fae.hot_device": "cpu",
                            "model.scale": 0.001})
    layout = data_layout(config, schemas[preset])
    hot_rows = {f.table_name: np.arange(min(3, f.num_embeddings)) for f in layout.sparse}
    model = build_model(config, schemas[preset], hot_rows=hot_rows)
    collections = embedding_collections(model)
    assert collections and all(isinstance(c, TieredEmbeddingCollection) for c in collections)
    if preset == "wnd":
        assert len(collections) == 2 and all(not c.untiered for c in collections)
    else:
        (coll,) = collections
        sequence_tables = {t.name for t in coll.tables if t.sequence_names}
        assert sequence_tables and coll.untiered == dict.fromkeys(sequence_tables, "a sequence feature reads it")
        assert coll.num_hot_rows > 0
    # served, the same checkpoint builds plain tables: FAE's tiers are a training-time placement
    served = build_model(config, schemas[preset], inference=True)
    assert all(isinstance(c, DenseEmbeddingCollection) for c in embedding_collections(served))
    served.load_state_dict(model.state_dict())
    for a, b in zip(embedding_collections(model), embedding_collections(served)):
        for t in a.tables:
            torch.testing.assert_close(a.table_state(t.name).weight, b.table_state(t.name).weight, rtol=0, atol=0)


def test_role_names_place_collections_apart(schemas):
    config = resolve(None, {"model.preset": "wnd", "fae.budget": "1MiB", "fae.hot_device": "cpu",
                            "embeddings.collections": "wide=dense", "model.scale": 0.001})
    model = build_model(config, schemas["wnd"], hot_rows={})
    assert isinstance(model.wide.embeddings, DenseEmbeddingCollection)
    assert isinstance(model.embeddings, TieredEmbeddingCollection)


def fused(state: dict) -> dict:
    """A state dict as checkpoints of format version 1 held it: one fused buffer per collection."""
    out, groups = {}, {}
    for key, value in state.items():
        if ".tables." in key:
            prefix, rest = key.split(".tables.", 1)
            table, field = rest.rsplit(".", 1)
            groups.setdefault((prefix, field), []).append(value)
        else:
            out[key] = value
    for (prefix, field), parts in groups.items():
        out[f"{prefix}.{field}"] = torch.cat(parts)
    return out


def test_old_fused_checkpoints_load_into_the_logical_state(tmp_path):
    path = tmp_path / "data"
    generate("tiny", 256, path, seed=0)
    config = resolve(None, {"model.preset": "tiny"})
    schema = Dataset(path).schema
    trained = build_model(config, schema)
    with torch.no_grad():
        trained.embeddings.weight.normal_()
        trained.embeddings.optimizer_state.uniform_()
    legacy = fused(trained.state_dict())
    assert "embeddings.weight" in legacy and not any(".tables." in k for k in legacy)
    ckpt = checkpoint.save(tmp_path / "old.pt", {"config": config.to_dict(), "schema": schema.to_json(),
                                                 "model": legacy, "trainer": {}})
    payload = checkpoint.load(ckpt, require=checkpoint.SCORING)
    _, _, model = checkpoint.rebuild_model(payload)
    checkpoint.load_state(model, payload["model"], ckpt)  # strict
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_a_state_of_other_shapes_is_one_line(tmp_path):
    path = tmp_path / "data"
    generate("tiny", 256, path, seed=0)
    schema = Dataset(path).schema
    small = build_model(resolve(None, {"model.preset": "tiny"}), schema)
    wide = build_model(resolve(None, {"model.preset": "tiny", "model.embedding_dim": 4, "model.bottom_mlp": "16,4"}), schema)
    from recstack.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"its model state does not fit the model \(RuntimeError"):
        checkpoint.load_state(small, wide.state_dict(), "x.pt")
