"""Wide & Deep (Cheng et al. 2016) and its multi-task form (DeepRecSys's MT-WnD).

The wide part is a linear model over the raw inputs (a weight per sparse id, a weight per dense
feature); the deep part is an MLP over the dense features concatenated with the flattened
embeddings (dense features enter raw, as in DeepRecSys, with no bottom MLP). Their logits add.

    dense [B, D] ─────────────────┬── wide: linear over ids and dense ───────────────┐
                                  │                                                  + ─> logit [B]
    sparse ── embeddings [B,F,E] ─┴── deep: concat(dense, flattened) ── top MLP ─> 1 ┘

Multi-task: the deep MLP (model.top_mlp, not ending at 1) is a trunk shared by every task, then
one head per task (model.task_mlp, ending at 1); each task has its own wide part (one column of
the wide tables per task). The loss is the model.task_weights-weighted sum of the tasks' BCE.
"""

from __future__ import annotations

import torch
from torch import nn

from recstack.data.batch import Batch
from recstack.embeddings.base import EmbeddingCollection
from recstack.errors import ConfigError
from recstack.models.base import ModelContext, RecModel
from recstack.models.layers import MLP, WideLinear, require_logit, wide_linear


class WideAndDeep(RecModel):
    """One logit per task: wide(dense, ids) + head_t(trunk(concat(dense, embeddings))).

    With one task and no heads the trunk is the whole deep MLP and ends at the logit."""

    def __init__(
        self,
        num_dense: int,
        embeddings: EmbeddingCollection,
        wide: WideLinear,
        deep_mlp: list[int],
        task_mlp: list[int] | None = None,
        task_names: list[str] | None = None,
        task_weights: list[float] | None = None,
        dropout: float = 0.0,
    ):
        super().__init__(task_names, task_weights)
        if wide.outputs != self.num_tasks:
            raise ValueError(f"the wide part has {wide.outputs} outputs for {self.num_tasks} tasks")
        self.embeddings = embeddings
        self.wide = wide
        dim = embeddings.tables[0].embedding_dim
        deep_in = num_dense + len(embeddings.feature_names) * dim
        self.deep = MLP([deep_in, *deep_mlp], final_activation=bool(task_mlp), dropout=dropout)
        self.heads = None
        if task_mlp:
            self.heads = nn.ModuleList(MLP([deep_mlp[-1], *task_mlp], dropout=dropout) for _ in self.task_names)

    def forward(self, batch: Batch) -> torch.Tensor:
        embedded = self.embeddings(batch.sparse)
        deep = self.deep(torch.cat([batch.dense, embedded.flatten(1)], dim=1))
        if self.heads is not None:
            deep = torch.cat([head(deep) for head in self.heads], dim=1)
        return self.output(self.wide(batch.dense, batch.sparse) + deep)

    def flops_per_sample(self) -> int:
        """Forward FLOPs of the dense part (MLPs and the wide sums); training is about 3x."""
        heads = sum(head.flops_per_sample() for head in self.heads) if self.heads is not None else 0
        return self.wide.flops_per_sample() + self.deep.flops_per_sample() + heads



def _deep_embeddings(ctx: ModelContext) -> EmbeddingCollection:
    return ctx.embeddings(ctx.tables(ctx.config.embedding_dim, sequences=False))


def build_wide_deep(ctx: ModelContext) -> WideAndDeep:
    m = ctx.config
    ctx.require(pooled=1, single_task=True, model="Wide & Deep", hint="use model.name mtwnd")
    require_logit("model.top_mlp", m.top_mlp)
    return WideAndDeep(len(ctx.layout.dense), _deep_embeddings(ctx), wide_linear(ctx), m.top_mlp, dropout=m.dropout)


def build_multitask(ctx: ModelContext) -> WideAndDeep:
    m = ctx.config
    ctx.require(pooled=1, model="multi-task Wide & Deep")
    if not m.top_mlp or m.top_mlp[-1] == 1:
        raise ConfigError(
            "model.top_mlp is mtwnd's shared trunk: give its hidden widths, not ending at 1 "
            "(the heads are model.task_mlp)"
        )
    require_logit("model.task_mlp", m.task_mlp)
    tasks = ctx.layout.tasks
    return WideAndDeep(
        len(ctx.layout.dense),
        _deep_embeddings(ctx),
        wide_linear(ctx, outputs=len(tasks)),
        m.top_mlp,
        task_mlp=m.task_mlp,
        task_names=tasks,
        task_weights=m.task_weights or None,
        dropout=m.dropout,
    )
