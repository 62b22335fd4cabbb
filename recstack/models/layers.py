"""Layers shared by the model zoo: MLPs, feature interactions (dot, concatenation, DCN-v2 cross,
FM second order) and the wide (first-order linear) part over sparse ids and dense features."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import torch
from torch import nn

from recstack.data.batch import JaggedFeatures
from recstack.embeddings import EmbeddingCollection
from recstack.errors import ConfigError
from recstack.models.base import ModelContext


def linear(fan_in: int, fan_out: int) -> nn.Linear:
    """nn.Linear, also over no inputs (a table with no dense features): its weight [fan_out, 0] has
    nothing to initialize, so torch's warning about initializing a zero-element tensor is not
    printed. The layer's output is then its bias, a learned constant."""
    if fan_in == 0:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op")
            return nn.Linear(0, fan_out)
    return nn.Linear(fan_in, fan_out)


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
            layer = linear(fan_in, fan_out)
            with torch.no_grad():
                layer.weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)))
                layer.bias.normal_(0.0, math.sqrt(1.0 / fan_out))
            layers.append(layer)
            if i < len(widths) - 2 or final_activation:
                layers.append(nn.ReLU())
        super().__init__(*layers)
        self.widths = list(widths)

    family = "mlp"

    def flops_per_sample(self) -> int:
        """Forward multiply-adds x 2."""
        return sum(2 * a * b for a, b in zip(self.widths[:-1], self.widths[1:]))


class DotInteraction(nn.Module):
    """DLRM's interaction: pairwise dot products of the dense vector and every pooled embedding,
    concatenated to the dense vector. Input [B, D] and [B, F, D]; output [B, D + (F+1)F/2] (strict
    lower triangle) or [B, D + (F+1)(F+2)/2] with `self_interaction`."""

    family = "interaction"

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

    family = "interaction"

    def __init__(self, num_features: int, dim: int):
        super().__init__()
        self.output_dim = (num_features + 1) * dim

    def forward(self, dense: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        return torch.cat([dense, embedded.flatten(1)], dim=1)

    def flops_per_sample(self) -> int:
        return 0


class CrossLayer(nn.Module):
    """One DCN-v2 cross layer (Wang et al. 2021): x_{l+1} = x0 * (W x_l + b) + x_l.

    W is full rank [d, d], or U V^T of rank r (V: d -> r, U: r -> d) when 0 < rank < d; a rank at
    or above d spans no more than the full matrix, so it is built full rank. Initialized as TorchRec's
    CrossNet: Xavier-normal weights, zero bias (each layer starts near the identity x_{l+1} ~ x_l)."""

    def __init__(self, dim: int, rank: int = 0):
        super().__init__()
        self.dim = dim
        self.rank = rank if 0 < rank < dim else 0
        if self.rank:
            self.project: nn.Module = nn.Sequential(nn.Linear(dim, self.rank, bias=False), nn.Linear(self.rank, dim))
        else:
            self.project = nn.Linear(dim, dim)
        with torch.no_grad():
            for module in self.project.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_normal_(module.weight)
                    if module.bias is not None:
                        module.bias.zero_()

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.project(x) + x

    def flops_per_sample(self) -> int:
        matmul = 2 * self.dim * (2 * self.rank if self.rank else self.dim)
        return matmul + 3 * self.dim  # bias add, product with x0, residual


class CrossNetwork(nn.Module):
    """`layers` cross layers on one input: [B, d] -> [B, d], every layer crossing with x0."""

    family = "interaction"

    def __init__(self, dim: int, layers: int, rank: int = 0):
        super().__init__()
        self.layers = nn.ModuleList(CrossLayer(dim, rank) for _ in range(layers))
        self.output_dim = dim

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = layer(x0, x)
        return x

    def flops_per_sample(self) -> int:
        return sum(layer.flops_per_sample() for layer in self.layers)


class FMInteraction(nn.Module):
    """A factorization machine's second-order term over field vectors [B, F, D] (Rendle 2010):
    sum over pairs i < j of <v_i, v_j> = 0.5 * sum over d of ((sum_i v_i)^2 - sum_i v_i^2), in O(F D).
    Output [B, 1] (a logit term)."""

    family = "interaction"

    def __init__(self, num_fields: int, dim: int):
        super().__init__()
        self.num_fields, self.dim = num_fields, dim

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        square_of_sum = fields.sum(1).square()
        sum_of_squares = fields.square().sum(1)
        return 0.5 * (square_of_sum - sum_of_squares).sum(1, keepdim=True)

    def flops_per_sample(self) -> int:
        return 3 * self.num_fields * self.dim + 3 * self.dim


class WideLinear(nn.Module):
    """The wide (first-order, linear) part of Wide & Deep and DeepFM: one learned weight per sparse
    id, summed over the features, plus a linear map of the dense features and a bias.

    The per-id weights are rows of an EmbeddingCollection of width `outputs` (one column per task:
    a multi-task model gets a wide part per task from one lookup), so they live wherever the
    context places tables and train with the fused sparse optimizer. Output [B, outputs]."""

    def __init__(self, embeddings: EmbeddingCollection, num_dense: int):
        super().__init__()
        self.embeddings = embeddings
        self.outputs = embeddings.tables[0].embedding_dim
        self.dense = linear(num_dense, self.outputs)
        # A linear model starts at zero, its tables too (init "zeros", which `wide_linear` asks for;
        # a collection built otherwise is re-initialized by that spec). The tables' random init
        # (U(+-sqrt(1/rows))) would give every id a fixed noise logit to unlearn first; on the Criteo
        # sample's small vocabularies that costs Wide & Deep 0.008 validation AUC.
        with torch.no_grad():
            self.dense.weight.zero_()
            self.dense.bias.zero_()
        if any(t.init != "zeros" for t in embeddings.tables):
            for t in embeddings.tables:
                t.init = "zeros"
            embeddings.reset_parameters()

    def forward(self, dense: torch.Tensor, sparse: JaggedFeatures) -> torch.Tensor:
        return self.dense(dense) + self.embeddings(sparse).sum(1)

    def flops_per_sample(self) -> int:
        return 2 * self.dense.in_features * self.outputs + len(self.embeddings.feature_names) * self.outputs


def wide_linear(ctx: ModelContext, outputs: int = 1) -> WideLinear:
    """The wide part over every pooled sparse feature and every dense feature of the context's data,
    its per-id weights in tables of width `outputs` that the context places."""
    tables = [replace(t, init="zeros") for t in ctx.tables(outputs, sequences=False)]
    return WideLinear(ctx.embeddings(tables, role="wide"), len(ctx.layout.dense))
