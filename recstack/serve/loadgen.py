"""Open-loop load generation for a served model (`recstack loadgen`).

Arrivals (Poisson, DeepRecSys's integer-millisecond Poisson gaps, fixed rate, or a replayed trace)
and query sizes (fixed, normal, lognormal, an empirical quantile file, MLPerf's DLRM aggregation) are
drawn with numpy; one scheduler thread submits each query at its scheduled time and never waits for
completions. Latency runs from the *scheduled* arrival (`Completion.latency`), so a target that falls
behind shows its queueing instead of slowing the generator down (no coordinated omission).

Scenarios follow MLPerf: Server (Poisson at a rate; p50/p95/p99 and whether the chosen percentile
meets a target), Offline (every query at once; the maximum throughput), and an overload test (3x the
sustainable rate, then back to normal load: does the server shed, keep its tail, and recover).
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recstack.argtypes import float_in, int_in, nonnegative_float, nonnegative_int, positive_float, positive_int, seed
from recstack.errors import ConfigError, DataError
from recstack.serve.candidates import SyntheticQueries
from recstack.serve.engine import MAX_QUERY_SIZE, EngineConfig, refuse_idle_accelerator, worker_count
from recstack.serve.protocol import Completion, Query, QueryTarget

MLPERF_QUANTILES = np.array([100, 100, *[200] * 12, 300, 300, 400, 500, 600, 700])
"""MLPerf DLRM's tools/dist_quantile.txt: user-item pairs per sample, a 20-point inverse CDF."""

ARRIVAL_KINDS = ("poisson", "deeprecsys", "fixed")

OVERLOAD_FACTOR = 3.0
"""The overload scenario's load, as a multiple of the sustainable rate."""
MAX_QUERIES = 10_000_000
"""The most queries one run may schedule: every query is kept until the summary, ~0.5 kB each, so
this is ~5 GB; more would exhaust memory before the first query is sent."""


# --- query sizes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeDistribution:
    """Candidates per query. Every draw is rounded and clipped to [1, max_size], as DeepRecSys does.

    kinds: `fixed:N`, `normal:MEAN,STD`, `lognormal:MU,SIGMA` (numpy's: of the underlying normal),
    `file:PATH` (an empirical quantile file: sizes separated by commas or white space, sampled
    uniformly by index, i.e. inverse-CDF sampling of the file's distribution), `mlperf`."""

    kind: str
    params: tuple[float, ...] = ()
    quantiles: np.ndarray | None = field(default=None, compare=False)
    max_size: int = 1024
    source: str = ""

    @classmethod
    def parse(cls, spec: str, max_size: int = 1024) -> SizeDistribution:
        if not 1 <= max_size <= MAX_QUERY_SIZE:
            raise ConfigError(f"--max-size must be in [1, {MAX_QUERY_SIZE}], got {max_size}")
        kind, _, rest = spec.partition(":")
        if kind == "mlperf" and not rest:
            return cls("mlperf", quantiles=MLPERF_QUANTILES, max_size=max_size, source=spec)
        if kind == "file":
            return cls("file", quantiles=_read_quantiles(rest), max_size=max_size, source=spec)
        arity = {"fixed": 1, "normal": 2, "lognormal": 2}.get(kind)
        try:
            params = tuple(float(p) for p in rest.split(",")) if rest else ()
        except ValueError:
            params = ()
        if arity is None or len(params) != arity or not all(map(math.isfinite, params)):
            raise ConfigError(
                f"query sizes {spec!r} not understood",
                "use fixed:N, normal:MEAN,STD, lognormal:MU,SIGMA, file:PATH or mlperf",
            )
        if kind != "fixed" and params[1] < 0:
            raise ConfigError(f"query sizes {spec!r}: the spread must not be negative")
        if kind == "fixed" and not 1 <= params[0] <= max_size:
            raise ConfigError(f"query sizes {spec!r}: a fixed size must be in [1, --max-size {max_size}]")
        return cls(kind, params, max_size=max_size, source=spec)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "fixed":
            raw = np.full(n, self.params[0])
        elif self.kind == "normal":
            raw = rng.normal(self.params[0], self.params[1], n)
        elif self.kind == "lognormal":
            raw = rng.lognormal(self.params[0], self.params[1], n)
        else:
            raw = self.quantiles[rng.integers(0, len(self.quantiles), n)]
        return np.clip(np.rint(raw), 1, self.max_size).astype(np.int64)

    def stream(self, rng: np.random.Generator, block: int = 1024) -> Iterator[int]:
        """Sizes one at a time, drawn in blocks."""
        while True:
            yield from self.sample(block, rng).tolist()

    def describe(self) -> dict[str, Any]:
        return {"spec": self.source or self.kind, "max_size": self.max_size}


def _read_quantiles(path: str) -> np.ndarray:
    if not path:
        raise ConfigError("query sizes file: needs a path (file:PATH)")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise DataError(f"cannot read the query-size file {path}: {exc.strerror or exc}") from None
    try:
        values = np.array(text.replace(",", " ").split(), dtype=np.float64)
    except ValueError:
        raise DataError(f"{path}: a query-size file holds numbers separated by commas or white space") from None
    if values.size == 0 or not np.isfinite(values).all() or (values < 1).any():
        raise DataError(f"{path}: a query-size file needs at least one size, every one >= 1")
    return values


# --- arrivals --------------------------------------------------------------------------------------


class Arrivals:
    """Gaps between scheduled arrivals at a rate (queries/s) that may change between draws.

    poisson: exponential gaps of mean 1/rate (a true Poisson process, as MLPerf's Server scenario).
    deeprecsys: `np.random.poisson(mean_gap_ms)` milliseconds, DeepRecSys's integer gaps (CV well
    under 1; kept to reproduce its results). fixed: exactly 1/rate."""

    def __init__(self, kind: str, rate: float, rng: np.random.Generator, block: int = 1024):
        if kind not in ARRIVAL_KINDS:
            raise ConfigError(f"unknown arrival process {kind!r}; choose one of {', '.join(ARRIVAL_KINDS)}")
        self.kind = kind
        self._rng = rng
        self._block = block
        self._buffer = np.empty(0)
        self._next = 0
        self.rate = rate

    @classmethod
    def deeprecsys(cls, mean_gap_ms: float, rng: np.random.Generator) -> Arrivals:
        return cls("deeprecsys", 1000.0 / mean_gap_ms, rng)

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, rate: float) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ConfigError(f"an arrival rate must be a positive number of queries/s, got {rate}")
        self._rate = float(rate)
        self._buffer, self._next = np.empty(0), 0  # draws at the old rate are dropped

    def gaps(self, n: int) -> np.ndarray:
        """n gaps in seconds at the current rate."""
        if self.kind == "poisson":
            return self._rng.exponential(1.0 / self._rate, n)
        if self.kind == "deeprecsys":
            return self._rng.poisson(1000.0 / self._rate, n) / 1000.0
        return np.full(n, 1.0 / self._rate)

    def next_gap(self) -> float:
        if self._next >= len(self._buffer):
            self._buffer, self._next = self.gaps(self._block), 0
        self._next += 1
        return float(self._buffer[self._next - 1])


def load_trace(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A replay trace: one query per line, `arrival_seconds[ size]` (commas or white space; `#`
    comments). Returns arrival offsets from the first query (sorted) and the sizes, if given."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise DataError(f"cannot read the trace {path}: {exc.strerror or exc}") from None
    rows = [line.split("#", 1)[0].replace(",", " ").split() for line in text.splitlines()]
    rows = [r for r in rows if r]
    widths = {len(r) for r in rows}
    try:
        table = np.array(rows, dtype=np.float64) if len(widths) == 1 else None
    except ValueError:
        table = None
    if table is None or table.shape[1] > 2 or not np.isfinite(table).all():
        raise DataError(f"{path}: a trace has one query per line: arrival_seconds and optionally its size")
    if (table[:, 0] < 0).any() or (table.shape[1] == 2 and (table[:, 1] < 1).any()):
        raise DataError(f"{path}: arrival times must be >= 0 and sizes >= 1")
    order = np.argsort(table[:, 0], kind="stable")
    arrivals = table[order, 0] - table[order[0], 0]
    sizes = np.rint(table[order, 1]).astype(np.int64) if table.shape[1] == 2 else None
    return arrivals, sizes


def check_query_count(queries: float, what: str) -> None:
    """Refuse a run of more than MAX_QUERIES queries before anything is allocated for it."""
    if not queries <= MAX_QUERIES:
        raise ConfigError(f"{what} makes {queries:.3g} queries; a run holds at most {MAX_QUERIES:.0e} "
                          "(MAX_QUERIES): lower the rate, the duration or --queries")


def timed_schedule(arrivals: Arrivals, duration_s: float) -> np.ndarray:
    """Arrival offsets in [0, duration_s) at the arrival process's rate."""
    check_query_count(arrivals.rate * duration_s, f"{arrivals.rate:.6g} queries/s for {duration_s:g} s")
    chunks, total = [], 0.0
    while total < duration_s:
        gaps = arrivals.gaps(int(arrivals.rate * duration_s * 1.1) + 64)
        offsets = total + np.cumsum(gaps)
        chunks.append(offsets)
        total = float(offsets[-1])
    offsets = np.concatenate(chunks)
    return offsets[offsets < duration_s]


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


@dataclass
class Workload:
    """What to offer: query sizes, arrival process, and the one seed for both."""

    sizes: SizeDistribution
    arrival: str = "poisson"
    seed: int = 0
    trace: tuple[np.ndarray, np.ndarray | None] | None = None
    _rng: np.random.Generator | None = field(default=None, init=False, repr=False)

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:
            self._rng = np.random.default_rng(self.seed)
        return self._rng

    def arrivals(self, rate: float) -> Arrivals:
        return Arrivals(self.arrival, rate, self.rng)


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


# --- plot ------------------------------------------------------------------------------------------


def plot_latency_vs_load(runs: Sequence[dict[str, Any]], path: str | Path, target_ms: float | None = None,
                         title: str = "") -> tuple[Path | None, str | None]:
    """p50/p95/p99 latency against offered load, one point per Server run."""
    from recstack.plotting import NO_MATPLOTLIB, figure, save_figure

    try:
        fig = figure(7.5, 4.8)
    except ImportError:
        return None, NO_MATPLOTLIB
    ax = fig.add_subplot()
    points = sorted((r for r in runs if r.get("offered_qps")), key=lambda r: r["offered_qps"])
    x = [r["offered_qps"] for r in points]
    for key, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
        ax.plot(x, [r["latency_ms"][key] for r in points], style, ms=4, label=key)
    if target_ms is not None:
        ax.axhline(target_ms, color="crimson", ls="--", lw=1, label=f"target {target_ms:.1f} ms")
    rejected = [xi for xi, r in zip(x, points) if r["rejected"]]
    if rejected:
        ax.plot(rejected, [0] * len(rejected), "x", color="crimson", label="load shed (503s)")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (queries/s)")
    ax.set_ylabel("latency from scheduled arrival (ms)")
    ax.set_title(title or "latency against offered load", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


# --- targets and the command -----------------------------------------------------------------------


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    """What to drive: an in-process engine (a preset with random weights, or a checkpoint) or a
    running server. Shared by `loadgen` and `sched`."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", "--model", dest="preset", metavar="NAME",
                        help="a model preset with random weights (size it with --model.scale S)")
    source.add_argument("--checkpoint", metavar="C", help="a trained checkpoint")
    parser.add_argument("--workers", type=worker_count, default=2, help="engine CPU workers (default 2)")
    parser.add_argument("--mode", choices=("thread", "process"), default="thread", help="engine workers (default thread)")
    parser.add_argument("--accelerator", choices=("auto", "cuda", "cpu", "none"), default="auto",
                        help="the engine's offload pool: cuda, cpu (one more CPU worker), none; auto (default): cuda "
                        "when available, else cpu")
    parser.add_argument("--seed", type=seed, default=0, help="the one seed for weights, features, sizes and arrivals")
    parser.add_argument("--sizes", default="mlperf", metavar="DIST",
                        help="query sizes: mlperf (default), fixed:N, normal:MEAN,STD, lognormal:MU,SIGMA, file:PATH")
    parser.add_argument("--max-size", type=int_in(1, MAX_QUERY_SIZE, what=f"a query size in [1, {MAX_QUERY_SIZE}]"),
                        default=1024, help="clip query sizes to this (default 1024)")
    parser.add_argument("--arrival", choices=ARRIVAL_KINDS, default="poisson",
                        help="poisson (exponential gaps, default), deeprecsys (integer-ms Poisson gaps), fixed")


def engine_factory(args: argparse.Namespace, extra: list[str]) -> Callable[..., Any]:
    """`make(**engine_config) -> InferenceEngine` for the preset or checkpoint the arguments name;
    the only `--section.key` override accepted is --model.scale."""
    from recstack.config import parse_overrides
    from recstack.serve.engine import EngineConfig, InferenceEngine

    overrides = parse_overrides(extra)
    unknown = set(overrides) - {"model.scale"}
    if unknown:
        raise ConfigError(f"unexpected options: {', '.join('--' + k for k in sorted(unknown))}",
                          "only --model.scale applies here")
    try:
        scale = float(overrides.get("model.scale", 1.0))
    except ValueError:
        raise ConfigError(f"--model.scale must be a number, got {overrides['model.scale']!r}") from None
    if args.checkpoint and "model.scale" in overrides:
        raise ConfigError("--model.scale applies to --preset, not to a checkpoint")
    if not args.checkpoint and not args.preset:
        raise ConfigError("name a model: --preset NAME (random weights), --checkpoint C, or --url of a server")
    base = {"workers": args.workers, "mode": args.mode, "accelerator": args.accelerator}

    def make(**config: Any) -> Any:
        engine_config = EngineConfig(**(base | config))
        if args.checkpoint:
            return InferenceEngine.from_checkpoint(args.checkpoint, engine_config)
        return InferenceEngine.from_preset(args.preset, engine_config, scale=scale, seed=args.seed)

    return make


def workload_from(args: argparse.Namespace) -> Workload:
    return Workload(SizeDistribution.parse(args.sizes, args.max_size), args.arrival, args.seed)


percentile = float_in(0.0, 100.0, what="a percentile in [0, 100]")


def _rates(text: str) -> list[float]:
    try:
        rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        rates = []
    if not rates or not all(r > 0 and math.isfinite(r) for r in rates):
        raise argparse.ArgumentTypeError(f"expected positive rates separated by commas, got {text!r}")
    return rates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Offer open-loop load to an in-process engine (--preset/--checkpoint) or a server (--url) and report "
        "latency percentiles from each query's scheduled arrival. Scenarios: server (Poisson at --rate or each of "
        "--rates, or --sweep N rates up to 1.2x the measured capacity), offline (--queries at once: max "
        "throughput), overload (--factor x --rate for --duration, then back to half load), trace (--trace FILE)."
    )
    add_target_arguments(parser)
    parser.add_argument("--url", metavar="URL", help="a running `recstack serve` (http://host:port)")
    parser.add_argument("--scenario", choices=("server", "offline", "overload", "trace"), default="server")
    load = parser.add_mutually_exclusive_group()  # each sets the offered load: one at a time
    load.add_argument("--rate", type=positive_float, metavar="QPS",
                      help="offered queries/s (server; overload: the sustainable rate)")
    load.add_argument("--rates", type=_rates, metavar="LIST", help="several offered rates, e.g. 50,100,200 (plotted)")
    load.add_argument("--sweep", type=positive_int, metavar="N", help="N rates from 10%% to 120%% of the Offline capacity")
    load.add_argument("--mean-gap-ms", type=positive_float, metavar="MS", help="DeepRecSys style: the mean gap instead of --rate")
    parser.add_argument("--duration", type=positive_float, default=10.0, metavar="S", help="measured seconds per rate (default 10)")
    parser.add_argument("--warmup", type=nonnegative_float, default=1.0, metavar="S", help="seconds left out at the start (default 1)")
    parser.add_argument("--queries", type=positive_int, default=512, help="offline: queries at once (default 512)")
    parser.add_argument("--trace", metavar="FILE", help="trace: lines of arrival_seconds[ size]")
    parser.add_argument("--target-p95-ms", type=positive_float, metavar="MS", help="the latency target (of --percentile)")
    parser.add_argument("--percentile", type=percentile, default=95.0, help="the percentile held to the target (default 95)")
    parser.add_argument("--factor", type=positive_float, metavar="F", help="overload: multiple of --rate (default 3)")
    parser.add_argument("--sub-batch", type=nonnegative_int, default=0, metavar="B", help="engine: split queries into B items (0: whole)")
    parser.add_argument("--offload-threshold", type=nonnegative_int, default=0, metavar="Q", help="engine: offload queries >= Q (0: never)")
    parser.add_argument("--max-batch", type=positive_int, default=EngineConfig.max_batch, metavar="N",
                        help=f"engine: rows per model call (default {EngineConfig.max_batch})")
    parser.add_argument("--queue-limit", type=nonnegative_int, default=0, help="engine: shed beyond this many queued rows (0: never)")
    parser.add_argument("--plot", metavar="FILE.png", help="latency against load (default: beside --report)")
    parser.add_argument("--report", metavar="FILE", help="write the JSON report here")
    parser.add_argument("--quiet", action="store_true", help="no tables")


SCENARIO_OPTIONS = {"rate": ("server", "overload"), "mean_gap_ms": ("server", "overload"), "rates": ("server",),
                    "sweep": ("server",), "trace": ("trace",), "factor": ("overload",),
                    "target_p95_ms": ("server", "overload", "trace")}
"""Options (default None) that only these scenarios read: with another, they would be ignored."""
ENGINE_OPTIONS = ("workers", "mode", "accelerator", "sub_batch", "offload_threshold", "max_batch", "queue_limit")
"""The in-process engine's options, defaults EngineConfig's (a server has its own: --url refuses them)."""


def check_options(args: argparse.Namespace) -> None:
    """Refuse options the scenario would ignore, and runs too large to hold, before a model is loaded.
    Sets args.rate from --mean-gap-ms, and --factor's default."""
    for name, scenarios in SCENARIO_OPTIONS.items():
        if getattr(args, name) is not None and args.scenario not in scenarios:
            raise ConfigError(f"--{name.replace('_', '-')} applies to --scenario {' or '.join(scenarios)}, "
                              f"not to --scenario {args.scenario}")
    if args.mean_gap_ms is not None:
        args.rate = 1000.0 / args.mean_gap_ms
    if args.factor is None:  # None until here, so that the check above sees whether it was given
        args.factor = OVERLOAD_FACTOR
    if args.scenario == "offline" or args.sweep:
        check_query_count(args.queries, f"--queries {args.queries}")
    rate = max(args.rates or [args.rate or 0.0])
    if args.scenario == "server":
        if not (rate or args.sweep):
            raise ConfigError("--scenario server needs --rate, --rates, --sweep N or --mean-gap-ms")
        check_query_count(rate * (args.duration + args.warmup),
                          f"{rate:g} queries/s for --duration {args.duration:g} s + --warmup {args.warmup:g} s")
    if args.scenario == "overload":
        if not rate or args.target_p95_ms is None:
            raise ConfigError("--scenario overload needs --rate (the sustainable rate) and --target-p95-ms")
        check_query_count(args.factor * rate * args.duration,
                          f"--factor {args.factor:g} x {rate:g} queries/s for --duration {args.duration:g} s")
    if args.scenario == "trace" and not args.trace:
        raise ConfigError("--scenario trace needs --trace FILE")


def open_target(args: argparse.Namespace, extra: list[str]) -> tuple[QueryTarget, dict[str, Any]]:
    engine = {"sub_batch": args.sub_batch, "offload_threshold": args.offload_threshold, "max_batch": args.max_batch,
              "queue_limit": args.queue_limit}
    if args.url:
        from recstack.serve.http_target import HttpTarget

        defaults = EngineConfig()
        engine_given = [name for name in ENGINE_OPTIONS if getattr(args, name) != getattr(defaults, name)]
        if args.preset or args.checkpoint or extra or engine_given:
            raise ConfigError("--url drives a running server: the model and engine options are the server's "
                              "(recstack serve --workers ... --sub-batch ... --queue-limit ...)")
        return HttpTarget(args.url), {"url": args.url}
    refuse_idle_accelerator(args.accelerator, args.offload_threshold)
    return engine_factory(args, extra)(**engine), {"preset": args.preset, "checkpoint": args.checkpoint,
                                                   "workers": args.workers, "mode": args.mode, **engine}


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from recstack.progress import say
    from recstack.report import check_output_path, new_report, write_report
    from recstack.serve.engine import freeze_heap

    workload = workload_from(args)
    check_options(args)
    check_output_path(args.report)
    check_output_path(args.plot, "--plot", "plot.png")
    if args.scenario == "trace":
        workload.trace = load_trace(args.trace)
    target, described = open_target(args, extra)
    freeze_heap()
    report = new_report("loadgen") | {"target": described, "workload": workload.sizes.describe() | {
        "arrival": args.arrival, "seed": args.seed}}
    try:
        report |= _run_scenario(args, target, workload, say)
    finally:
        stats = getattr(target, "stats", None)
        if stats is not None:
            report["target_stats"] = stats()
        target.close()
    if len(report.get("runs", [])) > 1:
        plot = args.plot or (str(Path(args.report).with_suffix(".png")) if args.report else None)
        if plot:
            written, why = plot_latency_vs_load(report["runs"], plot, args.target_p95_ms,
                                                title=f"{described.get('preset') or described.get('url') or ''}, sizes {args.sizes}")
            report["plot"] = str(written) if written else why
            say(f"plot: {written}" if written else why)
    write_report(args.report, report)
    return 0


def _run_scenario(args: argparse.Namespace, target: QueryTarget, workload: Workload, say: Callable[[str], None]) -> dict[str, Any]:
    if args.scenario == "offline":
        result = offline_run(target, workload, args.queries)
        items = result.get("items_per_s")
        say(f"offline: {_qps(result['achieved_qps'])} ({'-' if items is None else f'{items:.0f}'} items/s), "
            f"p99 {_ms(result['latency_ms']['p99'])}, rejected {result['rejected']}, errors {result['errors']}")
        return result
    if args.scenario == "trace":
        result = trace_run(target, workload, percentile=args.percentile, target_ms=args.target_p95_ms)
        say(_line(result))
        return result
    if args.scenario == "overload":
        result = overload_run(target, workload, args.rate, args.target_p95_ms, factor=args.factor,
                              overload_s=args.duration)
        say(f"overload {args.factor:g}x {args.rate:.1f} q/s: shed {result['rejected']} of {result['requests']}, "
            f"accepted p99 {_ms(result['accepted_p99_ms'])} (limit {result['accepted_p99_limit_ms']:.1f}), "
            f"no rejections {result['recovered_after_s']:.2f} s after the end; passed: {result['passed']}")
        return result
    rates = args.rates or ([args.rate] if args.rate else None)
    extra: dict[str, Any] = {}
    if args.sweep:
        capacity = offline_run(target, workload, args.queries)
        if not capacity["achieved_qps"]:
            raise ConfigError(f"--sweep: the Offline run answered no query (rejected {capacity['rejected']}, "
                              f"errors {capacity['errors']}), so there is no capacity to sweep up to")
        extra["offline"] = capacity
        rates = list(np.linspace(0.1, 1.2, args.sweep) * capacity["achieved_qps"])
    runs = []
    for rate in rates:
        result = server_run(target, workload, rate, args.duration, warmup_s=args.warmup,
                            percentile=args.percentile, target_ms=args.target_p95_ms)
        runs.append(result)
        say(_line(result))
    headline = runs[-1]
    if args.target_p95_ms is not None:
        headline = max((r for r in runs if r["meets_target"]), key=lambda r: r["offered_qps"], default=runs[0])
    return headline | extra | ({"runs": runs} if len(runs) > 1 else {})


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _qps(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} queries/s"


def _line(result: dict[str, Any]) -> str:
    lat = result["latency_ms"]
    offered = result["offered_qps"]
    achieved = result["achieved_qps"]
    verdict = "" if "meets_target" not in result else ("  meets target" if result["meets_target"] else "  misses target")
    return (f"offered {offered or 0:8.1f} q/s  achieved {achieved or 0:8.1f} q/s  p50 {_ms(lat['p50'])}  "
            f"p95 {_ms(lat['p95'])}  p99 {_ms(lat['p99'])}  rejected {result['rejected']}  errors {result['errors']}{verdict}")
