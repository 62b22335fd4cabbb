"""FAE's tiered embeddings and schedule (specs/TECHNIQUES.md section 1, checks 2 and 4): FAE training
equals plain training over the same batch order, in float64, for every switch period; deliberately
broken syncs (skipped, misplaced, rows without their optimizer state) are caught by that same
comparison; transfer accounting; the hot-mode guard; checkpoints; the schedule; the stored pools."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from recstack.data import hotcold as hc
from recstack.data import synth
from recstack.data.batch import Batch, JaggedFeatures
from recstack.data.loader import BatchLoader
from recstack.data.store import Dataset
from recstack.embeddings import DenseEmbeddingCollection, SparseOptimizerConfig, TableConfig
from recstack.embeddings.tiered import COLD, HOT, TieredEmbeddingCollection
from recstack.models.dlrm import DLRM
from recstack.train.fae import FAEBatches, FAESchedule, IndexBatchLoader, fae_train_epoch
from recstack.train.trainer import loss_fn

DIM = 4
NUM_DENSE = 3
# t0: sum pooling; t1: mean pooling; t2: folds ids 0..17 into 9 rows
TABLES = [
    TableConfig("t0", 11, DIM),
    TableConfig("t1", 6, DIM, pooling="mean"),
    TableConfig("t2", 9, DIM, fold=True),
]
ID_RANGE = [11, 6, 18]
HOT_ROWS = {"t0": [0, 1, 2, 5], "t1": [0, 3], "t2": [1, 4, 7]}
NUM_HOT = 9
HOT_IDS = [np.array([0, 1, 2, 5]), np.array([0, 3]), np.array([1, 4, 7, 10, 13, 16])]  # t2: 10 = 1 + 9, ...
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def make_batch(seed: int, hot: bool, batch: int = 6) -> Batch:
    """An all-hot batch, or a cold batch that reads hot rows too (so a stale copy shows)."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    while True:
        lengths = torch.randint(0, 4, (len(TABLES), batch), generator=g, dtype=torch.int32)
        parts = []
        for t, n in enumerate(lengths.sum(1).tolist()):
            parts.append(rng.choice(HOT_IDS[t], n) if hot else rng.integers(0, ID_RANGE[t], n))
        is_hot = [np.isin(p, HOT_IDS[t]) for t, p in enumerate(parts)]
        if hot or (not all(h.all() for h in is_hot) and any(h.any() for h in is_hot)):
            break
    return Batch(
        dense=torch.rand(batch, NUM_DENSE, generator=g, dtype=torch.float64),
        sparse=JaggedFeatures(["t0", "t1", "t2"], torch.from_numpy(np.concatenate(parts)), lengths.reshape(-1), batch),
        labels=torch.randint(0, 2, (batch,), generator=g).double(),
    )


HOT_BATCHES = [make_batch(100 + i, hot=True) for i in range(5)]
COLD_BATCHES = [make_batch(200 + i, hot=False) for i in range(4)]
POOLS = {HOT: HOT_BATCHES, COLD: COLD_BATCHES}


def lr_fn(step: int) -> float:
    return 0.2 * 0.95**step


def make_models(kind: str, tiered=TieredEmbeddingCollection, **tiered_args) -> tuple[DLRM, DLRM]:
    """A plain DLRM and the same network (equal initial parameters) on tiered embeddings, float64."""
    torch.manual_seed(0)
    collection = DenseEmbeddingCollection(copy.deepcopy(TABLES), SparseOptimizerConfig(kind=kind))
    plain = DLRM(NUM_DENSE, collection, bottom_mlp=[8, DIM], top_mlp=[8, 1]).double()
    fae = copy.deepcopy(plain)
    fae.embeddings = tiered(fae.embeddings, HOT_ROWS, **{"hot_device": "cpu", **tiered_args})
    return plain, fae


def train_plain(model: DLRM, schedule: FAESchedule, epochs: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = 0
    for epoch in range(epochs):
        for kind, i in schedule.epoch(epoch):
            batch = POOLS[kind][i]
            optimizer.zero_grad()
            loss_fn(model(batch), batch.labels).backward()
            optimizer.step()
            model.embeddings.apply_gradients(lr_fn(step))
            step += 1


def train_fae(model: DLRM, schedule: FAESchedule, epochs: int, device: str | None = None) -> list[dict]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out = []
    for epoch in range(epochs):
        out.append(
            fae_train_epoch(model, optimizer, model.embeddings, schedule, POOLS, lr_fn, loss_fn,
                            epoch=epoch, start_step=epoch * len(schedule), device=device)
        )  # fmt: skip
    return out


def state(model: DLRM) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def assert_same(plain: DLRM, fae: DLRM) -> None:
    """Every parameter: the MLPs, the embedding rows and their optimizer state (the tiered state dict
    has the plain keys and, after sync, the plain values)."""
    expected, got = state(plain), state(fae)
    assert list(got) == list(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], **TIGHT, msg=key)


def largest_difference(plain: DLRM, fae: DLRM) -> float:
    expected, got = state(plain), state(fae)
    return max(float((got[k] - expected[k]).abs().max()) if got[k].numel() else 0.0 for k in expected)


SCHEDULE = FAESchedule(len(HOT_BATCHES), len(COLD_BATCHES), None)


def test_the_data_exercises_every_path():
    for batch in COLD_BATCHES:
        assert (batch.sparse.lengths == 0).any()
    assert any((b.sparse.values >= 9).any() for b in HOT_BATCHES), "hot batches fold ids in t2"


# --- equivalence ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sgd", "rowwise_adagrad", "adagrad"])
@pytest.mark.parametrize("period", [None, 1, 2, 3])
def test_fae_training_equals_plain_training(kind, period):
    schedule = FAESchedule(len(HOT_BATCHES), len(COLD_BATCHES), period)
    plain, fae = make_models(kind)
    train_plain(plain, schedule, epochs=2)
    train_fae(fae, schedule, epochs=2)
    assert fae.embeddings.switches >= 3  # the comparison crosses switches both ways
    assert_same(plain, fae)
    if kind != "sgd":
        assert plain.embeddings.optimizer_state.abs().sum() > 0


def test_random_schedule_equals_plain_training():
    schedule = FAESchedule(len(HOT_BATCHES), len(COLD_BATCHES), 2, seed=7)
    plain, fae = make_models("rowwise_adagrad")
    train_plain(plain, schedule, epochs=2)
    train_fae(fae, schedule, epochs=2)
    assert_same(plain, fae)


# --- the comparison catches broken syncs ---------------------------------------------------------


class SkipsSyncToCold(TieredEmbeddingCollection):
    """Never copies hot rows back: cold batches and the checkpoint read stale rows."""

    def sync_to_cold(self) -> int:
        return 0


class SkipsSyncToHot(TieredEmbeddingCollection):
    """Never refreshes the hot table: hot batches miss the cold updates (and the initial rows)."""

    def sync_to_hot(self) -> int:
        return 0


class SyncsColdLate(TieredEmbeddingCollection):
    """A misplaced sync: leaves hot mode without copying, and copies after the first cold batch."""

    late = False

    def set_mode(self, mode: str) -> None:
        if mode == COLD and self.mode == HOT:
            self.mode, self.late = COLD, True
            self.switches += 1
            return
        super().set_mode(mode)

    def apply_gradients(self, lr: float) -> None:
        super().apply_gradients(lr)
        if self.late:
            self.late = False
            self.sync_to_cold()


class MovesRowsNotState(TieredEmbeddingCollection):
    """Copies the rows at every switch but leaves their optimizer state behind."""

    @torch.no_grad()
    def sync_to_cold(self) -> int:
        self.full.weight.index_copy_(0, self._hot_full_rows, self.hot.weight)
        self._full_current = True
        return self._count_sync()

    @torch.no_grad()
    def sync_to_hot(self) -> int:
        self.hot.weight.copy_(self.full.weight.index_select(0, self._hot_full_rows))
        self._hot_current = True
        return self._count_sync()


BROKEN = [SkipsSyncToCold, SkipsSyncToHot, SyncsColdLate, MovesRowsNotState]


@pytest.mark.parametrize("kind", ["sgd", "rowwise_adagrad"])
@pytest.mark.parametrize("broken", BROKEN, ids=lambda c: c.__name__)
@pytest.mark.parametrize("period", [None, 2])
def test_the_comparison_fails_for_broken_syncs(kind, broken, period):
    if broken is MovesRowsNotState and kind == "sgd":
        pytest.skip("sgd has no optimizer state to leave behind")
    schedule = FAESchedule(len(HOT_BATCHES), len(COLD_BATCHES), period)
    plain, fae = make_models(kind, tiered=broken)
    train_plain(plain, schedule, epochs=2)
    train_fae(fae, schedule, epochs=2)
    with pytest.raises(AssertionError):
        assert_same(plain, fae)
    assert largest_difference(plain, fae) > 1e-6, "the bug shows far above the comparison's tolerance"


# --- accounting, guards, checkpoints ---------------------------------------------------------------


def test_transfer_accounting_with_infinite_period():
    plain, fae = make_models("rowwise_adagrad")
    coll = fae.embeddings
    assert coll.num_hot_rows == NUM_HOT and coll.hot_offsets.tolist() == [0, 4, 6, 9]
    assert coll.hot_bytes == NUM_HOT * (DIM * 8 + 1 * 8)  # float64 rows + one float64 accumulator
    first, second = train_fae(fae, SCHEDULE, epochs=2)
    # epoch 0: cold (the start mode), switch to hot (copy to hot), end-of-epoch sync (copy back)
    assert (first["switches"], first["syncs"], first["bytes_synced"]) == (1, 2, 2 * coll.hot_bytes)
    # epoch 1: hot -> cold needs no copy (already synced), cold -> hot and the final sync do
    assert (second["switches"], second["syncs"], second["bytes_synced"]) == (2, 2, 2 * coll.hot_bytes)
    assert (coll.switches, coll.syncs, coll.bytes_synced) == (3, 4, 4 * coll.hot_bytes)
    assert SCHEDULE.switches(0) == 1 and SCHEDULE.switches(1, start_mode=HOT) == 2
    # nothing changed since: sync, evaluation and state_dict move nothing
    assert coll.sync() == 0
    fae.eval()
    fae(HOT_BATCHES[0])
    fae.state_dict()
    assert coll.syncs == 4


def test_transfer_accounting_with_finite_period():
    schedule = FAESchedule(len(HOT_BATCHES), len(COLD_BATCHES), 1)
    _, fae = make_models("sgd")
    coll = fae.embeddings
    assert coll.hot_bytes == NUM_HOT * DIM * 8
    (stats,) = train_fae(fae, schedule, epochs=1)
    switches = schedule.switches(0)
    # every phase updates its tier, so every switch copies; the epoch ends hot: one more copy back
    assert schedule.epoch(0)[-1][0] == HOT
    assert stats["switches"] == switches == coll.switches
    assert stats["syncs"] == switches + 1
    assert stats["bytes_synced"] == coll.bytes_synced == (switches + 1) * coll.hot_bytes


def test_hot_mode_rejects_cold_ids_with_a_clear_error():
    _, fae = make_models("sgd")
    coll = fae.embeddings
    coll.train()
    coll.set_mode(HOT)
    out = coll(HOT_BATCHES[0].sparse)
    assert out.shape == (6, 3, DIM)
    coll.discard_gradients()
    bad = JaggedFeatures(
        ["t0", "t1", "t2"], torch.tensor([0, 3, 0, 4]), torch.tensor([1, 1, 1, 1, 0, 0], dtype=torch.int32), 2
    )
    with pytest.raises(ValueError, match=r"2 ids that are not hot rows \(first: feature t0, id 3\).*cold mode"):
        coll(bad)
    coll.set_mode(COLD)
    assert coll(bad).shape == (2, 3, DIM)  # cold mode takes anything


def test_hot_pooling_equals_full_pooling():
    plain, fae = make_models("sgd")
    coll = fae.embeddings
    coll.train()
    coll.set_mode(HOT)
    for batch in HOT_BATCHES:
        # the full collection's output in another key order: the hot path reorders alike
        parts = batch.sparse.to_dict()
        shuffled = JaggedFeatures.from_dict({k: parts[k] for k in ["t2", "t0", "t1"]})
        torch.testing.assert_close(coll(shuffled), plain.embeddings(batch.sparse), rtol=0, atol=0)
    coll.discard_gradients()
    plain.embeddings.discard_gradients()


def test_switching_with_pending_gradients_is_refused():
    _, fae = make_models("sgd")
    coll = fae.embeddings
    coll.train()
    coll(COLD_BATCHES[0].sparse).sum().backward()
    with pytest.raises(RuntimeError, match="apply_gradients"):
        coll.set_mode(HOT)
    coll.apply_gradients(0.1)
    coll.set_mode(HOT)
    assert coll.mode == HOT


def test_evaluation_reads_synced_full_tables():
    plain, fae = make_models("rowwise_adagrad")
    schedule = FAESchedule(len(HOT_BATCHES), 0, None)
    train_plain(plain, schedule, epochs=1)
    optimizer = torch.optim.SGD(fae.parameters(), lr=0.1)
    coll = fae.embeddings
    for step, (_, i) in enumerate(schedule.epoch(0)):  # hot steps, no final sync
        coll.set_mode(HOT)
        batch = HOT_BATCHES[i]
        optimizer.zero_grad()
        loss_fn(fae(batch), batch.labels).backward()
        optimizer.step()
        coll.apply_gradients(lr_fn(step))
    assert not coll._full_current
    plain.eval()
    fae.eval()
    with torch.no_grad():
        for batch in COLD_BATCHES:  # mixed ids, evaluated in hot mode: read from the synced full tables
            torch.testing.assert_close(fae(batch), plain(batch), **TIGHT)
    assert coll._full_current and coll.mode == HOT


def test_checkpoints_are_plain_and_load_both_ways():
    plain, fae = make_models("rowwise_adagrad")
    train_fae(fae, FAESchedule(len(HOT_BATCHES), len(COLD_BATCHES), 2), epochs=1)
    saved = fae.state_dict()
    assert set(saved) == set(plain.state_dict())  # embeddings.tables.<table>.weight and .optimizer_state, MLPs
    plain.load_state_dict(saved)  # strict: an FAE checkpoint serves on plain tables
    assert_same(plain, fae)
    # and back: a tiered model in hot mode loads a plain checkpoint and refreshes its hot table
    _, other = make_models("rowwise_adagrad")
    coll = other.embeddings
    coll.set_mode(HOT)
    syncs = coll.syncs
    other.load_state_dict(plain.state_dict())
    assert coll.syncs == syncs + 1
    assert_same(plain, other)
    torch.testing.assert_close(coll.hot.weight, coll.full.weight[coll._hot_full_rows], rtol=0, atol=0)
    torch.testing.assert_close(coll.hot.optimizer_state, coll.full.optimizer_state[coll._hot_full_rows], rtol=0, atol=0)


def test_state_dict_syncs_first():
    plain, fae = make_models("sgd")
    coll = fae.embeddings
    coll.train()
    coll.set_mode(HOT)
    loss_fn(fae(HOT_BATCHES[0]), HOT_BATCHES[0].labels).backward()
    coll.apply_gradients(0.5)
    stale = coll.full.weight.clone()
    state = fae.state_dict()  # the logical state: each table's rows, here end to end as the full tables hold them
    saved = torch.cat([state[f"embeddings.tables.{t.name}.weight"] for t in TABLES])
    assert not torch.equal(saved, stale) and torch.equal(saved, coll.full.weight)


def test_placement_survives_model_moves_and_dtypes_follow():
    _, fae = make_models("rowwise_adagrad")
    coll = fae.embeddings
    assert coll.hot.weight.dtype == coll.full.weight.dtype == torch.float64
    assert coll.hot.optimizer_state.dtype == coll.full.optimizer_state.dtype == torch.float64
    fae.float()
    assert coll.hot.weight.dtype == coll.full.weight.dtype == torch.float32
    fae.to("meta")  # stands in for .cuda() on a CPU-only machine: the MLPs move, the tiers stay
    assert fae.top[0].weight.device.type == "meta"
    assert coll.full.weight.device.type == "cpu" and coll.hot.weight.device == coll.hot_device


def test_hot_rows_from_arrays_and_bad_input():
    dense = DenseEmbeddingCollection(copy.deepcopy(TABLES))
    per_table = [np.array([5, 0, 1, 2, 0]), np.array([3, 0]), np.array([10, 4, 7])]  # unsorted, repeats, folds
    coll = TieredEmbeddingCollection(dense, per_table, hot_device="cpu")
    assert coll.hot_offsets.tolist() == [0, 4, 6, 9]
    np.testing.assert_array_equal(coll._hot_full_rows.numpy(), [0, 1, 2, 5, 11, 14, 18, 21, 24])
    with pytest.raises(ValueError, match="outside"):
        TieredEmbeddingCollection(DenseEmbeddingCollection(copy.deepcopy(TABLES)), {"t0": [11]}, hot_device="cpu")
    with pytest.raises(ValueError, match="unknown"):
        TieredEmbeddingCollection(DenseEmbeddingCollection(copy.deepcopy(TABLES)), {"nope": [1]}, hot_device="cpu")
    with pytest.raises(ValueError, match="mode"):
        coll.set_mode("warm")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", ["sgd", "rowwise_adagrad"])
@pytest.mark.parametrize("period", [None, 2])
def test_fae_on_cuda_equals_plain_training(kind, period):
    schedule = FAESchedule(len(HOT_BATCHES), len(COLD_BATCHES), period)
    plain, fae = make_models(kind, hot_device="cuda")
    fae.to("cuda")
    coll = fae.embeddings
    assert coll.hot.weight.is_cuda and not coll.full.weight.is_cuda and fae.bottom[0].weight.is_cuda
    train_plain(plain, schedule, epochs=2)
    train_fae(fae, schedule, epochs=2, device="cuda")
    expected, got = state(plain), state(fae)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-9, atol=1e-11, msg=key)


# --- schedule ---------------------------------------------------------------------------------------


def test_infinite_period_is_all_cold_then_all_hot():
    order = FAESchedule(3, 2, None).epoch(0)
    assert order == [(COLD, 0), (COLD, 1), (HOT, 0), (HOT, 1), (HOT, 2)]
    assert FAESchedule(3, 2, None).switches() == 1
    assert FAESchedule(0, 2, None).epoch(5) == [(COLD, 0), (COLD, 1)]


def runs(order: list[tuple[str, int]]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for kind, _ in order:
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + 1)
        else:
            out.append((kind, 1))
    return out


def covers_each_batch_once(schedule: FAESchedule, order: list[tuple[str, int]]) -> None:
    for kind, total in ((HOT, schedule.hot_batches), (COLD, schedule.cold_batches)):
        assert [i for k, i in order if k == kind] == list(range(total))  # each once, in pool order


@pytest.mark.parametrize("hot,cold,period", [(30, 10, 5), (10, 10, 2), (7, 3, 1), (5, 13, 4), (1, 1, 3), (0, 4, 2)])
def test_finite_period_interleaves_and_covers_every_batch(hot, cold, period):
    schedule = FAESchedule(hot, cold, period)
    order = schedule.epoch(0)
    assert len(order) == len(schedule) == hot + cold
    covers_each_batch_once(schedule, order)
    assert schedule.epoch(3) == order  # deterministic without a seed
    # proportional: after every run the pools' used fractions differ by at most one run's worth
    used = {HOT: 0, COLD: 0}
    for kind, n in runs(order):
        used[kind] += n
        if hot and cold:
            assert abs(used[HOT] / hot - used[COLD] / cold) <= period / min(hot, cold) + 1e-12
    if hot and cold:
        smaller = HOT if hot <= cold else COLD
        assert all(n <= period for k, n in runs(order) if k == smaller)
        assert schedule.switches() == len(runs(order)) - (1 if order[0][0] == COLD else 0)


def test_finite_period_example():
    assert runs(FAESchedule(30, 10, 5).epoch(0)) == [(COLD, 5), (HOT, 15), (COLD, 5), (HOT, 15)]
    assert runs(FAESchedule(4, 4, 2).epoch(0)) == [(COLD, 2), (HOT, 2), (COLD, 2), (HOT, 2)]


def test_seeded_schedule_draws_runs_per_epoch():
    schedule = FAESchedule(40, 40, 2, seed=3)
    a, b = schedule.epoch(0), schedule.epoch(1)
    covers_each_batch_once(schedule, a)
    covers_each_batch_once(schedule, b)
    assert a == schedule.epoch(0) and a != b
    assert all(n % 2 == 0 for _, n in runs(a))  # whole runs of R (40 is a multiple of 2)


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError):
        FAESchedule(1, 1, 0)
    with pytest.raises(ValueError):
        FAESchedule(-1, 1, None)


# --- the stored pools, end to end ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Dataset:
    path = tmp_path_factory.mktemp("fae") / "tiny"
    synth.generate("tiny", 1200, path, seed=5, test_fraction=0.2, show_progress=False, workers=1)
    hc.build_hot_cold(path, "3KiB", sample=0.5, dim=DIM, seed=1)
    return Dataset(path)


def test_index_loader_matches_batch_loader_on_a_range(tiny):
    a, b = tiny.split("train")
    for shuffle in (True, False):
        plain = BatchLoader(tiny, (a, b), 128, shuffle=shuffle, seed=4, prefetch=0)
        indexed = IndexBatchLoader(tiny, np.arange(a, b), 128, shuffle=shuffle, seed=4, prefetch=2)
        assert len(plain) == len(indexed)
        for x, y in zip(plain.epoch(1), indexed.epoch(1, 0)):
            assert torch.equal(x.dense, y.dense) and torch.equal(x.sparse.values, y.sparse.values)
            assert torch.equal(x.sparse.lengths, y.sparse.lengths) and torch.equal(x.labels, y.labels)


def test_stored_pools_train_like_plain_tables(tiny):
    parts = hc.load_hot_cold(tiny.path)
    assert 0 < parts.hot_input_fraction < 1
    a, b = tiny.split("train")
    train_rows = (a, b - 100)  # as a trainer with a validation tail would pass
    batches = FAEBatches(tiny, parts, rows=train_rows, batch_size=64, seed=2, prefetch=2)
    assert batches.hot.rows.max() < train_rows[1] and batches.cold.rows.max() < train_rows[1]
    assert batches.hot.num_rows + batches.cold.num_rows == train_rows[1] - train_rows[0]
    schedule = batches.schedule(switch_period=3)
    # every training input exactly once per epoch, hot inputs only in hot batches
    seen = []
    hot_set = set(np.asarray(parts.hot_inputs).tolist())
    for kind, i in schedule.epoch(0):
        loader = batches.hot if kind == HOT else batches.cold
        rows = loader.batch_rows(loader.order(0), i)
        assert all((r in hot_set) == (kind == HOT) for r in rows.tolist())
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(*train_rows))
    # a resumed epoch continues with the same batches
    full = list(batches.epoch(0, schedule))
    resumed = list(batches.epoch(0, schedule, start=5))
    assert [k for k, _ in resumed] == [k for k, _ in full[5:]]
    assert all(torch.equal(x.sparse.values, y.sparse.values) for (_, x), (_, y) in zip(resumed, full[5:]))

    # FAE training over the stored pools equals plain training over the same batch sequence
    torch.manual_seed(0)
    tables = [TableConfig(s.name, s.num_embeddings, DIM) for s in tiny.schema.sparse]
    plain = DLRM(len(tiny.schema.dense_names), DenseEmbeddingCollection(tables), [8, DIM], [8, 1])
    fae = copy.deepcopy(plain)
    fae.embeddings = TieredEmbeddingCollection(fae.embeddings, parts, hot_device="cpu")
    assert fae.embeddings.hot_offsets.tolist() == parts.hot_offsets.tolist()
    stats = fae_train_epoch(fae, torch.optim.SGD(fae.parameters(), lr=0.1), fae.embeddings, schedule, batches,
                            lambda step: 0.05, loss_fn)  # fmt: skip
    assert stats["hot_steps"] == len(batches.hot) and stats["cold_steps"] == len(batches.cold)
    assert stats["switches"] == schedule.switches()
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    for _, batch in batches.epoch(0, schedule):
        optimizer.zero_grad()
        loss_fn(plain(batch), batch.labels).backward()
        optimizer.step()
        plain.embeddings.apply_gradients(0.05)
    assert_close_float32(plain, fae)


def assert_close_float32(plain: DLRM, fae: DLRM) -> None:
    expected, got = state(plain), state(fae)
    assert list(got) == list(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], msg=key)


# --- tables without a hot tier ----------------------------------------------------------------------


def test_tables_without_hot_rows_stay_on_the_full_tier_and_train_alike():
    """A budget that leaves a table without hot rows (t1 here) trains: that table has no hot tier and
    is read from the full tables in both modes, and training still equals plain training."""
    hot_rows = {"t0": HOT_ROWS["t0"], "t2": HOT_ROWS["t2"]}
    plain, fae = make_models("rowwise_adagrad")
    fae.embeddings = TieredEmbeddingCollection(fae.embeddings.full, hot_rows, hot_device="cpu")
    coll = fae.embeddings
    assert coll.untiered == {"t1": "no hot rows"} and coll.hot.feature_names == ["t0", "t2"]
    for period in (None, 2):
        schedule = FAESchedule(len(HOT_BATCHES), len(COLD_BATCHES), period)
        train_plain(plain, schedule, epochs=1)
        train_fae(fae, schedule, epochs=1)
        assert_same(plain, fae)


def test_no_hot_rows_at_all_is_all_full_tier():
    plain, fae = make_models("sgd")
    fae.embeddings = TieredEmbeddingCollection(fae.embeddings.full, {}, hot_device="cpu")
    assert fae.embeddings.hot is None and fae.embeddings.hot_bytes == 0
    train_plain(plain, SCHEDULE, epochs=1)
    train_fae(fae, SCHEDULE, epochs=1)
    assert_same(plain, fae)
