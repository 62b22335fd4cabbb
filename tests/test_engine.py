"""The inference engine: splitting covers each query once and in order with the model's own
scores, latency runs from the scheduled arrival to the last sub-request, routing at the offload
threshold, dynamic batching bounds, load shedding and recovery, thread and process workers, a
sequence model of the zoo and a DLRM trained by `recstack train`."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

from recstack.data.batch import Batch, JaggedFeatures
from recstack.errors import ConfigError
from recstack.serve.batching import BatchQueue, RowSlicer, SubRequest, concat_batches, merge_rows, split_bounds
from recstack.serve.engine import EngineConfig, EngineOverloaded, InferenceEngine, InferenceError
from recstack.serve.protocol import Completion, Query
from tests.conftest import REPO


def reference(model: nn.Module, batch: Batch) -> torch.Tensor:
    with torch.inference_mode():
        return torch.sigmoid(model(batch))


class Recorder(nn.Module):
    """Wraps a model: records every batch it scores (row tags = dense column 0, size, end time);
    `gate` holds the first call until set; `delay` sleeps in every call."""

    def __init__(self, model: nn.Module, gate: threading.Event | None = None, delay: float = 0.0):
        super().__init__()
        self.inner, self.gate, self.delay = model, gate, delay
        self.entered = threading.Event()
        self.calls: list[tuple[list[float], int, float]] = []
        self._lock = threading.Lock()

    def forward(self, batch: Batch) -> torch.Tensor:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.delay:
            time.sleep(self.delay)
        out = self.inner(batch)
        with self._lock:
            self.calls.append((batch.dense[:, 0].tolist(), batch.batch_size, time.perf_counter()))
        return out


@pytest.fixture(scope="module")
def tiny() -> InferenceEngine:
    """The tiny preset (fixed, variable and empty bags) with random weights: model, schema, candidates."""
    engine = InferenceEngine.from_preset("tiny", EngineConfig(workers=1), seed=3)
    yield engine
    engine.close()


def tagged_batch(engine: InferenceEngine, size: int, seed: int = 0) -> Batch:
    """Candidate rows whose dense column 0 is the row's position (so slices can be traced)."""
    batch = engine.candidates.draw(size, np.random.default_rng(seed))
    batch.dense[:, 0] = torch.arange(size, dtype=torch.float32)
    return batch


def recording_engine(tiny: InferenceEngine, config: EngineConfig, **recorder) -> tuple[InferenceEngine, Recorder]:
    model = Recorder(tiny.model, **recorder)
    return InferenceEngine(model, tiny.schema, config), model


def collect(engine: InferenceEngine, queries: list[Query]) -> list[Completion]:
    done: list[Completion] = []
    finished = threading.Event()
    lock = threading.Lock()

    def record(completion: Completion) -> None:
        with lock:
            done.append(completion)
            if len(done) == len(queries):
                finished.set()

    for query in queries:
        engine.submit(query, record)
    assert finished.wait(60), f"only {len(done)} of {len(queries)} queries completed"
    return sorted(done, key=lambda c: c.query_id)


# --- slicing and merging ------------------------------------------------------------------------


def test_merging_row_ranges_of_several_batches_equals_a_row_by_row_copy(tiny):
    first, second = tagged_batch(tiny, 9), tagged_batch(tiny, 7)
    parts = [(RowSlicer(first), 2, 5), (RowSlicer(second), 0, 7), (RowSlicer(first), 8, 9)]
    merged = merge_rows(parts)

    def rows(batch: Batch, a: int, z: int) -> list[tuple[list[float], dict[str, list[int]]]]:
        bags = {k: torch.split(v, lengths.tolist()) for k, (v, lengths) in batch.sparse.to_dict().items()}
        return [(batch.dense[i].tolist(), {k: bags[k][i].tolist() for k in bags}) for i in range(a, z)]

    expected = [row for slicer, a, z in parts for row in rows(slicer.batch, a, z)]
    assert merged.batch_size == len(expected) == 11 and rows(merged, 0, 11) == expected
    assert merge_rows([(RowSlicer(first), 0, 9)]) is first  # a whole batch is not copied


def test_split_bounds_cover_each_row_once():
    assert split_bounds(10, 0) == [(0, 10)]
    assert split_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert split_bounds(8, 4) == [(0, 4), (4, 8)]
    assert split_bounds(3, 4) == [(0, 3)]


def test_row_slices_concatenate_back_to_the_batch(tiny):
    batch = tagged_batch(tiny, 37)
    batch.sparse.weights = torch.rand(batch.sparse.values.numel())
    slicer = RowSlicer(batch)
    bounds = split_bounds(37, 6)
    parts = [slicer.slice(a, b) for a, b in bounds]
    per_row = batch.sparse.lengths.view(len(batch.sparse.keys), 37)
    for (a, b), part in zip(bounds, parts):  # every slice against a direct per-key reading
        assert part.batch_size == b - a
        offsets = batch.sparse.offsets()
        expected = torch.cat([batch.sparse.values[offsets[f * 37 + a]: offsets[f * 37 + b]]
                              for f in range(len(batch.sparse.keys))])
        assert torch.equal(part.sparse.values, expected)
        assert torch.equal(part.sparse.lengths, per_row[:, a:b].reshape(-1))
    merged = concat_batches(parts)
    assert torch.equal(merged.dense, batch.dense)
    assert torch.equal(merged.sparse.values, batch.sparse.values)
    assert torch.equal(merged.sparse.lengths, batch.sparse.lengths)
    assert torch.equal(merged.sparse.weights, batch.sparse.weights)
    assert merged.sparse.keys == batch.sparse.keys


def test_concat_rejects_other_feature_keys():
    a = Batch(torch.zeros(1, 1), JaggedFeatures(["x"], torch.tensor([1]), torch.tensor([1], dtype=torch.int32), 1), torch.zeros(1))
    b = Batch(torch.zeros(1, 1), JaggedFeatures(["y"], torch.tensor([1]), torch.tensor([1], dtype=torch.int32), 1), torch.zeros(1))
    with pytest.raises(ValueError, match="feature keys"):
        concat_batches([a, b])


# --- splitting, scores and latency ---------------------------------------------------------------


@pytest.mark.parametrize("size,sub_batch", [(23, 5), (20, 5), (7, 0), (3, 8)])
def test_splitting_covers_the_query_once_in_order_with_the_models_scores(tiny, size, sub_batch):
    # one worker and batches of one sub-request: the model sees the slices in queue order
    config = EngineConfig(workers=1, sub_batch=sub_batch, max_batch=max(sub_batch, 1))
    engine, model = recording_engine(tiny, config)
    batch = tagged_batch(tiny, size)
    try:
        scores = engine.score(batch)
        stats = engine.stats()
    finally:
        engine.close()
    expected_parts = math.ceil(size / sub_batch) if sub_batch else 1
    seen = [row for rows, _, _ in model.calls for row in rows]
    assert seen == list(range(size))
    assert [n for _, n, _ in model.calls] == [b - a for a, b in split_bounds(size, sub_batch)]
    assert stats["sub_requests"] == expected_parts and stats["queries"] == stats["completed"] == 1
    torch.testing.assert_close(scores, reference(tiny.model, batch), rtol=0, atol=1e-6)


def test_merged_batches_keep_every_querys_scores_in_order(tiny):
    config = EngineConfig(workers=2, sub_batch=4, max_batch=16, max_wait_ms=2)
    engine, model = recording_engine(tiny, config)
    batches = [tagged_batch(tiny, n, seed=n) for n in (1, 9, 17, 30, 4)]
    try:
        scores = engine.score_many(batches)
    finally:
        engine.close()
    for batch, got in zip(batches, scores):
        torch.testing.assert_close(got, reference(tiny.model, batch), rtol=0, atol=1e-6)
    assert sum(n for _, n, _ in model.calls) == sum(b.batch_size for b in batches)


def test_finished_is_the_last_sub_requests_completion_and_latency_counts_from_the_schedule(tiny):
    # one worker, 60 ms per model call: the four sub-requests end at clearly different times
    engine, model = recording_engine(tiny, EngineConfig(workers=1, sub_batch=10, max_batch=10), delay=0.06)
    batch = tagged_batch(tiny, 40)
    arrival = time.perf_counter() - 1.0  # scheduled a second ago: submitted late
    try:
        (completion,) = collect(engine, [Query(7, 40, arrival, batch)])
    finally:
        engine.close()
    ends = sorted(end for _, _, end in model.calls)
    assert len(ends) == 4 and completion.sub_requests == 4
    assert ends[-1] <= completion.finished < ends[-1] + 0.04
    assert completion.finished - ends[0] > 0.15  # not the first sub-request's time
    assert completion.latency == pytest.approx(completion.finished - arrival)
    assert completion.latency > 1.0 + 0.2
    assert (completion.query_id, completion.size, completion.rejected, completion.error) == (7, 40, False, None)


# --- routing -----------------------------------------------------------------------------------


def test_offload_threshold_routes_whole_queries_to_the_accelerator_pool(tiny):
    config = EngineConfig(workers=1, sub_batch=2, offload_threshold=8, accelerator="cpu", accelerator_workers=1)
    engine = InferenceEngine(tiny.model, tiny.schema, config)
    rng = np.random.default_rng(1)
    queries = [engine.synthetic_query(i, size, time.perf_counter(), rng) for i, size in enumerate([7, 8, 30, 1])]
    try:
        completions = collect(engine, queries)
        stats = engine.stats()
    finally:
        engine.close()
    assert [c.on_accelerator for c in completions] == [False, True, True, False]
    assert [c.sub_requests for c in completions] == [4, 1, 1, 1]  # offloaded queries go whole
    cpu, offload = stats["pools"]["cpu"], stats["pools"]["accelerator"]
    assert (cpu["queries"], cpu["sub_requests"], cpu["items"]) == (2, 5, 8)
    assert (offload["queries"], offload["sub_requests"], offload["items"]) == (2, 2, 38)
    assert offload["device"] == "cpu" and stats["accelerator"] == "cpu"


def test_engine_config_errors_are_one_line(tiny):
    for config, match in [
        (EngineConfig(mode="fiber"), "thread or process"),
        (EngineConfig(workers=0), ">= 1"),
        (EngineConfig(offload_threshold=4, accelerator="none"), "needs an accelerator"),
        (EngineConfig(max_wait_ms=float("nan")), "max_wait_ms"),
        (EngineConfig(max_wait_ms=1e300), "max_wait_ms must be a number in \\[0, 60000\\]"),  # killed the workers
        (EngineConfig(workers=100_000), "workers must be at most 256"),
        (EngineConfig(threads_per_worker=100_000), "threads_per_worker must be at most 256"),
        (EngineConfig(queue_limit=-1), "queue_limit"),
    ]:
        with pytest.raises(ConfigError, match=match):
            InferenceEngine(tiny.model, tiny.schema, config)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            InferenceEngine(tiny.model, tiny.schema, EngineConfig(offload_threshold=4, accelerator="cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_offload_matches_cpu_scores(tiny):
    config = EngineConfig(workers=1, offload_threshold=16, accelerator="cuda")
    engine = InferenceEngine(tiny.model, tiny.schema, config)
    small, large = tagged_batch(tiny, 5), tagged_batch(tiny, 64, seed=1)
    try:
        got = engine.score_many([small, large])
        stats = engine.stats()
    finally:
        engine.close()
    assert stats["pools"]["accelerator"]["device"] == "cuda" and stats["pools"]["accelerator"]["queries"] == 1
    for batch, scores in zip([small, large], got):
        torch.testing.assert_close(scores, reference(tiny.model, batch), rtol=1e-4, atol=1e-5)


# --- dynamic batching and shedding -------------------------------------------------------------


def test_dynamic_batching_merges_up_to_max_batch(tiny):
    gate = threading.Event()
    engine, model = recording_engine(tiny, EngineConfig(workers=1, sub_batch=4, max_batch=16), gate=gate)
    rng = np.random.default_rng(2)
    queries = [engine.synthetic_query(i, 4 if i else 3, time.perf_counter(), rng) for i in range(11)]
    try:
        engine.submit(queries[0], lambda c: None)
        assert model.entered.wait(10)  # the worker holds query 0 in the model: the rest queue up
        completions = collect_after(engine, queries[1:], gate)
    finally:
        gate.set()
        engine.close()
    sizes = [n for _, n, _ in model.calls]
    assert sizes == [3, 16, 16, 8]  # 40 queued rows leave in merged batches of at most 16
    assert engine.stats()["pools"]["cpu"]["largest_batch"] == 16
    assert all(c.error is None and not c.rejected for c in completions)


def collect_after(engine: InferenceEngine, queries: list[Query], gate: threading.Event) -> list[Completion]:
    """Submit while the worker is held, then open the gate and wait for all."""
    done: list[Completion] = []
    for query in queries:
        engine.submit(query, done.append)
    assert engine.stats()["queue_items"] == sum(q.size for q in queries)
    gate.set()
    deadline = time.perf_counter() + 30
    while len(done) < len(queries) and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert len(done) == len(queries)
    return done


def test_a_lone_request_waits_at_most_max_wait_and_a_full_batch_leaves_at_once(tiny):
    engine = InferenceEngine(tiny.model, tiny.schema, EngineConfig(workers=1, max_batch=8, max_wait_ms=150))
    rng = np.random.default_rng(3)
    try:
        (lone,) = collect(engine, [engine.synthetic_query(0, 3, time.perf_counter(), rng)])
        full = collect(engine, [engine.synthetic_query(i, 4, time.perf_counter(), rng) for i in range(2)])
    finally:
        engine.close()
    assert 0.15 <= lone.latency < 0.15 + 0.35
    assert max(c.latency for c in full) < 0.1  # 8 rows fill the batch: no waiting for the deadline


def test_a_batch_queue_with_an_enormous_wait_still_hands_out_its_rows_on_close(tiny):
    # Condition.wait(1e300) raises OverflowError: the collecting worker died and its rows were lost
    queue = BatchQueue(max_batch=8, max_wait_s=1e300)
    queue.put([SubRequest(None, 0, 3, RowSlicer(tagged_batch(tiny, 3)))])
    box: dict = {}
    taker = threading.Thread(target=lambda: box.update(taken=queue.take()), daemon=True)
    taker.start()
    time.sleep(0.1)
    queue.close()
    taker.join(10)
    assert [r.size for r in box["taken"]] == [3] and queue.take() is None


def test_queue_limit_sheds_at_once_then_recovers(tiny):
    gate = threading.Event()
    engine, model = recording_engine(tiny, EngineConfig(workers=1, queue_limit=10), gate=gate)
    rng = np.random.default_rng(4)
    q = [engine.synthetic_query(i, size, time.perf_counter(), rng) for i, size in enumerate([4, 6, 5, 3, 2, 5])]
    done: list[Completion] = []
    try:
        engine.submit(q[0], done.append)  # running (held in the model): no longer queued
        assert model.entered.wait(10)
        engine.submit(q[1], done.append)  # 6 rows wait
        engine.submit(q[2], done.append)  # 6 + 5 > 10: shed at once
        engine.submit(q[3], done.append)  # 6 + 3 <= 10: admitted
        assert [(c.query_id, c.rejected) for c in done] == [(2, True)]
        assert done[0].latency < 0.05 and done[0].finished >= q[2].arrival
        with pytest.raises(EngineOverloaded):
            engine.score(q[4].batch)  # 9 + 2 > 10: the synchronous form raises, without waiting
        gate.set()
        deadline = time.perf_counter() + 30
        while len(done) < 3 and time.perf_counter() < deadline:
            time.sleep(0.01)
        recovered = engine.score(q[5].batch)  # the queue drained: admitted again
        stats = engine.stats()
    finally:
        gate.set()
        engine.close()
    torch.testing.assert_close(recovered, reference(tiny.model, q[5].batch), rtol=0, atol=1e-6)
    assert sorted(c.query_id for c in done if not c.rejected) == [0, 1, 3]
    assert stats["rejected"] == 2 and stats["queries"] == 4 and stats["completed"] == 4 and stats["in_flight"] == 0


def test_a_bad_query_fails_alone_and_the_workers_go_on(tiny):
    gate = threading.Event()
    engine, model = recording_engine(tiny, EngineConfig(workers=1, max_batch=64), gate=gate)
    good = tagged_batch(tiny, 6)
    bad = tagged_batch(tiny, 4, seed=1)
    bad.sparse.values[0] = 10**9  # beyond every table: the model raises
    done: list[Completion] = []
    now = time.perf_counter()
    try:
        engine.submit(Query(0, 2, now, tagged_batch(tiny, 2, seed=2)), done.append)  # held in the model
        assert model.entered.wait(10)
        engine.submit(Query(1, 6, now, good), done.append)
        engine.submit(Query(2, 4, now, bad), done.append)  # merged with query 1 into one batch
        engine.submit(Query(3, 5, now, good), done.append)  # says 5 rows, has 6: fails at once
        assert [c.query_id for c in done] == [3] and "has 6 rows" in done[0].error
        gate.set()
        deadline = time.perf_counter() + 30
        while len(done) < 4 and time.perf_counter() < deadline:
            time.sleep(0.01)
        after = engine.score(good)
        stats = engine.stats()
    finally:
        gate.set()
        engine.close()
    by_id = {c.query_id: c for c in done}
    assert by_id[0].error is None and by_id[1].error is None
    assert "index" in by_id[2].error.lower() and by_id[2].latency >= 0 and by_id[3].latency >= 0
    torch.testing.assert_close(after, reference(tiny.model, good), rtol=0, atol=1e-6)
    assert stats["errors"] == 2 and stats["completed"] == 4 and stats["in_flight"] == 0


# --- worker kinds and models -------------------------------------------------------------------


def test_process_workers_score_like_the_model_and_survive_a_killed_child(tiny):
    engine = InferenceEngine(tiny.model, tiny.schema, EngineConfig(mode="process", workers=1, sub_batch=5, max_batch=5))
    batches = [tagged_batch(tiny, n, seed=n) for n in (12, 3)]
    try:
        got = engine.score_many(batches)
        os.kill(engine.cpu.runners[0].process.pid, signal.SIGKILL)
        with pytest.raises(InferenceError, match="died"):
            engine.score(batches[0])  # its first slice meets the dead child
        again = engine.score(batches[0])  # the worker was restarted
        stats = engine.stats()
    finally:
        engine.close()
    for batch, scores in zip(batches, got):
        torch.testing.assert_close(scores, reference(tiny.model, batch), rtol=0, atol=1e-6)
    torch.testing.assert_close(again, reference(tiny.model, batches[0]), rtol=0, atol=1e-6)
    assert stats["mode"] == "process" and stats["errors"] == 1 and stats["completed"] == 4
    assert not engine.cpu.runners[0].process.is_alive()  # closed: no child left behind


def test_a_zoo_model_with_behaviour_sequences_and_engine_drawn_candidates():
    engine = InferenceEngine.from_preset("din", EngineConfig(workers=2, sub_batch=8, max_batch=16, max_wait_ms=1),
                                         scale=0.0001)
    rng = np.random.default_rng(5)
    query = engine.synthetic_query(0, 50, time.perf_counter(), rng)
    try:
        scores = engine.score(query.batch)
        drawn = collect(engine, [Query(i, size, time.perf_counter()) for i, size in enumerate([1, 17, 64])])
    finally:
        engine.close()
    history = query.batch.sparse.to_dict()["hist_item"][1]
    assert engine.schema.feature("hist_item").sequence and history.unique().numel() > 1  # variable lengths
    torch.testing.assert_close(scores, reference(engine.model, query.batch), rtol=0, atol=1e-6)
    assert [(c.size, c.sub_requests, c.error) for c in drawn] == [(1, 1, None), (17, 3, None), (64, 8, None)]


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    proc = subprocess.run(
        [sys.executable, "-m", "recstack.cli", "train", "--model.preset", "tiny", "--data.synth_rows", "8192",
         "--train.epochs", "1", "--train.batch_size", "512", "--checkpoint-dir", str(root / "ckpt"),
         "--report", str(root / "train.json"), "--quiet"],
        capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, "RECSTACK_CACHE": str(root / "cache")},
    )
    assert proc.returncode == 0, proc.stderr
    return root / "ckpt"


def test_a_dlrm_from_a_trained_checkpoint_scores_like_predict(trained_checkpoint):
    from recstack.serve.scoring import ScoringModel

    scorer = ScoringModel(trained_checkpoint)
    engine = InferenceEngine.from_checkpoint(trained_checkpoint, EngineConfig(workers=2, sub_batch=16))
    try:
        query = engine.synthetic_query(0, 100, time.perf_counter(), np.random.default_rng(6))
        scores = engine.score(query.batch)
    finally:
        engine.close()
    assert engine.model_config.model.name == "dlrm" and engine.source.startswith("checkpoint")
    assert engine.candidates.source == "synthetic generator"
    torch.testing.assert_close(scores, scorer.predict(query.batch), rtol=0, atol=1e-6)
    assert 0.01 < float(scores.std())  # a trained model tells candidates apart
