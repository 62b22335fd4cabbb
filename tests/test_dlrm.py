"""DLRM: shapes, the dot interaction against a direct loop, and one training step against an
autograd reference built from nn.EmbeddingBag (so the fused sparse update is checked end to end)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recstack.data.batch import Batch, JaggedFeatures
from recstack.embeddings import DenseEmbeddingCollection, SparseOptimizerConfig, TableConfig
from recstack.embeddings.base import TableState
from recstack.models.dlrm import DLRM
from recstack.models.layers import DotInteraction

ROWS = [11, 6, 9]
DIM = 4
NUM_DENSE = 5


def make_batch(batch: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 4, (len(ROWS), batch), generator=g, dtype=torch.int32)
    values = torch.cat([torch.randint(0, n, (int(lengths[i].sum()),), generator=g) for i, n in enumerate(ROWS)])
    return Batch(
        dense=torch.rand(batch, NUM_DENSE, generator=g),
        sparse=JaggedFeatures([f"t{i}" for i in range(len(ROWS))], values, lengths.reshape(-1), batch),
        labels=torch.randint(0, 2, (batch,), generator=g).float(),
    )


def make_model(interaction: str = "dot", optimizer: str = "sgd") -> DLRM:
    torch.manual_seed(0)
    tables = [TableConfig(f"t{i}", n, DIM) for i, n in enumerate(ROWS)]
    return DLRM(
        NUM_DENSE,
        DenseEmbeddingCollection(tables, SparseOptimizerConfig(kind=optimizer)),
        bottom_mlp=[8, DIM],
        top_mlp=[8, 1],
        interaction=interaction,
    )


@pytest.mark.parametrize("self_interaction", [False, True])
def test_dot_interaction_matches_loop(self_interaction):
    torch.manual_seed(1)
    dense, emb = torch.randn(3, DIM), torch.randn(3, 4, DIM)
    out = DotInteraction(4, DIM, self_interaction)(dense, emb)
    vectors = [dense] + [emb[:, i] for i in range(4)]
    pairs = [
        (vectors[i] * vectors[j]).sum(1)
        for i in range(5)
        for j in range(5)
        if (j < i or (self_interaction and j == i))
    ]
    expected = torch.cat([dense, torch.stack(pairs, 1)], 1)
    assert out.shape == (3, DIM + (10 if not self_interaction else 15))
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("interaction", ["dot", "cat"])
def test_shapes_and_gradients_reach_every_dense_parameter(interaction):
    model = make_model(interaction)
    batch = make_batch(6, seed=0)
    logits = model(batch)
    assert logits.shape == (6,)
    F.binary_cross_entropy_with_logits(logits, batch.labels).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.embeddings._pending, "the embedding lookups wait for their sparse update"


class ReferenceDLRM(nn.Module):
    """The same network with one autograd nn.EmbeddingBag per table."""

    def __init__(self, model: DLRM):
        super().__init__()
        self.bottom, self.top, self.interaction = model.bottom, model.top, model.interaction
        self.bags = nn.ModuleList()
        for t in model.embeddings.tables:
            bag = nn.EmbeddingBag(t.num_embeddings, DIM, mode="sum")
            with torch.no_grad():
                bag.weight.copy_(model.embeddings.table_weight(t.name))
            self.bags.append(bag)

    def forward(self, batch: Batch) -> torch.Tensor:
        parts = batch.sparse.to_dict()
        pooled = []
        for bag, (values, lengths) in zip(self.bags, parts.values()):
            offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)[:-1]])
            pooled.append(bag(values, offsets))
        return self.top(self.interaction(self.bottom(batch.dense), torch.stack(pooled, 1))).squeeze(-1)


def test_training_steps_equal_autograd_reference():
    import copy

    model = make_model(optimizer="sgd")
    reference = ReferenceDLRM(copy.deepcopy(model))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.05)
    for step in range(3):
        batch = make_batch(16, seed=step)
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(model(batch), batch.labels).backward()
        opt.step()
        model.embeddings.apply_gradients(0.05)
        ref_opt.zero_grad()
        F.binary_cross_entropy_with_logits(reference(batch), batch.labels).backward()
        ref_opt.step()
    for t, bag in zip(model.embeddings.tables, reference.bags):
        torch.testing.assert_close(model.embeddings.table_weight(t.name), bag.weight.detach(), rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.top.named_parameters(), reference.top.parameters()):
        torch.testing.assert_close(p, q, msg=name)


def test_flops_count():
    model = make_model()
    # bottom 5-8-4, dot over 4 vectors (6 pairs), top (4+6)-8-1
    expected = 2 * (5 * 8 + 8 * 4) + 2 * 6 * DIM + 2 * (10 * 8 + 8 * 1)
    assert model.flops_per_sample() == expected


@pytest.mark.parametrize("self_interaction", [False, True])
def test_dot_interaction_gradient(self_interaction):
    """The hand-written backward (one bmm on the symmetrized gradient) against finite differences."""
    layer = DotInteraction(5, 4, self_interaction).double()
    dense = torch.randn(3, 4, dtype=torch.double, requires_grad=True)
    emb = torch.randn(3, 5, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: layer(a, b), (dense, emb))


def test_first_order_term_adds_a_weight_per_id_and_per_dense_feature():
    """model.first_order: the logit is the interaction's plus sum of the batch's ids' weights plus a
    linear map of the dense features (computed here by hand), and the weights train."""
    from recstack.models.layers import WideLinear

    plain = make_model("cat")
    wide_tables = [TableConfig(f"t{i}", n, 1, init="zeros") for i, n in enumerate(ROWS)]
    wide = WideLinear(DenseEmbeddingCollection(wide_tables, SparseOptimizerConfig(kind="sgd")), NUM_DENSE)
    model = make_model("cat")
    model.first_order = wide
    weights = [torch.randn(n) for n in ROWS]
    for i, w in enumerate(weights):
        state = wide.embeddings.table_state(f"t{i}")
        wide.embeddings.load_table_state(f"t{i}", TableState(w[:, None].clone(), state.optimizer_state))
    with torch.no_grad():
        wide.dense.weight.normal_()
        wide.dense.bias.fill_(0.3)
    batch = make_batch(6, seed=2)
    by_hand = batch.dense @ wide.dense.weight[0] + 0.3
    bags = batch.sparse.to_dict()
    for i, name in enumerate(batch.sparse.keys):
        values, lengths = bags[name]
        by_hand = by_hand + torch.stack([weights[i][bag].sum() for bag in torch.split(values, lengths.tolist())])
    torch.testing.assert_close(model(batch), plain(batch) + by_hand)
    model.embeddings.discard_gradients()
    F.binary_cross_entropy_with_logits(model(batch), batch.labels).backward()
    wide.embeddings.apply_gradients(lr=0.1)
    assert not torch.equal(wide.embeddings.table_state("t0").weight[:, 0], weights[0])
