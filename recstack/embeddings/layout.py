"""Tables end to end in one block of rows: the layout the dense, quantized and tiered collections share.

Table t's rows are rows [offset_t, offset_t + rows_t) of the block; an id of a pooled feature of t is
row offset_t + id (folded by modulo first when the table folds); an id outside its table is an
IndexError, never a neighbouring table's row. Sequence features keep each sample's last
`max_length` ids, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recstack.data.batch import JaggedFeatures
from recstack.embeddings.base import SequenceEmbeddings, TableConfig


@dataclass
class SequenceIds:
    """The kept ids of one sequence feature as rows of the block, and where each goes in the padding."""

    rows: torch.Tensor
    sample: torch.Tensor
    position: torch.Tensor
    kept: torch.Tensor
    """[B]: ids kept per sample."""


class FusedLayout(nn.Module):
    """Where each table starts in the block, and per pooled feature its table's start, rows, folding
    and pooling (buffers: they move with the collection)."""

    def __init__(self, tables: list[TableConfig], device: torch.device | str = "cpu"):
        super().__init__()
        self.table_row_offsets = [0]
        """Where each table's rows start."""
        for t in tables[:-1]:
            self.table_row_offsets.append(self.table_row_offsets[-1] + t.num_embeddings)
        self.total_rows = sum(t.num_embeddings for t in tables)
        self.spans = {t.name: slice(o, o + t.num_embeddings) for t, o in zip(tables, self.table_row_offsets)}
        self.sequence_table = {f: (o, t.num_embeddings, t.fold) for t, o in zip(tables, self.table_row_offsets)
                               for f in t.sequence_names}
        """Sequence feature -> (its table's start, rows, folding)."""
        per_feature = [(o, t.num_embeddings, t.fold, t.pooling == "mean")
                       for t, o in zip(tables, self.table_row_offsets) for _ in t.feature_names]
        self.feature_names = [f for t in tables for f in t.feature_names]
        for name, column, dtype in (("feature_offset", 0, torch.int64), ("feature_rows", 1, torch.int64),
                                    ("feature_fold", 2, torch.bool), ("feature_mean", 3, torch.bool)):
            self.register_buffer(name, torch.tensor([f[column] for f in per_feature], dtype=dtype, device=device),
                                 persistent=False)
        self.any_fold = any(f[2] for f in per_feature)
        self.any_mean = any(f[3] for f in per_feature)

    def span(self, name: str, owner: str = "collection") -> slice:
        if name not in self.spans:
            raise KeyError(f"{owner} has no table {name!r}")
        return self.spans[name]

    def global_rows(self, ids: torch.Tensor, feature_of_id: torch.Tensor | None) -> torch.Tensor:
        """Rows of the block for ids of the pooled features `feature_of_id` (None: ids is [F, B], one per
        bag): folded where the table folds; an id outside its table is an IndexError (checked where the
        ids are on the host: on a GPU the check would wait for the device every step)."""
        device = ids.device
        if feature_of_id is None:
            limit, offset = self.feature_rows.to(device).unsqueeze(1), self.feature_offset.to(device).unsqueeze(1)
            fold = self.feature_fold.to(device).unsqueeze(1)
        else:
            limit, offset = self.feature_rows.to(device)[feature_of_id], self.feature_offset.to(device)[feature_of_id]
            fold = self.feature_fold.to(device)[feature_of_id]
        if self.any_fold:
            ids = torch.where(fold, torch.remainder(ids, limit), ids)
        if device.type == "cpu":
            bad = (ids < 0) | (ids >= limit)
            if bool(bad.any()):
                position = bad.nonzero()[0]
                feature = int(position[0]) if feature_of_id is None else int(feature_of_id[position[0]])
                raise IndexError(f"id {int(ids[tuple(position)])} of feature {self.feature_names[feature]} is outside "
                                 f"its table's {int(self.feature_rows[feature])} rows")
        return ids + offset

    def sequence_ids(self, features: JaggedFeatures, max_length: int, device: torch.device) -> dict[str, SequenceIds]:
        """Each sequence feature's last `max_length` ids per sample, as rows of the block."""
        batch = features.batch_size
        per_key = features.lengths.view(len(features.keys), batch)
        value_parts = torch.split(features.values, per_key.sum(1).tolist())
        out = {}
        for name, (row_offset, rows, fold) in self.sequence_table.items():
            if name not in features.keys:
                raise KeyError(f"batch lacks sequence feature {name!r}")
            i = features.keys.index(name)
            ids, lengths = value_parts[i].to(device), per_key[i].to(device=device, dtype=torch.int64)
            # keep each sample's last max_length ids: position of every id counted from its kept start
            kept = lengths.clamp(max=max_length)
            sample = torch.arange(batch, device=device).repeat_interleave(lengths)
            starts = torch.cumsum(lengths, 0) - lengths + (lengths - kept)
            position = torch.arange(ids.numel(), device=device) - starts[sample]
            keep = position >= 0
            ids, sample, position = ids[keep], sample[keep], position[keep]
            if fold:
                ids = torch.remainder(ids, rows)
            elif ids.device.type == "cpu" and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= rows):
                bad = ids[(ids < 0) | (ids >= rows)][0]
                raise IndexError(f"id {int(bad)} of sequence feature {name} is outside its table's {rows} rows")
            out[name] = SequenceIds(ids + row_offset, sample, position, kept)
        return out


def padded(vectors: torch.Tensor, ids: SequenceIds, batch: int) -> SequenceEmbeddings:
    """The looked-up vectors [n, D] of a sequence in [B, L, D] with zeros past each sample's length."""
    width = max(int(ids.kept.max()) if batch else 0, 1)
    slots = ids.sample * width + ids.position
    out = vectors.new_zeros(batch * width, vectors.shape[1]).index_copy(0, slots, vectors)
    return SequenceEmbeddings(out.view(batch, width, -1), ids.kept)
