"""The embedding collection against plain per-table references, and the sparse optimizers against
torch.optim on dense tables."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recstack.data.batch import JaggedFeatures
from recstack.embeddings import DenseEmbeddingCollection, SparseOptimizerConfig, TableConfig

ROWS = [7, 13, 5]
DIM = 4


def random_features(batch: int, max_len: int, rows: list[int], seed: int, keys: list[str] | None = None) -> JaggedFeatures:
    g = torch.Generator().manual_seed(seed)
    keys = keys or [f"f{i}" for i in range(len(rows))]
    lengths = torch.randint(0, max_len + 1, (len(rows), batch), generator=g, dtype=torch.int32)
    values = [torch.randint(0, n, (int(lengths[i].sum()),), generator=g) for i, n in enumerate(rows)]
    return JaggedFeatures(keys, torch.cat(values), lengths.reshape(-1), batch)


def reference_pool(collection: DenseEmbeddingCollection, features: JaggedFeatures) -> torch.Tensor:
    """Per-sample, per-feature Python loop over the bags."""
    out = torch.zeros(features.batch_size, len(collection.tables), collection.dim, dtype=torch.float64)
    parts = features.to_dict()
    for f, table in enumerate(collection.tables):
        values, lengths = parts[table.name]
        weight = collection.table_weight(table.name).double()
        start = 0
        for b, n in enumerate(lengths.tolist()):
            ids = values[start : start + n] % table.num_embeddings
            start += n
            if n:
                pooled = weight[ids].sum(0)
                out[b, f] = pooled / n if table.pooling == "mean" else pooled
    return out


def make(optimizer: str = "sgd", pooling: str = "sum", fold: bool = False, weight_decay: float = 0.0):
    tables = [TableConfig(f"f{i}", n, DIM, pooling=pooling, fold=fold) for i, n in enumerate(ROWS)]
    return DenseEmbeddingCollection(tables, SparseOptimizerConfig(kind=optimizer, weight_decay=weight_decay))


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_pooling_matches_per_bag_reference(pooling):
    torch.manual_seed(0)
    coll = make(pooling=pooling)
    feats = random_features(batch=9, max_len=4, rows=ROWS, seed=1)
    assert (feats.lengths == 0).any(), "the case must include empty bags"
    out = coll(feats)
    assert out.shape == (9, 3, DIM)
    torch.testing.assert_close(out.double(), reference_pool(coll, feats), rtol=1e-6, atol=1e-6)


def test_one_hot_path_matches_reference():
    torch.manual_seed(0)
    coll = make()
    g = torch.Generator().manual_seed(3)
    values = torch.cat([torch.randint(0, n, (6,), generator=g) for n in ROWS])
    feats = JaggedFeatures(["f0", "f1", "f2"], values, torch.ones(18, dtype=torch.int32), 6)
    torch.testing.assert_close(coll(feats).double(), reference_pool(coll, feats), rtol=1e-6, atol=1e-6)


def test_folding_and_key_order():
    torch.manual_seed(0)
    coll = make(fold=True)
    feats = random_features(batch=5, max_len=3, rows=[50, 50, 50], seed=2)  # ids beyond every table
    expected = reference_pool(coll, feats)
    torch.testing.assert_close(coll(feats).double(), expected, rtol=1e-6, atol=1e-6)
    # the same features under another key order pool identically
    parts = feats.to_dict()
    shuffled = JaggedFeatures.from_dict({k: parts[k] for k in ["f2", "f0", "f1"]})
    torch.testing.assert_close(coll(shuffled).double(), expected, rtol=1e-6, atol=1e-6)


def test_missing_feature_is_a_clear_error():
    coll = make()
    feats = random_features(batch=2, max_len=2, rows=ROWS[:2], seed=0)
    with pytest.raises(KeyError, match="f2"):
        coll(feats)


def test_a_table_without_rows_is_refused_by_name():
    """Initialization divides by the table size: a 0-row table was a ZeroDivisionError."""
    with pytest.raises(ValueError, match=r"tables \['empty'\] have no rows"):
        DenseEmbeddingCollection([TableConfig("f0", 3, DIM), TableConfig("empty", 0, DIM)])
    assert DenseEmbeddingCollection([TableConfig("one", 1, DIM)]).weight.shape == (1, DIM)


def dense_reference(coll: DenseEmbeddingCollection) -> list[nn.EmbeddingBag]:
    bags = []
    for t in coll.tables:
        bag = nn.EmbeddingBag(t.num_embeddings, DIM, mode=t.pooling)
        with torch.no_grad():
            bag.weight.copy_(coll.table_weight(t.name))
        bags.append(bag)
    return bags


def reference_forward(bags: list[nn.EmbeddingBag], features: JaggedFeatures) -> torch.Tensor:
    parts = features.to_dict()
    pooled = []
    for i, bag in enumerate(bags):
        values, lengths = parts[f"f{i}"]
        offsets = torch.zeros_like(lengths, dtype=torch.int64)
        offsets[1:] = torch.cumsum(lengths, 0)[:-1]
        pooled.append(bag(values, offsets))
    return torch.stack(pooled, 1)


@pytest.mark.parametrize("kind", ["sgd", "adagrad"])
def test_sparse_optimizer_equals_torch_optim_on_touched_rows(kind):
    torch.manual_seed(0)
    coll = make(optimizer=kind)
    coll.train()
    bags = dense_reference(coll)
    params = [b.weight for b in bags]
    reference_opt = torch.optim.SGD(params, lr=0.1) if kind == "sgd" else torch.optim.Adagrad(params, lr=0.1, eps=1e-8)
    before = coll.weight.clone()
    touched = torch.zeros(sum(ROWS), dtype=torch.bool)
    for step in range(4):
        feats = random_features(batch=8, max_len=3, rows=ROWS, seed=10 + step)
        target = torch.randn(8, 3, DIM, generator=torch.Generator().manual_seed(step))
        (coll(feats) * target).sum().backward()
        coll.apply_gradients(0.1)
        reference_opt.zero_grad()
        (reference_forward(bags, feats) * target).sum().backward()
        reference_opt.step()
        for i, (values, _) in enumerate(feats.to_dict().values()):
            touched[coll.table_row_offsets[i] + values] = True
    for t, bag in zip(coll.tables, bags):
        torch.testing.assert_close(coll.table_weight(t.name), bag.weight.detach(), rtol=1e-5, atol=1e-6)
    assert torch.equal(coll.weight[~touched], before[~touched]), "rows never looked up must not move"
    assert not torch.equal(coll.weight[touched], before[touched])


def test_rowwise_adagrad_formula_and_duplicates():
    torch.manual_seed(0)
    coll = make(optimizer="rowwise_adagrad", weight_decay=0.01)
    coll.train()
    w0 = coll.weight.clone()
    # sample 0 looks up row 2 of f0 twice (duplicates sum), sample 1 looks it up once
    feats = JaggedFeatures(
        ["f0", "f1", "f2"],
        torch.tensor([2, 2, 2, 0, 1]),
        torch.tensor([2, 1, 1, 0, 0, 1], dtype=torch.int32),
        2,
    )
    grad_out = torch.randn(2, 3, DIM)
    (coll(feats) * grad_out).sum().backward()
    coll.apply_gradients(0.5)
    lr, eps, wd = 0.5, 1e-8, 0.01

    def expected_row(global_row: int, grad: torch.Tensor) -> torch.Tensor:
        g = grad + wd * w0[global_row]
        acc = g.pow(2).mean()
        return w0[global_row] - lr * g / (acc.sqrt() + eps)

    off = coll.table_row_offsets
    torch.testing.assert_close(coll.weight[off[0] + 2], expected_row(off[0] + 2, 2 * grad_out[0, 0] + grad_out[1, 0]))
    torch.testing.assert_close(coll.weight[off[1] + 0], expected_row(off[1] + 0, grad_out[0, 1]))
    torch.testing.assert_close(coll.weight[off[2] + 1], expected_row(off[2] + 1, grad_out[1, 2]))
    moved = (coll.weight != w0).any(1).nonzero().flatten().tolist()
    assert moved == sorted([off[0] + 2, off[1] + 0, off[2] + 1])
    state = coll.optimizer_state.flatten()
    assert (state != 0).nonzero().flatten().tolist() == moved


def test_eval_mode_records_no_gradients():
    coll = make()
    coll.eval()
    feats = random_features(batch=4, max_len=2, rows=ROWS, seed=0)
    out = coll(feats)
    assert not out.requires_grad
    coll.apply_gradients(1.0)  # nothing pending: a no-op


def test_rowwise_adagrad_over_steps_equals_per_row_reference():
    """Several steps over overlapping rows: the accumulator must add up across steps."""
    torch.manual_seed(0)
    coll = make(optimizer="rowwise_adagrad")
    coll.train()
    weight = coll.weight.clone().double()
    acc = torch.zeros(coll.weight.shape[0], dtype=torch.float64)
    lr, eps = 0.3, 1e-8
    for step in range(4):
        feats = random_features(batch=6, max_len=3, rows=ROWS, seed=20 + step)
        grad_out = torch.randn(6, 3, DIM, generator=torch.Generator().manual_seed(step))
        (coll(feats) * grad_out).sum().backward()
        coll.apply_gradients(lr)
        # reference: per-row loop over the bags
        grads: dict[int, torch.Tensor] = {}
        for f, (values, lengths) in enumerate(feats.to_dict().values()):
            start = 0
            for b, n in enumerate(lengths.tolist()):
                for v in values[start : start + n].tolist():
                    row = coll.table_row_offsets[f] + v
                    grads[row] = grads.get(row, torch.zeros(DIM, dtype=torch.float64)) + grad_out[b, f].double()
                start += n
        for row, g in grads.items():
            acc[row] += g.pow(2).mean()
            weight[row] -= lr * g / (acc[row].sqrt() + eps)
    torch.testing.assert_close(coll.weight.double(), weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(coll.optimizer_state[:, 0].double(), acc, rtol=1e-5, atol=1e-7)


def test_sequences_are_unpooled_padded_and_truncated_to_the_most_recent():
    """A shared item table: `target` pooled, `history` returned per id, the last max_length ids of
    each sample; gradients of both reach the shared rows."""
    torch.manual_seed(0)
    table = TableConfig("item", 20, 4, feature_names=["target"], sequence_names=["history"])
    coll = DenseEmbeddingCollection([table], SparseOptimizerConfig(kind="sgd"))
    history = [[3, 4, 5, 6], [], [7], [1, 2]]
    features = JaggedFeatures.from_dict({
        "target": (torch.tensor([0, 1, 2, 3]), torch.ones(4, dtype=torch.int32)),
        "history": (torch.tensor([i for h in history for i in h]), torch.tensor([len(h) for h in history])),
    })
    seq = coll.sequences(features, max_length=3)["history"]
    assert seq.values.shape == (4, 3, 4) and seq.lengths.tolist() == [3, 0, 1, 2]
    weight = coll.weight.detach().clone()
    for b, ids in enumerate(history):
        kept = ids[-3:]
        for pos in range(3):
            expected = weight[kept[pos]] if pos < len(kept) else torch.zeros(4)
            torch.testing.assert_close(seq.values[b, pos], expected)
    assert seq.mask.tolist() == [[True] * 3, [False] * 3, [True, False, False], [True, True, False]]
    pooled = coll(features)
    assert pooled.shape == (4, 1, 4)
    (seq.values.sum() + pooled.sum()).backward()
    coll.apply_gradients(1.0)
    # sgd, lr 1, gradient 1 per use: row 3 was a target once and dropped from history (oldest of 4)
    counts = torch.zeros(20)
    for i in [0, 1, 2, 3, 4, 5, 6, 7, 1, 2]:
        counts[i] += 1
    torch.testing.assert_close(coll.weight, weight - counts.unsqueeze(1))
