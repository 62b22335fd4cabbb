"""DIEN, the Deep Interest Evolution Network (Zhou et al. 2019): a GRU extracts an interest state from
every behaviour, an auxiliary loss makes each state predict the next behaviour, and an AUGRU (a GRU
whose update gate is scaled by each state's attention to the target) evolves the interests that
matter for this candidate; its state at the last behaviour joins the other features in DIN's MLP.

    history [B, L, W] ─ GRU ─> states [B, L, H] ─┬─ attention vs target (softmax) ─> a [B, L]
                                                 │                                     │
                                                 └──────────────── AUGRU(states, a) ─> interest [B, H] ─> top MLP
    auxiliary loss: MLP(h_t, e_{t+1}) -> 1, MLP(h_t, e'_{t+1}) -> 0, over the real steps

The negative behaviour e'_{t+1} is the behaviour at the same position of the previous sample in the
batch: a real (item, category) pair, as the paper's sampled negatives are, with no extra lookups and
no category table to consult; steps where that sample's history is shorter, or where it holds the
very same behaviour, are left out. `model.sequence_pooling` = sum or mean replaces the attention
and the AUGRU by plain pooling of the extractor's states (the GRU and its auxiliary loss stay).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recstack.data.batch import Batch
from recstack.embeddings.base import EmbeddingCollection
from recstack.models.attention import GRU, ActivationUnit, masked_pool, masked_softmax
from recstack.models.base import ModelContext
from recstack.models.din import Behaviour, BehaviourFeatures, BehaviourModel, behaviour_features
from recstack.models.layers import MLP, require_logit

AUX_MLP = [100, 50]
"""Hidden widths of the auxiliary network, as the authors' implementation."""


class DIEN(BehaviourModel):
    def __init__(
        self,
        embeddings: EmbeddingCollection,
        features: BehaviourFeatures,
        num_dense: int,
        gru_hidden: int,
        attention_mlp: list[int],
        top_mlp: list[int],
        aux_loss_weight: float = 1.0,
        pooling: str = "attention",
        max_sequence_length: int = 100,
        dropout: float = 0.0,
    ):
        width = embeddings.tables[0].embedding_dim * len(features.sequences)
        hidden = gru_hidden or width
        super().__init__(embeddings, features, num_dense, hidden, top_mlp, max_sequence_length, dropout)
        self.pooling = pooling
        self.aux_loss_weight = aux_loss_weight
        self.extractor = GRU(width, hidden)
        self.auxiliary = MLP([hidden + width, *AUX_MLP, 1])
        if pooling == "attention":
            # the target meets the states in their width (the authors project it likewise)
            self.query: nn.Module = nn.Linear(width, hidden) if hidden != width else nn.Identity()
            self.attention = ActivationUnit(hidden, attention_mlp)
            self.evolution = GRU(hidden, hidden)

    def attention_scores(self, states: torch.Tensor, behaviour: Behaviour) -> torch.Tensor:
        """[B, L]: softmax over each sample's real positions of the states' scores against the target."""
        scores = self.attention(states, self.query(behaviour.target))
        return masked_softmax(scores, behaviour.mask)

    def evolve(self, states: torch.Tensor, behaviour: Behaviour) -> torch.Tensor:
        if self.pooling != "attention":
            return masked_pool(states, behaviour.mask, self.pooling)
        _, last = self.evolution(states, behaviour.mask, self.attention_scores(states, behaviour))
        return last

    def interest(self, behaviour: Behaviour) -> torch.Tensor:
        states, _ = self.extractor(behaviour.history, behaviour.mask)
        return self.evolve(states, behaviour)

    def auxiliary_loss(self, states: torch.Tensor, history: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over the real steps t (those with a behaviour t + 1) of the binary cross-entropy of
        h_t against its next behaviour (label 1) and a negative one (label 0)."""
        if history.shape[1] < 2:
            return states.new_zeros(())
        h, positive = states[:, :-1], history[:, 1:]
        negative, negative_mask = history.roll(1, dims=0)[:, 1:], mask.roll(1, dims=0)[:, 1:]
        valid = mask[:, 1:] & negative_mask & (positive != negative).any(-1)
        logits = self.auxiliary(torch.cat([torch.cat([h, positive], -1), torch.cat([h, negative], -1)], 0)).squeeze(-1)
        labels = torch.cat([torch.ones_like(logits[: h.shape[0]]), torch.zeros_like(logits[h.shape[0]:])], 0)
        per_step = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        per_step = per_step[: h.shape[0]] + per_step[h.shape[0]:]
        weights = valid.to(per_step.dtype)
        return (per_step * weights).sum() / weights.sum().clamp(min=1.0)

    def training_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        behaviour = self.behaviour(batch)
        states, _ = self.extractor(behaviour.history, behaviour.mask)
        logits = self.head(behaviour, self.evolve(states, behaviour))
        loss = self.task_loss(logits, batch.labels)
        if self.aux_loss_weight:
            loss = loss + self.aux_loss_weight * self.auxiliary_loss(states, behaviour.history, behaviour.mask)
        return loss, logits


def build(ctx: ModelContext) -> DIEN:
    m = ctx.config
    require_logit("model.top_mlp", m.top_mlp)
    features = behaviour_features(ctx.layout, "DIEN")
    return DIEN(
        embeddings=ctx.embeddings(ctx.tables(m.embedding_dim)),
        features=features,
        num_dense=len(ctx.layout.dense),
        gru_hidden=m.gru_hidden,
        attention_mlp=m.attention_mlp,
        top_mlp=m.top_mlp,
        aux_loss_weight=m.aux_loss_weight,
        pooling=m.sequence_pooling,
        max_sequence_length=m.max_sequence_length,
        dropout=m.dropout,
    )
