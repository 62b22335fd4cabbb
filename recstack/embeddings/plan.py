"""The plan: which kind of EmbeddingCollection holds a model's tables, and one factory that builds it.

A model asks its context for a collection (`ModelContext.embeddings(tables, role)`); the context
hands the tables to `build_collection` with the `Placement` made from the config's `embeddings:`
section. Each kind of collection registers its builder here from its own module:

    @register("fp16")
    def build(tables: list[TableConfig], placement: Placement) -> EmbeddingCollection: ...

Every module of recstack.embeddings is imported on the first build, so a new kind is one new
module (and one line in tests/test_collections.py, the conformance suite every kind passes).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from recstack.embeddings.base import EmbeddingCollection, SparseOptimizerConfig, TableConfig
from recstack.errors import ConfigError

Builder = Callable[[list[TableConfig], "Placement"], EmbeddingCollection]
KINDS: dict[str, Builder] = {}
"""Kind name -> builder, filled by `register` as the modules of this package are imported."""
TRAINING_ONLY: dict[str, str] = {}
"""Kinds that hold training-time state only, -> the kind that serves their checkpoint (FAE's
tiers serve from plain tables)."""


def register(kind: str, serves_as: str | None = None) -> Callable[[Builder], Builder]:
    """Register a builder for `kind`; `serves_as`: the kind a model rebuilt for inference uses instead."""

    def add(builder: Builder) -> Builder:
        if kind in KINDS and KINDS[kind] is not builder:
            raise ValueError(f"embeddings kind {kind!r} is registered twice")
        KINDS[kind] = builder
        if serves_as is not None:
            TRAINING_ONLY[kind] = serves_as
        return builder

    return add


@dataclass
class Placement:
    """What the factory needs beside a collection's tables: the kinds, where the model computes, the
    sparse optimizer, and what a kind needs from the data (FAE's hot rows)."""

    kind: str = "dense"
    """The kind of every collection that `collections` does not name."""
    collections: dict[str, str] = field(default_factory=dict)
    """Role -> kind, for a model's collections by role (`main`, `wide`, `gmf`, `mlp`, ...)."""
    device: torch.device | str = "cpu"
    """Where the model computes ("meta" to size a model without its memory)."""
    optimizer: SparseOptimizerConfig = field(default_factory=SparseOptimizerConfig)
    hot_rows: Any = None
    """FAE's hot rows (a HotCold partition, or table name -> row ids), for kind `tiered`."""
    hot_device: torch.device | str | None = None
    """Where FAE's hot tier lives (None: cuda when there is one)."""
    sharding: Any = None
    """The sharding plan (recstack.embeddings.sharding.ShardingPlan) for kind `sharded`; None: table-wise."""

    def kind_of(self, role: str) -> str:
        return self.collections.get(role, self.kind)

    def for_inference(self) -> Placement:
        """The same plan with every training-only kind replaced by the kind that serves it."""
        _discover()
        return replace(self, kind=TRAINING_ONLY.get(self.kind, self.kind),
                       collections={r: TRAINING_ONLY.get(k, k) for r, k in self.collections.items()})


def build_collection(tables: list[TableConfig], placement: Placement, role: str = "main") -> EmbeddingCollection:
    """The collection of the kind the plan gives `role`, holding `tables`."""
    _discover()
    kind = placement.kind_of(role)
    if kind not in KINDS:
        raise ConfigError(f"unknown embeddings kind {kind!r} (for the {role} tables); kinds: {', '.join(kinds())}")
    return KINDS[kind](tables, placement)


def kinds() -> list[str]:
    _discover()
    return sorted(KINDS)


def parse_collections(items: list[str]) -> dict[str, str]:
    """`embeddings.collections` entries `role=kind` as a mapping."""
    out = {}
    for item in items:
        role, sep, kind = item.partition("=")
        if not sep or not role.strip() or not kind.strip():
            raise ConfigError(f"embeddings.collections: expected role=kind (e.g. wide=dense), got {item!r}")
        out[role.strip()] = kind.strip()
    return out


_discovered = False


def _discover() -> None:
    """Import every module of this package once, so each registers its kinds."""
    global _discovered
    if _discovered:
        return
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{__package__}.{module.name}")
    _discovered = True
