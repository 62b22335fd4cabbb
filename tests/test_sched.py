"""DeepRecSched: the load controller against simulated queues whose sustainable rate is known, the
hill climb on known curves, and the tuning flow end to end on a simulated engine."""

from __future__ import annotations

import heapq
import json
import math
import queue
import threading
import time

import numpy as np
import pytest
import torch

from recstack.errors import ConfigError
from recstack.serve import sched
from recstack.serve.batching import split_bounds
from recstack.serve.protocol import Completion, Query
from recstack.serve.sched import ControllerConfig, Feedback, RateController, SchedKnobs, Trial, hill_climb
from recstack.serve.workload import SizeDistribution, Workload

# --- the controller, step by step ------------------------------------------------------------------


def test_controller_steps_down_up_and_holds_in_the_stable_region():
    c = RateController(ControllerConfig(10.0, granularity=4, min_rate=10, max_rate=1000, steps=21), start_rate=100)
    assert c.rate == pytest.approx(100)
    c.observe([1, 1, 1, 12])  # p95 over the target: the next lower rate
    assert c.rate == pytest.approx(100 / 10 ** 0.1) and c.updates[-1].action == "down"
    c.observe([9.5] * 4)  # within [target / 1.1, target]: hold
    assert c.rate == pytest.approx(100 / 10 ** 0.1) and c.updates[-1].action == "hold"
    c.observe([9.0] * 4)  # under target / 1.1: the next higher rate
    assert c.rate == pytest.approx(100) and c.updates[-1].action == "up"
    c.observe([math.inf] * 4)  # rejected queries count as over the target
    assert c.updates[-1].action == "down"
    assert [u.rate for u in c.updates] == pytest.approx([100, 79.43, 79.43, 100], rel=1e-3)


def test_controller_stays_on_its_grid():
    c = RateController(ControllerConfig(10.0, granularity=1, min_rate=1, max_rate=8, steps=4, max_updates=50,
                                        settle_window=50), start_rate=1000)
    assert c.rate == 8
    for _ in range(3):
        c.observe([1.0])
    assert c.rate == 8
    for _ in range(10):
        c.observe([100.0])
    assert c.rate == 1


def test_controller_settles_on_the_median_of_the_last_rates_after_max_updates():
    config = ControllerConfig(10.0, granularity=1, min_rate=1, max_rate=1024, steps=11, max_updates=7, settle_window=5)
    c = RateController(config, start_rate=32)
    for latency in (1, 1, 1, 1, 1, 1):  # climbing: 32, 64, ..., 1024 never spans <= 2 steps over 5 updates
        c.observe([latency])
        assert not c.settled
    c.observe([1])
    assert c.settled and len(c.updates) == 7
    assert c.settled_rate == pytest.approx(np.median([128, 256, 512, 1024, 1024]))
    c.observe([100])  # a settled controller ignores further windows
    assert len(c.updates) == 7


def test_controller_settles_early_when_it_oscillates_between_neighbours():
    config = ControllerConfig(10.0, granularity=1, min_rate=1, max_rate=1024, steps=11, max_updates=100, settle_window=6)
    c = RateController(config, start_rate=64)
    for latency in (1, 100, 1, 100, 1):
        c.observe([latency])
        assert not c.settled
    c.observe([100])
    assert c.settled and c.settled_rate == pytest.approx(96)  # median of 64, 128, 64, 128, 64, 128


def test_feedback_counts_only_queries_that_arrived_at_the_current_rate():
    c = RateController(ControllerConfig(10.0, granularity=2, min_rate=10, max_rate=1000, steps=21), start_rate=100)
    feedback = Feedback(c)
    feedback.record(arrival=0.0, latency_ms=50, now=0.05)
    feedback.record(arrival=0.01, latency_ms=50, now=0.06)  # a full window: over the target, the rate drops
    assert len(c.updates) == 1 and feedback.changed_at == 0.06
    feedback.record(arrival=0.02, latency_ms=1, now=0.07)  # arrived before the change: left out
    feedback.record(arrival=0.03, latency_ms=1, now=0.08)
    assert len(c.updates) == 1
    feedback.record(arrival=0.07, latency_ms=1, now=0.09)
    feedback.record(arrival=0.08, latency_ms=1, now=0.10)
    assert len(c.updates) == 2 and c.updates[-1].action == "up"


def test_bad_controller_configs():
    with pytest.raises(ConfigError):
        ControllerConfig(0.0)
    with pytest.raises(ConfigError):
        ControllerConfig(10.0, min_rate=5, max_rate=5)
    with pytest.raises(ConfigError):
        ControllerConfig(10.0, granularity=0)


# --- the controller against simulated queues -------------------------------------------------------


def simulate_queue_p95(rate: float, service, servers: int, rng: np.random.Generator, queries: int = 40_000) -> float:
    """The p95 sojourn time (ms) of a FIFO queue with `servers` servers at a fixed Poisson rate."""
    arrivals = np.cumsum(rng.exponential(1 / rate, queries))
    free = [0.0] * servers
    latency = np.empty(queries)
    for i, a in enumerate(arrivals):
        start = max(a, heapq.heappop(free))
        finish = start + service(rng)
        heapq.heappush(free, finish)
        latency[i] = finish - a
    return float(np.percentile(latency[queries // 10:], 95) * 1000)


def run_controller_on_queue(controller: RateController, service, servers: int, rng: np.random.Generator) -> float:
    """Discrete-event simulation: Poisson arrivals at the controller's current rate into a FIFO
    queue; completions, in time order, feed the controller until it settles."""
    feedback = Feedback(controller)
    free = [0.0] * servers
    in_flight: list[tuple[float, float]] = []
    next_arrival = rng.exponential(1 / controller.rate)
    for _ in range(2_000_000):
        if controller.settled:
            return controller.settled_rate
        if in_flight and in_flight[0][0] <= next_arrival:
            finish, arrival = heapq.heappop(in_flight)
            feedback.record(arrival, (finish - arrival) * 1000, finish)
        else:
            start = max(next_arrival, heapq.heappop(free))
            finish = start + service(rng)
            heapq.heappush(free, finish)
            heapq.heappush(in_flight, (finish, next_arrival))
            next_arrival += rng.exponential(1 / controller.rate)
    raise AssertionError("the controller never settled")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_controller_finds_the_sustainable_rate_of_an_mdc_queue(seed):
    # M/D/2, 10 ms per query (200 q/s of capacity), p95 target 25 ms
    def service(rng):
        return 0.010

    config = ControllerConfig(25.0, granularity=64, min_rate=10, max_rate=400, steps=40, max_updates=60)
    grid = np.geomspace(config.min_rate, config.max_rate, config.steps)
    truth_rng = np.random.default_rng(100)
    meets = [simulate_queue_p95(rate, service, 2, truth_rng) <= config.target_ms for rate in grid[grid < 200]]
    best = int(np.flatnonzero(meets).max())  # the highest grid rate whose p95 meets the target
    assert 100 < grid[best] < 200
    settled = run_controller_on_queue(RateController(config, start_rate=50), service, 2, np.random.default_rng(seed))
    assert grid[best - 1] <= settled <= grid[best + 1], (settled, grid[best])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_controller_finds_the_closed_form_rate_of_an_mm1_queue(seed):
    # M/M/1 sojourn times are exponential with rate mu - lambda: p95 = ln(20) / (mu - lambda).
    # Near saturation they are strongly correlated from query to query, so a window must be long to
    # estimate the p95: with g = 64 the controller overshoots here by up to 40% (see README, sched).
    mu, target_s = 100.0, 0.1
    sustainable = mu - math.log(20) / target_s  # 70.04 q/s
    config = ControllerConfig(target_s * 1000, granularity=256, min_rate=5, max_rate=200, steps=40, max_updates=60)
    grid = np.geomspace(config.min_rate, config.max_rate, config.steps)
    best = int(np.flatnonzero(grid <= sustainable).max())
    settled = run_controller_on_queue(RateController(config, start_rate=20), lambda rng: rng.exponential(1 / mu), 1,
                                      np.random.default_rng(seed))
    assert grid[best - 1] <= settled <= grid[best + 1], (settled, sustainable)


# --- the hill climb --------------------------------------------------------------------------------


def climb(values: list[float]):
    measured = []

    def measure(i):
        measured.append(i)
        return values[i]

    choice, tried = hill_climb(list(range(len(values))), measure)
    return choice, measured, tried


def test_hill_climb_finds_the_peak_of_a_unimodal_curve_and_stops_after_one_worse():
    choice, measured, tried = climb([10, 20, 35, 30, 50, 5])
    assert choice == 2 and measured == [0, 1, 2, 3]  # argmax + 2 evaluations; 50 beyond the dip is never seen
    assert tried == [(0, 10), (1, 20), (2, 35), (3, 30)]


def test_hill_climb_monotone_curves():
    assert climb([1, 2, 3, 4])[:2] == (3, [0, 1, 2, 3])  # rising: the last
    assert climb([4, 3, 2, 1])[:2] == (0, [0, 1])  # falling: the first, after one look further


def test_hill_climb_ties_continue_and_argmax_takes_the_first_best():
    assert climb([5, 5, 6, 6])[:2] == (2, [0, 1, 2, 3])  # a tie is not worse: go on; the first of the best
    assert climb([5, 5, 4])[:2] == (1, [0, 1, 2])  # stops at 4 < 5, keeps the one before
    # the same grid rate reached along different paths differs in its last bits: still a tie
    drift = 172.52852275455766, 172.5285227545576
    assert drift[1] < drift[0] and climb([*drift, 180.0])[:2] == (2, [0, 1, 2])
    assert climb([drift[1], drift[0]])[0] == 0  # the first of the best, not the last bit's winner
    with pytest.raises(ConfigError):
        hill_climb([], lambda c: 0.0)


def test_threshold_search_climbs_like_the_batch_search():
    # offload thresholds in DeepRecSys's order: QPS rises while fewer queries are kept off the accelerator
    qps = {0: 100.0, 512: 120.0, 384: 150.0, 256: 140.0, 128: 90.0}
    seen = []
    choice, tried = hill_climb(list(qps), lambda q: seen.append(q) or qps[q])
    assert choice == 384 and seen == [0, 512, 384, 256]


# --- the tuning flow -------------------------------------------------------------------------------


def test_deeprecsched_climbs_b_then_q_thr_on_confirmed_rates_against_the_static_baseline(monkeypatch):
    """The flow with each configuration's settled and true sustainable rates given: every settled
    rate is confirmed in steady runs (a grid step at a time), b climbs on the confirmed rates to 128,
    then q_thr with b fixed; the static configuration (whole queries, no offload) is the baseline."""
    settled = {(0, 0): 100.0, (256, 0): 130.0, (128, 0): 160.0, (64, 0): 150.0,
               (128, 512): 165.0, (128, 384): 170.0, (128, 256): 200.0, (128, 128): 190.0}
    # the truth: the controller over-estimated (128, 256) and under-estimated (256, 0)
    truth = {(0, 0): 100.0, (256, 0): 150.0, (128, 0): 160.0, (64, 0): 140.0,
             (128, 512): 165.0, (128, 384): 170.0, (128, 256): 170.0, (128, 128): 150.0}
    made, measured, runs = [], [], []

    class Target:
        def __init__(self, **config):
            self.config = config
            self.key = (config["sub_batch"], config["offload_threshold"])
            made.append(config)

        def close(self):
            pass

    def fake_rate(target, workload, controller, *, config, **kwargs):
        measured.append((config["batch_size"], config["offload_threshold"]))
        assert controller.config.target_ms == pytest.approx(12.0)  # 1.5 x the static p95 at 10% load
        qps = settled[measured[-1]]
        return Trial(config, qps, [], 1.0, 100, settled_qps=qps)

    def fake_offline(target, workload, queries, **kwargs):
        assert target.config == {"sub_batch": 0, "offload_threshold": 0}
        return {"achieved_qps": 400.0}

    def fake_server(target, workload, rate, seconds, target_ms=None, **kwargs):
        if target_ms is None:  # the low-load run that sets the default target
            return {"latency_ms": {"p95": 8.0}}
        runs.append((target.key, rate))
        meets = rate <= truth[target.key] * 1.0001
        return {"offered_qps": rate, "achieved_qps": rate, "latency_ms": {"p95": 10.0 if meets else 50.0},
                "requests": 10, "rejected": 0, "errors": 0, "meets_target": meets}

    monkeypatch.setattr(sched, "find_sustainable_rate", fake_rate)
    monkeypatch.setattr(sched, "offline_run", fake_offline)
    monkeypatch.setattr(sched, "server_run", fake_server)
    monkeypatch.setattr(sched, "query_factory", lambda target, rng: None)
    monkeypatch.setattr(sched, "warm_queries", lambda make, sizes: None)
    knobs = SchedKnobs(batch_sizes=[0, 256, 128, 64, 32], thresholds=[0, 512, 384, 256, 128],
                       grid_span=(0.1, 10.0), grid_steps=41)  # grid steps of 10^(1/20) = 1.122
    report = sched.deeprecsched(Target, Workload(SizeDistribution.parse("mlperf")), knobs)
    # the q_thr climb stops at 256: confirmed 158.9 < 170 (settled, it would have gone on to 128)
    assert measured == [(0, 0), (256, 0), (128, 0), (64, 0), (128, 512), (128, 384), (128, 256)]
    confirmed = {(t["config"]["batch_size"], t["config"]["offload_threshold"]): t["qps"] for t in report["trials"]}
    # each confirmed rate is the highest grid multiple of the settled rate at or under the truth
    assert confirmed[(256, 0)] == pytest.approx(130 * 1.122, rel=1e-3)  # stepped up once, then missed
    assert confirmed[(128, 256)] == pytest.approx(200 / 1.122 ** 2, rel=1e-3)  # stepped down twice
    assert [rate for key, rate in runs if key == (128, 256)] == pytest.approx([200, 178.25, 158.87], rel=1e-3)
    tuned, static = report["tuned"], report["static"]
    assert (tuned["batch_size"], tuned["offload_threshold"]) == (128, 384)  # 170 confirmed beats 158.9
    assert tuned["qps"] == pytest.approx(170.0) and tuned["settled_qps"] == 170.0
    assert tuned["confirmed"] and tuned["bracketed"] and static["confirmed"] and static["bracketed"]
    assert static["qps"] == 100.0 and report["speedup"] == pytest.approx(1.7)
    assert report["target_p95_ms"] == pytest.approx(12.0)
    # b caps the split and the merged batch; the static configuration keeps the engine's batching
    assert {"sub_batch": 128, "offload_threshold": 256, "max_batch": 128} in made
    assert made[0] == {"sub_batch": 0, "offload_threshold": 0}
    # without an accelerator there is no threshold phase; unconfirmed, the settled rates decide
    measured.clear()
    knobs.confirm_seconds = 0
    report = sched.deeprecsched(Target, Workload(SizeDistribution.parse("mlperf")), knobs, offload=False)
    assert measured == [(0, 0), (256, 0), (128, 0), (64, 0)] and report["tuned"]["offload_threshold"] == 0
    assert report["tuned"]["qps"] == 160.0 and not report["tuned"]["confirmed"]


def test_confirmation_is_bounded_and_says_when_nothing_met(monkeypatch):
    def fake_server(target, workload, rate, seconds, target_ms=None, **kwargs):
        return {"offered_qps": rate, "achieved_qps": rate, "latency_ms": {"p95": 1.0}, "requests": 5,
                "rejected": 0, "errors": 0, "meets_target": target == "easy"}

    monkeypatch.setattr(sched, "server_run", fake_server)
    easy = sched.confirm_rate("easy", 100.0, None, 10.0, seconds=1, steps=3, step=2.0)
    # always met: up a step at a time, at most steps + 1 runs; the highest met rate, a lower bound
    assert [r["offered_qps"] for r in easy["confirm"]] == [100, 200, 400, 800]
    assert easy["confirmed"] and easy["qps"] == 800 and not easy["bracketed"]
    # never met: down to 12.5, and no rate claimed (0 ranks it under every confirmed configuration)
    hard = sched.confirm_rate("hard", 100.0, None, 10.0, seconds=1, steps=3, step=2.0)
    assert [r["offered_qps"] for r in hard["confirm"]] == [100, 50, 25, 12.5]
    assert not hard["confirmed"] and hard["qps"] == 0.0 and hard["below"] == 12.5


def test_inference_ceiling_is_the_roofline_per_item_over_the_mean_query(monkeypatch):
    from recstack import ceilings as roofline
    from recstack.serve.engine import EngineConfig, InferenceEngine

    rates = {"matmul_gflops": 50.0, "gather_gbs": 2.0, "cpu_share": 1.0, "loadavg_1m": 0.0}
    monkeypatch.setattr(roofline, "measure_ceilings", lambda row_bytes, **kwargs: dict(rates))
    engine = InferenceEngine.from_preset("tiny", EngineConfig(workers=1), seed=1)
    try:
        ceiling = sched.inference_ceiling(engine, Workload(SizeDistribution.parse("fixed:100")))
        batch = engine.synthetic_query(0, 64, 0.0, np.random.default_rng(1)).batch
        flops = engine.model.measured_flops_per_sample(batch)
        lookups = batch.sparse.values.numel() / 64
    finally:
        engine.close()
    assert ceiling["flops_per_item"] == pytest.approx(flops, rel=1e-6)
    assert ceiling["gather_bytes_per_item"] == pytest.approx(lookups * engine.model.embeddings.dim * 4, rel=0.2)
    seconds_per_item = ceiling["flops_per_item"] / 50e9 + ceiling["gather_bytes_per_item"] / 2e9
    assert ceiling["queries_per_s"] == pytest.approx(1 / seconds_per_item / 100)
    assert ceiling["mean_query_size"] == 100.0
    assert sched.inference_ceiling(object(), Workload(SizeDistribution.parse("fixed:100"))) is None  # a server


class SplittingServer:
    """A simulated engine on `cores` servers: a query splits into sub-requests of at most b items,
    each costing `overhead_s + per_item_s * items` (sleeping), FIFO over the cores."""

    def __init__(self, sub_batch=0, offload_threshold=0, max_batch=0, cores=2, overhead_s=0.001, per_item_s=4e-5):
        self.b, self.cost = sub_batch, (overhead_s, per_item_s)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._serve, daemon=True) for _ in range(cores)]
        for t in self._threads:
            t.start()

    def submit(self, query: Query, done) -> None:
        parts = split_bounds(query.size, self.b)
        state = {"left": len(parts)}
        for a, b in parts:
            self._queue.put((query, b - a, state, done, len(parts)))

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            query, items, state, done, parts = item
            time.sleep(self.cost[0] + self.cost[1] * items)
            with self._lock:
                state["left"] -= 1
                last = state["left"] == 0
            if last:
                done(Completion(query.id, query.arrival, time.perf_counter(), query.size, sub_requests=parts))

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()


@pytest.mark.slow
def test_deeprecsched_end_to_end_in_real_time_on_a_simulated_engine():
    """Real time, real controller and climb on four simulated cores (sleeping threads): the trials
    come in climb order and stop after the first worse one, the tuned configuration is the best
    confirmed, and every configuration's settled rate is confirmed in steady runs.
    (Which b wins is the machine's business: on a busy shared machine, sleeps overshoot.)"""
    knobs = SchedKnobs(batch_sizes=[0, 256, 128, 16], granularity=32, settle_window=6, max_updates=24,
                       offline_queries=128, low_load_queries=30, trial_seconds=20.0, confirm_seconds=2.0)
    report = sched.deeprecsched(lambda **config: SplittingServer(**config, cores=4, overhead_s=0.0005),
                                Workload(SizeDistribution.parse("fixed:512"), seed=1), knobs, offload=False)
    tried = [(t["config"]["batch_size"], t["qps"]) for t in report["trials"]]
    sizes, qps = [b for b, _ in tried], [q for _, q in tried]
    assert sizes == knobs.batch_sizes[: len(sizes)]
    assert all(later >= earlier for earlier, later in zip(qps[:-1], qps[1:-1]))
    stopped = len(sizes) < len(knobs.batch_sizes)
    if stopped:
        assert qps[-1] < qps[-2] and report["tuned"]["batch_size"] == sizes[-2]
    else:
        assert report["tuned"]["batch_size"] == sizes[int(np.argmax(qps))]
    assert report["tuned"]["qps"] == max(qps) and report["static"]["qps"] == qps[0]
    assert report["target_p95_ms"] > 21.0  # 1.5 x a p95 of at least the 21 ms service time
    for trial in report["trials"]:  # each settled rate confirmed in steady runs, starting from it
        runs = trial["confirm"]
        assert runs and all(r["requests"] > 0 for r in runs) and runs[0]["offered_qps"] == trial["settled_qps"]
        assert trial["confirmed"] == any(r["meets_target"] for r in runs)


def test_sched_command_on_the_tiny_model_writes_the_report_keys(tmp_path):
    from recstack.cli import main

    report = tmp_path / "sched.json"
    argv = ["sched", "--model", "tiny", "--sizes", "fixed:512", "--batch-sizes", "0,256", "--thresholds", "0,512",
            "--target-p95-ms", "100", "--granularity", "16", "--settle-window", "3", "--max-updates", "5",
            "--trial-seconds", "2", "--confirm-seconds", "0.5", "--confirm-steps", "1", "--no-ceiling", "--report", str(report), "--quiet"]
    assert main(argv) == 0
    body = json.loads(report.read_text())
    for key in ("qps", "batch_size", "offload_threshold"):
        assert key in body["tuned"]
    assert body["static"]["batch_size"] == 0 and body["target_p95_ms"] == 100 and body["target"]["source"] == "given"
    if body["static"]["qps"]:
        assert body["speedup"] == body["tuned"]["qps"] / body["static"]["qps"]
    # b climbed over whole and 256; q_thr (an accelerator pool: cpu here) with b fixed, 0 taken from the climb
    configs = [(t["config"]["batch_size"], t["config"]["offload_threshold"]) for t in body["trials"]]
    assert configs[:2] == [(0, 0), (256, 0)] and configs[2:] == [(body["tuned"]["batch_size"], 512)]
    assert all(len(t["updates"]) >= 1 and 1 <= len(t["confirm"]) <= 2 for t in body["trials"])
    assert (tmp_path / "sched.png").stat().st_size > 1000 and body["ceiling"] is None


@pytest.mark.parametrize("argv, message", [
    (["--model", "tiny", "--batch-sizes", "a,b"], "expected sizes"),
    (["--model", "tiny", "--target-p95-ms", "-1"], "argument --target-p95-ms: expected a finite number > 0"),
    (["--model", "tiny", "--batch-sizes", "-1"], "expected sizes"),  # not silently b = 1
    (["--model", "tiny", "--thresholds", "0,-512"], "expected sizes"),
    (["--model", "tiny", "--trial-seconds", "nan"], "argument --trial-seconds: expected seconds in (0, 86400]"),
    (["--model", "tiny", "--stable-region", "nan"], "argument --stable-region: expected a finite number >= 0"),
    (["--model", "tiny", "--target-p95-ms", "nan"], "argument --target-p95-ms: expected a finite number > 0"),
    # each option its own message (was one message naming five options)
    (["--model", "tiny", "--confirm-seconds", "-1"], "argument --confirm-seconds: expected seconds in [0, 86400]"),
    (["--model", "tiny", "--confirm-steps", "-1"], "argument --confirm-steps: expected an integer >= 0"),
    (["--model", "tiny", "--granularity", "0"], "argument --granularity: expected a positive integer"),
    (["--model", "tiny", "--grid-steps", "1"], "argument --grid-steps: expected an integer in [2, 10000]"),
    (["--model", "tiny", "--grid-steps", "1000000000"], "argument --grid-steps: expected an integer in [2, 10000]"),
    (["--model", "tiny", "--seed", "-1"], "argument --seed: expected a seed"),
    (["--model", "nosuch"], "unknown model preset"),
    # the accelerator pool only serves the q_thr climb: refused before the b climb, not ignored
    (["--model", "tiny", "--accelerator", "cpu", "--thresholds", "0"], "--thresholds has no value > 0"),
    (["--model", "tiny", "--accelerator", "none", "--thresholds", "0,256"], "--accelerator none has no pool"),
    (["--model", "tiny", "--report", "."], "--report . is a directory"),
])
def test_sched_command_bad_input_is_one_line(argv, message, capsys):
    from recstack.cli import main

    code = None
    try:
        code = main(["sched", *argv, "--quiet"])
    except SystemExit as exc:  # argparse's own errors exit 2 with a usage line
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a CUDA device")
def test_sched_with_cuda_asked_for_and_none_there_fails_before_the_climb(capsys):
    from recstack.cli import main

    assert main(["sched", "--model", "tiny", "--accelerator", "cuda", "--quiet"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
