"""NeuMF (He et al. 2017, "Neural Collaborative Filtering"): a generalized matrix factorization (GMF)
and an MLP over separate user and item embeddings, fused by one linear layer into a logit.

    user, item ── MF tables  (mf_dim) ──> p_u * q_i ───────────────────────┐
                                                                           ├─ concat ── linear ──> logit [B]
    user, item ── MLP tables (embedding_dim) ─> concat ── MLP tower (ReLU) ┘

GMF is the element-wise product of the two MF vectors, as in the paper (its eq. 9-10).
DeepRecSys's `models/ncf.py` sums them instead (ANCHORS.md section 1.1); that makes the GMF part a
function of user and item separately, with no user-item interaction, so it is not followed here.
The MF and MLP tables are two embedding collections, since their widths may differ.
"""

from __future__ import annotations

import torch

from recstack.data.batch import Batch
from recstack.embeddings.base import EmbeddingCollection
from recstack.errors import ConfigError
from recstack.models.base import ModelContext, RecModel
from recstack.models.layers import MLP

USER, ITEM = "user", "item"
"""The pooled sparse features NeuMF reads."""


class NeuMF(RecModel):
    def __init__(self, mf: EmbeddingCollection, mlp: EmbeddingCollection, tower: list[int], dropout: float = 0.0):
        """`mf`, `mlp`: collections serving the `user` and `item` features; `tower`: the MLP's widths
        after the concatenated user and item vectors (ReLU after every layer)."""
        super().__init__()
        if not tower:
            raise ValueError("the NeuMF MLP tower needs at least one layer")
        self.embeddings = mf
        self.mlp_embeddings = mlp
        # positions of the user and item vectors on each collection's feature axis
        self._mf_at = (mf.feature_names.index(USER), mf.feature_names.index(ITEM))
        self._mlp_at = (mlp.feature_names.index(USER), mlp.feature_names.index(ITEM))
        self.mf_dim = mf.tables[0].embedding_dim
        mlp_dim = mlp.tables[0].embedding_dim
        self.tower = MLP([2 * mlp_dim, *tower], final_activation=True, dropout=dropout)
        self.predict = MLP([self.mf_dim + tower[-1], 1])

    def forward(self, batch: Batch) -> torch.Tensor:
        mf = self.embeddings(batch.sparse)  # [B, F, mf_dim]
        gmf = mf[:, self._mf_at[0]] * mf[:, self._mf_at[1]]
        mlp = self.mlp_embeddings(batch.sparse)  # [B, F, D]
        user_item = torch.cat([mlp[:, self._mlp_at[0]], mlp[:, self._mlp_at[1]]], dim=1)
        return self.output(self.predict(torch.cat([gmf, self.tower(user_item)], dim=1)))

    def flops_per_sample(self) -> int:
        """Forward FLOPs: the GMF product, the tower and the fusion layer."""
        return self.mf_dim + self.tower.flops_per_sample() + self.predict.flops_per_sample()



def build(ctx: ModelContext) -> NeuMF:
    m = ctx.config
    missing = [name for name in (USER, ITEM) if name not in ctx.layout.pooled]
    if missing:
        raise ConfigError(
            f"NCF needs pooled sparse features named `user` and `item`; the dataset lacks {', '.join(missing)} "
            f"(it has: {', '.join(ctx.layout.pooled) or 'none'})"
        )
    features = [USER, ITEM]
    mf = ctx.embeddings(ctx.tables(m.mf_dim or m.embedding_dim, features=features), role="gmf")
    mlp = ctx.embeddings(ctx.tables(m.embedding_dim, features=features), role="mlp")
    return NeuMF(mf, mlp, tower=m.top_mlp, dropout=m.dropout)

