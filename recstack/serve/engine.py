"""The inference engine: queries in, scores and completions out, on pools of CPU workers and an
optional accelerator pool (DeepRecSched's two knobs, query splitting and offload).

    submit(query) ─┬─ size >= offload_threshold ─> accelerator pool: the query whole
                   └─ otherwise ─> split into ceil(N / sub_batch) row slices ─> CPU pool
    each pool: BatchQueue (dynamic batching: up to max_batch rows or max_wait_ms) ─> workers
    a query completes when its last sub-request does (Completion.finished = that time)

Admission is all-or-nothing per submitted group of queries: when the rows waiting in the queues
plus the new ones would exceed `queue_limit`, the group is rejected at once (load shedding). The
engine implements `protocol.QueryTarget`; scores are probabilities, sigmoid(model(batch)).
"""

from __future__ import annotations

import copy
import gc
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recstack.argtypes import int_in
from recstack.config import Config
from recstack.data.batch import Batch
from recstack.data.store import Schema
from recstack.embeddings.base import place
from recstack.errors import ConfigError, RecstackError
from recstack.serve.batching import BatchQueue, RowSlicer, SubRequest, merge_rows, split_bounds
from recstack.serve.candidates import CandidatePool
from recstack.serve.protocol import Completion, Query
from recstack.serve.workers import ProcessRunner, ThreadRunner

MODES = ("thread", "process")


def freeze_heap() -> None:
    """Collect once, then exempt every object alive now from the cyclic collector (gc.freeze). Call it
    in a serving process once its model and libraries are loaded: otherwise every oldest-generation
    collection walks all of torch's, the model's and the web stack's objects (110-130 ms measured
    here), stalling every worker and the event loop at once: a latency spike in the p99."""
    gc.collect()
    gc.freeze()

ACCELERATORS = ("auto", "cuda", "cpu", "none")
MAX_WORKERS = 256
"""The most workers of a pool, and intra-op threads of a worker: more only exhausts threads or processes."""
worker_count = int_in(1, MAX_WORKERS, what=f"a number of workers in [1, {MAX_WORKERS}]")
MAX_QUERY_SIZE = 1 << 20
"""The most candidates one query may have: its features are drawn and scored in memory at once."""
MAX_WAIT_MS = 60_000.0
"""The longest dynamic-batching wait: a query held longer would outlast any client's timeout."""


@dataclass
class EngineConfig:
    workers: int = 2
    """CPU inference workers."""
    mode: str = "thread"
    """thread or process workers (docs/SERVING.md: threads serve better on a 2-core machine)."""
    sub_batch: int = 0
    """b: split each query into sub-requests of at most b rows (0: whole queries)."""
    offload_threshold: int = 0
    """q_thr: queries of at least this many rows go whole to the accelerator pool (0: never)."""
    accelerator: str = "auto"
    """cuda, cpu (a separate CPU worker pool standing in for one), none; auto: cuda when available, else cpu."""
    accelerator_workers: int = 1
    max_batch: int = 1024
    """Dynamic batching: merge queued sub-requests up to this many rows ..."""
    max_wait_ms: float = 0.0
    """... or until the oldest has waited this long."""
    queue_limit: int = 0
    """Rows (candidate items, not requests) that may wait in the queues; beyond it a query is rejected
    at once (0: unbounded). A query arriving at an empty queue is always admitted."""
    threads_per_worker: int = 0
    """Intra-op threads of each worker (0: the cores divided among all CPU workers, at least 1)."""

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"engine mode must be thread or process, not {self.mode!r}")
        if self.accelerator not in ACCELERATORS:
            raise ConfigError(f"accelerator must be one of {', '.join(ACCELERATORS)}, not {self.accelerator!r}")
        if self.workers < 1 or self.accelerator_workers < 1 or self.max_batch < 1:
            raise ConfigError("workers, accelerator_workers and max_batch must be >= 1")
        for name in ("workers", "accelerator_workers", "threads_per_worker"):
            if getattr(self, name) > MAX_WORKERS:
                raise ConfigError(f"{name} must be at most {MAX_WORKERS}, not {getattr(self, name)}")
        for name in ("sub_batch", "offload_threshold", "queue_limit", "threads_per_worker"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, not {getattr(self, name)}")
        if not 0 <= self.max_wait_ms <= MAX_WAIT_MS:
            raise ConfigError(f"max_wait_ms must be a number in [0, {MAX_WAIT_MS:g}], not {self.max_wait_ms}")
        if self.offload_threshold and self.accelerator == "none":
            raise ConfigError("offload_threshold needs an accelerator (cuda, cpu or auto), not none")


def refuse_idle_accelerator(accelerator: str | None, offload_threshold: int | None) -> None:
    """An explicit cuda or cpu accelerator pool receives only queries of at least the offload
    threshold: without one it would be ignored silently, so it is an error."""
    if accelerator in ("cuda", "cpu") and not offload_threshold:
        raise ConfigError(f"--accelerator {accelerator} is the pool that queries of at least --offload-threshold Q "
                          "candidates go to; without --offload-threshold Q > 0 nothing is offloaded")


def check_cuda(accelerator: str) -> None:
    """Refuse cuda without a CUDA device (commands call it before their work, the engine when it builds)."""
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise ConfigError("accelerator cuda asked for, but torch sees no CUDA device (use cpu or auto)")


class EngineOverloaded(RecstackError):
    """The queue was full: the query was shed (HTTP 503)."""


class InferenceError(RecstackError):
    """The model failed on a query's rows."""


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass
class _PoolCounters:
    queries: int = 0
    sub_requests: int = 0
    batches: int = 0
    items: int = 0
    largest_batch: int = 0


class _Pool:
    """One queue and the worker threads that drain it, each with its runner."""

    def __init__(self, name: str, device: str, runners: list, config: EngineConfig):
        self.name, self.device, self.runners = name, device, runners
        self.queue = BatchQueue(config.max_batch, config.max_wait_ms / 1000.0)
        self.counters = _PoolCounters()
        self.threads: list[threading.Thread] = []

    def start(self, work: Callable[[_Pool, Any], None]) -> None:
        for i, runner in enumerate(self.runners):
            thread = threading.Thread(target=work, args=(self, runner), name=f"recstack-{self.name}-{i}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        self.queue.close()
        for thread in self.threads:
            thread.join()
        for runner in self.runners:  # children exit in parallel
            runner.stop()
        for runner in self.runners:
            runner.close()


GroupDone = Callable[[list[Completion], list[torch.Tensor | None]], None]


@dataclass(eq=False)
class _Group:
    """Queries submitted together: admitted or rejected together, answered together."""

    done: GroupDone
    queries: list[_QueryState] = field(default_factory=list)
    remaining: int = 0


@dataclass(eq=False)
class _QueryState:
    query: Query
    group: _Group
    on_accelerator: bool = False
    sub_requests: int = 0
    remaining: int = 0
    scores: torch.Tensor | None = None
    error: str | None = None
    finished: float = 0.0

    def completion(self, rejected: bool = False) -> Completion:
        q = self.query
        return Completion(q.id, q.arrival, self.finished, q.size, rejected, self.error, self.on_accelerator,
                          self.sub_requests)


class InferenceEngine:
    """Serves one model to many concurrent queries (see the module doc); a `protocol.QueryTarget`."""

    def __init__(
        self,
        model: nn.Module,
        schema: Schema,
        config: EngineConfig,
        vocab: dict[str, np.ndarray] | None = None,
        *,
        model_config: Config | None = None,
        data_path: str | Path | None = None,
        seed: int = 0,
        source: str = "",
    ):
        config.validate()
        self.config = config
        self.model = model.eval()
        self.schema = schema
        self.vocab = vocab or {}
        self.model_config = model_config
        self.source = source
        self._data_path = data_path
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._candidates: CandidatePool | None = None
        self._candidates_lock = threading.Lock()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._closed = False
        self._counts = {"queries": 0, "completed": 0, "rejected": 0, "errors": 0, "in_flight": 0}

        self.accelerator = self._resolve_accelerator(config)
        cpu_workers = config.workers + (config.accelerator_workers if self.accelerator == "cpu" else 0)
        self.threads_per_worker = config.threads_per_worker or max(1, cpu_cores() // cpu_workers)
        if config.mode == "process":
            self.model.share_memory()  # every child maps the same tables
        runners: list[ThreadRunner | ProcessRunner] = []
        try:
            self.cpu = _Pool("cpu", "cpu", self._make_runners(runners, config.workers, "cpu"), config)
            self.offload: _Pool | None = None
            if self.accelerator is not None:
                offload_runners = self._make_runners(runners, config.accelerator_workers, self.accelerator)
                self.offload = _Pool("accelerator", self.accelerator, offload_runners, config)
            for runner in runners:  # children start in parallel; all must be up before serving
                if isinstance(runner, ProcessRunner):
                    runner.wait_ready()
        except BaseException:
            for runner in runners:
                runner.close()
            raise
        self._pools = [p for p in (self.cpu, self.offload) if p is not None]
        for pool in self._pools:
            pool.start(self._work)

    # --- construction -------------------------------------------------------------------------

    @staticmethod
    def _resolve_accelerator(config: EngineConfig) -> str | None:
        """The accelerator pool's device, or None when no query is ever offloaded."""
        if not config.offload_threshold:
            return None
        wanted = config.accelerator
        if wanted == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        check_cuda(wanted)
        return wanted

    def _make_runners(self, made: list, count: int, device: str) -> list[ThreadRunner | ProcessRunner]:
        """`count` runners on `device` (each also appended to `made`, so a failed start can close them)."""
        threads = self.threads_per_worker
        if device == "cuda":  # one copy of the model on the GPU, shared by the pool's threads
            make: Callable[[], ThreadRunner | ProcessRunner] = partial(
                ThreadRunner, place(copy.deepcopy(self.model), "cuda").eval(), "cuda", threads)
        elif self.config.mode == "process":
            make = partial(ProcessRunner, self.model, threads)
        else:
            make = partial(ThreadRunner, self.model, "cpu", threads)
        new = []
        for _ in range(count):
            new.append(make())
            made.append(new[-1])
        return new

    @classmethod
    def from_checkpoint(cls, path: str | Path, config: EngineConfig) -> InferenceEngine:
        """The model of a checkpoint, with its schema and vocabularies (what the HTTP API maps raw values through)."""
        from recstack.serve.scoring import ScoringModel

        scorer = ScoringModel(path)
        return cls(scorer.model, scorer.schema, config, scorer.vocab, model_config=scorer.config,
                   data_path=scorer.config.data.path, seed=scorer.config.seed, source=f"checkpoint {scorer.path}")

    @classmethod
    def from_preset(cls, preset: str, config: EngineConfig, scale: float = 1.0, seed: int = 0) -> InferenceEngine:
        """A zoo preset with random weights over its synthetic data's schema (tables scaled by `scale`)."""
        from recstack.config import resolve
        from recstack.models.zoo import build_model

        model_config = resolve(None, {"model.preset": preset, "model.scale": scale, "seed": seed})
        schema = synthetic_schema(model_config.data.synth_preset, scale, seed)
        torch.manual_seed(seed)
        model = build_model(model_config, schema)
        return cls(model, schema, config, model_config=model_config, seed=seed,
                   source=f"preset {preset} at scale {scale:g}, random weights")

    # --- queries ------------------------------------------------------------------------------

    @property
    def candidates(self) -> CandidatePool:
        """Rows synthetic queries are drawn from (made on first use)."""
        with self._candidates_lock:  # not the engine's lock: making the pool may take seconds
            if self._candidates is None:
                self._candidates = CandidatePool.for_schema(self.schema, self._data_path, self.seed)
            return self._candidates

    def synthetic_query(self, query_id: int, size: int, arrival: float, rng: np.random.Generator) -> Query:
        """A query of `size` candidate rows drawn at random from the candidate pool."""
        return Query(query_id, size, arrival, self.candidates.draw(size, rng))

    def submit(self, query: Query, done: Callable[[Completion], None]) -> None:
        """Accept the query without waiting for its work; `done(completion)` is called once, from a
        worker thread (or from this one when the query is rejected at once)."""
        self.submit_group([query], lambda completions, _scores: done(completions[0]))

    def submit_group(self, queries: Sequence[Query], done: GroupDone) -> None:
        """Admit all of `queries` or none; `done(completions, scores)` is called once when the last
        one completes, each list in the order given (scores None for a rejected or failed query)."""
        group = _Group(done)
        prepared: list[tuple[_QueryState, _Pool, list[SubRequest]]] = []
        for query in queries:
            state = _QueryState(query, group)
            group.queries.append(state)
            try:
                pool, requests = self._plan(state)
            except Exception as exc:  # a malformed query fails alone, at once
                state.error, state.finished = _one_line(exc), time.perf_counter()
                continue
            prepared.append((state, pool, requests))
        rows = sum(state.query.size for state, _, _ in prepared)
        with self._lock:
            queued = sum(p.queue.queued_items for p in self._pools)
            limit = self.config.queue_limit
            if self._closed or (limit and queued and queued + rows > limit):
                reason = "the engine is shutting down" if self._closed else None
                self._counts["rejected"] += len(queries)
                rejected = True
            else:
                rejected, reason = False, None
                group.remaining = len(prepared)
                self._counts["queries"] += len(prepared)
                self._counts["errors"] += len(queries) - len(prepared)
                self._counts["in_flight"] += len(prepared)
                for _, pool, requests in prepared:
                    pool.counters.queries += 1
                    pool.counters.sub_requests += len(requests)
                    pool.queue.put(requests)
        if rejected or not prepared:
            now = time.perf_counter()
            for state in group.queries:
                state.finished = now
                state.error = state.error or reason
            self._deliver(group, rejected=rejected)

    def _plan(self, state: _QueryState) -> tuple[_Pool, list[SubRequest]]:
        """The pool of a query and its sub-requests (row slices of its batch)."""
        query = state.query
        if query.size < 1:
            raise ValueError(f"query {query.id} has {query.size} candidates; a query needs at least one")
        batch = query.batch if query.batch is not None else self._draw(query.size)
        if batch.batch_size != query.size:
            raise ValueError(f"query {query.id} says {query.size} candidates but its batch has {batch.batch_size} rows")
        threshold = self.config.offload_threshold
        state.on_accelerator = self.offload is not None and query.size >= threshold
        pool = self.offload if state.on_accelerator else self.cpu
        assert pool is not None
        bounds = [(0, query.size)] if state.on_accelerator else split_bounds(query.size, self.config.sub_batch)
        slicer = RowSlicer(batch)
        requests = [SubRequest(state, a, b - a, slicer) for a, b in bounds]
        state.sub_requests = state.remaining = len(requests)
        return pool, requests

    def _draw(self, size: int) -> Batch:
        pool = self.candidates
        with self._lock:  # a numpy Generator is not thread-safe
            rows_rng = np.random.default_rng(self._rng.integers(1 << 63))
        return pool.draw(size, rows_rng)

    def score(self, batch: Batch) -> torch.Tensor:
        """Probabilities of a batch's rows through the queues and workers (blocks until done):
        [B], or [B, T] for a multi-task model. Raises EngineOverloaded when shed."""
        return self.score_many([batch])[0]

    def score_many(self, batches: Sequence[Batch]) -> list[torch.Tensor]:
        """Several queries admitted together (all or none); their probabilities, in order."""
        finished = threading.Event()
        box: dict[str, Any] = {}

        def done(completions: list[Completion], scores: list[torch.Tensor | None]) -> None:
            box["completions"], box["scores"] = completions, scores
            finished.set()

        now = time.perf_counter()
        self.submit_group([Query(-1, b.batch_size, now, b) for b in batches], done)
        finished.wait()
        for completion in box["completions"]:
            if completion.rejected:
                raise EngineOverloaded(completion.error or "the queue is full: query shed", hint="retry later")
            if completion.error:
                raise InferenceError(completion.error)
        return box["scores"]

    # --- workers ------------------------------------------------------------------------------

    def _work(self, pool: _Pool, runner: Any) -> None:
        runner.bind()
        while (taken := pool.queue.take()) is not None:
            self._run(pool, runner, taken)

    def _run(self, pool: _Pool, runner: Any, taken: list[SubRequest]) -> None:
        try:
            scores = runner.run(merge_rows([r.part for r in taken]))
        except Exception as exc:
            if len(taken) > 1:  # find the culprit: every sub-request alone, so one bad query fails alone
                for request in taken:
                    self._run(pool, runner, [request])
                return
            self._complete(pool, taken, None, time.perf_counter(), _one_line(exc))
            return
        self._complete(pool, taken, scores, time.perf_counter(), None)

    def _complete(self, pool: _Pool, taken: list[SubRequest], scores: torch.Tensor | None, now: float,
                  error: str | None) -> None:
        finished_groups = []
        rows = sum(r.size for r in taken)
        with self._lock:
            pool.counters.batches += 1
            pool.counters.items += rows
            pool.counters.largest_batch = max(pool.counters.largest_batch, rows)
            offset = 0
            for request in taken:
                state: _QueryState = request.owner
                if scores is None:
                    state.error = state.error or error
                elif request.size == state.query.size:
                    state.scores = scores[offset : offset + request.size]
                else:
                    if state.scores is None:
                        state.scores = scores.new_empty((state.query.size, *scores.shape[1:]))
                    state.scores[request.start : request.start + request.size] = scores[offset : offset + request.size]
                offset += request.size
                state.remaining -= 1
                if state.remaining == 0:
                    state.finished = now
                    state.group.remaining -= 1
                    if state.group.remaining == 0:
                        finished_groups.append(state.group)
        for group in finished_groups:
            self._deliver(group)

    def _deliver(self, group: _Group, rejected: bool = False) -> None:
        completions = [s.completion(rejected) for s in group.queries]
        scores = [None if (rejected or s.error) else s.scores for s in group.queries]
        if not rejected:
            with self._lock:
                admitted = sum(1 for s in group.queries if s.sub_requests)
                self._counts["in_flight"] -= admitted
                self._counts["completed"] += admitted
                self._counts["errors"] += sum(1 for s in group.queries if s.error and s.sub_requests)
                if self._counts["in_flight"] == 0:
                    self._idle.notify_all()
        try:
            group.done(completions, scores)
        except Exception:  # a caller's callback must never take a worker down
            with self._lock:
                self._counts["callback_errors"] = self._counts.get("callback_errors", 0) + 1

    # --- state --------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._lock:
            pools = {
                p.name: {
                    **asdict(p.counters),
                    "device": p.device,
                    "workers": len(p.runners),
                    "queue_items": p.queue.queued_items,
                    "queue_requests": p.queue.queued_requests,
                }
                for p in self._pools
            }
            counts = dict(self._counts)
        totals = {k: sum(p[k] for p in pools.values()) for k in ("sub_requests", "batches", "items", "queue_items",
                                                                  "queue_requests")}
        return {
            **counts,
            **totals,
            "mode": self.config.mode,
            "workers": self.config.workers,
            "threads_per_worker": self.threads_per_worker,
            "accelerator": self.accelerator or "none",
            "pools": pools,
            "config": asdict(self.config),
        }

    def close(self, timeout: float | None = None) -> None:
        """Stop admitting, finish every admitted query, then stop the workers. Idempotent."""
        with self._lock:
            already = self._closed
            self._closed = True
            if not already:
                self._idle.wait_for(lambda: self._counts["in_flight"] == 0, timeout=timeout)
        if already:
            return
        for pool in self._pools:
            pool.stop()

    def __enter__(self) -> InferenceEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, RecstackError | ValueError):
        return text.splitlines()[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def synthetic_schema(preset: str, scale: float = 1.0, seed: int = 0) -> Schema:
    """The schema of a synthetic preset's data at a scale, without generating rows."""
    from recstack.data.synth import GENERATOR, get_preset, synth_model

    spec = get_preset(preset)
    model = synth_model(spec, seed, scale)
    info = {"generator": GENERATOR, "preset": spec.name, "preset_spec": spec.to_dict(), "seed": seed, "scale": scale}
    return Schema(0, model.dense_names, model.label_names, model.sparse_features(), info=info)
