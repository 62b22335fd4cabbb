"""The `EmbeddingCollection` interface every model is written against.

A model hands the collection a batch of jagged sparse features and gets pooled embeddings back;
where the rows live (plain memory, hot/cold tiers, shards, factorized, memoized, quantized) is the
implementation's business, chosen by configuration and never by an `if` inside a model.

Training follows TorchRec's fused design: the collection owns its sparse optimizer. After
`loss.backward()`, `apply_gradients(lr)` updates only the rows the last forward touched, with the
optimizer state stored beside the rows (so a tier or shard that moves rows moves their state too).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import nn

from recstack.data.batch import JaggedFeatures


@dataclass
class TableConfig:
    name: str
    num_embeddings: int
    embedding_dim: int
    feature_names: list[str] = field(default_factory=list)
    """Features looked up and pooled in this table (default: the feature named like the table)."""
    pooling: str = "sum"
    """How a bag of ids becomes one vector: sum or mean."""
    fold: bool = False
    """Ids >= num_embeddings fold into the table by modulo (a table shrunk by model.scale)."""
    sequence_names: list[str] = field(default_factory=list)
    """Features looked up in this table and returned unpooled, one vector per id (behaviour sequences)."""

    def __post_init__(self) -> None:
        if not self.feature_names and not self.sequence_names:
            self.feature_names = [self.name]
        if self.pooling not in ("sum", "mean"):
            raise ValueError(f"table {self.name}: pooling must be sum or mean, not {self.pooling!r}")

    @property
    def bytes(self) -> int:
        return self.num_embeddings * self.embedding_dim * 4


@dataclass
class SparseOptimizerConfig:
    kind: str = "rowwise_adagrad"
    """sgd, adagrad (one accumulator per element) or rowwise_adagrad (one per row, as FBGEMM)."""
    weight_decay: float = 0.0
    eps: float = 1e-8

    def state_floats_per_row(self, dim: int) -> int:
        return {"sgd": 0, "rowwise_adagrad": 1, "adagrad": dim}[self.kind]


@dataclass
class SequenceEmbeddings:
    """One behaviour sequence per sample, padded: values [B, L, D], lengths [B] (positions >= length are 0)."""

    values: torch.Tensor
    lengths: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """bool [B, L]: True at real positions."""
        positions = torch.arange(self.values.shape[1], device=self.values.device)
        return positions.unsqueeze(0) < self.lengths.unsqueeze(1)


class EmbeddingCollection(nn.Module, ABC):
    """Pooled (and sequence) embeddings for a set of features, with a fused sparse optimizer."""

    tables: list[TableConfig]

    @property
    def feature_names(self) -> list[str]:
        """Output order of `forward`'s feature axis."""
        return [f for t in self.tables for f in t.feature_names]

    @property
    def sequence_names(self) -> list[str]:
        """Features `sequences` returns unpooled."""
        return [f for t in self.tables for f in t.sequence_names]

    @abstractmethod
    def forward(self, features: JaggedFeatures) -> torch.Tensor:
        """Pooled embeddings [B, F, D] in `feature_names` order (all tables share D)."""

    def sequences(self, features: JaggedFeatures, max_length: int) -> dict[str, SequenceEmbeddings]:
        """The `sequence_names` features unpooled, each sample's last `max_length` ids (the most recent)."""
        raise NotImplementedError(f"{type(self).__name__} does not serve sequence features")

    @abstractmethod
    def apply_gradients(self, lr: float) -> None:
        """Apply the sparse optimizer to the rows touched since the last call (after backward)."""

    def embedding_bytes(self) -> int:
        return sum(t.bytes for t in self.tables)
