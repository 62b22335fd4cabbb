"""Half-precision tables for inference (`--embeddings.kind fp16`): rows stored as float16, half the
bytes of dense's float32, pooled in float32.

The rows and their state are a `DenseEmbeddingCollection` in float16 (`self.rows`), so the layout,
the logical state (table_state, read_rows/write_rows, state_dict), init and sequences are dense.py's.
The optimizer state is stored as it is loaded (float32, [rows, k]), though nothing here updates it:
a training checkpoint loaded and saved again keeps its accumulators, so an fp16 copy never loses
what training needs to resume. A serving plan that wants no state at all uses optimizer sgd (k = 0).

Lookups, pooling in float32 and the refusal to train are recstack.embeddings.inference's; the rows
stay float16 whatever the model's dtype: that is the kind.
"""

from __future__ import annotations

import torch

from recstack.embeddings.base import SparseOptimizerConfig, TableConfig, TableState
from recstack.embeddings.dense import DenseEmbeddingCollection
from recstack.embeddings.inference import InferenceCollection
from recstack.embeddings.layout import FusedLayout
from recstack.embeddings.plan import Placement, register


class HalfEmbeddingCollection(InferenceCollection):
    """float16 rows (a dense collection in float16), float32 pooling; inference only."""

    kind = "fp16"

    def __init__(self, tables: list[TableConfig], optimizer: SparseOptimizerConfig | None = None,
                 device: torch.device | str = "cpu"):
        super().__init__()
        self.rows = self.adopt(DenseEmbeddingCollection(tables, optimizer, device, dtype=torch.float16))
        self.tables, self.optimizer = self.rows.tables, self.rows.optimizer

    @property
    def layout(self) -> FusedLayout:
        return self.rows.layout

    def lookup(self, rows: torch.Tensor) -> torch.Tensor:
        return self.rows.weight.index_select(0, rows).float()  # float16 to float32 is exact

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


@register("fp16")
def build(tables: list[TableConfig], placement: Placement) -> HalfEmbeddingCollection:
    """float16 tables where the model computes, for inference."""
    return HalfEmbeddingCollection(tables, placement.optimizer, device=placement.device)
