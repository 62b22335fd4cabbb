"""DIN, the Deep Interest Network (Zhou et al. 2018): the user's behaviour history is weighed against
the candidate (target) item by a local activation unit, and the weighted sum, the user's interest in
this candidate, joins the other features in an MLP.

    history  [B, L, S*D] ─┐
                          ├─ activation unit ─> weights [B, L] ─> weighted sum ─> interest [B, S*D] ─┐
    target   [B, S*D]   ──┘                                                                          ├─ top MLP ─> logit
    other pooled features [B, F*D], dense features [B, Dd] ──────────────────────────────────────────┘

Every behaviour sequence is read through the table of its target (the pooled feature indexing the
same table: `DataLayout.target_of`), so a history item and the candidate item share their rows. With
several sequences (items and their categories) the embeddings are concatenated per position.
`model.sequence_pooling` = sum or mean replaces the attention by plain pooling (the paper's base model).

`BehaviourModel` is the frame DIN and DIEN share: the inputs above and the output MLP; a subclass
only says how the history becomes an interest vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recstack.data.batch import Batch
from recstack.embeddings.base import EmbeddingCollection
from recstack.errors import ConfigError, DataError
from recstack.models.attention import ActivationUnit, masked_pool
from recstack.models.base import DataLayout, ModelContext, RecModel
from recstack.models.layers import MLP, require_logit


@dataclass
class BehaviourFeatures:
    """Which features play which part: sequences[i] is read against targets[i]; `others` are the
    remaining pooled features."""

    sequences: list[str]
    targets: list[str]
    others: list[str]


def behaviour_features(layout: DataLayout, model: str) -> BehaviourFeatures:
    """Pair every behaviour sequence with its target, or a one-line error naming what is missing."""
    if not layout.sequences:
        raise ConfigError(f"{model} needs a behaviour-sequence feature (schema `sequence: true`); the dataset has none")
    targets = []
    for name in layout.sequences:
        target = layout.target_of(name)
        if target is None:
            raise ConfigError(f"{model} reads each behaviour sequence against its target, but no pooled feature "
                              f"indexes table {layout.feature(name).table_name!r} of sequence {name!r}")
        targets.append(target)
    others = [f for f in layout.pooled if f not in targets]
    return BehaviourFeatures(list(layout.sequences), targets, others)


@dataclass
class Behaviour:
    """One batch as the sequence models read it."""

    history: torch.Tensor
    """[B, L, S*D]: the sequences' embeddings, concatenated per position; 0 at padded positions."""
    mask: torch.Tensor
    """bool [B, L]: True at real positions."""
    target: torch.Tensor
    """[B, S*D]: the targets' embeddings, concatenated in the sequences' order."""
    context: torch.Tensor
    """[B, F*D + dense]: the other pooled features' embeddings and the dense features."""


class BehaviourModel(RecModel):
    """A candidate, its user's behaviour history and other features in; one click logit out."""

    def __init__(
        self,
        embeddings: EmbeddingCollection,
        features: BehaviourFeatures,
        num_dense: int,
        interest_dim: int,
        top_mlp: list[int],
        max_sequence_length: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.embeddings = embeddings
        self.features = features
        self.max_sequence_length = max_sequence_length
        pooled = embeddings.feature_names
        self.register_buffer("_target_index", torch.tensor([pooled.index(f) for f in features.targets]), persistent=False)
        self.register_buffer("_other_index", torch.tensor([pooled.index(f) for f in features.others], dtype=torch.int64),
                             persistent=False)
        dim = embeddings.tables[0].embedding_dim
        self.behaviour_dim = dim * len(features.sequences)
        context_dim = dim * len(features.others) + num_dense
        self.top = MLP([context_dim + self.behaviour_dim + interest_dim, *top_mlp], dropout=dropout)

    def behaviour(self, batch: Batch) -> Behaviour:
        pooled = self.embeddings(batch.sparse)
        sequences = self.embeddings.sequences(batch.sparse, self.max_sequence_length)
        first, *rest = (sequences[name] for name in self.features.sequences)
        for name, s in zip(self.features.sequences[1:], rest):
            if not torch.equal(s.lengths, first.lengths):
                raise DataError(f"behaviour sequences {self.features.sequences[0]!r} and {name!r} differ in length "
                                "for some rows; they must describe the same behaviours position by position")
        history = torch.cat([first.values, *(s.values for s in rest)], dim=-1)
        target = pooled.index_select(1, self._target_index).flatten(1)
        context = torch.cat([pooled.index_select(1, self._other_index).flatten(1), batch.dense.to(target.dtype)], dim=1)
        return Behaviour(history, first.mask, target, context)

    def interest(self, behaviour: Behaviour) -> torch.Tensor:
        """The user's interest in this candidate, [B, interest_dim]."""
        raise NotImplementedError

    def head(self, behaviour: Behaviour, interest: torch.Tensor) -> torch.Tensor:
        return self.output(self.top(torch.cat([behaviour.context, behaviour.target, interest], dim=1)))

    def forward(self, batch: Batch) -> torch.Tensor:
        behaviour = self.behaviour(batch)
        return self.head(behaviour, self.interest(behaviour))



class DIN(BehaviourModel):
    def __init__(
        self,
        embeddings: EmbeddingCollection,
        features: BehaviourFeatures,
        num_dense: int,
        attention_mlp: list[int],
        top_mlp: list[int],
        pooling: str = "attention",
        max_sequence_length: int = 100,
        dropout: float = 0.0,
    ):
        dim = embeddings.tables[0].embedding_dim * len(features.sequences)
        super().__init__(embeddings, features, num_dense, dim, top_mlp, max_sequence_length, dropout)
        self.pooling = pooling
        self.attention = ActivationUnit(dim, attention_mlp) if pooling == "attention" else None

    def attention_weights(self, behaviour: Behaviour) -> torch.Tensor:
        """[B, L]: the activation unit's score of every position, 0 at padded ones. No softmax: the
        paper keeps the weights unnormalized, so the interest's size tells how strong it is."""
        assert self.attention is not None, "sum or mean pooling has no attention weights"
        scores = self.attention(behaviour.history, behaviour.target)
        return scores.masked_fill(~behaviour.mask, 0.0)

    def interest(self, behaviour: Behaviour) -> torch.Tensor:
        if self.attention is None:
            return masked_pool(behaviour.history, behaviour.mask, self.pooling)
        return torch.einsum("bl,bld->bd", self.attention_weights(behaviour), behaviour.history)


def build(ctx: ModelContext) -> DIN:
    m = ctx.config
    require_logit("model.top_mlp", m.top_mlp)
    features = behaviour_features(ctx.layout, "DIN")
    return DIN(
        embeddings=ctx.embeddings(ctx.tables(m.embedding_dim)),
        features=features,
        num_dense=len(ctx.layout.dense),
        attention_mlp=m.attention_mlp,
        top_mlp=m.top_mlp,
        pooling=m.sequence_pooling,
        max_sequence_length=m.max_sequence_length,
        dropout=m.dropout,
    )
