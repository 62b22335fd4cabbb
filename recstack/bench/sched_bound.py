"""A bound on DeepRecSched's gain on a machine of c cores, from a queueing model.

`recstack sched` measures how much more load the tuned configuration (b, q_thr) sustains than the
static one (whole queries, no offload) at a tail target. This module says how much more it *could*
sustain: it simulates the engine's policies exactly as `recstack.serve.engine` runs them, on ideal
hardware, and takes the best over the same grid the climb searches.

The model (discrete events, Poisson arrivals, common random numbers for every policy and rate):
- a query of n rows is split into sub-requests of at most b rows (b = 0: whole), or, when n >= q_thr,
  sent whole to the accelerator pool; each pool is one FIFO queue;
- a free worker takes the oldest sub-request and merges later ones while they fit in `max_batch` rows
  (b for a split configuration, the engine's default for whole queries: `sched.engine_config`);
- a batch of r rows costs `overhead_s + r * row_s` core-seconds;
- the CPU workers and the stand-in accelerator pool's workers share the c cores: when more workers are
  busy than there are cores, each runs at c / busy of a core (processor sharing, what the OS does);
- a query's latency runs from its arrival to the end of its last sub-request.

With linear service and no overhead the ratio of rates depends only on the size distribution, c and
the target, not on the model: it is a property of the workload and the machine's core count. It
bounds the gain only while per-row cost does not grow with the batch: costs that grow (cache misses
of wide models) give splitting more to win than this model; costs that shrink (better GEMM
efficiency) give it less. The tight target can be unstable: with MLPerf's sizes the static p95 at
10% load falls on the 700-row queries (exactly 5% of them) or on the 600-row ones, depending on the
sample (`--target-rows` fixes it).

    python -m recstack.bench.sched_bound --cores 2 --sizes mlperf --target-factor 1.5 --report runs/bound.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recstack.argtypes import float_in, int_in, nonnegative_float, positive_float, positive_int, seed
from recstack.config import parse_int_list
from recstack.errors import ConfigError, RecstackError
from recstack.serve.batching import split_bounds
from recstack.serve.engine import EngineConfig
from recstack.serve.sched import SchedKnobs
from recstack.serve.workload import SizeDistribution

DEFAULT_MAX_BATCH = EngineConfig.max_batch
MAX_CORES = 1024
"""Most simulated cores and workers: each event scans every worker, so a typo like 99999999 never ends."""
MAX_QUERIES = 10_000_000
"""Most simulated queries (a few arrays of this length per rate tried; the default is 20,000)."""
MAX_OVERHEAD = 1e6
"""Most per-batch overhead, in row-times: beyond it the rates searched underflow to zero."""


@dataclass(frozen=True)
class Policy:
    sub_batch: int = 0
    """b (0: whole queries)."""
    offload_threshold: int = 0
    """q_thr (0: never offload)."""

    def label(self) -> str:
        return f"b={self.sub_batch or 'whole'}, q_thr={self.offload_threshold or '-'}"


@dataclass
class Machine:
    cores: int = 2
    workers: int = 2
    """CPU workers (the engine's default, 2; the command's default: one per core)."""
    accelerator_workers: int = 1
    accelerator_speed: float = 0.0
    """0: the accelerator pool is the CPU stand-in, its workers share the cores with the CPU workers;
    > 0: a device of its own, each worker this many times as fast as one core."""
    row_s: float = 1.0
    overhead_s: float = 0.0
    """Per-batch cost; with row_s, service_s(rows) = overhead_s + rows * row_s."""
    max_batch: int = DEFAULT_MAX_BATCH

    def service_s(self, rows: int) -> float:
        return self.overhead_s + rows * self.row_s

    def validate(self) -> None:
        if min(self.cores, self.workers, self.accelerator_workers, self.max_batch) < 1:
            raise ConfigError("the model needs cores, workers, accelerator_workers and max_batch >= 1")
        if not (self.row_s > 0 and self.overhead_s >= 0 and self.accelerator_speed >= 0):
            raise ConfigError("the model needs row_s > 0, overhead_s >= 0 and accelerator_speed >= 0")


class _Worker:
    __slots__ = ("pool", "left", "work", "parts")

    def __init__(self, pool: int):
        self.pool, self.left, self.work, self.parts = pool, 0.0, 0.0, []


def simulate(policy: Policy, machine: Machine, arrivals: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Latency of every query (same order as `arrivals`, which must be finite and ascending)."""
    machine.validate()
    if len(arrivals) and not (np.all(np.isfinite(arrivals)) and np.all(np.diff(arrivals) >= 0)):
        raise ValueError("arrivals must be finite and in ascending order")
    max_batch = policy.sub_batch or machine.max_batch
    pools = [deque(), deque()]  # (query, rows) sub-requests: CPU, accelerator
    workers = [_Worker(0) for _ in range(machine.workers)]
    if policy.offload_threshold:
        workers += [_Worker(1) for _ in range(machine.accelerator_workers)]
    own_device = machine.accelerator_speed > 0
    n = len(arrivals)
    parts_left = np.zeros(n, dtype=np.int64)
    latency = np.full(n, np.nan)
    now, nxt = 0.0, 0

    def dispatch() -> None:
        for w in workers:
            queue = pools[w.pool]
            if w.parts or not queue:
                continue
            w.parts = [queue.popleft()]
            rows = w.parts[0][1]
            while queue and rows + queue[0][1] <= max_batch:
                w.parts.append(queue.popleft())
                rows += w.parts[-1][1]
            w.left = w.work = machine.service_s(rows)

    while True:
        busy = [w for w in workers if w.parts]
        if not busy and nxt == n:
            return latency
        on_cores = sum(1 for w in busy if w.pool == 0 or not own_device)
        core_speed = min(1.0, machine.cores / on_cores) if on_cores else 0.0
        speeds = [machine.accelerator_speed if w.pool == 1 and own_device else core_speed for w in busy]
        first, finish = -1, math.inf
        for i, (w, v) in enumerate(zip(busy, speeds)):
            if now + w.left / v < finish:
                first, finish = i, now + w.left / v
        arrival = arrivals[nxt] if nxt < n else math.inf
        step_to = min(finish, arrival)
        for w, v in zip(busy, speeds):
            w.left -= (step_to - now) * v
        now = step_to
        if arrival <= finish:
            size = int(sizes[nxt])
            if policy.offload_threshold and size >= policy.offload_threshold:
                pools[1].append((nxt, size))
                parts_left[nxt] = 1
            else:
                bounds = split_bounds(size, policy.sub_batch)
                pools[0].extend((nxt, b - a) for a, b in bounds)
                parts_left[nxt] = len(bounds)
            nxt += 1
        else:
            for i, w in enumerate(busy):  # the first to finish, and any that finish with it
                if i == first or w.left <= 1e-9 * w.work:
                    for query, _ in w.parts:
                        parts_left[query] -= 1
                        if parts_left[query] == 0:
                            latency[query] = now - arrivals[query]
                    w.parts, w.left = [], 0.0
        dispatch()


@dataclass
class Draws:
    """Common random numbers: unit-rate exponential gaps and sizes, drawn once."""

    sizes: np.ndarray
    unit_gaps: np.ndarray
    warmup: int

    @classmethod
    def draw(cls, distribution: SizeDistribution, queries: int, seed: int = 0) -> Draws:
        rng = np.random.default_rng(seed)
        return cls(distribution.sample(queries, rng), rng.exponential(1.0, queries), queries // 10)

    def tail(self, policy: Policy, machine: Machine, rate: float, percentile: float) -> float:
        latency = simulate(policy, machine, np.cumsum(self.unit_gaps / rate), self.sizes)
        return float(np.percentile(latency[self.warmup:], percentile))


def capacity_qps(machine: Machine, mean_size: float) -> float:
    """Whole queries, every core busy, no merging: cores / service time of the mean query."""
    return min(machine.cores, machine.workers) / machine.service_s(round(mean_size))


def sustainable_rate(policy: Policy, machine: Machine, draws: Draws, target_s: float, *,
                     percentile: float = 95.0, low: float, high: float, steps: int = 14) -> float:
    """The highest rate in [low, high] whose tail meets the target (bisection on a log scale; 0 if
    even `low` misses it)."""
    def meets(rate: float) -> bool:
        return draws.tail(policy, machine, rate, percentile) <= target_s  # False for nan too

    if not meets(low):
        return 0.0
    if meets(high):
        return high
    for _ in range(steps):
        mid = math.sqrt(low * high)
        if meets(mid):
            low = mid
        else:
            high = mid
    return low


@dataclass
class BoundKnobs:
    batch_sizes: list[int] = field(default_factory=lambda: SchedKnobs().batch_sizes)
    """b candidates (0: whole queries) ..."""
    thresholds: list[int] = field(default_factory=lambda: SchedKnobs().thresholds)
    """... and q_thr candidates (0: none): the grid `recstack sched` climbs."""
    target_factor: float = 1.5
    low_load: float = 0.10
    percentile: float = 95.0
    queries: int = 20_000
    seed: int = 0


def bound(machine: Machine, distribution: SizeDistribution, knobs: BoundKnobs,
          target_s: float | None = None) -> dict[str, Any]:
    """The static policy's rate and every (b, q_thr) policy's rate at the target (default: the tight
    one, `target_factor` x the static tail at `low_load` of capacity), and the best of them."""
    if not knobs.batch_sizes or not knobs.thresholds:
        raise ConfigError("the grid needs at least one b and one q_thr (0: whole queries, never offload)")
    if min(knobs.batch_sizes + knobs.thresholds) < 0:
        raise ConfigError("b and q_thr must be >= 0")
    draws = Draws.draw(distribution, knobs.queries, knobs.seed)
    capacity = capacity_qps(machine, float(np.mean(draws.sizes)))
    static = Policy()
    low_load_tail = None
    if target_s is None:
        low_load_tail = draws.tail(static, machine, knobs.low_load * capacity, knobs.percentile)
    target = knobs.target_factor * low_load_tail if target_s is None else target_s
    span = {"low": 0.01 * capacity, "high": 2.0 * capacity}
    policies = [Policy(b, q) for q in knobs.thresholds for b in knobs.batch_sizes]
    rates = {p: sustainable_rate(p, machine, draws, target, percentile=knobs.percentile, **span)
             for p in dict.fromkeys([static, *policies])}
    best = max(rates, key=lambda p: rates[p])  # the first of the best: static wins ties
    return {
        "machine": asdict(machine),
        "sizes": distribution.describe(),
        "knobs": asdict(knobs),
        "capacity_qps": capacity,
        "low_load_tail_s": low_load_tail,
        "target_s": target,
        "static_qps": rates[static],
        "best": {"sub_batch": best.sub_batch, "offload_threshold": best.offload_threshold, "qps": rates[best]},
        "ratio": rates[best] / rates[static] if rates[static] else None,
        "policies": [{"sub_batch": p.sub_batch, "offload_threshold": p.offload_threshold, "qps": rates[p],
                      "of_static": rates[p] / rates[static] if rates[static] else None} for p in rates],
    }


def main(argv: Sequence[str] | None = None) -> int:
    # a refused option value is one `error:` line and exit status 2, like the module's other errors
    parser = argparse.ArgumentParser(prog="python -m recstack.bench.sched_bound", description=__doc__.split("\n\n")[0],
                                     exit_on_error=False)
    parser.add_argument("--cores", type=int_in(1, MAX_CORES, what=f"a core count in [1, {MAX_CORES}]"), default=2)
    parser.add_argument("--workers", type=int_in(0, MAX_CORES, what=f"a worker count in [0, {MAX_CORES}]"), default=0,
                        help="CPU workers (default: one per core)")
    parser.add_argument("--sizes", default="mlperf", help="query sizes, as recstack loadgen --sizes")
    parser.add_argument("--max-size", type=int, default=1024)
    parser.add_argument("--target-factor", type=positive_float, default=1.5,
                        help="the target: this x the static p95 at 10%% load (default 1.5)")
    parser.add_argument("--target-rows", type=positive_float,
                        help="or a fixed target, in row-times (the time one core takes for one row)")
    parser.add_argument("--accelerator-speed", type=nonnegative_float, default=0.0,
                        help="0: offload to a CPU stand-in pool on the same cores; > 0: to a device of its own, "
                             "each worker this many times as fast as one core")
    parser.add_argument("--max-batch", type=positive_int, default=DEFAULT_MAX_BATCH,
                        help="rows a worker merges whole queries into (the engine's --max-batch; 1: no merging)")
    parser.add_argument("--overhead", type=float_in(0.0, MAX_OVERHEAD, what=f"a number in [0, {MAX_OVERHEAD:g}]"), default=0.0,
                        help="per-batch cost, in units of one row's cost")
    grid = BoundKnobs()
    parser.add_argument("--batch-sizes", default=",".join(map(str, grid.batch_sizes)), help="b candidates (0: whole)")
    parser.add_argument("--thresholds", default=",".join(map(str, grid.thresholds)), help="q_thr candidates (0: none)")
    parser.add_argument("--queries", type=int_in(100, MAX_QUERIES, what=f"a query count in [100, {MAX_QUERIES:,}]"),
                        default=20_000)
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--report", help="write the JSON here")
    try:
        args = parser.parse_args(argv)
    except argparse.ArgumentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        machine = Machine(args.cores, args.workers or args.cores, accelerator_speed=args.accelerator_speed,
                          overhead_s=args.overhead, max_batch=args.max_batch)
        knobs = BoundKnobs(parse_int_list(args.batch_sizes, "--batch-sizes"), parse_int_list(args.thresholds, "--thresholds"),
                           args.target_factor, queries=args.queries, seed=args.seed)
        result = bound(machine, SizeDistribution.parse(args.sizes, args.max_size), knobs, target_s=args.target_rows)
    except RecstackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    static = result["static_qps"]
    how = "given" if args.target_rows else f"{args.target_factor:g}x the static p95 at 10% load"
    print(f"{args.cores} cores, sizes {args.sizes}, target ({how}) {result['target_s']:.0f} row-times")
    for p in result["policies"]:
        share = f"{p['of_static']:.2f}x" if p["of_static"] is not None else "-"
        print(f"  b={p['sub_batch'] or 'whole':>5}  q_thr={p['offload_threshold'] or '-':>4}  "
              f"{p['qps'] / result['capacity_qps']:.3f} of capacity  {share}")
    best = result["best"]
    ratio = f"{result['ratio']:.2f}x" if result["ratio"] is not None else "unbounded (static meets no rate)"
    print(f"best: {Policy(best['sub_batch'], best['offload_threshold']).label()}: {ratio} the static rate "
          f"({static / result['capacity_qps']:.3f} of capacity)")
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
