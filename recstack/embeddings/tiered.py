"""FAE's tiered embeddings (specs/TECHNIQUES.md section 1): the full tables, and one compact copy of
the hot rows, with their optimizer state, in fast memory.

    full tables  (any EmbeddingCollection; dense in CPU memory by default)  every row, hot ones included
    hot table    (a dense collection on hot_device: cuda when there is one)  the hot rows of each table

The collection is in one of two modes, chosen by the training loop for each batch:

- "hot": every id of a tiered table in the batch must be a hot row (an all-hot batch). Ids are
  remapped to the hot table, the batch is pooled and updated there, and the full tables' copies of
  the hot rows go stale.
- "cold": the batch is pooled and updated on the full tables; it may read and write hot rows too,
  so the hot table goes stale.

A table is tiered when it has hot rows and no sequence feature (a sequence reads its table on the
full tier, which must then hold the latest rows); the others are read from the full tables in both
modes (`untiered` says why), so any budget trains, a table without hot rows simply has no hot tier.

Invariant: at every moment each hot row has one authoritative copy. `set_mode` performs the copy a
switch needs (hot -> full when leaving hot mode, full -> hot when entering it), rows AND optimizer
state, and counts it (`switches`, `syncs`, `bytes_synced`). `sync()` makes the full tables
authoritative without switching (before evaluation and checkpoints); the logical state
(`table_state`, `state_dict`) and any forward outside training call it, so a checkpoint or an
evaluation can never miss the hot updates.

Everything here goes through the EmbeddingCollection interface of the two tiers (read_rows,
write_rows, table_state), so the full tier can be any collection: pooling and the update rules are
theirs; this module only remaps ids and copies rows. The logical state is the full tables', so a
checkpoint trained with FAE loads into a plain collection and back. Rows stay where they were built
(`place` only sets where the output goes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recstack.data.batch import JaggedFeatures
from recstack.data.hotcold import HotCold
from recstack.embeddings.base import EmbeddingCollection, SparseOptimizerConfig, TableConfig, TableState
from recstack.embeddings.dense import DenseEmbeddingCollection
from recstack.embeddings.layout import FusedLayout
from recstack.embeddings.optim import update_rows
from recstack.embeddings.plan import Placement, build_collection, register
from recstack.errors import ConfigError

HOT, COLD = "hot", "cold"
MODES = (HOT, COLD)
REST = "rest"
"""Lookups on the full tier of untiered tables (in either mode): they never make the hot table stale."""


@dataclass
class HotIds(JaggedFeatures):
    """A batch whose ids are already indices into the hot table (`TieredEmbeddingCollection.hot_ids`,
    which FAE's loader runs on its thread, off the training step); it can run in hot mode only."""


HotRows = HotCold | Mapping[str, np.ndarray] | Sequence[np.ndarray]
"""A HotCold partition, feature (or table) name -> hot row ids, or one array of hot row ids per table."""


class _HotTables(DenseEmbeddingCollection):
    """The compact hot table: table t holds the hot rows of full table t (ids are hot-local, so no
    folding). Its rows come from the full tables (`sync_to_hot`), so it starts at zero."""

    def __init__(
        self,
        tables: list[TableConfig],
        counts: list[int],
        optimizer: SparseOptimizerConfig,
        device: torch.device,
        dtype: torch.dtype,
        state_dtype: torch.dtype,
    ):
        hot = [
            TableConfig(t.name, n, t.embedding_dim, list(t.feature_names), t.pooling, fold=False, init="zeros")
            for t, n in zip(tables, counts)
        ]
        super().__init__(hot, optimizer, device, dtype)
        self.optimizer_state = self.optimizer_state.to(state_dtype)

    @torch.no_grad()
    def apply_gradients(self, lr: float) -> None:
        """dense.py's update without its host syncs (torch.unique's, repeat_interleave's) on a GPU,
        where a hot step is otherwise a string of them; on a CPU, dense.py's own (bit-exact) path."""
        if self.weight.device.type == "cpu":
            return super().apply_gradients(lr)
        touched = self.pending_gradients()
        if touched is not None:
            rows, summed = _sum_duplicate_rows_padded(*touched)
            update_rows(self.optimizer, self.weight, self.optimizer_state, rows, summed, lr)


def _sum_duplicate_rows_padded(ids: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """optim.sum_duplicate_rows with outputs of a fixed length (len(ids)), so no host sync: the first
    U entries are the unique rows (ascending) with their summed gradients, the other entries repeat
    entry U - 1 exactly (an update of a repeated row computes and writes identical values)."""
    n = ids.numel()
    if n == 0:
        return ids, grads
    sorted_ids, perm = torch.sort(ids)
    first = torch.ones(n, dtype=torch.bool, device=ids.device)
    torch.ne(sorted_ids[1:], sorted_ids[:-1], out=first[1:])
    segment = torch.cumsum(first, 0) - 1  # the unique row each sorted id belongs to
    summed = torch.zeros_like(grads).index_add_(0, segment, grads.index_select(0, perm))
    rows = torch.zeros_like(ids).scatter_(0, segment, sorted_ids)
    pad = torch.minimum(torch.arange(n, device=ids.device), segment[-1])  # positions >= U -> U - 1
    return rows.index_select(0, pad), summed.index_select(0, pad)


def hot_rows_per_table(tables: Sequence[TableConfig], hot_rows: HotRows) -> list[np.ndarray]:
    """The hot rows of each table (sorted, unique, int64) from a HotCold partition, a mapping
    (feature or table name -> row ids), or a sequence with one array per table. Ids of a folding
    table fold into it; the rows of a table read by several features are the union of theirs."""
    if isinstance(hot_rows, (HotCold, Mapping)):
        mapping = hot_rows.hot_rows if isinstance(hot_rows, HotCold) else hot_rows
        known = {t.name for t in tables} | {f for t in tables for f in t.feature_names}
        unknown = sorted(set(mapping) - known)
        if unknown and not isinstance(hot_rows, HotCold):
            # a partition of the dataset may cover features a model leaves out; a hand-made map may not
            raise ValueError(f"hot rows given for unknown features or tables {unknown}")
        per_table = []
        for t in tables:
            names = [n for n in dict.fromkeys([*t.feature_names, t.name]) if n in mapping]
            parts = [np.asarray(mapping[n], dtype=np.int64).reshape(-1) for n in names]
            per_table.append(np.concatenate(parts) if parts else np.zeros(0, np.int64))
    else:
        per_table = [np.asarray(r, dtype=np.int64).reshape(-1) for r in hot_rows]
        if len(per_table) != len(tables):
            raise ValueError(f"got hot rows for {len(per_table)} tables, the collection has {len(tables)}")
    out = []
    for t, rows in zip(tables, per_table):
        if t.fold:
            rows = np.remainder(rows, t.num_embeddings)
        if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= t.num_embeddings):
            raise ValueError(f"table {t.name}: hot rows outside [0, {t.num_embeddings})")
        out.append(np.unique(rows))
    return out


def _default_hot_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TieredEmbeddingCollection(EmbeddingCollection):
    """The full tables (`full`, source of truth for cold batches) plus a compact hot table (`hot`)."""

    def __init__(
        self,
        full: EmbeddingCollection,
        hot_rows: HotRows,
        *,
        hot_device: torch.device | str | None = None,
        output_device: torch.device | str | None = None,
    ):
        """`full`: the full tables, adopted as they are (not copied). `hot_rows`: a HotCold
        partition (`recstack.data.hotcold.load_hot_cold`), a mapping feature/table name -> hot row
        ids, or one array of hot row ids per table. `hot_device`: where the hot table lives (default
        cuda when available, else cpu). `output_device`: where `forward` returns the pooled
        embeddings, i.e. where the MLPs are (default hot_device)."""
        super().__init__()
        if not isinstance(full, EmbeddingCollection):
            raise TypeError(f"the full tables must be an EmbeddingCollection, not {type(full).__name__}")
        self.full = self.adopt(full)
        self.tables = full.tables
        self.optimizer = full.optimizer
        self.hot_device = torch.device(hot_device) if hot_device is not None else _default_hot_device()
        self.output_device = torch.device(output_device) if output_device is not None else self.hot_device

        per_table = hot_rows_per_table(full.tables, hot_rows)
        self.untiered = {t.name: "a sequence feature reads it" if t.sequence_names else "no hot rows"
                         for t, rows in zip(full.tables, per_table) if t.sequence_names or not rows.size}
        """Tables read from the full tier in both modes, and why."""
        tiered = [(t, rows) for t, rows in zip(full.tables, per_table) if t.name not in self.untiered]
        self._hot_rows = {t.name: torch.from_numpy(rows) for t, rows in tiered}
        counts = [int(rows.size) for _, rows in tiered]
        self.hot_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        self.hot_offsets[1:] = np.cumsum(counts)
        self.hot = None
        if tiered:
            state_dtype = full.table_state(full.tables[0].name).optimizer_state.dtype
            self.hot = self.adopt(_HotTables([t for t, _ in tiered], counts, full.optimizer, self.hot_device,
                                             full.dtype, state_dtype))
        # logical rows: the full tables' rows end to end (their fused layout). Hot slot h <-> logical
        # row _hot_full_rows[h]; _remap: logical row -> index inside its hot table, or -1
        self._layout = FusedLayout(full.tables)
        full_rows = [self._layout.spans[t.name].start + rows for t, rows in tiered]
        self._hot_full_rows = torch.from_numpy(np.concatenate(full_rows) if full_rows else np.zeros(0, np.int64))
        self._remap = torch.full((self._layout.total_rows,), -1, dtype=torch.int32)
        local = [torch.arange(n, dtype=torch.int32) for n in counts]
        self._remap[self._hot_full_rows] = torch.cat(local) if local else torch.zeros(0, dtype=torch.int32)
        self._feature_tiered = torch.tensor([t.name not in self.untiered for t in full.tables for _ in t.feature_names],
                                            dtype=torch.bool)
        # hot mode with untiered features: the hot tier's features, then the full tier's, put back in order
        self._rest_features = [f for t in full.tables if t.name in self.untiered for f in t.feature_names]
        self._rest_index = torch.tensor([self.feature_names.index(f) for f in self._rest_features], dtype=torch.int64)
        hot_features = [] if self.hot is None else self.hot.feature_names
        split_order = hot_features + self._rest_features
        self._unsplit = torch.tensor([split_order.index(f) for f in self.feature_names], dtype=torch.int64)

        self.mode = COLD
        self.switches = 0
        """Mode changes (hot <-> cold)."""
        self.syncs = 0
        """Copies of the hot rows and their state, either direction."""
        self.bytes_synced = 0
        """Bytes those copies moved (rows + optimizer state)."""
        self._full_current = True  # the full tables hold the latest hot rows
        self._hot_current = False  # the hot table equals the full tables' hot rows
        self._pending_tiers: set[str] = set()
        self.register_load_state_dict_post_hook(_after_loading)

    # --- sizes -------------------------------------------------------------------------------

    @property
    def num_hot_rows(self) -> int:
        return int(self.hot_offsets[-1])

    @property
    def hot_bytes(self) -> int:
        """Bytes of the hot table: rows plus optimizer state; one sync moves this much."""
        if self.hot is None:
            return 0
        w, s = self.hot.weight, self.hot.optimizer_state
        return self.num_hot_rows * (w.shape[1] * w.element_size() + s.shape[1] * s.element_size())

    def stats(self) -> dict[str, Any]:
        """Counters for a report (keys as in `fae.<key>`)."""
        return {
            "mode": self.mode,
            "hot_rows": self.num_hot_rows,
            "hot_bytes": self.hot_bytes,
            "hot_device": str(self.hot_device),
            "untiered_tables": dict(self.untiered),
            "switches": self.switches,
            "syncs": self.syncs,
            "bytes_synced": self.bytes_synced,
        }

    # --- modes and syncs ---------------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        """Switch to "hot" or "cold", copying the hot rows (and state) the way the switch needs."""
        if mode not in MODES:
            raise ValueError(f"mode must be 'hot' or 'cold', not {mode!r}")
        if mode == self.mode:
            return
        if self._pending_tiers:
            raise RuntimeError("apply_gradients (or discard_gradients) before switching between hot and cold")
        if mode == HOT and not self._hot_current:
            self.sync_to_hot()
        elif mode == COLD and not self._full_current:
            self.sync_to_cold()
        self.mode = mode
        self.switches += 1

    @torch.no_grad()
    def sync_to_cold(self) -> int:
        """Copy the hot rows and their optimizer state from the hot table into the full tables."""
        for name, rows in self._hot_rows.items():
            self.full.write_rows(name, rows, self.hot.table_state(name))
        self._full_current = True
        return self._count_sync()

    @torch.no_grad()
    def sync_to_hot(self) -> int:
        """Copy the hot rows and their optimizer state from the full tables into the hot table."""
        for name, rows in self._hot_rows.items():
            self.hot.load_table_state(name, self.full.read_rows(name, rows))
        self._hot_current = True
        return self._count_sync()

    def sync(self) -> int:
        """Make the full tables authoritative (before evaluation or a checkpoint); the mode stays.
        Copies only when the hot table changed since the last copy; returns the bytes moved."""
        return 0 if self._full_current else self.sync_to_cold()

    def _count_sync(self) -> int:
        moved = self.hot_bytes
        self.syncs += 1
        self.bytes_synced += moved
        return moved

    # --- EmbeddingCollection -----------------------------------------------------------------

    def forward(self, features: JaggedFeatures) -> torch.Tensor:
        if self.training and self.mode == HOT:
            if not self._hot_current:  # rows loaded since the switch
                self.sync_to_hot()
            ids = features if isinstance(features, HotIds) else self._to_hot(features)
            out = self._hot_forward(ids)
        else:
            if isinstance(features, HotIds):
                raise ValueError("a batch of hot-table ids (HotIds) runs in hot training mode only")
            if not self.training:
                self.sync()  # evaluation reads the full tables
            out = self.full(features)
            self._touched(COLD)
        return out.to(self.output_device)

    def _hot_forward(self, ids: JaggedFeatures) -> torch.Tensor:
        """Tiered features from the hot table (their ids already hot-local), the others from the full tables."""
        parts = []
        if self.hot is not None:
            part = ids.select(self.hot.feature_names)
            # ids to the hot table's device without waiting (a no-op copy when the loader pinned
            # them); lengths stay on the host, where dense.py checks them for the one-hot path
            device = self.hot.weight.device
            weights = None if part.weights is None else part.weights.to(device, non_blocking=True)
            part = JaggedFeatures(part.keys, part.values.to(device, non_blocking=True), part.lengths,
                                  part.batch_size, weights)
            parts.append(self.hot(part).to(self.output_device))
            self._touched(HOT)
        if self._rest_features:
            rest = self.full(self._untiered_only(ids)).index_select(1, self._rest_index.to(self.full_device))
            parts.append(rest.to(self.output_device))
            self._touched(REST)
        if len(parts) == 1:
            return parts[0]
        return torch.cat(parts, 1).index_select(1, self._unsplit.to(self.output_device))

    @property
    def full_device(self) -> torch.device:
        return self.full.table_state(self.tables[0].name).weight.device

    def _untiered_only(self, ids: JaggedFeatures) -> JaggedFeatures:
        """The batch for the full tier in hot mode: the untiered features' ids as they are, the tiered
        features' bags emptied (their ids are hot-local; an empty bag pools to zero and updates nothing)."""
        per_key = ids.lengths.view(len(ids.keys), ids.batch_size)
        tiered_value = self._feature_tiered.repeat_interleave(per_key.sum(1).cpu())
        keep = ~tiered_value.to(ids.values.device)
        lengths = torch.where(self._feature_tiered.unsqueeze(1).to(per_key.device), 0, per_key).reshape(-1)
        weights = None if ids.weights is None else ids.weights[keep]
        return JaggedFeatures(ids.keys, ids.values[keep], lengths.to(ids.lengths.dtype), ids.batch_size, weights)

    def _touched(self, tier: str) -> None:
        if self.training and torch.is_grad_enabled():
            self._pending_tiers.add(tier)

    def sequences(self, features: JaggedFeatures, max_length: int):
        """From the full tables in both modes: a table with a sequence feature is never tiered."""
        if isinstance(features, HotIds):
            raise ValueError("sequence features are read with their raw ids, not a HotIds batch")
        if not self.training:
            self.sync()
        out = self.full.sequences(features, max_length)
        self._touched(REST if self.mode == HOT else COLD)
        return {name: type(seq)(seq.values.to(self.output_device), seq.lengths.to(self.output_device))
                for name, seq in out.items()}

    def hot_ids(self, features: JaggedFeatures, pin: bool = False) -> HotIds:
        """The batch with every id of a tiered table replaced by its index in the hot table (all
        must be hot), for a hot-mode forward. Reads only state fixed at construction, so a loader
        thread may call it; `pin`: in page-locked memory (when CUDA is available), for an
        asynchronous copy."""
        local = self._to_hot(features)
        values, lengths, weights = local.values, local.lengths, local.weights
        if pin and torch.cuda.is_available():
            values = values.pin_memory()  # lengths stay pageable: the forward reads them on the host
            weights = None if weights is None else weights.pin_memory()
        return HotIds(local.keys, values, lengths, local.batch_size, weights)

    def _to_hot(self, features: JaggedFeatures) -> JaggedFeatures:
        """The batch with every id of a tiered table replaced by its index in the hot table (all must
        be hot); the ids of the other tables stay as they are."""
        features = features.select(self.feature_names)
        num_features, batch = len(self.feature_names), features.batch_size
        per_feature = features.lengths.view(num_features, batch).sum(1).cpu()
        feature_of_value = torch.repeat_interleave(torch.arange(num_features), per_feature)
        values = features.values.cpu()
        logical = self._layout.global_rows(values, feature_of_value)  # folded, range-checked
        tiered = self._feature_tiered[feature_of_value]
        logical = torch.where(tiered, logical, 0)
        local = torch.where(tiered, self._remap[logical].long(), values)
        missing = tiered & (self._remap[logical] < 0)
        if bool(missing.any()):
            first = int(missing.nonzero()[0, 0])
            name = self.feature_names[int(feature_of_value[first])]
            raise ValueError(
                f"a hot batch holds {int(missing.sum())} ids that are not hot rows (first: feature {name}, "
                f"id {int(features.values[first])}); hot mode takes all-hot batches only: run this batch in cold mode"
            )
        return JaggedFeatures(features.keys, local, features.lengths, batch, features.weights)

    def apply_gradients(self, lr: float) -> None:
        if HOT in self._pending_tiers:
            self.hot.apply_gradients(lr)
            self._full_current = False
        if COLD in self._pending_tiers or REST in self._pending_tiers:
            self.full.apply_gradients(lr)
            if COLD in self._pending_tiers:
                self._hot_current = False
        self._pending_tiers.clear()

    def discard_gradients(self) -> None:
        if self.hot is not None:
            self.hot.discard_gradients()
        self.full.discard_gradients()
        self._pending_tiers.clear()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.full.reset_parameters()
        self._full_current, self._hot_current = True, False
        if self.mode == HOT:
            self.sync_to_hot()

    # --- logical state: the full tables' ----------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.full.dtype

    def table_state(self, name: str) -> TableState:
        self.sync()
        return self.full.table_state(name)

    def load_table_state(self, name: str, state: TableState) -> None:
        self.full.load_table_state(name, state)
        self._full_current = True
        if name in self._hot_rows:
            self._hot_current = False

    def read_rows(self, name: str, rows: torch.Tensor) -> TableState:
        self.sync()
        return self.full.read_rows(name, rows)

    def write_rows(self, name: str, rows: torch.Tensor, state: TableState) -> None:
        self.sync()
        self.full.write_rows(name, rows, state)
        if name in self._hot_rows:
            self._hot_current = False

    def table_weight(self, name: str) -> torch.Tensor:
        """One full table's rows, after `sync()`."""
        return self.table_state(name).weight

    def place(self, device: torch.device | str) -> None:
        """The tiers stay where they were built; the output goes where the model computes."""
        self.output_device = torch.device(device)


@register("tiered", serves_as="dense")
def build(tables: list[TableConfig], placement: Placement) -> TieredEmbeddingCollection:
    """FAE: plain full tables in CPU memory (the hot tier is the fast memory), the hot rows on the
    hot device, the output where the model computes."""
    if placement.hot_rows is None:
        raise ConfigError("embeddings kind tiered (FAE) needs a hot/cold partition: set fae.budget")
    device = torch.device(placement.device)
    on_meta = device.type == "meta"  # sizing a model: nothing is allocated, no tier is real
    full = build_collection(tables, Placement(optimizer=placement.optimizer, device=device if on_meta else "cpu"))
    hot_device = device if on_meta else placement.hot_device
    return TieredEmbeddingCollection(full, placement.hot_rows, hot_device=hot_device, output_device=device)


def _after_loading(module: TieredEmbeddingCollection, incompatible_keys: Any) -> None:
    module.discard_gradients()
    module._full_current = True
    if module.mode == HOT and not module._hot_current:
        module.sync_to_hot()


__all__ = ["HOT", "COLD", "HotIds", "TieredEmbeddingCollection", "hot_rows_per_table"]
