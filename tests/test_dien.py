"""DIEN: the GRU/AUGRU step against the paper's equations written out, masking of padded steps, the
auxiliary loss counted on valid steps only (against a loop), the attention's softmax over real
positions, the loss that training minimizes, and the loss falling on synthetic DIEN data."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recstack.embeddings import DenseEmbeddingCollection, TableConfig
from recstack.models.attention import GRU, GRUCell
from recstack.models.dien import DIEN
from recstack.models.din import BehaviourFeatures
from tests.test_din import CATES, DIM, FEATURES, ITEMS, USERS, make_batch, train_steps

HIDDEN = 5


def reference_step(cell: GRUCell, x: torch.Tensor, h: torch.Tensor, a: torch.Tensor | None) -> torch.Tensor:
    """DIEN eqs. 1-4 (and 8-9 with attention), one weight matrix per gate."""
    W, b = cell.input.weight.split(HIDDEN), cell.input.bias.split(HIDDEN)
    U, c = cell.hidden.weight.split(HIDDEN), cell.hidden.bias.split(HIDDEN)
    u = torch.sigmoid(x @ W[0].T + b[0] + h @ U[0].T + c[0])
    r = torch.sigmoid(x @ W[1].T + b[1] + h @ U[1].T + c[1])
    candidate = torch.tanh(x @ W[2].T + b[2] + r * (h @ U[2].T + c[2]))
    if a is not None:
        u = a[:, None] * u
    return (1 - u) * h + u * candidate


@torch.no_grad()
def test_augru_step_scales_the_update_gate_by_attention():
    torch.manual_seed(0)
    cell = GRUCell(3, HIDDEN)
    x, h, a = torch.randn(4, 3), torch.randn(4, HIDDEN), torch.rand(4)
    torch.testing.assert_close(cell.step(cell.project(x), h, a), reference_step(cell, x, h, a))
    torch.testing.assert_close(cell.step(cell.project(x), h), reference_step(cell, x, h, None))
    # attention 1 is the plain GRU step; attention 0 keeps the state
    torch.testing.assert_close(cell.step(cell.project(x), h, torch.ones(4)), cell.step(cell.project(x), h))
    torch.testing.assert_close(cell.step(cell.project(x), h, torch.zeros(4)), h)


@torch.no_grad()
def test_padded_steps_leave_the_state_unchanged():
    torch.manual_seed(1)
    gru = GRU(3, HIDDEN)
    lengths = torch.tensor([4, 1, 0, 2])
    x = torch.randn(4, 4, 3)
    mask = torch.arange(4)[None] < lengths[:, None]
    attention = torch.rand(4, 4)
    for a in (None, attention):
        states, last = gru(x, mask, a)
        for i, n in enumerate(lengths.tolist()):
            h = torch.zeros(1, HIDDEN)
            for t in range(n):
                h = reference_step(gru.cell, x[i, t : t + 1], h, None if a is None else a[i, t : t + 1])
                torch.testing.assert_close(states[i, t], h[0])
            torch.testing.assert_close(last[i], h[0])
            assert (states[i, n:] == last[i]).all(), "states after the last real step repeat it"


def make_dien(pooling: str = "attention", aux_loss_weight: float = 1.0) -> DIEN:
    torch.manual_seed(0)
    tables = [
        TableConfig("user", USERS, DIM),
        TableConfig("target_item", ITEMS, DIM, feature_names=["target_item"], sequence_names=["hist_item"]),
        TableConfig("target_cate", CATES, DIM, feature_names=["target_cate"], sequence_names=["hist_cate"]),
    ]
    features = BehaviourFeatures(FEATURES.sequences, FEATURES.targets, FEATURES.others)
    model = DIEN(DenseEmbeddingCollection(tables), features, num_dense=2, gru_hidden=HIDDEN, attention_mlp=[8],
                 top_mlp=[8, 1], aux_loss_weight=aux_loss_weight, pooling=pooling, max_sequence_length=6)
    with torch.no_grad():
        model.embeddings.weight.normal_()
    return model


@torch.no_grad()
def test_auxiliary_loss_counts_only_valid_steps():
    model = make_dien()
    torch.manual_seed(2)
    lengths = torch.tensor([4, 3, 3, 0, 4])
    mask = torch.arange(4)[None] < lengths[:, None]
    history = torch.randn(5, 4, 2 * DIM) * mask[..., None]
    history[0, 2] = history[4, 2]  # sample 0's negative (from sample 4) at position 2 is its own behaviour: not counted
    states = torch.randn(5, 4, HIDDEN)
    terms = []
    for i in range(5):
        j = (i - 1) % 5  # the negative comes from the previous sample
        for t in range(3):
            if t + 1 < lengths[i] and t + 1 < lengths[j] and not torch.equal(history[i, t + 1], history[j, t + 1]):
                pos = model.auxiliary(torch.cat([states[i, t], history[i, t + 1]])[None])
                neg = model.auxiliary(torch.cat([states[i, t], history[j, t + 1]])[None])
                terms.append(F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos))
                             + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)))
    assert len(terms) == 6  # of 5 x 3 step slots
    expected = torch.stack(terms).mean()
    torch.testing.assert_close(model.auxiliary_loss(states, history, mask), expected)
    # whatever sits at padded positions (of states or behaviours) does not count
    noisy_history, noisy_states = history.clone(), states.clone()
    noisy_history[~mask] = 50.0
    noisy_states[~mask] = -50.0
    torch.testing.assert_close(model.auxiliary_loss(noisy_states, noisy_history, mask), expected)


@torch.no_grad()
def test_attention_is_a_softmax_over_real_positions():
    model = make_dien()
    batch = make_batch([3, 1, 6, 2], seed=4)
    behaviour = model.behaviour(batch)
    states, _ = model.extractor(behaviour.history, behaviour.mask)
    a = model.attention_scores(states, behaviour)
    torch.testing.assert_close(a.sum(1), torch.ones(4))
    assert (a[~behaviour.mask] == 0).all() and (a[behaviour.mask] > 0).all()


def test_training_loss_adds_the_weighted_auxiliary_loss():
    model = make_dien(aux_loss_weight=0.5)
    batch = make_batch([3, 0, 5, 4], seed=5)  # an empty history too
    loss, logits = model.training_loss(batch)
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    behaviour = model.behaviour(batch)
    states, _ = model.extractor(behaviour.history, behaviour.mask)
    aux = model.auxiliary_loss(states, behaviour.history, behaviour.mask)
    assert aux > 0
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(model(batch), batch.labels) + 0.5 * aux)
    torch.testing.assert_close(logits, model(batch))
    model.embeddings.discard_gradients()


@torch.no_grad()
def test_sum_pooling_pools_the_extractor_states():
    model = make_dien(pooling="sum")
    batch = make_batch([3, 0, 2], seed=6)
    behaviour = model.behaviour(batch)
    states, _ = model.extractor(behaviour.history, behaviour.mask)
    torch.testing.assert_close(model.interest(behaviour), (states * behaviour.mask[..., None]).sum(1))


@pytest.mark.parametrize("aux_loss_weight", [0.0, 1.0])
def test_dien_loss_falls_on_synthetic_data(tmp_path, aux_loss_weight):
    first, last = train_steps("dien", tmp_path, steps=40, gru_hidden=16, max_sequence_length=12,
                              aux_loss_weight=aux_loss_weight)
    assert last < 0.85 * first, (first, last)
