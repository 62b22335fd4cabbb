"""What inference-only tables share (fp16, int8, int4): rows stored their own way in a fused layout,
read back as float32 for only the rows a batch needs, and pooled in float32, so a sum over a long
bag rounds once per row. The output is float32 unless the enclosing model was converted (`.double()`,
`.half()`): then it follows the model's dtype, while the stored rows keep theirs. Nothing trains:
`apply_gradients` refuses in one line."""

from __future__ import annotations

from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from recstack.data.batch import JaggedFeatures
from recstack.embeddings.base import EmbeddingCollection, SequenceEmbeddings
from recstack.embeddings.layout import FusedLayout, padded


class InferenceCollection(EmbeddingCollection):
    trainable = False
    """apply_gradients refuses: export or serve these tables, train dense (or tiered) ones."""
    kind: str
    """The embeddings kind, for messages."""
    output_dtype: torch.dtype = torch.float32

    @property
    @abstractmethod
    def layout(self) -> FusedLayout:
        """Where each table's rows are among the stored rows."""

    @abstractmethod
    def lookup(self, rows: torch.Tensor) -> torch.Tensor:
        """float32 [len(rows), D] of these stored rows."""

    @property
    def ids_device(self) -> torch.device:
        return self.layout.feature_offset.device

    def forward(self, features: JaggedFeatures) -> torch.Tensor:
        batch, num_features, device = features.batch_size, len(self.feature_names), self.ids_device
        if num_features == 0:
            return torch.zeros(batch, 0, self.dim, device=device, dtype=self.output_dtype)
        features = features.select(self.feature_names)
        lengths = features.lengths.to(device=device, dtype=torch.int64)
        feature_of_value = torch.arange(num_features, device=device).repeat_interleave(batch).repeat_interleave(lengths)
        rows = self.layout.global_rows(features.values.to(device), feature_of_value)  # folded, range-checked
        with torch.no_grad():
            gathered = self.lookup(rows)
            weights = None if features.weights is None else features.weights.to(device=device, dtype=torch.float32)
            pooled = F.embedding_bag(torch.arange(rows.numel(), device=device), gathered, lengths.cumsum(0) - lengths,
                                     mode="sum", per_sample_weights=weights)
            mean = self.layout.feature_mean.repeat_interleave(batch).unsqueeze(1)
            pooled = torch.where(mean, pooled / lengths.clamp(min=1).unsqueeze(1), pooled)
        return pooled.view(num_features, batch, self.dim).transpose(0, 1).to(self.output_dtype)

    def sequences(self, features: JaggedFeatures, max_length: int) -> dict[str, SequenceEmbeddings]:
        out = {}
        for name, ids in self.layout.sequence_ids(features, max_length, self.ids_device).items():
            with torch.no_grad():
                vectors = self.lookup(ids.rows).to(self.output_dtype)
            out[name] = padded(vectors, ids, features.batch_size)
        return out

    def apply_gradients(self, lr: float) -> None:
        raise RuntimeError(f"{self.kind} embedding tables are for inference (export or serve): train with embeddings "
                           f"kind dense or tiered, then load the checkpoint into {self.kind}")

    def discard_gradients(self) -> None:
        pass  # no lookup is recorded

    def _apply(self, fn, recurse=True):
        """A model's dtype conversion sets the output's dtype; the stored rows keep theirs and stay where
        `place` put them; what changes neither (share_memory) applies to them."""
        self.output_dtype = fn(torch.zeros(0, dtype=self.output_dtype)).dtype

        def in_place(t: torch.Tensor) -> torch.Tensor:
            probe = fn(t.new_empty(0))
            return fn(t) if (probe.device, probe.dtype) == (t.device, t.dtype) else t

        return nn.Module._apply(self, in_place, recurse)
