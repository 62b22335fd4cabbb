"""Plain in-memory tables: every table's rows in one fused [sum of rows, D] tensor.

One `embedding_bag` call pools all features of a batch (the ids of feature f are shifted by the
row offset of its table), instead of one call per table, which is what keeps a 26-table DLRM step
from being dominated by per-op overhead on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recstack.data.batch import JaggedFeatures
from recstack.embeddings.base import (
    EmbeddingCollection,
    SequenceEmbeddings,
    SparseOptimizerConfig,
    TableConfig,
    TableState,
)
from recstack.embeddings.layout import FusedLayout, padded
from recstack.embeddings.optim import new_state, sum_duplicate_rows, update_rows
from recstack.embeddings.plan import Placement, register


@dataclass
class _Lookup:
    """What one forward leaves for `apply_gradients`: the rows read and the pooled output."""

    rows: torch.Tensor
    """Global row id of every looked-up value."""
    lengths: torch.Tensor
    """Bag sizes [F * B] (None when every bag holds exactly one id)."""
    weights: torch.Tensor | None
    """Per-value pooling weights (weighted or mean pooling), or None for plain sums."""
    pooled: torch.Tensor
    """[F * B, D]; its .grad is filled by backward."""


class DenseEmbeddingCollection(EmbeddingCollection):
    def __init__(
        self,
        tables: list[TableConfig],
        optimizer: SparseOptimizerConfig | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if not tables:
            raise ValueError("an embedding collection needs at least one table")
        empty = [t.name for t in tables if t.num_embeddings < 1]
        if empty:
            raise ValueError(f"tables {empty} have no rows: every table needs num_embeddings >= 1")
        dims = {t.embedding_dim for t in tables}
        if len(dims) != 1:
            raise ValueError(f"all tables of a DenseEmbeddingCollection share one dimension, got {sorted(dims)}")
        self.tables = list(tables)
        self.optimizer = optimizer or SparseOptimizerConfig()
        self.layout = FusedLayout(self.tables, device)
        total_rows = self.layout.total_rows
        self.register_buffer("weight", torch.empty(total_rows, self.dim, device=device, dtype=dtype), persistent=False)
        self.register_buffer("optimizer_state", new_state(self.optimizer, total_rows, self.dim, device), persistent=False)
        self._pending: list[_Lookup] = []
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for t in self.tables:
            t.initialize(self.table_weight(t.name))
        self.optimizer_state.zero_()

    # --- logical state: views of the fused buffers ------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.weight.dtype

    @property
    def table_row_offsets(self) -> list[int]:
        """Where each table's rows start in the fused `weight`."""
        return self.layout.table_row_offsets

    def _span(self, name: str) -> slice:
        return self.layout.span(name, type(self).__name__)

    def table_weight(self, name: str) -> torch.Tensor:
        """A view of one table's rows."""
        return self.weight[self._span(name)]

    def table_state(self, name: str) -> TableState:
        span = self._span(name)
        return TableState(self.weight[span], self.optimizer_state[span])

    @torch.no_grad()
    def load_table_state(self, name: str, state: TableState) -> None:
        span = self._span(name)
        self.weight[span].copy_(state.weight)
        self.optimizer_state[span].copy_(state.optimizer_state)

    def read_rows(self, name: str, rows: torch.Tensor) -> TableState:
        index = rows.to(self.weight.device) + self._span(name).start
        return TableState(self.weight.index_select(0, index), self.optimizer_state.index_select(0, index))

    @torch.no_grad()
    def write_rows(self, name: str, rows: torch.Tensor, state: TableState) -> None:
        index = rows.to(self.weight.device) + self._span(name).start
        self.weight.index_copy_(0, index, state.weight.to(self.weight))
        self.optimizer_state.index_copy_(0, index, state.optimizer_state.to(self.optimizer_state))

    def place(self, device: torch.device | str) -> None:
        """Rows live where the model computes."""
        self.move_tensors(device)

    @property
    def ids_device(self) -> torch.device:
        return self.weight.device

    def _in_order(self, features: JaggedFeatures) -> JaggedFeatures:
        return features.select(self.feature_names)

    def forward(self, features: JaggedFeatures) -> torch.Tensor:
        batch, num_features = features.batch_size, len(self.feature_names)
        if num_features == 0:
            return self.weight.new_zeros(batch, 0, self.dim)
        features = self._in_order(features)
        lengths = features.lengths
        one_hot = features.values.numel() == lengths.numel() and features.weights is None and not self.layout.any_mean
        if one_hot:
            one_hot = bool((lengths == 1).all())
        device = self.weight.device
        values = features.values.to(device)
        if one_hot:
            # every bag holds exactly one id: the feature of value i is i // batch
            feature_of_value = offsets = None
            rows = self.layout.global_rows(values.view(num_features, batch), None).reshape(-1)
        else:
            lengths = lengths.to(device)
            offsets = torch.zeros(lengths.numel(), dtype=torch.int64, device=device)
            torch.cumsum(lengths[:-1], 0, out=offsets[1:])
            feature_of_value = torch.arange(num_features, device=device).repeat_interleave(batch).repeat_interleave(lengths)
            rows = self.layout.global_rows(values, feature_of_value)
        weights = None if features.weights is None else features.weights.to(device=device, dtype=self.weight.dtype)
        if self.layout.any_mean and not one_hot:
            is_mean = self.layout.feature_mean.to(device)[feature_of_value]
            bag_size = lengths.repeat_interleave(lengths).clamp(min=1).to(self.weight.dtype)
            scale = torch.where(is_mean, 1.0 / bag_size, torch.ones_like(bag_size))
            weights = scale if weights is None else weights * scale
        with torch.no_grad():
            if one_hot:
                pooled = self.weight.index_select(0, rows)
            else:
                pooled = F.embedding_bag(rows, self.weight, offsets, mode="sum", per_sample_weights=weights)
        if self.training and torch.is_grad_enabled():
            pooled.requires_grad_(True)
            self._pending.append(_Lookup(rows, None if one_hot else lengths, weights, pooled))
        return pooled.view(num_features, batch, self.dim).transpose(0, 1)

    def sequences(self, features: JaggedFeatures, max_length: int) -> dict[str, SequenceEmbeddings]:
        out = {}
        for name, ids in self.layout.sequence_ids(features, max_length, self.weight.device).items():
            with torch.no_grad():
                looked_up = self.weight.index_select(0, ids.rows)
            if self.training and torch.is_grad_enabled():
                looked_up.requires_grad_(True)
                self._pending.append(_Lookup(ids.rows, None, None, looked_up))
            out[name] = padded(looked_up, ids, features.batch_size)
        return out

    def pending_gradients(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(row of every looked-up id, its gradient) over every lookup since the last step (a row
        read by a pooled feature and by a sequence appears in both), or None when nothing was touched."""
        rows, grads = [], []
        for lookup in self._pending:
            grad = lookup.pooled.grad
            if grad is None:
                continue
            n = lookup.rows.numel()
            value_grad = grad if lookup.lengths is None else grad.repeat_interleave(lookup.lengths, dim=0, output_size=n)
            if lookup.weights is not None:
                value_grad = value_grad * lookup.weights.unsqueeze(1)
            rows.append(lookup.rows)
            grads.append(value_grad)
        self._pending.clear()
        if not rows:
            return None
        return (rows[0], grads[0]) if len(rows) == 1 else (torch.cat(rows), torch.cat(grads))

    @torch.no_grad()
    def apply_gradients(self, lr: float) -> None:
        """One optimizer step per touched row, on the sum of its gradients over the step's lookups."""
        touched = self.pending_gradients()
        if touched is not None:
            rows, summed = sum_duplicate_rows(*touched)
            update_rows(self.optimizer, self.weight, self.optimizer_state, rows, summed, lr)

    def discard_gradients(self) -> None:
        self._pending.clear()


@register("dense")
def build(tables: list[TableConfig], placement: Placement) -> DenseEmbeddingCollection:
    """Plain tables where the model computes."""
    return DenseEmbeddingCollection(tables, placement.optimizer, device=placement.device)
