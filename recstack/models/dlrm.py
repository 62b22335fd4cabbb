"""DLRM (Naumov et al. 2019): a bottom MLP over dense features, sum-pooled embedding bags over
sparse features, an interaction of the two (pairwise dot products, or concatenation), and a top
MLP that outputs a click logit.

    dense [B, 13] ── bottom MLP ──> x [B, D] ─┐
                                              ├─ interaction ── top MLP ──> logit [B]
    sparse ── EmbeddingCollection ─> [B, F, D]┘
    (model.first_order: + a weight per id and per dense feature, added to the logit)

With no dense features (an all-categorical table) the bottom MLP's output is a learned constant
vector, which the interaction still crosses with every embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from recstack.data.batch import Batch
from recstack.embeddings.base import EmbeddingCollection
from recstack.errors import ConfigError
from recstack.models.base import ModelContext, RecModel
from recstack.models.layers import MLP, CatInteraction, DotInteraction, WideLinear, require_logit, wide_linear


class DLRM(RecModel):
    def __init__(
        self,
        num_dense: int,
        embeddings: EmbeddingCollection,
        bottom_mlp: list[int],
        top_mlp: list[int],
        interaction: str = "dot",
        interaction_self: bool = False,
        dropout: float = 0.0,
        first_order: WideLinear | None = None,
    ):
        super().__init__()
        dim = embeddings.tables[0].embedding_dim
        if bottom_mlp[-1] != dim:
            raise ValueError(f"the bottom MLP must end at the embedding dimension {dim}, not {bottom_mlp[-1]}")
        num_features = len(embeddings.feature_names)
        self.embeddings = embeddings
        self.bottom = MLP([num_dense, *bottom_mlp], final_activation=True)
        if interaction == "dot":
            self.interaction: nn.Module = DotInteraction(num_features, dim, interaction_self)
        else:
            self.interaction = CatInteraction(num_features, dim)
        self.top = MLP([self.interaction.output_dim, *top_mlp], dropout=dropout)
        self.first_order = first_order

    def forward(self, batch: Batch) -> torch.Tensor:
        x = self.bottom(batch.dense)
        embedded = self.embeddings(batch.sparse)
        logit = self.top(self.interaction(x, embedded))
        if self.first_order is not None:
            logit = logit + self.first_order(batch.dense, batch.sparse)
        return self.output(logit)

    def flops_per_sample(self) -> int:
        """Forward FLOPs of the dense part (MLPs and interaction); training is about 3x."""
        first_order = self.first_order.flops_per_sample() if self.first_order is not None else 0
        return (
            self.bottom.flops_per_sample() + self.interaction.flops_per_sample() + self.top.flops_per_sample()
            + first_order
        )



def build(ctx: ModelContext) -> DLRM:
    m = ctx.config
    ctx.require(pooled=1, model="DLRM")
    require_logit("model.top_mlp", m.top_mlp)
    if m.bottom_mlp[-1] != m.embedding_dim:
        raise ConfigError(
            f"model.bottom_mlp must end at model.embedding_dim ({m.embedding_dim}) for the interaction, "
            f"not {m.bottom_mlp[-1]}"
        )
    return DLRM(
        num_dense=len(ctx.layout.dense),
        embeddings=ctx.embeddings(ctx.tables(m.embedding_dim, sequences=False)),
        bottom_mlp=m.bottom_mlp,
        top_mlp=m.top_mlp,
        interaction=m.interaction,
        interaction_self=m.interaction_self,
        dropout=m.dropout,
        first_order=wide_linear(ctx) if m.first_order else None,
    )
