"""Embedding tables behind one interface; see base.EmbeddingCollection."""

from recstack.embeddings.base import EmbeddingCollection, SparseOptimizerConfig, TableConfig
from recstack.embeddings.dense import DenseEmbeddingCollection

__all__ = ["EmbeddingCollection", "DenseEmbeddingCollection", "SparseOptimizerConfig", "TableConfig"]
