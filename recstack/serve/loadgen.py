"""Open-loop load generation for a served model: the driver and the scenarios of `recstack loadgen`
(the command is recstack.serve.loadgen_cli).

Arrivals and query sizes come from a Workload (recstack.serve.workload); one scheduler thread
submits each query at its scheduled time and never waits for completions. Latency runs from the *scheduled* arrival (`Completion.latency`), so a target that falls
behind shows its queueing instead of slowing the generator down (no coordinated omission).

Scenarios follow MLPerf: Server (Poisson at a rate; p50/p95/p99 and whether the chosen percentile
meets a target), Offline (every query at once; the maximum throughput), and an overload test (3x the
sustainable rate, then back to normal load: does the server shed, keep its tail, and recover).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recstack.serve.candidates import SyntheticQueries
from recstack.serve.protocol import Completion, Query, QueryTarget
from recstack.serve.workload import Workload, timed_schedule

OVERLOAD_FACTOR = 3.0
"""The overload scenario's load, as a multiple of the sustainable rate."""


# --- the open-loop driver --------------------------------------------------------------------------


@dataclass
class Run:
    """What one open-loop run saw. Offsets are seconds from `start` (perf_counter)."""

    start: float
    completions: list[Completion]
    submitted: int
    lateness: np.ndarray
    """Seconds each submission came after its scheduled time (the generator's own health)."""
    unfinished: int
    """Queries without a completion when the drain timed out (counted as errors)."""

    def offsets(self) -> np.ndarray:
        return np.array([c.arrival - self.start for c in self.completions])


QueryFactory = Callable[[int, int, float], Query]


def query_factory(target: QueryTarget, rng: np.random.Generator) -> QueryFactory:
    """The target's synthetic queries when it makes them (`SyntheticQueries`), else queries without
    features (the target draws them)."""
    synthetic = getattr(target, "synthetic_query", None)
    if synthetic is not None:
        return SyntheticQueries(synthetic, rng)
    return lambda qid, size, arrival: Query(qid, size, arrival)


def warm_queries(make: QueryFactory, sizes: np.ndarray, limit: int = 512) -> None:
    if isinstance(make, SyntheticQueries):
        make.warm(sizes[:limit])


def drive(
    target: QueryTarget,
    schedule: Iterable[tuple[float, int]],
    make_query: QueryFactory,
    *,
    on_done: Callable[[Completion], None] | None = None,
    spin_s: float = 0.001,
    drain_timeout_s: float = 60.0,
    lead_s: float = 0.02,
) -> Run:
    """Submit each (offset_s, size) of `schedule` at start + offset from a scheduler thread that
    never waits for completions; then wait up to `drain_timeout_s` for the last ones.

    The query is built before its time comes; the wait sleeps until `spin_s` before it and spins
    the rest (sleep alone overshoots by ~0.1 ms). A late submission keeps its scheduled arrival.
    The scheduler thread runs torch single-threaded: the target's `submit` may slice tensors there,
    and an OpenMP team of the generator would spin on the cores the target's workers need."""
    completions: list[Completion] = []
    lock = threading.Lock()
    drained = threading.Event()
    state: dict[str, Any] = {"pending": 0, "closed": False, "submitted": 0, "error": None}
    lateness: list[float] = []
    clock = time.perf_counter
    start = clock() + lead_s

    def done(completion: Completion) -> None:
        with lock:
            completions.append(completion)
            state["pending"] -= 1
            if state["closed"] and state["pending"] == 0:
                drained.set()
        if on_done is not None:
            on_done(completion)

    def submit_all() -> None:
        torch.set_num_threads(1)
        try:
            for offset, size in schedule:
                due = start + offset
                query = make_query(state["submitted"], int(size), due)
                wait = due - clock() - spin_s
                if wait > 0:
                    time.sleep(wait)
                while clock() < due:
                    pass
                with lock:
                    state["pending"] += 1
                lateness.append(clock() - due)
                target.submit(query, done)
                state["submitted"] += 1
        except BaseException as exc:  # re-raised in the caller's thread
            state["error"] = exc
        finally:
            with lock:
                state["closed"] = True
                if state["pending"] == 0:
                    drained.set()

    scheduler = threading.Thread(target=submit_all, name="recstack-loadgen", daemon=True)
    scheduler.start()
    scheduler.join()
    if state["error"] is not None:
        raise state["error"]
    drained.wait(drain_timeout_s)
    with lock:
        return Run(start, list(completions), state["submitted"], np.array(lateness), state["pending"])


def fixed_schedule(offsets: np.ndarray, sizes: np.ndarray) -> Iterator[tuple[float, int]]:
    return zip(offsets.tolist(), sizes.tolist())


# --- summaries -------------------------------------------------------------------------------------


def _percentiles(latencies_ms: np.ndarray, percentile: float) -> dict[str, float | None]:
    points = sorted({50.0, 95.0, 99.0, float(percentile)})
    if latencies_ms.size == 0:
        return {_pkey(p): None for p in points} | {"mean": None, "max": None}
    values = np.percentile(latencies_ms, points)
    out = {_pkey(p): float(v) for p, v in zip(points, values)}
    return out | {"mean": float(latencies_ms.mean()), "max": float(latencies_ms.max())}


def _pkey(p: float) -> str:
    return f"p{p:g}"


def summarize(
    run: Run,
    *,
    offered_qps: float | None,
    warmup_s: float = 0.0,
    percentile: float = 95.0,
    target_ms: float | None = None,
    window: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Figures of the queries that arrived in `window` (offsets, default: after `warmup_s`).

    achieved_qps counts answered queries (not rejected, no error) over first arrival to last finish."""
    lo, hi = window if window is not None else (warmup_s, math.inf)
    kept = [c for c in run.completions if lo <= c.arrival - run.start < hi]
    ok = [c for c in kept if not c.rejected and c.error is None]
    latencies = np.array([c.latency for c in ok]) * 1000.0
    rejected = sum(c.rejected for c in kept)
    errors = sum(c.error is not None and not c.rejected for c in kept)
    unfinished = run.unfinished if window is None else 0
    arrivals = np.array([c.arrival for c in kept])
    report: dict[str, Any] = {
        "offered_qps": offered_qps,
        "measured_offered_qps": (len(kept) - 1) / float(np.ptp(arrivals)) if len(kept) > 1 and np.ptp(arrivals) > 0 else None,
        "achieved_qps": None,
        "requests": len(kept) + unfinished,
        "completed": len(ok),
        "rejected": rejected,
        "errors": errors + unfinished,
        "latency_ms": _percentiles(latencies, percentile),
        "percentile": percentile,
    }
    if ok:
        span = max(c.finished for c in ok) - min(c.arrival for c in ok)
        report["achieved_qps"] = len(ok) / span if span > 0 else None
        report["items_per_s"] = sum(c.size for c in ok) / span if span > 0 else None
        report["sub_requests_per_query"] = float(np.mean([c.sub_requests for c in ok]))
        report["offloaded_fraction"] = float(np.mean([c.on_accelerator for c in ok]))
    if target_ms is not None:
        tail = report["latency_ms"][_pkey(percentile)]
        report["target_ms"] = target_ms
        report["meets_target"] = tail is not None and tail <= target_ms and rejected == 0 and report["errors"] == 0
    if run.lateness.size:
        report["submit_lag_ms"] = {
            "p50": float(np.percentile(run.lateness, 50) * 1000),
            "p99": float(np.percentile(run.lateness, 99) * 1000),
            "max": float(run.lateness.max() * 1000),
        }
    examples = sorted({c.error for c in kept if c.error and not c.rejected})[:3]
    if examples:
        report["error_examples"] = examples
    return report


# --- scenarios -------------------------------------------------------------------------------------


def server_run(
    target: QueryTarget,
    workload: Workload,
    rate: float,
    duration_s: float,
    *,
    warmup_s: float = 1.0,
    percentile: float = 95.0,
    target_ms: float | None = None,
    make: QueryFactory | None = None,
) -> dict[str, Any]:
    """MLPerf Server: arrivals at `rate` for `warmup_s + duration_s`; the warm-up is left out."""
    offsets = timed_schedule(workload.arrivals(rate), warmup_s + duration_s)
    sizes = workload.sizes.sample(len(offsets), workload.rng)
    run = _replay(target, workload, offsets, sizes, make)
    return {"scenario": "server"} | summarize(
        run, offered_qps=rate, warmup_s=warmup_s, percentile=percentile, target_ms=target_ms
    )


def _replay(target: QueryTarget, workload: Workload, offsets: np.ndarray, sizes: np.ndarray,
            make: QueryFactory | None = None) -> Run:
    """Queries of `sizes` at the arrival `offsets` (seconds from now), their features drawn ahead."""
    make = make or query_factory(target, workload.rng)
    warm_queries(make, sizes)
    return drive(target, fixed_schedule(offsets, sizes), make)


def offline_run(target: QueryTarget, workload: Workload, queries: int, *, warmup_queries: int = 8,
                make: QueryFactory | None = None) -> dict[str, Any]:
    """MLPerf Offline: every query at once; achieved_qps is the maximum throughput."""
    make = make or query_factory(target, workload.rng)
    sizes = workload.sizes.sample(queries, workload.rng)
    warm_queries(make, sizes)
    if warmup_queries:
        drive(target, fixed_schedule(np.zeros(warmup_queries), sizes[:warmup_queries]), make)
    run = drive(target, fixed_schedule(np.zeros(queries), sizes), make, spin_s=0.0)
    return {"scenario": "offline"} | summarize(run, offered_qps=None)


def trace_run(target: QueryTarget, workload: Workload, *, percentile: float = 95.0,
              target_ms: float | None = None) -> dict[str, Any]:
    """Replay a trace's arrival times (and its sizes, when it has them)."""
    assert workload.trace is not None
    offsets, sizes = workload.trace
    if sizes is None:
        sizes = workload.sizes.sample(len(offsets), workload.rng)
    sizes = np.minimum(sizes, workload.sizes.max_size)
    run = _replay(target, workload, offsets, sizes)
    offered = (len(offsets) - 1) / offsets[-1] if len(offsets) > 1 and offsets[-1] > 0 else None
    return {"scenario": "trace"} | summarize(run, offered_qps=offered, percentile=percentile, target_ms=target_ms)


def overload_run(
    target: QueryTarget,
    workload: Workload,
    rate: float,
    target_ms: float,
    *,
    factor: float = OVERLOAD_FACTOR,
    lead_s: float = 5.0,
    overload_s: float = 30.0,
    recovery_s: float = 15.0,
    recovery_load: float = 0.5,
    recovery_limit_s: float = 5.0,
    tail_factor: float = 3.0,
) -> dict[str, Any]:
    """`rate` (the sustainable rate) at `recovery_load` for `lead_s`, then `factor` x rate for
    `overload_s`, then `recovery_load` x rate again for `recovery_s`. Three facts: the target sheds
    load (rejections during the overload); the p99 of accepted requests stays under `tail_factor` x
    `target_ms`; and `recovered_after_s`, from the end of the overload to the arrival of the last
    query rejected after it, is within `recovery_limit_s`."""
    phases = [(recovery_load * rate, lead_s), (factor * rate, overload_s), (recovery_load * rate, recovery_s)]
    chunks, begin = [], 0.0
    for phase_rate, seconds in phases:
        chunks.append(begin + timed_schedule(workload.arrivals(phase_rate), seconds))
        begin += seconds
    offsets = np.concatenate(chunks)
    sizes = workload.sizes.sample(len(offsets), workload.rng)
    make = query_factory(target, workload.rng)
    warm_queries(make, sizes)
    run = drive(target, fixed_schedule(offsets, sizes), make, drain_timeout_s=120.0)
    end = lead_s + overload_s
    during = summarize(run, offered_qps=factor * rate, window=(lead_s, end), percentile=99.0)
    after = summarize(run, offered_qps=recovery_load * rate, window=(end, math.inf))
    rejected_after = [c.arrival - run.start - end for c in run.completions if c.rejected and c.arrival - run.start >= end]
    recovered_after = max(rejected_after, default=0.0)
    p99 = during["latency_ms"]["p99"]
    facts = {
        "sheds_load": during["rejected"] > 0,
        "accepted_p99_ms": p99,
        "accepted_p99_limit_ms": tail_factor * target_ms,
        "accepted_p99_within_limit": p99 is not None and p99 <= tail_factor * target_ms,
        "recovered_after_s": recovered_after,
        "recovered_within_limit": recovered_after <= recovery_limit_s and recovery_s > recovery_limit_s,
    }
    return {
        "scenario": "overload",
        "sustainable_qps": rate,
        "target_p95_ms": target_ms,
        "phases": [{"qps": r, "seconds": s} for r, s in phases],
        **facts,
        "passed": all(facts[k] for k in ("sheds_load", "accepted_p99_within_limit", "recovered_within_limit")),
        "overload": during,
        "recovery": after,
        **{k: during[k] for k in ("offered_qps", "achieved_qps", "latency_ms", "requests", "rejected", "errors")},
    }
