"""DeepFM (Guo et al. 2017): a factorization machine and a deep MLP that share one set of field
embeddings, their logits added to a first-order linear term.

    fields: every sparse feature's embedding, and every dense feature j as a field of its own,
            x_j * v_j (the paper's treatment of continuous fields: one learned vector per feature,
            scaled by the feature's value)

    dense, ids ── first order: weight per id + linear in dense + bias ─────┐
    fields [B, F + D, E] ─┬─ FM: sum over pairs i < j of <f_i, f_j> ───────+──> logit
                          └─ deep: flattened fields ── top MLP ──> 1 ──────┘
"""

from __future__ import annotations

import torch
from torch import nn

from recstack.data.batch import Batch
from recstack.embeddings.base import EmbeddingCollection
from recstack.models.base import ModelContext, RecModel
from recstack.models.layers import MLP, FMInteraction, WideLinear, require_logit, wide_linear


class DeepFM(RecModel):
    def __init__(
        self,
        num_dense: int,
        embeddings: EmbeddingCollection,
        linear: WideLinear,
        top_mlp: list[int],
        dropout: float = 0.0,
    ):
        super().__init__()
        dim = embeddings.tables[0].embedding_dim
        num_fields = len(embeddings.feature_names) + num_dense
        self.embeddings = embeddings
        self.linear = linear
        # one vector per dense feature, small at first like an FM's factors: the feature's value
        # scales it, and Criteo's log counts reach 10 and more
        self.dense_vectors = nn.Parameter(torch.empty(num_dense, dim).normal_(0.0, 0.01))
        self.fm = FMInteraction(num_fields, dim)
        self.deep = MLP([num_fields * dim, *top_mlp], dropout=dropout)

    def fields(self, batch: Batch) -> torch.Tensor:
        """[B, sparse features + dense features, E]: the vectors the FM and the deep part share."""
        dense_fields = batch.dense.unsqueeze(-1) * self.dense_vectors
        return torch.cat([self.embeddings(batch.sparse), dense_fields], dim=1)

    def forward(self, batch: Batch) -> torch.Tensor:
        fields = self.fields(batch)
        return self.output(self.linear(batch.dense, batch.sparse) + self.fm(fields) + self.deep(fields.flatten(1)))

    def flops_per_sample(self) -> int:
        """Forward FLOPs of the dense part (first order, FM, MLP); training is about 3x."""
        return self.linear.flops_per_sample() + self.fm.flops_per_sample() + self.deep.flops_per_sample()



def build(ctx: ModelContext) -> DeepFM:
    m = ctx.config
    ctx.require(pooled=1, single_task=True, model="DeepFM")
    require_logit("model.top_mlp", m.top_mlp)
    return DeepFM(
        num_dense=len(ctx.layout.dense),
        embeddings=ctx.embeddings(ctx.tables(m.embedding_dim, sequences=False)),
        linear=wide_linear(ctx),
        top_mlp=m.top_mlp,
        dropout=m.dropout,
    )
