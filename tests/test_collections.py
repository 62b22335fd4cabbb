"""The conformance suite every EmbeddingCollection kind passes: the checklist for adding a kind.

A new kind is one line in KINDS: a maker (tables, sparse optimizer) -> collection, its class, the
Placement the factory builds it from, and whether its batches must be all-hot (FAE's hot mode).
Every test then runs against it, each checked against a reference written here with plain torch
indexing and sums over the collection's logical state (`table_state`), never against another kind.

A kind that serves but cannot train declares `trainable = False` on its class: the training tests
skip it by name and `test_inference_only_kinds_refuse_training` checks it refuses with a clear error.

A kind that rounds the rows loaded into it beyond a cast to its dtype (int8, int4: row-wise
quantization) declares its `rounding`: how far its rows may be from the float rows it was given, and
its pooled bags from theirs; every other check stays exact for it, and every check of the other kinds
stays as it was.

The tables are small float64 ones (float16 for fp16) covering sum and mean pooling, a table read by
two features, folded ids, per-value weights, empty bags and a table with a sequence feature.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recstack.data.batch import JaggedFeatures
from recstack.embeddings.base import EmbeddingCollection, SparseOptimizerConfig, TableConfig, TableState
from recstack.embeddings.dense import DenseEmbeddingCollection
from recstack.embeddings.half import HalfEmbeddingCollection
from recstack.embeddings.plan import Placement, build_collection, kinds
from recstack.embeddings.quantized import QuantizedEmbeddingCollection
from recstack.embeddings.tiered import TieredEmbeddingCollection

DIM, BATCH, MAX_LENGTH, LR = 4, 8, 3, 0.1
HOT_ROWS = {"a": [1, 3, 5], "b": [0, 2, 4], "c": [1, 2]}
"""FAE's hot rows per table (table s has a sequence feature: tiered keeps it on the full tier)."""


def make_tables() -> list[TableConfig]:
    return [
        TableConfig("a", 7, DIM),
        TableConfig("s", 9, DIM, feature_names=["item"], sequence_names=["hist"]),
        TableConfig("b", 5, DIM, feature_names=["b", "b2"], pooling="mean"),
        TableConfig("c", 6, DIM, fold=True),
    ]


def tiered(tables: list[TableConfig], optimizer: SparseOptimizerConfig, mode: str) -> TieredEmbeddingCollection:
    full = DenseEmbeddingCollection(tables, optimizer, dtype=torch.float64)
    collection = TieredEmbeddingCollection(full, HOT_ROWS, hot_device="cpu")
    collection.set_mode(mode)
    return collection


@dataclass(frozen=True)
class Rounding:
    """Tolerances of a kind that quantizes what it is given."""

    rows: dict[str, float]
    """A row read back against the float row loaded (rows of range below 1, as `randomize` makes)."""
    pooled: dict[str, float]
    """A pooled bag against the same bag over the float rows (up to 3 ids, weights below 1.5)."""


@dataclass(frozen=True)
class Kind:
    name: str
    make: Callable[[list[TableConfig], SparseOptimizerConfig], EmbeddingCollection]
    cls: type
    placement: dict[str, Any] = field(default_factory=dict)
    """build_collection(tables, Placement(**placement)) builds this kind."""
    all_hot: bool = False
    """Batches hold hot rows only (tiered in hot mode)."""
    rounding: Rounding | None = None
    """None: a row loaded or written reads back as its value cast to the kind's dtype."""
    row_bytes: int | None = None
    """embedding_bytes of one row of width DIM (None: DIM times the size of the kind's dtype)."""

    @property
    def trainable(self) -> bool:
        return getattr(self.cls, "trainable", True)


def half_step(bits: int) -> float:
    """Half a quantization step of a row of range 1 (float16 scale: up to 2^-10 above range / levels),
    plus float32 rounding."""
    return 0.5 / ((1 << bits) - 1) * (1 + 2**-10) + 1e-6


INT8_ROUNDING = Rounding({"rtol": 0, "atol": half_step(8)}, {"rtol": 0, "atol": 4.5 * half_step(8)})
INT4_ROUNDING = Rounding({"rtol": 0, "atol": half_step(4)}, {"rtol": 0, "atol": 4.5 * half_step(4)})
TIERED_PLAN = {"kind": "tiered", "hot_rows": HOT_ROWS, "hot_device": "cpu"}
KINDS = [
    Kind("dense", lambda t, o: DenseEmbeddingCollection(t, o, dtype=torch.float64), DenseEmbeddingCollection, {"kind": "dense"}),
    Kind("tiered-cold", lambda t, o: tiered(t, o, "cold"), TieredEmbeddingCollection, TIERED_PLAN),
    Kind("tiered-hot", lambda t, o: tiered(t, o, "hot"), TieredEmbeddingCollection, TIERED_PLAN, all_hot=True),
    Kind("fp16", lambda t, o: HalfEmbeddingCollection(t, o), HalfEmbeddingCollection, {"kind": "fp16"}),
    Kind("int8", lambda t, o: QuantizedEmbeddingCollection(t, 8, o), QuantizedEmbeddingCollection, {"kind": "int8"}, rounding=INT8_ROUNDING, row_bytes=DIM + 4),
    Kind("int4", lambda t, o: QuantizedEmbeddingCollection(t, 4, o), QuantizedEmbeddingCollection, {"kind": "int4"}, rounding=INT4_ROUNDING, row_bytes=DIM // 2 + 4),
]
PAIRS = [(a, b) for a in KINDS for b in KINDS if a is not b]


@pytest.fixture(params=KINDS, ids=lambda k: k.name)
def kind(request) -> Kind:
    return request.param


def build(kind: Kind, optimizer: str | SparseOptimizerConfig = "rowwise_adagrad", seed: int = 0,
          tables: list[TableConfig] | None = None) -> EmbeddingCollection:
    torch.manual_seed(seed)
    config = optimizer if isinstance(optimizer, SparseOptimizerConfig) else SparseOptimizerConfig(kind=optimizer)
    return kind.make(tables or make_tables(), config)


def require_trainable(kind: Kind) -> None:
    if not kind.trainable:
        pytest.skip(f"{kind.name} is inference-only (trainable = False): see test_inference_only_kinds_refuse_training")


def tolerance(*collections: EmbeddingCollection) -> dict[str, float]:
    """Exact up to summation order for float64 rows; float32 pooling over float16 (or quantized) rows."""
    if any(c.dtype != torch.float64 for c in collections):
        return {"rtol": 1e-5, "atol": 1e-6}
    return {"rtol": 1e-10, "atol": 1e-12}


FP16_ROUNDING = {"rtol": 2e-3, "atol": 2e-3}
"""Two collections whose rows differ by float16 rounding (a relative 2^-11 per row, bags of up to 3 rows)."""


def widest(*tols: dict[str, float]) -> dict[str, float]:
    return {"rtol": max(t["rtol"] for t in tols), "atol": max(t["atol"] for t in tols)}

# --- batches: bags drawn per feature, kept as lists for the references ---------------------------

KEYS = ["c", "hist", "b2", "a", "item", "b"]
"""Batch key order, unlike the collections' feature order."""
FULL_IDS = {"a": range(7), "item": range(9), "hist": range(9), "b": range(5), "b2": range(5), "c": range(20)}
HOT_IDS = {**FULL_IDS, "a": HOT_ROWS["a"], "b": HOT_ROWS["b"], "b2": HOT_ROWS["b"], "c": [1, 2, 7, 8, 13, 14]}

Bags = dict[str, list[tuple[list[int], list[float]]]]
"""feature -> one (ids, weights) per sample."""


def draw_bags(seed: int, all_hot: bool) -> Bags:
    """Random bags of 0-3 ids (sequences 0-5, longer than MAX_LENGTH); sample 1 of every feature is empty."""
    g = torch.Generator().manual_seed(seed)
    pools = HOT_IDS if all_hot else FULL_IDS
    bags: Bags = {}
    for key in KEYS:
        pool = list(pools[key])
        lengths = torch.randint(0, 6 if key == "hist" else 4, (BATCH,), generator=g).tolist()
        lengths[1] = 0
        if key == "hist":
            lengths[2] = 5
        bags[key] = []
        for n in lengths:
            ids = [pool[i] for i in torch.randint(0, len(pool), (n,), generator=g).tolist()]
            bags[key].append((ids, (0.5 + torch.rand(n, generator=g, dtype=torch.float64)).tolist()))
    return bags


def to_features(bags: Bags, weighted: bool) -> JaggedFeatures:
    ids = [i for key in KEYS for bag, _ in bags[key] for i in bag]
    weights = [w for key in KEYS for _, ws in bags[key] for w in ws]
    lengths = [len(bag) for key in KEYS for bag, _ in bags[key]]
    return JaggedFeatures(list(KEYS), torch.tensor(ids, dtype=torch.int64), torch.tensor(lengths, dtype=torch.int32),
                          BATCH, torch.tensor(weights, dtype=torch.float64) if weighted else None)


def batch_for(kind: Kind, seed: int = 1, weighted: bool = True) -> tuple[JaggedFeatures, Bags]:
    bags = draw_bags(seed, kind.all_hot)
    if not weighted:
        bags = {k: [(ids, [1.0] * len(ids)) for ids, _ in v] for k, v in bags.items()}
    return to_features(bags, weighted), bags


# --- references: plain indexing and sums over per-table weights --------------------------------


def row_of(table: TableConfig, i: int) -> int:
    return i % table.num_embeddings if table.fold else i


def reference_pool(tables: list[TableConfig], weights: dict[str, torch.Tensor], bags: Bags) -> torch.Tensor:
    """[B, F, D] float64: per bag, sum_i w_i * row(id_i), divided by the bag size for mean pooling."""
    out = []
    for t in tables:
        for name in t.feature_names:
            per_sample = []
            for ids, ws in bags[name]:
                pooled = torch.zeros(DIM, dtype=torch.float64)
                for i, w in zip(ids, ws):
                    pooled = pooled + w * weights[t.name][row_of(t, i)].double()
                per_sample.append(pooled / len(ids) if t.pooling == "mean" and ids else pooled)
            out.append(torch.stack(per_sample))
    return torch.stack(out, 1)


def reference_sequences(tables: list[TableConfig], weights: dict[str, torch.Tensor], bags: Bags,
                        max_length: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (values [B, L, D] float64, lengths [B]): each sample's last max_length ids, zero padded."""
    out = {}
    for t in tables:
        for name in t.sequence_names:
            kept = [ids[len(ids) - min(len(ids), max_length):] for ids, _ in bags[name]]
            width = max(1, *(len(k) for k in kept))
            rows = [[weights[t.name][row_of(t, i)].double() for i in k] for k in kept]
            zero = torch.zeros(DIM, dtype=torch.float64)
            values = torch.stack([torch.stack(r + [zero] * (width - len(r))) for r in rows])
            out[name] = (values, torch.tensor([len(k) for k in kept]))
    return out


def touched_rows(tables: list[TableConfig], bags: Bags, max_length: int) -> dict[str, torch.Tensor]:
    """Rows a batch reads, per table: every id of a pooled bag, the last max_length of a sequence."""
    out = {}
    for t in tables:
        rows = {row_of(t, i) for name in t.feature_names for ids, _ in bags[name] for i in ids}
        rows |= {row_of(t, i) for name in t.sequence_names for ids, _ in bags[name] for i in ids[-max_length:]}
        out[t.name] = torch.tensor(sorted(rows), dtype=torch.int64)
    return out


def logical_state(collection: EmbeddingCollection) -> dict[str, TableState]:
    """Copies of every table's state."""
    return {t.name: TableState(*(x.detach().clone() for x in dataclasses.astuple(collection.table_state(t.name))))
            for t in collection.tables}


def weights_of(collection: EmbeddingCollection) -> dict[str, torch.Tensor]:
    return {name: s.weight for name, s in logical_state(collection).items()}


def randomize(collection: EmbeddingCollection, seed: int) -> None:
    """Random rows and a random non-negative optimizer state, loaded through load_table_state."""
    g = torch.Generator().manual_seed(seed)
    for t in collection.tables:
        k = collection.optimizer.state_floats_per_row(t.embedding_dim)
        collection.load_table_state(t.name, TableState(torch.rand(t.num_embeddings, DIM, generator=g, dtype=torch.float64) - 0.5,
                                                       torch.rand(t.num_embeddings, k, generator=g)))


def assert_sequences(got: dict, expected: dict, **tol: float) -> None:
    assert set(got) == set(expected)
    for name, (values, lengths) in expected.items():
        seq = got[name]
        assert seq.lengths.tolist() == lengths.tolist(), name
        width = values.shape[1]
        torch.testing.assert_close(seq.values[:, :width].double(), values, **tol)
        assert not seq.values[:, width:].any(), f"{name}: positions past the longest kept sequence must be zero"
        assert not seq.values.double()[~seq.mask].any(), f"{name}: padding must be zero"


def serves_sequences(collection: EmbeddingCollection) -> bool:
    return type(collection).sequences is not EmbeddingCollection.sequences


def step(collection: EmbeddingCollection, features: JaggedFeatures, seed: int = 3) -> None:
    """A training forward (pooled and sequences) and backward of a fixed random linear loss."""
    loss = linear_loss(collection(features), collection.sequences(features, MAX_LENGTH), seed)
    loss.backward()


def linear_loss(pooled: torch.Tensor, sequences: dict, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    loss = (pooled.double() * torch.randn(pooled.shape, generator=g, dtype=torch.float64)).sum()
    grad = torch.randn(BATCH, MAX_LENGTH, DIM, generator=g, dtype=torch.float64)
    for name in sorted(sequences):
        values = sequences[name][0] if isinstance(sequences[name], tuple) else sequences[name].values
        loss = loss + (values.double() * grad[:, : values.shape[1]]).sum()
    return loss


# --- lookups --------------------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_forward_equals_reference_pooling(kind, weighted):
    collection = build(kind)
    features, bags = batch_for(kind, weighted=weighted)
    assert any(not ids for v in bags.values() for ids, _ in v), "the batch must hold empty bags"
    expected = reference_pool(collection.tables, weights_of(collection), bags)
    out = collection(features)  # a training forward
    collection.discard_gradients()
    assert out.shape == (BATCH, len(collection.feature_names), DIM)
    assert collection.feature_names == ["a", "item", "b", "b2", "c"]
    torch.testing.assert_close(out.double(), expected, **tolerance(collection))
    collection.eval()
    with torch.no_grad():
        torch.testing.assert_close(collection(features).double(), expected, **tolerance(collection))


def test_sequences_equal_the_last_ids_zero_padded(kind):
    collection = build(kind)
    if not serves_sequences(collection):
        pytest.skip(f"{kind.name} serves no sequence features")
    features, bags = batch_for(kind)
    assert collection.sequence_names == ["hist"]
    expected = reference_sequences(collection.tables, weights_of(collection), bags, MAX_LENGTH)
    assert int(expected["hist"][1].max()) == MAX_LENGTH and max(len(ids) for ids, _ in bags["hist"]) > MAX_LENGTH
    assert_sequences(collection.sequences(features, MAX_LENGTH), expected, **tolerance(collection))
    collection.discard_gradients()
    collection.eval()
    with torch.no_grad():
        assert_sequences(collection.sequences(features, 1), reference_sequences(collection.tables, weights_of(collection), bags, 1),
                         **tolerance(collection))


BAD_IDS = [("a", 7), ("b2", -1), ("hist", 9)]
"""An id one past a non-folding table (it would read the next table's first row in a fused layout),
a negative id (the previous table's last row), and a sequence id one past its table."""


@pytest.mark.parametrize("feature,bad", BAD_IDS, ids=[f"{f}={i}" for f, i in BAD_IDS])
def test_bad_ids_raise(kind, feature, bad):
    collection = build(kind)
    bags = draw_bags(1, kind.all_hot)
    bags[feature][0] = ([bad], [1.0])
    features = to_features(bags, weighted=False)
    with pytest.raises((IndexError, RuntimeError, ValueError)):
        if feature == "hist":
            collection.sequences(features, MAX_LENGTH)
        else:
            collection(features)


# --- training -------------------------------------------------------------------------------------

OPTIMIZERS = [("sgd", 0.0), ("adagrad", 0.0), ("rowwise_adagrad", 0.0), ("adagrad", 0.1)]


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("optimizer,decay", OPTIMIZERS, ids=[f"{o}-wd{d:g}" for o, d in OPTIMIZERS])
def test_apply_gradients_equals_torch_optimizers(kind, optimizer, decay, weighted):
    """One step on the rows a batch touched equals torch.optim.SGD / Adagrad on a dense copy of those
    rows (row-wise Adagrad: optim.py's formula); every other row and its state stay as they were."""
    require_trainable(kind)
    config = SparseOptimizerConfig(kind=optimizer, weight_decay=decay)
    collection = build(kind, config)
    randomize(collection, seed=7)  # a non-zero optimizer state, read and written by the step
    before = logical_state(collection)
    features, bags = batch_for(kind, seed=2, weighted=weighted)
    step(collection, features)
    collection.apply_gradients(LR)
    after = logical_state(collection)

    touched = touched_rows(collection.tables, bags, MAX_LENGTH)
    params = {name: nn.Parameter(before[name].weight[rows].clone()) for name, rows in touched.items()}
    tables = {name: before[name].weight.index_copy(0, touched[name], params[name]) for name in touched}
    linear_loss(reference_pool(collection.tables, tables, bags),
                reference_sequences(collection.tables, tables, bags, MAX_LENGTH)).backward()
    expected_state = {}
    if optimizer == "sgd":
        torch.optim.SGD(list(params.values()), lr=LR, weight_decay=decay).step()
    elif optimizer == "adagrad":
        reference = torch.optim.Adagrad(list(params.values()), lr=LR, eps=config.eps, weight_decay=decay)
        for name, p in params.items():
            reference.state[p]["sum"].copy_(before[name].optimizer_state[touched[name]])
        reference.step()
        expected_state = {name: reference.state[p]["sum"] for name, p in params.items()}
    else:  # FBGEMM's row-wise Adagrad, as optim.py: one accumulator per row, the mean squared gradient
        with torch.no_grad():
            for name, p in params.items():
                grad = p.grad + decay * p
                acc = before[name].optimizer_state[touched[name]].double() + grad.pow(2).mean(1, keepdim=True)
                p -= LR * grad / (acc.sqrt() + config.eps)
                expected_state[name] = acc

    for t in collection.tables:
        rows = touched[t.name]
        assert rows.numel(), t.name
        untouched = torch.ones(t.num_embeddings, dtype=torch.bool)
        untouched[rows] = False
        torch.testing.assert_close(after[t.name].weight[rows], params[t.name].detach(), rtol=1e-6, atol=1e-9)
        assert not torch.equal(after[t.name].weight[rows], before[t.name].weight[rows]), t.name
        if t.name in expected_state:
            torch.testing.assert_close(after[t.name].optimizer_state[rows].double(), expected_state[t.name].double(),
                                       rtol=1e-6, atol=1e-9)
        assert torch.equal(after[t.name].weight[untouched], before[t.name].weight[untouched]), t.name
        assert torch.equal(after[t.name].optimizer_state[untouched], before[t.name].optimizer_state[untouched]), t.name


def test_a_row_read_by_a_pooled_feature_and_a_sequence_gets_one_adagrad_step(kind):
    """DIN's case: the candidate item and the history read one table. Adagrad steps once on the summed
    gradient (as torch.optim does for a parameter used twice), not once per lookup."""
    require_trainable(kind)
    collection = build(kind, "adagrad")
    bags = {key: [([], [])] * BATCH for key in KEYS}
    bags["a"] = [([1], [1.0])] + [([], [])] * (BATCH - 1)  # a hot row, so the batch is all-hot too
    bags["item"] = [([4], [1.0])] + [([], [])] * (BATCH - 1)
    bags["hist"] = [([4], [1.0])] + [([], [])] * (BATCH - 1)
    features = to_features(bags, weighted=False)
    before = collection.table_state("s").weight[4].clone()
    pooled, sequences = collection(features), collection.sequences(features, MAX_LENGTH)
    g_item, g_hist = torch.full((DIM,), 1.0, dtype=torch.float64), torch.full((DIM,), 2.0, dtype=torch.float64)
    (pooled[0, 1].double() @ g_item + sequences["hist"].values[0, 0].double() @ g_hist).backward()
    collection.apply_gradients(LR)
    grad = g_item + g_hist
    state = collection.table_state("s")
    torch.testing.assert_close(state.optimizer_state[4].double(), grad * grad)
    torch.testing.assert_close(state.weight[4].double(), before.double() - LR * grad / (grad.abs() + 1e-8))


def test_discard_gradients_makes_the_next_apply_a_no_op(kind):
    require_trainable(kind)
    collection = build(kind, "adagrad")
    features, _ = batch_for(kind)
    before = logical_state(collection)
    step(collection, features)
    collection.discard_gradients()
    collection.apply_gradients(LR)
    for name, state in logical_state(collection).items():
        assert torch.equal(state.weight, before[name].weight) and torch.equal(state.optimizer_state, before[name].optimizer_state)
    step(collection, features)  # the collection still trains afterwards
    collection.apply_gradients(LR)
    assert not torch.equal(collection.table_state("a").weight, before["a"].weight)


def test_inference_only_kinds_refuse_training(kind):
    if kind.trainable:
        pytest.skip(f"{kind.name} trains: see test_apply_gradients_equals_torch_optimizers")
    collection = build(kind)
    before = logical_state(collection)
    features, _ = batch_for(kind)
    collection.train()
    collection(features)
    collection.sequences(features, MAX_LENGTH)
    with pytest.raises(RuntimeError, match="inference") as refused:
        collection.apply_gradients(LR)
    assert "\n" not in str(refused.value)
    for name, state in logical_state(collection).items():
        assert torch.equal(state.weight, before[name].weight), name


# --- logical state --------------------------------------------------------------------------------


def state_keys(tables: list[TableConfig]) -> set[str]:
    return {f"tables.{t.name}.{f}" for t in tables for f in ("weight", "optimizer_state")}


def test_state_dict_round_trip_into_the_same_kind(kind):
    source = build(kind, "adagrad")
    randomize(source, seed=5)
    state = source.state_dict()
    assert set(state) == state_keys(source.tables)
    target = build(kind, "adagrad", seed=1)
    target.load_state_dict(state)
    for name, s in logical_state(target).items():
        assert torch.equal(s.weight, state[f"tables.{name}.weight"]), name
        assert torch.equal(s.optimizer_state, state[f"tables.{name}.optimizer_state"]), name
    features, _ = batch_for(kind)
    with torch.no_grad():
        torch.testing.assert_close(target(features), source(features), rtol=0, atol=0)
        if serves_sequences(source):
            got, want = target.sequences(features, MAX_LENGTH), source.sequences(features, MAX_LENGTH)
            for name in want:
                torch.testing.assert_close(got[name].values, want[name].values, rtol=0, atol=0)


@pytest.mark.parametrize("source_kind,target_kind", PAIRS, ids=[f"{a.name}-to-{b.name}" for a, b in PAIRS])
def test_state_dict_loads_into_every_other_kind(source_kind, target_kind):
    source = build(source_kind, "adagrad")
    randomize(source, seed=5)
    target = build(target_kind, "adagrad", seed=1)
    target.load_state_dict(source.state_dict())
    exact = torch.float16 not in (source.dtype, target.dtype)
    tol = tolerance(source, target) if exact else FP16_ROUNDING
    quantized = [k.rounding for k in (source_kind, target_kind) if k.rounding is not None]
    rows_tol = widest(tol, *(r.rows for r in quantized)) if quantized else tol
    pooled_tol = widest(tol, *(r.pooled for r in quantized)) if quantized else tol
    want = logical_state(source)
    for name, got in logical_state(target).items():
        assert got.weight.dtype == target.dtype
        torch.testing.assert_close(got.weight.double(), want[name].weight.double(), **rows_tol)
        assert torch.equal(got.optimizer_state, want[name].optimizer_state), name
    features = to_features(draw_bags(1, all_hot=True), weighted=True)  # all-hot ids suit every kind
    with torch.no_grad():
        torch.testing.assert_close(target(features).double(), source(features).double(), **pooled_tol)


DAMAGES = ["missing table", "fewer rows", "wider rows", "wrong optimizer state", "unknown table"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_strict_loading_refuses_a_damaged_state_dict(kind, damage):
    state = dict(build(kind).state_dict())
    if damage == "missing table":
        del state["tables.c.weight"], state["tables.c.optimizer_state"]
    elif damage == "fewer rows":
        state["tables.b.weight"] = state["tables.b.weight"][:-1]
    elif damage == "wider rows":
        state["tables.b.weight"] = torch.zeros(5, DIM + 1)
    elif damage == "wrong optimizer state":
        state["tables.b.optimizer_state"] = torch.zeros(5, DIM)  # rowwise_adagrad keeps 1 per row
    else:
        state["tables.z.weight"] = torch.zeros(3, DIM)
    target = build(kind, seed=1)
    with pytest.raises(RuntimeError):
        target.load_state_dict(state)


def test_a_legacy_fused_state_dict_loads(kind):
    """Format version 1: one `weight` [all rows, D] and one `optimizer_state`, tables in order."""
    collection = build(kind)
    rows = [t.num_embeddings for t in collection.tables]
    g = torch.Generator().manual_seed(11)
    weight = torch.rand(sum(rows), DIM, generator=g, dtype=torch.float64) - 0.5
    state = torch.rand(sum(rows), 1, generator=g)
    collection.load_state_dict({"weight": weight, "optimizer_state": state})
    tol = FP16_ROUNDING if collection.dtype == torch.float16 else {"rtol": 0, "atol": 0}
    if kind.rounding is not None:
        tol = kind.rounding.rows
    for t, w, s in zip(collection.tables, torch.split(weight, rows), torch.split(state, rows)):
        got = collection.table_state(t.name)
        torch.testing.assert_close(got.weight.double(), w, **tol)
        assert torch.equal(got.optimizer_state, s), t.name
    features, bags = batch_for(kind)
    with torch.no_grad():
        torch.testing.assert_close(collection(features).double(),
                                   reference_pool(collection.tables, weights_of(collection), bags), **tolerance(collection))


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "rowwise_adagrad"])
def test_byte_counts(kind, optimizer):
    collection = build(kind, optimizer)
    rows = sum(t.num_embeddings for t in collection.tables)
    k = {"sgd": 0, "adagrad": DIM, "rowwise_adagrad": 1}[optimizer]
    for t in collection.tables:
        state = collection.table_state(t.name)
        assert state.weight.shape == (t.num_embeddings, DIM) and state.weight.dtype == collection.dtype
        assert state.optimizer_state.shape == (t.num_embeddings, k)
    row_bytes = kind.row_bytes or DIM * torch.empty(0, dtype=collection.dtype).element_size()
    assert collection.embedding_bytes() == rows * row_bytes
    assert collection.optimizer_bytes() == rows * k * 4
    assert collection.memory_bytes() >= collection.embedding_bytes()


@pytest.mark.parametrize("table", ["b", "s"])  # a tiered table (hot rows) and an untiered one
def test_read_rows_and_write_rows(kind, table):
    collection = build(kind, "adagrad")
    randomize(collection, seed=3)
    before = logical_state(collection)
    rows = torch.tensor([2, 0])
    got = collection.read_rows(table, rows)
    assert torch.equal(got.weight, before[table].weight[rows])
    assert torch.equal(got.optimizer_state, before[table].optimizer_state[rows])
    g = torch.Generator().manual_seed(4)
    new = TableState(torch.rand(2, DIM, generator=g, dtype=torch.float64), torch.rand(2, DIM, generator=g))
    collection.write_rows(table, rows, new)
    after = logical_state(collection)
    for name in before:
        expected_weight, expected_state = before[name].weight.clone(), before[name].optimizer_state.clone()
        if name == table:
            expected_weight[rows] = new.weight.to(expected_weight.dtype)
            expected_state[rows] = new.optimizer_state
            if kind.rounding is not None:  # the written rows are quantized: within the kind's rounding
                torch.testing.assert_close(after[name].weight[rows].double(), new.weight, **kind.rounding.rows)
                expected_weight[rows] = after[name].weight[rows]
        assert torch.equal(after[name].weight, expected_weight), name
        assert torch.equal(after[name].optimizer_state, expected_state), name
    features, bags = batch_for(kind)  # lookups see the written rows (tiered: on the hot tier too)
    with torch.no_grad():
        torch.testing.assert_close(collection(features).double(),
                                   reference_pool(collection.tables, weights_of(collection), bags), **tolerance(collection))


def test_reset_parameters_follows_each_tables_init(kind):
    tables = make_tables()
    tables[2] = dataclasses.replace(tables[2], init="zeros")
    collection = build(kind, "adagrad", tables=tables)
    randomize(collection, seed=2)
    collection.reset_parameters()
    for t in collection.tables:
        state = collection.table_state(t.name)
        assert not state.optimizer_state.any(), t.name
        if t.init == "zeros":
            assert not state.weight.any(), t.name
        else:
            bound = (1.0 / t.num_embeddings) ** 0.5
            slack = kind.rounding.rows["atol"] if kind.rounding else 0  # a quantized row may read back past it
            assert state.weight.abs().max() <= bound + slack and state.weight.abs().min() > 0 and state.weight.std() > 0.1 * bound
    features, bags = batch_for(kind)
    with torch.no_grad():
        torch.testing.assert_close(collection(features).double(),
                                   reference_pool(collection.tables, weights_of(collection), bags), **tolerance(collection))


def test_place_returns_output_where_the_model_computes(kind):
    collection = build(kind)
    features, _ = batch_for(kind)
    with torch.no_grad():
        expected = collection(features)
        collection.place("cpu")
        out = collection(features)
    assert out.device.type == "cpu"
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_the_factory_builds_the_kind(kind):
    assert kind.placement["kind"] in kinds()
    collection = build_collection(make_tables(), Placement(**kind.placement))
    assert type(collection) is kind.cls
    features, _ = batch_for(kind)
    with torch.no_grad():
        assert collection(features).shape == (BATCH, 5, DIM)


# --- fp16 -----------------------------------------------------------------------------------------


def test_fp16_stores_half_rows_and_pools_long_bags_in_float32():
    collection = HalfEmbeddingCollection([TableConfig("t", 50, DIM), TableConfig("m", 40, DIM, pooling="mean")])
    assert collection.dtype == torch.float16 and collection.table_state("t").weight.dtype == torch.float16
    assert collection.embedding_bytes() == 90 * DIM * 2
    g = torch.Generator().manual_seed(0)
    ids = torch.cat([torch.randint(0, 50, (2000,), generator=g), torch.randint(0, 40, (2000,), generator=g)])
    features = JaggedFeatures(["t", "m"], ids, torch.tensor([2000, 2000], dtype=torch.int32), 1)
    out = collection(features)
    assert out.dtype == torch.float32
    rows = {name: collection.table_state(name).weight.double() for name in ("t", "m")}
    expected = torch.stack([rows["t"][ids[:2000]].sum(0), rows["m"][ids[2000:]].mean(0)])
    torch.testing.assert_close(out[0].double(), expected, rtol=1e-5, atol=1e-4)  # float16 sums would be ~0.1 off
    half = F.embedding_bag(ids[:2000], collection.table_state("t").weight, torch.tensor([0]))
    assert (half[0].double() - expected[0]).abs().max() > 10 * (out[0, 0].double() - expected[0]).abs().max()


def test_fp16_rows_stay_half_when_the_model_converts():
    collection = HalfEmbeddingCollection(make_tables())
    model = nn.ModuleDict({"embeddings": collection, "mlp": nn.Linear(DIM, 1)})
    features, _ = batch_for(KINDS[-1])
    model.double()
    assert collection.dtype == torch.float16 and collection(features).dtype == torch.float64
    model.float()
    assert collection.dtype == torch.float16 and collection(features).dtype == torch.float32
    assert model["mlp"].weight.dtype == torch.float32
    model.share_memory()  # what a forking server does: the rows are shared, still float16
    assert collection.table_state("a").weight.is_shared() and collection.dtype == torch.float16


def test_fp16_loads_rows_of_any_dtype():
    collection = HalfEmbeddingCollection(make_tables(), SparseOptimizerConfig(kind="adagrad"))
    weight = torch.rand(5, DIM, dtype=torch.float64)
    collection.load_table_state("b", TableState(weight, torch.ones(5, DIM, dtype=torch.float64)))
    state = collection.table_state("b")
    assert torch.equal(state.weight, weight.half()) and state.optimizer_state.dtype == torch.float32
    assert torch.equal(state.optimizer_state, torch.ones(5, DIM))


def test_a_dense_trained_dlrm_serves_from_fp16_tables(tmp_path):
    """`--embeddings.kind fp16`: build_model(inference=True) builds DLRM over fp16 tables, a dense
    model's state dict loads into it, and it scores like the dense model up to float16 rounding."""
    from recstack.config import Config
    from recstack.data.loader import BatchLoader
    from recstack.data.store import Dataset
    from recstack.data.synth import generate
    from recstack.models.zoo import apply_preset, build_model

    config = Config()
    apply_preset(config, "tiny")
    config.train.sparse_optimizer = "adagrad"
    generate(config.data.synth_preset, 256, tmp_path / "data", seed=1)
    dataset = Dataset(tmp_path / "data")
    batch = next(iter(BatchLoader(dataset, (0, 256), 256, shuffle=False, prefetch=0).epoch(0)))
    torch.manual_seed(0)
    dense = build_model(config, dataset.schema)
    for _ in range(3):
        loss, _ = dense.training_loss(batch)
        loss.backward()
        dense.apply_gradients(0.1)
        dense.zero_grad()

    config.embeddings.kind = "fp16"
    served = build_model(config, dataset.schema, inference=True)
    assert isinstance(served.embeddings, HalfEmbeddingCollection)
    served.load_state_dict(dense.state_dict())
    dense.eval(), served.eval()
    with torch.no_grad():
        want, got = torch.sigmoid(dense(batch)), torch.sigmoid(served(batch))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=2e-3)
    assert not torch.equal(got, want)  # the rows really are float16
    for name, value in dense.state_dict().items():  # the training state round-trips through fp16
        if name.endswith("optimizer_state"):
            assert torch.equal(served.state_dict()[name], value), name


# --- the interface's own helpers ------------------------------------------------------------------


def test_move_tensors_moves_adopted_children():
    """base.move_tensors promises "every tensor of this module (and its children)": a collection that
    adopts another (a tier, a cache) and places itself with move_tensors must move the adopted one's rows."""
    outer = DenseEmbeddingCollection([TableConfig("a", 3, DIM)])
    outer.inner = outer.adopt(DenseEmbeddingCollection([TableConfig("b", 3, DIM)]))
    outer.move_tensors("meta")
    assert outer.weight.device.type == "meta"
    assert outer.inner.weight.device.type == "meta"
