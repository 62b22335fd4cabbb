"""DeepRecSched (`recstack sched`): tune query splitting and accelerator offload for latency-bounded
throughput, the highest QPS whose p95 latency stays under a target (TECHNIQUES.md section 2).

The parts, each testable alone:
- `RateController`: DeepRecSys's feedback loop over a log-spaced grid of rates. Every g completed
  queries it takes their p95: over the target, one step down; under target/(1+stable_region), one
  step up; else hold. It settles on the median of the last rates tried, after `max_updates` updates
  or as soon as the last `settle_window` updates stay within two neighbouring grid steps.
- `find_sustainable_rate`: one configuration's settled rate, the controller driving open-loop
  Poisson load. Unlike DeepRecSys, a window holds only queries that arrived at the current rate
  (stragglers from the previous rate would make the controller overshoot).
- `confirm_rate`: the settled rate re-measured in steady runs of a few seconds, a grid step at a time
  until a met rate neighbours a missed one. A p95 over 64 queries is a noisy, low-biased estimate
  near saturation and on a shared machine; the climb compares these confirmed rates.
- `hill_climb`: candidates in list order, stopping at the first one that is strictly worse than the
  one before (keep that one); if all are tried, the first of the best.

`deeprecsched` runs them: the static configuration (whole queries, no offload) first, which also
gives the default target (1.5x its p95 at 10% of its Offline capacity), then the per-request batch
size b, then, with an accelerator, the offload threshold q_thr.
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from recstack.argtypes import float_in, int_in, nonnegative_float, nonnegative_int, positive_float, positive_int
from recstack.config import parse_int_list
from recstack.errors import ConfigError
from recstack.serve.engine import check_cuda
from recstack.serve.loadgen import (
    QueryFactory,
    drive,
    fixed_schedule,
    offline_run,
    query_factory,
    server_run,
    warm_queries,
)
from recstack.serve.protocol import Completion, QueryTarget
from recstack.serve.workload import Workload

T = TypeVar("T")
FAILED_MS = 1e300
TIE = 1e-9
"""Rates within this relative difference are equal: a confirmed rate is a grid point reached by
multiplying steps, so the same point can differ in its last bits by the path taken."""
CONFIRM_QUERIES = 100
MAX_GRID_STEPS = 10_000
"""Rates on the controller's grid: finer only costs memory (steps of 0.06% at the default span)."""
MAX_SECONDS = 86_400.0
"""The longest trial or confirmation run: a day (longer ones would only fail on their query count)."""


# --- the feedback controller -----------------------------------------------------------------------


@dataclass
class ControllerConfig:
    target_ms: float
    percentile: float = 95.0
    granularity: int = 64
    """g: completed queries per update."""
    stable_region: float = 0.10
    min_rate: float = 1.0
    max_rate: float = 1000.0
    steps: int = 40
    """Grid points, log-spaced from min_rate to max_rate."""
    max_updates: int = 40
    """DeepRecSys's sched_timeout: settle after this many updates at the latest."""
    settle_window: int = 8
    """Settle on the median rate of this many last updates (early when they span <= 2 grid steps)."""

    def __post_init__(self) -> None:
        if not (self.target_ms > 0 and 0 < self.min_rate < self.max_rate and self.steps >= 2):
            raise ConfigError("controller: need a positive target and 0 < min_rate < max_rate, steps >= 2")
        if self.granularity < 1 or self.max_updates < 1 or self.settle_window < 1 or self.stable_region < 0:
            raise ConfigError("controller: granularity, max_updates and settle_window must be positive")


@dataclass
class Update:
    rate: float
    """The rate the window was measured at."""
    tail_ms: float
    action: str
    """down, up or hold."""


class RateController:
    """DeepRecSys's load controller over `grid` (rates, ascending); pure, no clock."""

    def __init__(self, config: ControllerConfig, start_rate: float):
        self.config = config
        self.grid = np.geomspace(config.min_rate, config.max_rate, config.steps)
        self.index = int(np.argmin(np.abs(np.log(self.grid / start_rate))))
        self.updates: list[Update] = []
        self._indices: list[int] = []
        self.settled_rate: float | None = None

    @property
    def rate(self) -> float:
        return float(self.grid[self.index])

    @property
    def settled(self) -> bool:
        return self.settled_rate is not None

    def observe(self, latencies_ms: Sequence[float]) -> None:
        """One window of completed queries' latencies (inf for a rejected or failed query)."""
        if self.settled:
            return
        cfg = self.config
        # a failed query's inf would make the interpolated percentile nan: cap it, still over any target
        latencies = np.minimum(np.asarray(latencies_ms, dtype=np.float64), FAILED_MS)
        tail = float(np.percentile(latencies, cfg.percentile))
        if tail > cfg.target_ms:
            action, step = "down", -1
        elif tail < cfg.target_ms / (1 + cfg.stable_region):
            action, step = "up", 1
        else:
            action, step = "hold", 0
        self.updates.append(Update(self.rate, tail, action))
        self._indices.append(self.index)
        self.index = int(np.clip(self.index + step, 0, len(self.grid) - 1))
        recent = self._indices[-cfg.settle_window:]
        if len(self.updates) >= cfg.max_updates or (len(recent) == cfg.settle_window and max(recent) - min(recent) <= 2):
            self.settle()

    def settle(self) -> float:
        """The median of the last `settle_window` rates tried (the current rate if none was)."""
        if self.settled_rate is None:
            recent = [u.rate for u in self.updates[-self.config.settle_window:]]
            self.settled_rate = float(np.median(recent)) if recent else self.rate
        return self.settled_rate


class Feedback:
    """Windows of g completed queries for the controller, counting only queries that arrived at the
    current rate (DeepRecSys also counts stragglers from the previous rate, which overshoots).

    Queries that arrived at the new rate but waited behind the previous rate's backlog do count:
    leaving them out too would measure from an emptied queue, which overshoots the other way (a
    simulated M/D/2 queue settled up to 3 grid steps too high)."""

    def __init__(self, controller: RateController):
        self.controller = controller
        self.changed_at = -math.inf
        self._window: list[float] = []

    def record(self, arrival: float, latency_ms: float, now: float) -> None:
        """One completion (latency inf for a rejected or failed query) seen at time `now`."""
        controller = self.controller
        if controller.settled or arrival < self.changed_at:
            return
        self._window.append(latency_ms)
        if len(self._window) >= controller.config.granularity:
            before = controller.rate
            controller.observe(self._window)
            self._window = []
            if controller.rate != before:
                self.changed_at = now


# --- one configuration's sustainable rate ----------------------------------------------------------


@dataclass
class Trial:
    config: dict[str, int]
    qps: float
    """The configuration's latency-bounded rate: the confirmed one, or the settled one unconfirmed."""
    updates: list[Update]
    seconds: float
    queries: int
    timed_out: bool = False
    at_grid_edge: bool = False
    """Settled on the grid's lowest or highest rate: the true rate may lie beyond (widen grid_span)."""
    settled_qps: float = 0.0
    """The controller's settled rate."""
    confirm: list[dict[str, Any]] = field(default_factory=list)
    confirmed: bool = False
    bracketed: bool = False
    below: float | None = None
    """Not confirmed: the latency-bounded rate lies below this, the lowest rate tried."""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "updates": [asdict(u) for u in self.updates]}


def find_sustainable_rate(
    target: QueryTarget,
    workload: Workload,
    controller: RateController,
    *,
    max_seconds: float = 60.0,
    warmup_queries: int = 8,
    config: dict[str, int] | None = None,
    make: QueryFactory | None = None,
) -> Trial:
    """Offer Poisson load at the controller's rate until it settles (or `max_seconds` pass)."""
    feedback = Feedback(controller)
    lock = threading.Lock()
    make = make or query_factory(target, workload.rng)
    if warmup_queries:
        drive(target, fixed_schedule(np.zeros(warmup_queries), workload.sizes.sample(warmup_queries, workload.rng)), make)

    def on_done(c: Completion) -> None:
        failed = c.rejected or c.error is not None
        with lock:
            feedback.record(c.arrival, math.inf if failed else c.latency * 1000.0, time.perf_counter())

    began = time.perf_counter()
    deadline = began + max_seconds

    def schedule() -> Iterator[tuple[float, int]]:
        arrivals = workload.arrivals(controller.rate)
        sizes = workload.sizes.stream(workload.rng)
        offset = 0.0
        while not controller.settled and time.perf_counter() < deadline:
            if arrivals.rate != controller.rate:
                arrivals.rate = controller.rate
            offset += arrivals.next_gap()
            yield offset, next(sizes)

    run = drive(target, schedule(), make, on_done=on_done, drain_timeout_s=30.0)
    with lock:
        timed_out = not controller.settled
        qps = controller.settle()
    edge = qps <= controller.grid[0] or qps >= controller.grid[-1]
    return Trial(dict(config or {}), qps, list(controller.updates), time.perf_counter() - began, run.submitted,
                 timed_out, edge, settled_qps=qps)


# --- hill climbing ---------------------------------------------------------------------------------


def hill_climb(candidates: Sequence[T], measure: Callable[[T], float]) -> tuple[T, list[tuple[T, float]]]:
    """DeepRecSys's climb: measure candidates in order; at the first whose value is strictly lower
    than the previous one's, stop and keep the previous one. If all are measured, the first best.
    Returns (the choice, [(candidate, value)] in the order measured)."""
    if not candidates:
        raise ConfigError("hill climb: no candidates")
    tried: list[tuple[T, float]] = []
    for candidate in candidates:
        tried.append((candidate, measure(candidate)))
        if len(tried) >= 2 and tried[-1][1] < tried[-2][1] * (1 - TIE):
            return tried[-2][0], tried
    top = max(value for _, value in tried)
    return next(c for c, value in tried if value >= top * (1 - TIE)), tried


# --- DeepRecSched ----------------------------------------------------------------------------------


@dataclass
class SchedKnobs:
    """Everything that bounds a sched run's time and precision (documented in README "Load testing")."""

    batch_sizes: list[int] = field(default_factory=lambda: [0, 512, 384, 256, 128, 64])
    """Candidates for b in climb order; 0 = whole queries (the static configuration)."""
    thresholds: list[int] = field(default_factory=lambda: [0, 512, 384, 256])
    """Candidates for q_thr with an accelerator; 0 = never offload."""
    target_ms: float | None = None
    target_factor: float = 1.5
    """Without target_ms: this x the static configuration's p95 at `low_load` of its capacity."""
    low_load: float = 0.10
    low_load_queries: int = 80
    """Measure the low-load p95 over about this many queries (6 to 30 seconds)."""
    offline_queries: int = 256
    granularity: int = 64
    """Queries per controller update (g); slow models settle sooner with fewer (e.g. 24 for RMC2)."""
    stable_region: float = 0.10
    grid_steps: int = 46
    grid_span: tuple[float, float] = (0.02, 8.0)
    """The rate grid, as fractions of the static Offline capacity (steps of 14%). Splitting can
    sustain more than whole queries' Offline rate: merged 1024-row batches are slow per row for
    wide models (RMC2), so the grid reaches well beyond it."""
    start_load: float = 0.5
    """The first trial starts at this fraction of capacity; later ones at the previous trial's rate."""
    max_updates: int = 24
    settle_window: int = 6
    trial_seconds: float = 30.0
    confirm_seconds: float = 5.0
    """Confirm each configuration's settled rate in steady runs this long, a grid step up or down at a
    time (`confirm_rate`); the climb compares confirmed rates. 0: the settled rates, as DeepRecSys."""
    confirm_steps: int = 8
    ceiling: bool = True
    """Measure this machine's roofline for the model (about 5 s) and report the tuned rate against it."""


def engine_config(batch_size: int, threshold: int) -> dict[str, int]:
    """The engine settings of a configuration (b, q_thr). b caps both the split and the rows a worker
    merges into one batch (DeepRecSys's per-core batch size; merging sub-requests back into batches
    of up to the engine's default would undo the split); b = 0 keeps whole queries and the engine's
    default batching (the static configuration)."""
    config = {"sub_batch": batch_size, "offload_threshold": threshold}
    return config | ({"max_batch": batch_size} if batch_size else {})


def deeprecsched(
    make_target: Callable[..., QueryTarget],
    workload: Workload,
    knobs: SchedKnobs,
    *,
    offload: bool = True,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Tune (b, q_thr) on targets made by `make_target(**engine_config(b, q_thr))`; the q_thr climb
    runs only with `offload` (an accelerator pool to offload to)."""
    static = make_target(**engine_config(0, 0))
    trials: list[Trial] = []
    try:
        make = query_factory(static, workload.rng)  # one set of queries for every configuration
        warm_queries(make, workload.sizes.sample(512, workload.rng))
        capacity = offline_run(static, workload, knobs.offline_queries, make=make)
        cap_qps = capacity["achieved_qps"]
        if not cap_qps:
            raise ConfigError("the static configuration answered no query in the Offline run")
        say(f"static Offline capacity: {cap_qps:.1f} queries/s")
        target_info: dict[str, Any] = {"source": "given"}
        target_ms = knobs.target_ms
        if target_ms is None:
            low_rate = knobs.low_load * cap_qps
            seconds = float(np.clip(knobs.low_load_queries / low_rate, 6.0, 30.0))
            low = server_run(static, workload, low_rate, seconds, make=make)
            target_ms = knobs.target_factor * low["latency_ms"]["p95"]
            target_info = {"source": f"{knobs.target_factor:g}x the static p95 at {knobs.low_load:.0%} of capacity",
                           "low_load": low}
            say(f"static p95 at {knobs.low_load:.0%} load: {low['latency_ms']['p95']:.2f} ms -> target {target_ms:.2f} ms")
        start = [knobs.start_load * cap_qps]
        step = (knobs.grid_span[1] / knobs.grid_span[0]) ** (1 / (knobs.grid_steps - 1))

        def measure(b: int, q: int) -> float:
            done = _trial(trials, b, q)
            if done is not None:
                return done.qps
            target = static if (b, q) == (0, 0) else make_target(**engine_config(b, q))
            lo, hi = knobs.grid_span
            controller = RateController(ControllerConfig(
                target_ms, granularity=knobs.granularity, stable_region=knobs.stable_region,
                min_rate=lo * cap_qps, max_rate=hi * cap_qps, steps=knobs.grid_steps,
                max_updates=knobs.max_updates, settle_window=knobs.settle_window), start[0])
            try:
                trial = find_sustainable_rate(target, workload, controller, max_seconds=knobs.trial_seconds,
                                              config={"batch_size": b, "offload_threshold": q}, make=make)
                if knobs.confirm_seconds > 0:
                    confirmed = confirm_rate(target, trial.settled_qps, workload, target_ms, make=make, step=step,
                                             seconds=knobs.confirm_seconds, steps=knobs.confirm_steps)
                    trial.qps, trial.confirm = confirmed["qps"], confirmed["confirm"]
                    trial.below = confirmed.get("below")
                    trial.confirmed, trial.bracketed = confirmed["confirmed"], confirmed["bracketed"]
            finally:
                if target is not static:
                    target.close()
            trials.append(trial)
            start[0] = trial.qps or start[0]  # a configuration that met no rate leaves the start where it was
            notes = [f"{len(trial.updates)} updates", f"settled {trial.settled_qps:.1f}", f"{trial.seconds:.0f} s"]
            notes += ["timed out"] if trial.timed_out else []
            notes += ["at the edge of the rate grid"] if trial.at_grid_edge else []
            if knobs.confirm_seconds > 0:
                notes += [("confirmed" if trial.bracketed else "confirmed, a lower bound") if trial.confirmed
                          else f"NOT confirmed: no rate down to {trial.below:.1f} met the target"]
            say(f"  b={_b(b):>5} q_thr={_q(q):>5}: {trial.qps:8.1f} queries/s  ({', '.join(notes)})")
            return trial.qps

        say(f"climbing b over {', '.join(map(_b, knobs.batch_sizes))}")
        batch_size, _ = hill_climb(knobs.batch_sizes, lambda b: measure(b, 0))
        threshold = 0
        if offload and knobs.thresholds:
            say(f"climbing q_thr over {', '.join(map(_q, knobs.thresholds))} with b={_b(batch_size)}")
            threshold, _ = hill_climb(knobs.thresholds, lambda q: measure(batch_size, q))
        chosen = {"static": (0, 0), "tuned": (batch_size, threshold)}
        for config in chosen.values():
            measure(*config)
        picked = {name: _trial(trials, *config) for name, config in chosen.items()}
        ceiling = inference_ceiling(static, workload) if knobs.ceiling else None
        report: dict[str, Any] = {
            "target_p95_ms": target_ms,
            "target": target_info,
            "capacity": capacity,
            "offload": offload,
            **{name: {"qps": t.qps, "batch_size": t.config["batch_size"], "offload_threshold": t.config["offload_threshold"],
                      "settled_qps": t.settled_qps, "confirmed": t.confirmed, "bracketed": t.bracketed, "below": t.below}
               for name, t in picked.items()},
            "speedup": picked["tuned"].qps / picked["static"].qps if picked["static"].qps else None,
            # None when the static configuration met the target at no rate tried (then see static.below)
            "ceiling": ceiling,
            "tuned_of_ceiling": picked["tuned"].qps / ceiling["queries_per_s"] if ceiling else None,
            "trials": [t.to_dict() for t in trials],
            "knobs": asdict(knobs),
        }
    finally:
        static.close()
    return report


def confirm_rate(
    target: QueryTarget,
    rate: float,
    workload: Workload,
    target_ms: float,
    *,
    seconds: float,
    steps: int,
    step: float,
    make: QueryFactory | None = None,
) -> dict[str, Any]:
    """A settled rate re-measured in steady runs of `seconds` (up to 4x longer at low rates, to see
    100 queries), a grid step at a time: up while the p95 meets the target, down while it misses,
    until a met rate neighbours a missed one (`bracketed`), at most `steps` steps. Returns {qps,
    confirmed, bracketed, confirm: [runs]}: qps is the highest rate that met the target (a lower
    bound when not bracketed); when none did, 0 (and `below`: the lowest rate tried), so the climb
    ranks the configuration under every confirmed one."""
    out: dict[str, Any] = {"confirm": [], "confirmed": False, "bracketed": False}
    direction = 0
    for _ in range(steps + 1):
        # at least CONFIRM_QUERIES queries (a p95 of fewer is nearly their maximum), at most 4x as long
        duration = float(np.clip(CONFIRM_QUERIES / rate, seconds, 4 * seconds))
        run = server_run(target, workload, rate, duration, warmup_s=0.5, target_ms=target_ms, make=make)
        out["confirm"].append({k: run[k] for k in ("offered_qps", "achieved_qps", "latency_ms", "requests", "rejected",
                                                  "errors", "meets_target")})
        move = 1 if run["meets_target"] else -1
        if move == 1:
            out |= {"qps": rate, "confirmed": True}
        if direction and move != direction:
            out["bracketed"] = True
            break
        direction = move
        rate *= step ** move
    if not out["confirmed"]:  # no latency-bounded rate down to the lowest tried: none to claim
        out |= {"qps": 0.0, "below": min(r["offered_qps"] for r in out["confirm"])}
    return out


def inference_ceiling(target: QueryTarget, workload: Workload) -> dict[str, Any] | None:
    """This machine's limit for the model and workload, in queries/s: the roofline of
    `recstack.ceilings` per candidate item (forward FLOPs at the measured 2048^3 GEMM rate, then
    the item's embedding rows at the measured random-gather rate) over the mean query size. None
    when the target holds no model (a server) or the model has more than one embedding width."""
    from recstack import ceilings as roofline

    model, draw = getattr(target, "model", None), getattr(target, "synthetic_query", None)
    dim = getattr(getattr(model, "embeddings", None), "dim", None)
    if model is None or draw is None or dim is None or not hasattr(model, "measured_flops_per_sample"):
        return None
    rng = np.random.default_rng(0)
    batch = draw(-1, 256, 0.0, rng).batch
    flops = model.measured_flops_per_sample(batch)
    gather_bytes = batch.sparse.values.numel() / batch.batch_size * dim * 4
    ceilings = roofline.measure_ceilings(row_bytes=dim * 4, seconds=0.4)
    bound = roofline.roofline_samples_per_s(flops, gather_bytes, 0.0, ceilings)
    mean_size = float(workload.sizes.sample(100_000, rng).mean())
    return {
        "queries_per_s": bound["samples_per_s"] / mean_size,
        "items_per_s": bound["samples_per_s"],
        "bound": bound["bound"],
        "mean_query_size": mean_size,
        "flops_per_item": flops,
        "gather_bytes_per_item": gather_bytes,
        **{k: ceilings[k] for k in ("matmul_gflops", "gather_gbs", "cpu_share", "loadavg_1m")},
    }


def _trial(trials: list[Trial], b: int, q: int) -> Trial | None:
    return next((t for t in trials if t.config == {"batch_size": b, "offload_threshold": q}), None)


def _b(b: int) -> str:
    return "whole" if b == 0 else str(b)


def _q(q: int) -> str:
    return "never" if q == 0 else str(q)


# --- plot ------------------------------------------------------------------------------------------


def plot_trajectory(report: dict[str, Any], path: str | Path) -> tuple[Path | None, str | None]:
    """Per trial: the controller's rate and window p95 per update, then the confirmation runs (o: met
    the target, x: missed), and the configuration's rate (thick)."""
    from recstack.plotting import NO_MATPLOTLIB, figure, save_figure

    try:
        fig = figure(9.0, 6.0)
    except ImportError:
        return None, NO_MATPLOTLIB
    rate_ax, tail_ax = fig.subplots(2, 1, sharex=True)
    begin = 0
    for i, trial in enumerate(report["trials"]):
        updates, runs = trial["updates"], trial.get("confirm", [])
        x = np.arange(begin, begin + len(updates))
        label = f"b={_b(trial['config']['batch_size'])} q={_q(trial['config']['offload_threshold'])}"
        color = f"C{i % 10}"
        rate_ax.plot(x, [u["rate"] for u in updates], ".-", color=color, lw=1, label=label)
        tail_ax.plot(x, [min(u["tail_ms"], 1e6) for u in updates], ".-", color=color, lw=1)
        for j, run in enumerate(runs):
            marker = "o" if run["meets_target"] else "x"
            at = begin + len(updates) + j
            rate_ax.plot([at], [run["offered_qps"]], marker, color=color, ms=5)
            if run["latency_ms"]["p95"] is not None:
                tail_ax.plot([at], [run["latency_ms"]["p95"]], marker, color=color, ms=5)
        end = begin + len(updates) + len(runs)
        rate_ax.hlines(trial["qps"], begin, max(end - 1, begin), color=color, lw=2.5)
        begin = end + 2
    tail_ax.axhline(report["target_p95_ms"], color="crimson", ls="--", lw=1, label="target")
    rate_ax.set_ylabel("offered rate (queries/s)")
    tail_ax.set_ylabel("p95 (ms)")
    tail_ax.set_yscale("log")
    tail_ax.set_xlabel("controller updates, then confirmation runs (o met, x missed); thick: the configuration's rate")
    rate_ax.set_title(f"DeepRecSched: tuned {report['tuned']['qps']:.0f} q/s vs static {report['static']['qps']:.0f} q/s "
                      f"at p95 <= {report['target_p95_ms']:.1f} ms", fontsize=10)
    rate_ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    tail_ax.legend(fontsize=7)
    for ax in (rate_ax, tail_ax):
        ax.grid(True, which="both", alpha=0.25)
    return save_figure(fig, path)


# --- the command -----------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        return parse_int_list(text, "sizes")
    except ConfigError:
        raise argparse.ArgumentTypeError(f"expected sizes >= 0 separated by commas, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from recstack.serve.loadgen_cli import add_target_arguments

    defaults = SchedKnobs()
    parser.description = (
        "DeepRecSched: find the per-request batch size b and offload threshold q_thr with the highest QPS whose "
        "p95 latency stays under the target, against the static configuration (whole queries, no offload)."
    )
    add_target_arguments(parser)
    parser.add_argument("--target-p95-ms", type=positive_float, metavar="MS",
                        help="the p95 target (default: --target-factor x the static p95 at 10%% load)")
    parser.add_argument("--target-factor", type=positive_float, default=defaults.target_factor, metavar="F",
                        help="without --target-p95-ms: F x the static p95 at 10%% load (default 1.5)")
    parser.add_argument("--batch-sizes", type=_int_list, default=defaults.batch_sizes, metavar="LIST",
                        help="b candidates in climb order, 0 = whole queries (default 0,512,384,256,128,64)")
    parser.add_argument("--thresholds", type=_int_list, default=defaults.thresholds, metavar="LIST",
                        help="q_thr candidates with an accelerator, 0 = never (default 0,512,384,256)")
    parser.add_argument("--granularity", type=positive_int, default=defaults.granularity, metavar="G",
                        help="queries per controller update (default 64; fewer settle sooner on slow models)")
    parser.add_argument("--stable-region", type=nonnegative_float, default=defaults.stable_region,
                        help="hold while the p95 is within [target / (1 + this), target] (default 0.1)")
    parser.add_argument("--max-updates", type=positive_int, default=defaults.max_updates,
                        help="settle after this many controller updates at the latest (default 24)")
    parser.add_argument("--settle-window", type=positive_int, default=defaults.settle_window,
                        help="settle on the median of this many last rates (default 6)")
    parser.add_argument("--grid-steps", type=int_in(2, MAX_GRID_STEPS, what=f"an integer in [2, {MAX_GRID_STEPS}]"),
                        default=defaults.grid_steps,
                        help="rates on the log grid from 2%% to 800%% of the static capacity (default 46)")
    parser.add_argument("--trial-seconds", type=float_in(0.0, MAX_SECONDS, low_open=True, what=f"seconds in (0, {MAX_SECONDS:g}]"),
                        default=defaults.trial_seconds,
                        help="the longest the controller runs for one configuration (default 30)")
    parser.add_argument("--confirm-seconds", type=float_in(0.0, MAX_SECONDS, what=f"seconds in [0, {MAX_SECONDS:g}]"),
                        default=defaults.confirm_seconds,
                        help="confirm each configuration's rate in steady runs this long (default 5; 0: as DeepRecSys)")
    parser.add_argument("--confirm-steps", type=nonnegative_int, default=defaults.confirm_steps,
                        help="at most this many grid steps up or down while confirming (default 8)")
    parser.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                        help="skip measuring this machine's roofline for the model (about 5 s)")
    parser.add_argument("--plot", metavar="FILE.png", help="the trajectory (default: beside --report)")
    parser.add_argument("--report", metavar="FILE", help="write the JSON report here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def check_accelerator(args: argparse.Namespace) -> None:
    """The q_thr climb offloads to --accelerator (auto: cuda when there is one, else a cpu pool;
    none: no climb). Refused up front rather than ignored or failing after the b climb: the climb
    without --accelerator, or with no threshold > 0 to try; cuda without a CUDA device."""
    climbs = any(args.thresholds)
    if args.accelerator == "none" and climbs and args.thresholds != SchedKnobs().thresholds:
        raise ConfigError(f"--thresholds {','.join(map(str, args.thresholds))} are offload thresholds: "
                          "--accelerator none has no pool to offload to")
    if args.accelerator in ("cuda", "cpu") and not climbs:
        raise ConfigError(f"--accelerator {args.accelerator}: --thresholds has no value > 0, so no query would ever "
                          "be offloaded to it (e.g. --thresholds 0,512,256)")
    check_cuda(args.accelerator)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from recstack.progress import say
    from recstack.report import check_output_path, new_report, write_report
    from recstack.serve.engine import freeze_heap
    from recstack.serve.loadgen_cli import engine_factory, workload_from

    check_accelerator(args)
    check_output_path(args.report)
    check_output_path(args.plot, "--plot", "plot.png")
    knobs = SchedKnobs(
        batch_sizes=args.batch_sizes, thresholds=args.thresholds, target_ms=args.target_p95_ms,
        target_factor=args.target_factor, granularity=args.granularity, stable_region=args.stable_region,
        grid_steps=args.grid_steps, max_updates=args.max_updates, settle_window=args.settle_window,
        trial_seconds=args.trial_seconds, confirm_seconds=args.confirm_seconds, confirm_steps=args.confirm_steps,
        ceiling=args.ceiling,
    )
    make = engine_factory(args, extra)
    workload = workload_from(args)
    freeze_heap()  # once the libraries are in; each engine it makes adds little to what a collection walks
    began = time.perf_counter()
    result = deeprecsched(make, workload, knobs, offload=args.accelerator != "none", say=say)
    report = new_report("sched") | {
        "model": {"preset": args.preset, "checkpoint": args.checkpoint, "scale": _scale(extra)},
        "engine": {"workers": args.workers, "mode": args.mode, "accelerator": args.accelerator},
        "workload": workload.sizes.describe() | {"arrival": args.arrival, "seed": args.seed},
        **result,
        "seconds": time.perf_counter() - began,
    }
    tuned, static = result["tuned"], result["static"]
    ceiling, speedup = result["ceiling"], result["speedup"]
    say(f"tuned b={_b(tuned['batch_size'])} q_thr={_q(tuned['offload_threshold'])}: {tuned['qps']:.1f} queries/s; "
        f"static {static['qps']:.1f} queries/s ({f'{speedup:.2f}x' if speedup else 'no static rate met it'}) "
        f"at p95 <= {result['target_p95_ms']:.2f} ms"
        + (f"; machine roofline {ceiling['queries_per_s']:.0f} queries/s ({ceiling['bound']}-bound)" if ceiling else ""))
    plot = args.plot or (str(Path(args.report).with_suffix(".png")) if args.report else None)
    if plot:
        written, why = plot_trajectory(report, plot)
        report["plot"] = str(written) if written else why
    write_report(args.report, report)
    return 0


def _scale(extra: list[str]) -> float:
    from recstack.config import parse_overrides

    return float(parse_overrides(extra).get("model.scale", 1.0))
