"""The one batch type, end to end: dense features, keyed-jagged sparse features, labels.

`JaggedFeatures` follows TorchRec's KeyedJaggedTensor layout: F feature keys, one flat `values`
tensor, and `lengths` of shape [F * B] in feature-major order (all samples of key 0, then key 1, ...).
So the bag of sample b under key f is values[offsets[f*B + b] : offsets[f*B + b + 1]].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class JaggedFeatures:
    keys: list[str]
    values: torch.Tensor
    """int64 ids, all bags of all keys concatenated."""
    lengths: torch.Tensor
    """int32 bag sizes, [len(keys) * batch_size], feature-major."""
    batch_size: int
    weights: torch.Tensor | None = None
    """Optional per-id weights (weighted pooling), same shape as values."""

    def __post_init__(self) -> None:
        if self.lengths.numel() != len(self.keys) * self.batch_size:
            raise ValueError(
                f"lengths has {self.lengths.numel()} entries, expected {len(self.keys)} keys x {self.batch_size}"
            )

    def offsets(self) -> torch.Tensor:
        """int64 [F * B + 1]: start of every bag in `values`, plus the end."""
        out = torch.zeros(self.lengths.numel() + 1, dtype=torch.int64, device=self.lengths.device)
        torch.cumsum(self.lengths, 0, out=out[1:])
        return out

    def length_per_key(self) -> list[int]:
        return self.lengths.view(len(self.keys), self.batch_size).sum(1).tolist()

    def to_dict(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """key -> (values, lengths) for that key."""
        per_key = self.length_per_key()
        value_parts = torch.split(self.values, per_key)
        length_parts = self.lengths.view(len(self.keys), self.batch_size)
        return {k: (value_parts[i], length_parts[i]) for i, k in enumerate(self.keys)}

    def select(self, keys: list[str]) -> JaggedFeatures:
        """The features `keys`, in that order (itself when the keys already match)."""
        if keys == self.keys:
            return self
        missing = [k for k in keys if k not in self.keys]
        if missing:
            raise KeyError(f"batch lacks sparse features {missing}")
        per_key = self.lengths.view(len(self.keys), self.batch_size)
        sizes = per_key.sum(1).tolist()
        value_parts = torch.split(self.values, sizes)
        weight_parts = None if self.weights is None else torch.split(self.weights, sizes)
        index = [self.keys.index(k) for k in keys]
        return JaggedFeatures(
            keys=list(keys),
            values=torch.cat([value_parts[i] for i in index]) if index else self.values[:0],
            lengths=per_key[index].reshape(-1),
            batch_size=self.batch_size,
            weights=None if weight_parts is None else torch.cat([weight_parts[i] for i in index]),
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> JaggedFeatures:
        return JaggedFeatures(
            keys=self.keys,
            values=self.values.to(device, non_blocking=non_blocking),
            lengths=self.lengths.to(device, non_blocking=non_blocking),
            batch_size=self.batch_size,
            weights=None if self.weights is None else self.weights.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> JaggedFeatures:
        return JaggedFeatures(
            self.keys,
            self.values.pin_memory(),
            self.lengths.pin_memory(),
            self.batch_size,
            None if self.weights is None else self.weights.pin_memory(),
        )

    @classmethod
    def from_dict(cls, features: dict[str, tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]]) -> JaggedFeatures:
        """Build from key -> (values, lengths); every key must have the same number of samples."""
        keys = list(features)
        values = [torch.as_tensor(features[k][0], dtype=torch.int64) for k in keys]
        lengths = [torch.as_tensor(features[k][1], dtype=torch.int32) for k in keys]
        sizes = {int(part.numel()) for part in lengths}
        if len(sizes) > 1:
            raise ValueError(f"features have different batch sizes: {sorted(sizes)}")
        batch_size = sizes.pop() if sizes else 0
        return cls(keys, torch.cat(values) if values else torch.zeros(0, dtype=torch.int64),
                   torch.cat(lengths) if lengths else torch.zeros(0, dtype=torch.int32), batch_size)

    def to_kjt(self):  # pragma: no cover - exercised only where TorchRec is installed
        """Convert to TorchRec's KeyedJaggedTensor (needs torchrec)."""
        from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

        return KeyedJaggedTensor(keys=self.keys, values=self.values, lengths=self.lengths, weights=self.weights)

    @classmethod
    def from_kjt(cls, kjt) -> JaggedFeatures:  # pragma: no cover - needs torchrec
        return cls(list(kjt.keys()), kjt.values().long(), kjt.lengths().int(), kjt.stride(), kjt.weights_or_none())


@dataclass
class Batch:
    dense: torch.Tensor
    """float32 [B, D]."""
    sparse: JaggedFeatures
    labels: torch.Tensor
    """float32 [B] (one task) or [B, T] (T tasks)."""

    @property
    def batch_size(self) -> int:
        return int(self.dense.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.dense.to(device, non_blocking=non_blocking),
            self.sparse.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        return Batch(self.dense.pin_memory(), self.sparse.pin_memory(), self.labels.pin_memory())
