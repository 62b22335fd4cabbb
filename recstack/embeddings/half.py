"""Half-precision tables for inference (`--embeddings.kind fp16`): rows stored as float16, half the
bytes of dense's float32, pooled in float32.

The rows and their state are a `DenseEmbeddingCollection` in float16 (`self.rows`), so the layout,
the logical state (table_state, read_rows/write_rows, state_dict), init and sequences are dense.py's.
The optimizer state is stored as it is loaded (float32, [rows, k]), though nothing here updates it:
a training checkpoint loaded and saved again keeps its accumulators, so an fp16 copy never loses
what training needs to resume. A serving plan that wants no state at all uses optimizer sgd (k = 0).

Pooling gathers only the rows a batch reads, converts them to float32 (exact) and pools them with
`embedding_bag` in float32, so a sum over a long bag rounds once per row, not once per addition.
The output is float32 unless the enclosing model was converted (`.double()`, `.half()`): then it
follows the model's dtype. The rows themselves stay float16 whatever the model's dtype: that is the
kind. Ids are checked: an id outside a table that does not fold is an IndexError.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recstack.data.batch import JaggedFeatures
from recstack.embeddings.base import (
    EmbeddingCollection,
    SequenceEmbeddings,
    SparseOptimizerConfig,
    TableConfig,
    TableState,
)
from recstack.embeddings.dense import DenseEmbeddingCollection
from recstack.embeddings.plan import Placement, register


class HalfEmbeddingCollection(EmbeddingCollection):
    """float16 rows (a dense collection in float16), float32 pooling; inference only."""

    trainable = False
    """apply_gradients refuses: export or serve these tables, train dense (or tiered) ones."""

    def __init__(self, tables: list[TableConfig], optimizer: SparseOptimizerConfig | None = None,
                 device: torch.device | str = "cpu"):
        super().__init__()
        self.rows = self.adopt(DenseEmbeddingCollection(tables, optimizer, device, dtype=torch.float16))
        self.tables, self.optimizer = self.rows.tables, self.rows.optimizer
        self.output_dtype = torch.float32
        # per table: whether it pools by mean; per pooled feature: its table
        for name, values, dtype in [
            ("_table_mean", [t.pooling == "mean" for t in self.tables], torch.bool),
            ("_feature_table", [i for i, t in enumerate(self.tables) for _ in t.feature_names], torch.int64),
        ]:
            self.register_buffer(name, torch.tensor(values, dtype=dtype, device=device), persistent=False)

    # --- lookups -----------------------------------------------------------------------------

    def forward(self, features: JaggedFeatures) -> torch.Tensor:
        batch, num_features, device = features.batch_size, len(self.feature_names), self._table_mean.device
        if num_features == 0:
            return torch.zeros(batch, 0, self.dim, device=device, dtype=self.output_dtype)
        features = features.select(self.feature_names)
        lengths = features.lengths.to(device=device, dtype=torch.int64)
        table_of_bag = self._feature_table.repeat_interleave(batch)
        feature_of_value = torch.arange(num_features, device=device).repeat_interleave(batch).repeat_interleave(lengths)
        rows = self.rows.global_rows(features.values.to(device), feature_of_value)  # folded, range-checked
        gathered = self.rows.weight.index_select(0, rows).float()  # only the rows read, dequantized
        weights = None if features.weights is None else features.weights.to(device=device, dtype=torch.float32)
        pooled = F.embedding_bag(torch.arange(rows.numel(), device=device), gathered, lengths.cumsum(0) - lengths,
                                 mode="sum", per_sample_weights=weights)
        mean = self._table_mean[table_of_bag].unsqueeze(1)
        pooled = torch.where(mean, pooled / lengths.clamp(min=1).unsqueeze(1), pooled)
        return pooled.view(num_features, batch, self.dim).transpose(0, 1).to(self.output_dtype)

    def sequences(self, features: JaggedFeatures, max_length: int) -> dict[str, SequenceEmbeddings]:
        with torch.no_grad():  # nothing to train: record no lookups (the float16 rows check the ids)
            out = self.rows.sequences(features, max_length)
        return {name: SequenceEmbeddings(s.values.to(self.output_dtype), s.lengths) for name, s in out.items()}

    # --- no training -------------------------------------------------------------------------

    def apply_gradients(self, lr: float) -> None:
        raise RuntimeError("fp16 embedding tables are for inference (export or serve): train with embeddings kind "
                           "dense or tiered, then load the checkpoint into fp16")

    def discard_gradients(self) -> None:
        self.rows.discard_gradients()

    # --- logical state: the float16 dense collection's -----------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.rows.dtype

    def table_state(self, name: str) -> TableState:
        return self.rows.table_state(name)

    def load_table_state(self, name: str, state: TableState) -> None:
        self.rows.load_table_state(name, state)  # copy_ converts from any dtype

    def read_rows(self, name: str, rows: torch.Tensor) -> TableState:
        return self.rows.read_rows(name, rows)

    def write_rows(self, name: str, rows: torch.Tensor, state: TableState) -> None:
        self.rows.write_rows(name, rows, state)

    def reset_parameters(self) -> None:
        self.rows.reset_parameters()

    # --- placement ---------------------------------------------------------------------------

    def place(self, device: torch.device | str) -> None:
        self.rows.place(device)
        for name in ("_table_mean", "_feature_table"):
            setattr(self, name, getattr(self, name).to(device))

    @property
    def ids_device(self) -> torch.device:
        return self.rows.ids_device

    def _apply(self, fn, recurse=True):
        """A model's dtype conversion sets the output's dtype; the rows stay float16 and where `place`
        put them; what changes neither (share_memory) applies to them."""
        self.output_dtype = fn(torch.zeros(0, dtype=self.output_dtype)).dtype

        def in_place(t: torch.Tensor) -> torch.Tensor:
            probe = fn(t.new_empty(0))
            return fn(t) if (probe.device, probe.dtype) == (t.device, t.dtype) else t

        return nn.Module._apply(self, in_place, recurse)


@register("fp16")
def build(tables: list[TableConfig], placement: Placement) -> HalfEmbeddingCollection:
    """float16 tables where the model computes, for inference."""
    return HalfEmbeddingCollection(tables, placement.optimizer, device=placement.device)
