"""The model registry: named presets (architecture defaults) and one builder from config + data."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from recstack.config import Config, ModelConfig, TrainConfig, apply_mapping
from recstack.data.store import Schema
from recstack.embeddings import DenseEmbeddingCollection, SparseOptimizerConfig, TableConfig
from recstack.errors import ConfigError
from recstack.models.dlrm import DLRM

PRESETS: dict[str, dict[str, Any]] = {
    # DLRM reference, bench/dlrm_s_criteo_kaggle.sh
    "criteo-kaggle": {
        "model": {"name": "dlrm", "embedding_dim": 16, "bottom_mlp": [512, 256, 64, 16], "top_mlp": [512, 256, 1]},
        "data": {"synth_preset": "criteo-kaggle"},
    },
    # DLRM reference, bench/dlrm_s_criteo_terabyte.sh
    "criteo-terabyte": {
        "model": {"name": "dlrm", "embedding_dim": 64, "bottom_mlp": [512, 256, 64], "top_mlp": [512, 512, 256, 1]},
        "data": {"synth_preset": "criteo-terabyte"},
    },
    # For tests: seconds on a laptop.
    "tiny": {
        "model": {"name": "dlrm", "embedding_dim": 8, "bottom_mlp": [16, 8], "top_mlp": [16, 1]},
        "data": {"synth_preset": "tiny"},
    },
}

MODELS = {"dlrm"}


def apply_preset(config: Config, name: str) -> None:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    apply_mapping(config, PRESETS[name])
    config.model.preset = name


def table_configs(model: ModelConfig, schema: Schema, table_scale: float) -> list[TableConfig]:
    """One table per sparse feature of the data, rows multiplied by table_scale (ids fold when shrunk)."""
    tables = []
    for feature in schema.sparse:
        rows = feature.num_embeddings
        scaled = max(1, math.ceil(rows * table_scale)) if table_scale != 1.0 else rows
        tables.append(
            TableConfig(
                name=feature.name,
                num_embeddings=scaled,
                embedding_dim=model.embedding_dim,
                fold=scaled < rows,
            )
        )
    return tables


def sparse_optimizer_config(train: TrainConfig) -> SparseOptimizerConfig:
    return SparseOptimizerConfig(kind=train.sparse_optimizer, weight_decay=train.embedding_weight_decay)


def table_scale(config: Config, schema: Schema) -> float:
    """How much to shrink the data's tables: model.scale for real data; 1 for synthetic data,
    which the generator already made at model.scale."""
    return 1.0 if schema.info.get("generator") == "recstack.data.synth" else config.model.scale


def build_model(config: Config, schema: Schema) -> nn.Module:
    m = config.model
    if m.name not in MODELS:
        raise ConfigError(f"unknown model {m.name!r}; models: {', '.join(sorted(MODELS))}")
    if not schema.sparse:
        raise ConfigError("DLRM needs at least one sparse feature; the dataset has none")
    if m.bottom_mlp[-1] != m.embedding_dim:
        raise ConfigError(
            f"model.bottom_mlp must end at model.embedding_dim ({m.embedding_dim}) for the interaction, "
            f"not {m.bottom_mlp[-1]}"
        )
    embeddings = DenseEmbeddingCollection(
        table_configs(m, schema, table_scale(config, schema)), sparse_optimizer_config(config.train)
    )
    return DLRM(
        num_dense=len(schema.dense_names),
        embeddings=embeddings,
        bottom_mlp=m.bottom_mlp,
        top_mlp=m.top_mlp,
        interaction=m.interaction,
        interaction_self=m.interaction_self,
        dropout=m.dropout,
    )


def describe(model: nn.Module) -> dict[str, Any]:
    """Sizes other tools read: dense parameters, embedding rows and bytes, FLOPs per sample."""
    dense_params = sum(p.numel() for p in model.parameters())
    emb = model.embeddings
    return {
        "dense_params": dense_params,
        "embedding_rows": sum(t.num_embeddings for t in emb.tables),
        "embedding_bytes": emb.embedding_bytes(),
        "params": dense_params + sum(t.num_embeddings * t.embedding_dim for t in emb.tables),
        "flops_per_sample": model.flops_per_sample(),
        "embedding_lookups_per_sample": model.embedding_lookups_per_sample(),
    }
