"""Layers shared by the model zoo: MLPs and feature interactions."""

from __future__ import annotations

import math

import torch
from torch import nn

from recstack.errors import ConfigError


def require_logit(name: str, widths: list[int]) -> None:
    """The last layer of a model's output MLP is its logit."""
    if not widths or widths[-1] != 1:
        raise ConfigError(f"{name} must end at 1 (one logit), not {widths[-1] if widths else 'nothing'}")


class MLP(nn.Sequential):
    """Linear layers with ReLU between them; the last layer has no activation unless asked.

    Initialized as the DLRM reference does: W ~ N(0, sqrt(2 / (fan_in + fan_out))), b ~ N(0, sqrt(1 / fan_out)).
    """

    def __init__(self, widths: list[int], final_activation: bool = False, dropout: float = 0.0):
        if len(widths) < 2:
            raise ValueError(f"an MLP needs an input and an output width, got {widths}")
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            if dropout and i > 0:
                layers.append(nn.Dropout(dropout))
            linear = nn.Linear(fan_in, fan_out)
            with torch.no_grad():
                linear.weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)))
                linear.bias.normal_(0.0, math.sqrt(1.0 / fan_out))
            layers.append(linear)
            if i < len(widths) - 2 or final_activation:
                layers.append(nn.ReLU())
        super().__init__(*layers)
        self.widths = list(widths)

    def flops_per_sample(self) -> int:
        """Forward multiply-adds x 2."""
        return sum(2 * a * b for a, b in zip(self.widths[:-1], self.widths[1:]))


class DotInteraction(nn.Module):
    """DLRM's interaction: pairwise dot products of the dense vector and every pooled embedding,
    concatenated to the dense vector. Input [B, D] and [B, F, D]; output [B, D + (F+1)F/2] (strict
    lower triangle) or [B, D + (F+1)(F+2)/2] with `self_interaction`."""

    def __init__(self, num_features: int, dim: int, self_interaction: bool = False):
        super().__init__()
        n = num_features + 1
        rows, cols = torch.tril_indices(n, n, offset=0 if self_interaction else -1)
        # positions of the kept pairs in the flattened [n * n] Gram matrix: index_select's backward
        # is a cheap index_add, where advanced indexing's is a sort-based index_put (3x slower here)
        self.register_buffer("_pairs", rows * n + cols, persistent=False)
        self.dim = dim
        self.num_pairs = int(rows.numel())

    @property
    def output_dim(self) -> int:
        return self.dim + self.num_pairs

    def forward(self, dense: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        vectors = torch.cat([dense.unsqueeze(1), embedded], dim=1)
        return torch.cat([dense, _PairwiseDots.apply(vectors, self._pairs)], dim=1)

    def flops_per_sample(self) -> int:
        return 2 * self.num_pairs * self.dim


class _PairwiseDots(torch.autograd.Function):
    """Selected entries of the Gram matrix V V^T of each sample, V [B, n, D].

    Autograd through bmm + index_select would run two bmms and a scatter in backward; since
    d(V V^T) = G V + G^T V = (G + G^T) V, one bmm on the symmetrized gradient suffices."""

    @staticmethod
    def forward(ctx, vectors: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(vectors, pairs)
        gram = torch.bmm(vectors, vectors.transpose(1, 2))
        return gram.flatten(1).index_select(1, pairs)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        vectors, pairs = ctx.saved_tensors
        batch, n, _ = vectors.shape
        grad_gram = grad_out.new_zeros(batch, n * n).index_copy_(1, pairs, grad_out).view(batch, n, n)
        return torch.bmm(grad_gram + grad_gram.transpose(1, 2), vectors), None


class CatInteraction(nn.Module):
    """Concatenation of the dense vector and every pooled embedding."""

    def __init__(self, num_features: int, dim: int):
        super().__init__()
        self.output_dim = (num_features + 1) * dim

    def forward(self, dense: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        return torch.cat([dense, embedded.flatten(1)], dim=1)

    def flops_per_sample(self) -> int:
        return 0
