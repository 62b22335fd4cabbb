"""DCN-v2 (Wang et al. 2021), as MLPerf's DLRM-v2 uses it: a bottom MLP over the dense features,
concatenated with the flattened embeddings into x0, then a cross network of model.cross_layers
layers x_{l+1} = x0 * (W x_l + b) + x_l (W full rank, or U V^T of rank model.cross_rank), and a
deep MLP (model.top_mlp), arranged one of two ways (model.cross_structure):

    stacked:   x0 ── cross network ── top MLP ──> logit

    parallel:  x0 ─┬─ cross network ──────────────┐
                   └─ top MLP's hidden layers ────┴─ concat ── top MLP's last layer ──> logit

In both, model.top_mlp ends at 1: in the parallel structure its last (logit) layer is the final
linear over the concatenated cross and deep outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from recstack.data.batch import Batch
from recstack.embeddings.base import EmbeddingCollection
from recstack.errors import ConfigError
from recstack.models.base import ModelContext, RecModel
from recstack.models.layers import MLP, CrossNetwork, require_logit

STRUCTURES = ("stacked", "parallel")


class DCNv2(RecModel):
    def __init__(
        self,
        num_dense: int,
        embeddings: EmbeddingCollection,
        bottom_mlp: list[int],
        top_mlp: list[int],
        cross_layers: int,
        cross_rank: int = 0,
        structure: str = "stacked",
        dropout: float = 0.0,
    ):
        super().__init__()
        if structure not in STRUCTURES:
            raise ValueError(f"cross structure must be one of {STRUCTURES}, not {structure!r}")
        self.structure = structure
        self.embeddings = embeddings
        self.bottom = MLP([num_dense, *bottom_mlp], final_activation=True)
        width = bottom_mlp[-1] + len(embeddings.feature_names) * embeddings.tables[0].embedding_dim
        self.cross = CrossNetwork(width, cross_layers, cross_rank)
        if structure == "stacked":
            self.deep = MLP([width, *top_mlp], dropout=dropout)
            self.final: nn.Module = nn.Identity()
        else:
            self.deep = MLP([width, *top_mlp[:-1]], final_activation=True, dropout=dropout)
            self.final = MLP([width + top_mlp[-2], 1])

    def forward(self, batch: Batch) -> torch.Tensor:
        x0 = torch.cat([self.bottom(batch.dense), self.embeddings(batch.sparse).flatten(1)], dim=1)
        if self.structure == "stacked":
            logit = self.deep(self.cross(x0))
        else:
            logit = self.final(torch.cat([self.cross(x0), self.deep(x0)], dim=1))
        return self.output(logit)

    def flops_per_sample(self) -> int:
        """Forward FLOPs of the dense part (MLPs and cross network); training is about 3x."""
        final = self.final.flops_per_sample() if isinstance(self.final, MLP) else 0
        return self.bottom.flops_per_sample() + self.cross.flops_per_sample() + self.deep.flops_per_sample() + final



def build(ctx: ModelContext) -> DCNv2:
    m = ctx.config
    ctx.require(pooled=1, single_task=True, model="DCN-v2")
    require_logit("model.top_mlp", m.top_mlp)
    if not m.bottom_mlp:
        raise ConfigError("model.bottom_mlp is empty: DCN-v2 projects the dense features with a bottom MLP")
    if m.cross_structure not in STRUCTURES:
        raise ConfigError(f"model.cross_structure must be stacked or parallel, not {m.cross_structure!r}")
    if m.cross_structure == "parallel" and len(m.top_mlp) < 2:
        raise ConfigError("a parallel DCN-v2 needs a deep tower: model.top_mlp needs a hidden width before the final 1")
    if m.cross_layers < 1 or m.cross_rank < 0:
        raise ConfigError(f"model.cross_layers must be >= 1 and model.cross_rank >= 0 (0: full rank), "
                          f"not {m.cross_layers} and {m.cross_rank}")
    return DCNv2(
        num_dense=len(ctx.layout.dense),
        embeddings=ctx.embeddings(ctx.tables(m.embedding_dim, sequences=False)),
        bottom_mlp=m.bottom_mlp,
        top_mlp=m.top_mlp,
        cross_layers=m.cross_layers,
        cross_rank=m.cross_rank,
        structure=m.cross_structure,
        dropout=m.dropout,
    )
