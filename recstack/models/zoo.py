"""The model registry: model names to builders, and one builder from config + data.

The named presets (architecture and data defaults) are recstack.presets' PRESETS, applied by
recstack.config.apply_preset; both are importable from here too.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import replace
from typing import Any

import torch

from recstack.config import Config, TrainConfig
from recstack.config import apply_preset as apply_preset  # re-exported: the presets' home is recstack.presets
from recstack.data.batch import Batch
from recstack.data.store import Schema, SparseFeature
from recstack.embeddings import SparseOptimizerConfig
from recstack.embeddings.plan import Placement, parse_collections
from recstack.errors import ConfigError
from recstack.memory import require_memory
from recstack.models.base import DataLayout, ModelContext, RecModel
from recstack.presets import PRESETS as PRESETS

MODELS: dict[str, str] = {
    "dlrm": "recstack.models.dlrm:build",
    "ncf": "recstack.models.ncf:build",
    "wnd": "recstack.models.wide_deep:build_wide_deep",
    "mtwnd": "recstack.models.wide_deep:build_multitask",
    "dcn-v2": "recstack.models.dcn:build",
    "deepfm": "recstack.models.deepfm:build",
    "din": "recstack.models.din:build",
    "dien": "recstack.models.dien:build",
}
"""Model name -> "module:builder"; a builder takes a ModelContext and returns a RecModel."""


ZOO = ["rmc1", "rmc2", "rmc3", "ncf", "wnd", "mtwnd", "din", "dien", "dcn-v2", "deepfm", "criteo-kaggle", "criteo-terabyte"]
"""The presets `recstack models` characterizes, in the order of DeepRecSys's table."""


def sparse_optimizer_config(train: TrainConfig) -> SparseOptimizerConfig:
    return SparseOptimizerConfig(kind=train.sparse_optimizer, weight_decay=train.embedding_weight_decay)


def table_scale(config: Config, schema: Schema) -> float:
    """How much to shrink the data's tables: model.scale for real data; 1 for synthetic data,
    which the generator already made at model.scale."""
    return 1.0 if schema.info.get("generator") == "recstack.data.synth" else config.model.scale


def data_layout(config: Config, schema: Schema) -> DataLayout:
    """The schema as a model sees it: table rows multiplied by the table scale (ids fold when shrunk)."""
    scale = table_scale(config, schema)
    sparse, folded = [], set()
    for f in schema.sparse:
        rows = max(1, math.ceil(f.num_embeddings * scale)) if scale != 1.0 else f.num_embeddings
        if rows < f.num_embeddings:
            folded.add(f.table_name)
        sparse.append(SparseFeature(f.name, rows, f.length, f.dtype, table=f.table, sequence=f.sequence))
    return DataLayout(list(schema.dense_names), list(schema.label_names), sparse, folded)


def builder(name: str):
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; models: {', '.join(sorted(MODELS))}")
    module, function = MODELS[name].split(":")
    return getattr(importlib.import_module(module), function)


def placement(config: Config, device: torch.device | str = "cpu", hot_rows: Any = None,
              inference: bool = False, sharding: Any = None) -> Placement:
    """The plan of the config's `embeddings:` section for a model computing on `device`; `hot_rows`:
    FAE's partition (kind tiered); `sharding`: a ShardingPlan (kind sharded); `inference`:
    training-only kinds replaced by the kinds that serve them."""
    e = config.embeddings
    plan = Placement(kind=e.kind, collections=parse_collections(e.collections), device=device,
                     optimizer=sparse_optimizer_config(config.train), hot_rows=hot_rows,
                     hot_device=None if config.fae.hot_device == "auto" else config.fae.hot_device,
                     sharding=sharding)
    return plan.for_inference() if inference else plan


def build_model(config: Config, schema: Schema, device: torch.device | str = "cpu", *, hot_rows: Any = None,
                inference: bool = False, sharding: Any = None) -> RecModel:
    """The config's model for the schema's data, its tables placed by the config's plan (see `placement`),
    refused with one line when it would not fit in memory."""
    layout, plan = data_layout(config, schema), placement(config, device, hot_rows, inference, sharding)
    build = builder(config.model.name)
    if torch.device(device).type == "cpu":
        require_memory(
            training_bytes(build(ModelContext(config.model, layout, placement=replace(plan, device="meta")))),
            f"model {config.model.name} (preset {config.model.preset}, scale {config.model.scale:g})",
            hint="lower --model.scale, or train on a machine with more memory",
        )
    return build(ModelContext(config.model, layout, placement=plan))


def training_bytes(model: RecModel) -> int:
    """A floor on what training the model holds in memory: its tables with their optimizer state
    (each collection's `memory_bytes`), its other buffers, and its dense parameters with a gradient
    and up to two optimizer moments (Adam). Exact on a model built on the "meta" device, which
    allocates nothing."""
    collections = model.embedding_collections()
    held = {id(b) for c in collections for b in c.buffers()}
    buffers = sum(b.numel() * b.element_size() for b in model.buffers() if id(b) not in held)
    tables = sum(c.memory_bytes() for c in collections)
    return tables + buffers + 4 * sum(p.numel() * p.element_size() for p in model.parameters())


def describe(model: RecModel, batch: Batch | None = None) -> dict[str, Any]:
    """Sizes other tools read: dense parameters, embedding rows and bytes; with a sample batch, the
    forward FLOPs and the embedding bytes read per sample (mean bag sizes of that batch)."""
    collections = model.embedding_collections()
    table_params = sum(t.num_embeddings * t.embedding_dim for c in collections for t in c.tables)
    dense_params = sum(p.numel() for p in model.parameters())
    out: dict[str, Any] = {
        "dense_params": dense_params,
        "embedding_rows": sum(t.num_embeddings for c in collections for t in c.tables),
        "embedding_bytes": sum(c.embedding_bytes() for c in collections),
        "params": dense_params + table_params,
    }
    flops = getattr(model, "flops_per_sample", None)
    if flops is not None:
        out["flops_per_sample"] = flops()
    if batch is not None:
        out["flops_per_sample"] = model.measured_flops_per_sample(batch)
        out["embedding_bytes_per_sample"] = embedding_bytes_per_sample(model, batch)
    lookups = getattr(model, "embedding_lookups_per_sample", None)
    if lookups is not None:
        out["embedding_lookups_per_sample"] = lookups()
    return out


def embedding_bytes_per_sample(model: RecModel, batch: Batch) -> float:
    """fp32 bytes of the rows every sample gathers: mean ids per feature x the width of each
    collection that reads it (a sequence counts its last `model.max_sequence_length` ids, the ones read)."""
    lengths = batch.sparse.lengths.view(len(batch.sparse.keys), batch.batch_size).double()
    pooled = dict(zip(batch.sparse.keys, lengths.mean(1).tolist()))
    cap = getattr(model, "max_sequence_length", None)
    capped = dict(zip(batch.sparse.keys, (lengths.clamp(max=cap) if cap else lengths).mean(1).tolist()))
    total = 0.0
    for collection in model.embedding_collections():
        for t in collection.tables:
            total += sum(pooled.get(name, 0.0) for name in t.feature_names) * t.embedding_dim * 4
            total += sum(capped.get(name, 0.0) for name in t.sequence_names) * t.embedding_dim * 4
    return total
