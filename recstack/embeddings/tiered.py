"""FAE's tiered embeddings (specs/TECHNIQUES.md section 1): the full tables in CPU memory, and one
compact copy of the hot rows, with their optimizer state, in fast memory.

    full tables  (a DenseEmbeddingCollection, CPU)  rows of every table, hot ones included
    hot table    (hot_device: cuda when there is one) concat_t(E_t[hot_rows[t]]), hot_offsets order

The collection is in one of two modes, chosen by the training loop for each batch:

- "hot": every id of the batch must be a hot row (an all-hot batch). Ids are remapped to the hot
  table, the batch is pooled and updated there, and the full tables' copies of the hot rows go stale.
- "cold": the batch is pooled and updated on the full tables; it may read and write hot rows too,
  so the hot table goes stale.

Invariant: at every moment each hot row has one authoritative copy. `set_mode` performs the copy a
switch needs (hot -> full when leaving hot mode, full -> hot when entering it), rows AND optimizer
state, and counts it (`switches`, `syncs`, `bytes_synced`). `sync()` makes the full tables
authoritative without switching (before evaluation and checkpoints); `state_dict()` and any forward
outside training call it, so a checkpoint or an evaluation can never miss the hot updates.

The hot table is itself a DenseEmbeddingCollection (one table per full table, holding that table's
hot rows), so pooling (sum, mean, weighted, the one-hot fast path) and the sparse update rules are
dense.py's and optim.py's own code; this module only remaps ids and copies rows.

The state dict has the plain collection's keys (`weight`, `optimizer_state`, the full tables): a
checkpoint trained with FAE loads into a model built with DenseEmbeddingCollection and back.
`.to()`, `.cuda()` and `.cpu()` on an enclosing model change dtypes here but never placement: the
full tables stay where they were built and the hot table on `hot_device` (where rows live is this
collection's decision, DESIGN.md principle 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recstack.data.batch import JaggedFeatures
from recstack.data.hotcold import HotCold
from recstack.embeddings.base import EmbeddingCollection, SparseOptimizerConfig, TableConfig
from recstack.embeddings.dense import DenseEmbeddingCollection
from recstack.embeddings.optim import update_rows

HOT, COLD = "hot", "cold"
MODES = (HOT, COLD)


@dataclass
class HotIds(JaggedFeatures):
    """A batch whose ids are already indices into the hot table (`TieredEmbeddingCollection.hot_ids`,
    which FAE's loader runs on its thread, off the training step); it can run in hot mode only."""


HotRows = HotCold | Mapping[str, np.ndarray] | Sequence[np.ndarray]
"""A HotCold partition, feature (or table) name -> hot row ids, or one array of hot row ids per table."""


class _HotTables(DenseEmbeddingCollection):
    """The compact hot table: table t holds the hot rows of full table t (ids are hot-local, so no
    folding). Its rows come from the full tables (`sync_to_hot`), so it starts at zero; its buffers
    are not saved (the full tables are the checkpoint)."""

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
            TableConfig(t.name, n, t.embedding_dim, list(t.feature_names), t.pooling, fold=False)
            for t, n in zip(tables, counts)
        ]
        super().__init__(hot, optimizer, device)
        for name, kind in (("weight", dtype), ("optimizer_state", state_dtype)):
            value = getattr(self, name).to(kind)
            delattr(self, name)
            self.register_buffer(name, value, persistent=False)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.weight.zero_()
        self.optimizer_state.zero_()

    @torch.no_grad()
    def apply_gradients(self, lr: float) -> None:
        """dense.py's update without its host syncs (torch.unique's, repeat_interleave's) on a GPU,
        where a hot step is otherwise a string of them; on a CPU, dense.py's own (bit-exact) path."""
        if self.weight.device.type == "cpu":
            return super().apply_gradients(lr)
        for lookup in self._pending:
            grad = lookup.pooled.grad
            if grad is None:
                continue
            n = lookup.rows.numel()
            value_grad = grad if lookup.lengths is None else grad.repeat_interleave(lookup.lengths, dim=0, output_size=n)
            if lookup.weights is not None:
                value_grad = value_grad * lookup.weights.unsqueeze(1)
            rows, summed = _sum_duplicate_rows_padded(lookup.rows, value_grad)
            update_rows(self.optimizer, self.weight, self.optimizer_state, rows, summed, lr)
        self._pending.clear()


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
        full: DenseEmbeddingCollection,
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
        if not isinstance(full, DenseEmbeddingCollection):
            raise TypeError(f"the full tables must be a DenseEmbeddingCollection, not {type(full).__name__}")
        self.full = full
        self.tables = full.tables
        self.dim = full.dim
        self.optimizer = full.optimizer
        self.hot_device = torch.device(hot_device) if hot_device is not None else _default_hot_device()
        self.output_device = torch.device(output_device) if output_device is not None else self.hot_device

        per_table = hot_rows_per_table(full.tables, hot_rows)
        counts = [int(r.size) for r in per_table]
        self.hot_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        self.hot_offsets[1:] = np.cumsum(counts)
        self.hot = _HotTables(
            full.tables, counts, full.optimizer, self.hot_device, full.weight.dtype, full.optimizer_state.dtype
        )
        # hot slot h <-> full row _hot_full_rows[h]; _remap: full row -> index inside its hot table, or -1
        full_rows = [offset + rows for offset, rows in zip(full.table_row_offsets, per_table)]
        self._hot_full_rows = torch.from_numpy(np.concatenate(full_rows) if full_rows else np.zeros(0, np.int64))
        self._remap = torch.full((int(full.weight.shape[0]),), -1, dtype=torch.int32)
        local = [torch.arange(n, dtype=torch.int32) for n in counts]
        self._remap[self._hot_full_rows] = torch.cat(local) if local else torch.zeros(0, dtype=torch.int32)
        feature_rows, feature_offset, feature_fold = [], [], []
        for t, offset in zip(full.tables, full.table_row_offsets):
            for _ in t.feature_names:
                feature_rows.append(t.num_embeddings)
                feature_offset.append(offset)
                feature_fold.append(t.fold)
        self._feature_rows = torch.tensor(feature_rows, dtype=torch.int64)
        self._feature_offset = torch.tensor(feature_offset, dtype=torch.int64)
        self._any_fold = any(feature_fold)

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
        self.register_state_dict_pre_hook(_sync_before_saving)
        self.register_state_dict_post_hook(_plain_keys)
        self.register_load_state_dict_pre_hook(_full_keys)
        self.register_load_state_dict_post_hook(_after_loading)

    # --- sizes -------------------------------------------------------------------------------

    @property
    def num_hot_rows(self) -> int:
        return int(self.hot_offsets[-1])

    @property
    def hot_bytes(self) -> int:
        """Bytes of the hot table: rows plus optimizer state; one sync moves this much."""
        w, s = self.hot.weight, self.hot.optimizer_state
        return self.num_hot_rows * (w.shape[1] * w.element_size() + s.shape[1] * s.element_size())

    def stats(self) -> dict[str, Any]:
        """Counters for a report (keys as in `fae.<key>`)."""
        return {
            "mode": self.mode,
            "hot_rows": self.num_hot_rows,
            "hot_bytes": self.hot_bytes,
            "hot_device": str(self.hot_device),
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
        index = self._hot_full_rows.to(self.full.weight.device)
        self.full.weight.index_copy_(0, index, self.hot.weight.to(self.full.weight.device))
        self.full.optimizer_state.index_copy_(0, index, self.hot.optimizer_state.to(self.full.weight.device))
        self._full_current = True
        return self._count_sync()

    @torch.no_grad()
    def sync_to_hot(self) -> int:
        """Copy the hot rows and their optimizer state from the full tables into the hot table."""
        index = self._hot_full_rows.to(self.full.weight.device)
        self.hot.weight.copy_(self.full.weight.index_select(0, index))
        self.hot.optimizer_state.copy_(self.full.optimizer_state.index_select(0, index))
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
            ids = features if isinstance(features, HotIds) else self._to_hot(features)
            # ids to the hot table's device without waiting (a no-op copy when the loader pinned
            # them); lengths stay on the host, where dense.py checks them for the one-hot path
            device = self.hot.weight.device
            weights = None if ids.weights is None else ids.weights.to(device, non_blocking=True)
            ids = JaggedFeatures(ids.keys, ids.values.to(device, non_blocking=True), ids.lengths, ids.batch_size, weights)
            out = self.hot(ids)
            tier = HOT
        else:
            if isinstance(features, HotIds):
                raise ValueError("a batch of hot-table ids (HotIds) runs in hot training mode only")
            if not self.training:
                self.sync()  # evaluation reads the full tables
            out = self.full(features)
            tier = COLD
        if self.training and torch.is_grad_enabled():
            self._pending_tiers.add(tier)
        return out.to(self.output_device)

    def hot_ids(self, features: JaggedFeatures, pin: bool = False) -> HotIds:
        """The batch with every id replaced by its index in the hot table (all must be hot), for
        a hot-mode forward. Reads only state fixed at construction, so a loader thread may call it;
        `pin`: in page-locked memory (when CUDA is available), for an asynchronous copy."""
        local = self._to_hot(features)
        values, lengths, weights = local.values, local.lengths, local.weights
        if pin and torch.cuda.is_available():
            values = values.pin_memory()  # lengths stay pageable: the forward reads them on the host
            weights = None if weights is None else weights.pin_memory()
        return HotIds(local.keys, values, lengths, local.batch_size, weights)

    def _to_hot(self, features: JaggedFeatures) -> JaggedFeatures:
        """The batch with every id replaced by its index in the hot table (all must be hot)."""
        features = self.full._in_order(features)
        num_features, batch = len(self.feature_names), features.batch_size
        per_feature = features.lengths.view(num_features, batch).sum(1).cpu()
        feature_of_value = torch.repeat_interleave(torch.arange(num_features), per_feature)
        values = features.values.cpu()
        if self._any_fold:
            values = torch.remainder(values, self._feature_rows[feature_of_value])
        local = self._remap[values + self._feature_offset[feature_of_value]]
        missing = local < 0
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
        if COLD in self._pending_tiers:
            self.full.apply_gradients(lr)
            self._hot_current = False
        self._pending_tiers.clear()

    def discard_gradients(self) -> None:
        self.hot.discard_gradients()
        self.full.discard_gradients()
        self._pending_tiers.clear()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.full.reset_parameters()
        self._full_current, self._hot_current = True, False
        if self.mode == HOT:
            self.sync_to_hot()

    def table_weight(self, name: str) -> torch.Tensor:
        """A view of one full table's rows, after `sync()`."""
        self.sync()
        return self.full.table_weight(name)

    # --- placement and checkpoints -----------------------------------------------------------

    def _apply(self, fn, recurse=True):
        """Dtype conversions apply; device moves do not (each tier stays where it was built)."""

        def in_place(t: torch.Tensor) -> torch.Tensor:
            probe = fn(t.new_empty(0))
            return fn(t) if probe.device == t.device else t.to(dtype=probe.dtype)

        return super()._apply(in_place, recurse)


def _sync_before_saving(module: TieredEmbeddingCollection, prefix: str, keep_vars: bool) -> None:
    module.sync()


def _plain_keys(module: TieredEmbeddingCollection, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """Save the full tables under the plain collection's keys (prefix + weight, ...)."""
    inner = prefix + "full."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)


def _full_keys(module: TieredEmbeddingCollection, state_dict: dict, prefix: str, *args: Any) -> None:
    """Load the plain collection's keys into the full tables."""
    for name in module.full.state_dict():
        if prefix + name in state_dict:
            state_dict[prefix + "full." + name] = state_dict.pop(prefix + name)


def _after_loading(module: TieredEmbeddingCollection, incompatible_keys: Any) -> None:
    module.discard_gradients()
    module._full_current, module._hot_current = True, False
    if module.mode == HOT:
        module.sync_to_hot()


__all__ = ["HOT", "COLD", "HotIds", "TieredEmbeddingCollection", "hot_rows_per_table"]
