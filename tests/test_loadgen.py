"""The load generator: arrival and size statistics over 1e5 draws, traces, and the open-loop driver
(never waits for completions; latency from the scheduled arrival)."""

from __future__ import annotations

import json
import queue
import threading
import time

import numpy as np
import pytest
import torch
from scipy import stats

from recstack.errors import ConfigError, DataError
from recstack.serve.loadgen import drive, fixed_schedule, offline_run, overload_run, server_run, summarize
from recstack.serve.protocol import Completion, Query
from recstack.serve.workload import MLPERF_QUANTILES, Arrivals, SizeDistribution, Workload, load_trace, timed_schedule

N = 100_000


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- arrivals --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [20.0, 250.0, 4000.0])
def test_poisson_gaps_have_mean_one_over_rate_and_cv_one(rate):
    gaps = Arrivals("poisson", rate, rng()).gaps(N)
    assert abs(gaps.mean() * rate - 1) < 0.02
    assert abs(gaps.std() / gaps.mean() - 1) < 0.02
    # exponential, not merely CV 1: the KS test against Exp(rate) does not reject
    assert stats.kstest(gaps, "expon", args=(0, 1 / rate)).pvalue > 1e-3


def test_next_gap_draws_the_same_process_in_blocks_and_follows_rate_changes():
    arrivals = Arrivals("poisson", 100.0, rng())
    first = np.array([arrivals.next_gap() for _ in range(20_000)])
    assert abs(first.mean() * 100 - 1) < 0.03
    arrivals.rate = 1000.0  # draws at the old rate are dropped, the next ones follow the new rate
    second = np.array([arrivals.next_gap() for _ in range(20_000)])
    assert abs(second.mean() * 1000 - 1) < 0.03


@pytest.mark.parametrize("mean_gap_ms", [1.0, 4.0, 25.0])
def test_deeprecsys_gaps_are_integer_ms_with_the_given_mean(mean_gap_ms):
    gaps_ms = Arrivals.deeprecsys(mean_gap_ms, rng()).gaps(N) * 1000
    assert np.allclose(gaps_ms, np.round(gaps_ms))
    assert abs(gaps_ms.mean() / mean_gap_ms - 1) < 0.02
    # Poisson-distributed gaps: variance = mean, so CV = 1/sqrt(mean) (0.2 at 25 ms, not 1)
    assert abs(gaps_ms.var() / mean_gap_ms - 1) < 0.03


def test_fixed_gaps_and_bad_rates():
    assert np.all(Arrivals("fixed", 50.0, rng()).gaps(10) == 0.02)
    with pytest.raises(ConfigError):
        Arrivals("poisson", 0.0, rng())
    with pytest.raises(ConfigError):
        Arrivals("bursty", 1.0, rng())


def test_timed_schedule_covers_the_duration_at_the_rate():
    offsets = timed_schedule(Arrivals("poisson", 2000.0, rng()), 20.0)
    assert offsets[-1] < 20.0 and np.all(np.diff(offsets) >= 0)
    assert abs(len(offsets) / (2000 * 20) - 1) < 0.02  # Poisson count: sd 0.5%


# --- query sizes -----------------------------------------------------------------------------------


def test_mlperf_sizes_have_the_published_probabilities():
    sizes = SizeDistribution.parse("mlperf").sample(N, rng())
    expected = {100: 0.10, 200: 0.60, 300: 0.10, 400: 0.05, 500: 0.05, 600: 0.05, 700: 0.05}
    assert set(np.unique(sizes)) == set(expected)
    for size, p in expected.items():
        share = np.mean(sizes == size)
        assert abs(share - p) < 4 * np.sqrt(p * (1 - p) / N), (size, share)  # 4 sigma of sampling error
    assert abs(sizes.mean() - 270) < 2
    assert len(MLPERF_QUANTILES) == 20


def test_quantile_file_distribution_is_reproduced(tmp_path):
    # an empirical distribution of 500 heavy-tailed sizes, one per line and with commas
    empirical = np.round(rng(1).lognormal(5.0, 0.8, 500))
    path = tmp_path / "sizes.txt"
    path.write_text("\n".join(", ".join(str(int(v)) for v in chunk) for chunk in np.array_split(empirical, 50)))
    sizes = SizeDistribution.parse(f"file:{path}", max_size=100_000).sample(N, rng())
    assert stats.ks_2samp(sizes, empirical).pvalue > 1e-3
    # and a sample from another distribution is told apart (the test can fail)
    other = np.round(rng(2).lognormal(5.1, 0.8, N))
    assert stats.ks_2samp(other, empirical).pvalue < 1e-3


@pytest.mark.parametrize("spec", ["normal:165,16", "lognormal:5.1,0.2", "fixed:300"])
def test_parametric_sizes(spec):
    sizes = SizeDistribution.parse(spec).sample(N, rng())
    assert sizes.dtype == np.int64
    if spec.startswith("normal"):
        assert abs(sizes.mean() - 165) < 0.5 and abs(sizes.std() - 16) < 0.5
    elif spec.startswith("lognormal"):  # DeepRecSys's experiments: median 164
        assert abs(np.median(sizes) - 164) < 2
    else:
        assert np.all(sizes == 300)


def test_sizes_are_clipped_to_one_and_the_maximum():
    wide = SizeDistribution.parse("normal:100,400", max_size=256).sample(N, rng())
    assert wide.min() == 1 and wide.max() == 256
    assert np.mean(wide == 256) > 0.3 and np.mean(wide == 1) > 0.3  # the tails pile up at the clips
    assert SizeDistribution.parse("mlperf", max_size=250).sample(1000, rng()).max() == 250


@pytest.mark.parametrize("spec", ["normal:1", "gamma:2,3", "fixed:x", "file:", "normal:10,-1",
                                  "fixed:-3", "fixed:0", "fixed:2000", "mlperf:3"])
def test_bad_size_specs_are_one_line_errors(spec):  # a fixed size is not clipped: 1..max_size or an error
    with pytest.raises(ConfigError):
        SizeDistribution.parse(spec)


def test_bad_quantile_files(tmp_path):
    (tmp_path / "words.txt").write_text("100 two 300")
    (tmp_path / "empty.txt").write_text("\n")
    for name in ("words.txt", "empty.txt", "missing.txt"):
        with pytest.raises(DataError):
            SizeDistribution.parse(f"file:{tmp_path / name}")


# --- traces ----------------------------------------------------------------------------------------


def test_trace_is_sorted_relative_and_keeps_sizes(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("# arrival_s, size\n10.5, 200\n10.0, 100\n11.25, 700\n")
    offsets, sizes = load_trace(path)
    assert offsets.tolist() == [0.0, 0.5, 1.25] and sizes.tolist() == [100, 200, 700]
    (tmp_path / "times.txt").write_text("0\n0.1\n0.3\n")
    offsets, sizes = load_trace(tmp_path / "times.txt")
    assert offsets.tolist() == [0.0, 0.1, 0.3] and sizes is None


@pytest.mark.parametrize("text", ["0 1\n0.5\n", "a b\n", "0 1 2\n", "-1 5\n", "0 0\n", ""])
def test_bad_traces_are_data_errors(tmp_path, text):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(DataError):
        load_trace(path)


# --- the open-loop driver --------------------------------------------------------------------------


class FifoServer:
    """A simulated target: `workers` threads serve queries FIFO in `service_s(size)` seconds each."""

    def __init__(self, service_s, workers: int = 1, queue_limit: int = 0):
        self.service_s = service_s
        self.queue_limit = queue_limit
        self.submitted_at: dict[int, float] = {}
        self._queue: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._serve, daemon=True) for _ in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, query: Query, done) -> None:
        self.submitted_at[query.id] = time.perf_counter()
        if self.queue_limit and self._queue.qsize() >= self.queue_limit:
            done(Completion(query.id, query.arrival, time.perf_counter(), query.size, rejected=True))
            return
        self._queue.put((query, done))

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            query, done = item
            time.sleep(self.service_s(query.size))
            done(Completion(query.id, query.arrival, time.perf_counter(), query.size))

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()


def test_driver_submits_on_schedule_while_a_stalled_target_queues_and_latency_grows():
    server = FifoServer(lambda size: 0.02)  # 50 q/s of capacity, offered 200 q/s
    offsets = np.arange(40) * 0.005
    run = drive(server, fixed_schedule(offsets, np.full(40, 10)), lambda i, s, a: Query(i, s, a))
    server.close()
    assert run.submitted == 40 and run.unfinished == 0 and len(run.completions) == 40
    # open loop: every submission at its scheduled time, though the target answered only a few by then
    submitted = np.array([server.submitted_at[i] - run.start for i in range(40)])
    late = np.abs(submitted - offsets)
    assert np.median(late) < 0.001 and late.max() < 0.015  # a closed loop would submit the last at 0.78 s
    done_by_last_submit = sum(c.finished - run.start <= offsets[-1] for c in run.completions)
    assert done_by_last_submit <= 12
    # latency from the scheduled arrival: query k waits for the k before it, 15 ms more than the one before
    latency = np.array(sorted((c.query_id, c.latency) for c in run.completions))[:, 1]
    assert latency[0] < 0.03
    slope = np.polyfit(np.arange(40), latency, 1)[0]
    assert 0.013 < slope < 0.018
    assert latency[-1] > 0.55


def test_latency_counts_from_the_scheduled_arrival_even_when_submitted_late():
    class Instant:
        def submit(self, query, done):
            done(Completion(query.id, query.arrival, time.perf_counter(), query.size))

        def close(self):
            pass

    def slow_factory(qid, size, arrival):
        time.sleep(0.03)  # the generator falls behind a schedule of all-at-once queries
        return Query(qid, size, arrival)

    run = drive(Instant(), fixed_schedule(np.zeros(5), np.ones(5, dtype=int)), slow_factory)
    latency = sorted(c.latency for c in run.completions)
    assert latency[-1] > 0.12  # the fifth query was built 150 ms after its arrival: it counts
    assert run.lateness.max() > 0.1


def test_summary_accounting_adds_up():
    flaky = FifoServer(lambda size: 0.001, workers=2)
    serve = flaky.submit

    def submit(query, done):  # every tenth query rejected, every tenth failed
        if query.id % 10 == 3:
            done(Completion(query.id, query.arrival, time.perf_counter(), query.size, rejected=True))
        elif query.id % 10 == 7:
            done(Completion(query.id, query.arrival, time.perf_counter(), query.size, error="boom"))
        else:
            serve(query, done)

    flaky.submit = submit
    offsets = np.arange(100) * 0.002
    run = drive(flaky, fixed_schedule(offsets, np.full(100, 5)), lambda i, s, a: Query(i, s, a))
    flaky.close()
    summary = summarize(run, offered_qps=500.0, target_ms=100.0)
    assert summary["requests"] == 100
    assert summary["completed"] + summary["rejected"] + summary["errors"] == 100
    assert (summary["rejected"], summary["errors"]) == (10, 10)
    assert summary["error_examples"] == ["boom"]
    assert summary["meets_target"] is False  # rejections fail the target whatever the tail
    assert 1 <= summary["latency_ms"]["p50"] <= summary["latency_ms"]["p95"] <= summary["latency_ms"]["p99"]
    assert abs(summary["measured_offered_qps"] - 500) < 5
    # a warm-up window leaves the first queries out
    assert summarize(run, offered_qps=500.0, warmup_s=0.099)["requests"] == 50


def test_unfinished_queries_count_as_errors():
    class BlackHole:
        def submit(self, query, done):
            pass

    run = drive(BlackHole(), fixed_schedule(np.zeros(3), np.ones(3, dtype=int)), lambda i, s, a: Query(i, s, a),
                drain_timeout_s=0.05)
    assert run.unfinished == 3
    summary = summarize(run, offered_qps=None)
    assert summary["errors"] == 3 and summary["achieved_qps"] is None


# --- scenarios against the simulated target --------------------------------------------------------


def test_server_and_offline_scenarios_measure_a_known_server():
    # 2 workers, 2 ms + 10 us per item: MLPerf sizes (mean 270) cost 4.7 ms, so ~425 q/s of capacity
    workload = Workload(SizeDistribution.parse("mlperf"), seed=3)
    server = FifoServer(lambda size: 0.002 + 1e-5 * size, workers=2)
    offline = offline_run(server, workload, 200)
    light = server_run(server, workload, 40.0, 2.0, warmup_s=0.2, target_ms=30.0)
    server.close()
    assert 250 < offline["achieved_qps"] < 440  # sleeps overshoot on a busy machine
    assert light["meets_target"] and light["rejected"] == 0 and light["errors"] == 0
    assert abs(light["achieved_qps"] - 40) < 12
    # service times of 3 to 9 ms and little queueing at 10% load
    assert 3.0 < light["latency_ms"]["p50"] < 8.0 and light["latency_ms"]["p99"] < 30.0


def test_trace_replay_keeps_the_trace_times_and_sizes(tmp_path):
    from recstack.serve.loadgen import trace_run

    path = tmp_path / "trace.txt"
    path.write_text("5.00 120\n5.05 40\n5.20 900\n5.30 7\n")
    seen = []
    server = FifoServer(lambda size: 0.001)
    serve = server.submit
    server.submit = lambda query, done: (seen.append((query.arrival, query.size)), serve(query, done))
    workload = Workload(SizeDistribution.parse("fixed:1", max_size=512), seed=0, trace=load_trace(path))
    result = trace_run(server, workload)
    server.close()
    arrivals = np.array([a for a, _ in seen])
    assert np.allclose(arrivals - arrivals[0], [0.0, 0.05, 0.2, 0.3])
    assert [s for _, s in seen] == [120, 40, 512, 7]  # the trace's sizes, clipped to --max-size
    assert result["requests"] == 4 and result["completed"] == 4
    assert result["offered_qps"] == pytest.approx(10.0)


def test_overload_scenario_reports_shedding_tail_and_recovery():
    workload = Workload(SizeDistribution.parse("fixed:100"), seed=4)
    server = FifoServer(lambda size: 0.004, workers=1, queue_limit=4)  # 250 q/s of capacity
    result = overload_run(server, workload, rate=150.0, target_ms=15.0, lead_s=0.5, overload_s=1.5, recovery_s=1.0,
                          recovery_limit_s=0.5)
    server.close()
    assert result["sheds_load"] and result["overload"]["rejected"] > 100
    # a queue of 4 in front of 4 ms bounds an accepted query's wait to ~20 ms (sleeps overshoot)
    assert result["accepted_p99_ms"] < 45 and result["accepted_p99_within_limit"]
    assert result["recovered_after_s"] < 0.1 and result["recovered_within_limit"] and result["passed"]
    assert result["recovery"]["rejected"] == 0 and result["recovery"]["completed"] > 40
    json.dumps(result)  # the report is plain JSON


# --- through HTTP ----------------------------------------------------------------------------------


def test_http_target_drives_a_live_server_and_counts_503s_as_rejections():
    from recstack.serve.app import create_app
    from recstack.serve.engine import EngineConfig, InferenceEngine
    from recstack.serve.http_target import HttpTarget
    from tests.test_server import live

    engine = InferenceEngine.from_preset("tiny", EngineConfig(workers=1, queue_limit=16), seed=1)
    workload = Workload(SizeDistribution.parse("fixed:8"), seed=5)
    with live(create_app(engine)) as url:
        target = HttpTarget(url)
        steady = server_run(target, workload, 50.0, 1.0, warmup_s=0.2)
        burst = offline_run(target, workload, 60, warmup_queries=0)  # 60 x 8 rows at once into a 16-row queue
        stats = target.stats()
        target.close()
    assert steady["requests"] > 20 and steady["completed"] == steady["requests"] and steady["errors"] == 0
    assert 0 < steady["latency_ms"]["p50"] < 1000
    assert burst["rejected"] > 0 and burst["errors"] == 0 and burst["completed"] + burst["rejected"] == 60
    # the client's and the server's counts agree (warm-up queries left out of the summaries included)
    assert stats["client"]["rejected"] == stats["server_health"]["rejected"] >= burst["rejected"]
    assert stats["client"]["ok"] == stats["server_health"]["completed"]


def test_http_target_retries_a_kept_alive_connection_the_server_closed():
    import socket

    import uvicorn

    from recstack.serve.app import create_app
    from recstack.serve.engine import EngineConfig, InferenceEngine
    from recstack.serve.http_target import HttpTarget

    engine = InferenceEngine.from_preset("tiny", EngineConfig(workers=1), seed=1)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(engine), log_level="warning", timeout_keep_alive=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        target = HttpTarget(f"http://127.0.0.1:{sock.getsockname()[1]}")
        first = drive(target, fixed_schedule(np.zeros(4), np.full(4, 8)), lambda i, s, a: Query(i, s, a))
        time.sleep(1.6)  # the server closes the four idle connections
        second = drive(target, fixed_schedule(np.zeros(4), np.full(4, 8)), lambda i, s, a: Query(i, s, a))
        target.close()
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    for run in (first, second):
        assert [c.error for c in run.completions] == [None] * 4 and not any(c.rejected for c in run.completions)


def test_http_target_without_a_server_is_a_config_error():
    from recstack.serve.http_target import HttpTarget

    with pytest.raises(ConfigError, match="no recstack server"):
        HttpTarget("http://127.0.0.1:9")
    with pytest.raises(ConfigError):
        HttpTarget("127.0.0.1:8000")  # no scheme


@pytest.mark.parametrize("url, message", [
    ("http://[::1", "Invalid IPv6 URL"),
    ("ftp://127.0.0.1:80", "http://host:port"),
    ("http://127.0.0.1:70000", "out of range"),
    ("http://127.0.0.1:-1", "could not be cast"),
    ("http://127.0.0.1 :9", "http://host:port"),  # was http.client's InvalidURL traceback
    ("http://127.0.0.1:0", "port 0"),  # was silently port 80
    ("http://127.0.0.1:8000/v2?x=1", "no path"),  # was silently dropped
])
def test_malformed_urls_are_config_errors(url, message):
    from recstack.serve.http_target import HttpTarget, parse_url

    with pytest.raises(ConfigError, match=message):
        HttpTarget(url)
    assert parse_url("http://127.0.0.1:8000/") == ("127.0.0.1", 8000) and parse_url("http://[::1]") == ("::1", 80)


def test_a_server_gone_after_its_health_check_gives_counted_errors_in_the_report(tmp_path):
    """A server that answers /health and then stops listening: every query is an error with its
    reason in the report (the Offline line used to fail on the missing items/s), none hangs."""
    import http.server

    from recstack.cli import main

    class HealthThenGone(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.server.socket.close()  # before answering: nothing listens once the client has its answer
            body = b'{"model": "fake"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), HealthThenGone)
    threading.Thread(target=server.handle_request, daemon=True).start()
    report = tmp_path / "gone.json"
    assert main(["loadgen", "--url", f"http://127.0.0.1:{server.server_address[1]}", "--scenario", "offline",
                 "--queries", "3", "--report", str(report), "--quiet"]) == 0
    body = json.loads(report.read_text())
    assert body["requests"] == body["errors"] == 3 and body["completed"] == 0 and body["achieved_qps"] is None
    assert "ConnectionRefusedError" in body["error_examples"][0]
    assert body["target_stats"]["client"]["errors"] == 3 + 3 and body["target_stats"]["server_health"] is None  # 3 warm-up queries too


def test_a_run_over_the_query_cap_is_refused_before_its_arrays_are_drawn():
    from recstack.serve.workload import MAX_QUERIES, check_query_count

    with pytest.raises(ConfigError, match="MAX_QUERIES"):
        timed_schedule(Arrivals("poisson", 1e12, rng()), 10.0)  # would be 8 TB of gaps
    with pytest.raises(ConfigError, match="makes 1e[+]07 queries"):
        check_query_count(MAX_QUERIES + 1, "--queries")
    check_query_count(MAX_QUERIES, "--queries")  # the cap itself is allowed


# --- synthetic queries and the command -------------------------------------------------------------


def test_synthetic_queries_are_drawn_a_few_times_per_size_then_reused():
    from recstack.serve.candidates import SyntheticQueries

    draws = []

    class FakeBatch:
        def __init__(self, size):
            self.size = size
            self.sparse = type("S", (), {"values": torch.zeros(size * 10)})()

    def draw(qid, size, arrival, rng):
        draws.append(size)
        return Query(qid, size, arrival, FakeBatch(size))

    make = SyntheticQueries(draw, rng(), variants=2, budget_ids=10 * 500)
    batches = [make(i, 100, float(i)).batch for i in range(6)]
    assert draws == [100, 100] and len({id(b) for b in batches}) == 2  # two variants, in rotation
    queries = [make(10 + i, 300, 0.0) for i in range(3)]
    assert draws == [100, 100, 300, 300, 300]  # the budget (500 rows' ids) is spent: drawn afresh
    assert [q.id for q in queries] == [10, 11, 12] and all(q.size == 300 for q in queries)


def test_loadgen_command_writes_a_report_and_plot(tmp_path):
    from recstack.cli import main

    report = tmp_path / "lg.json"
    assert main(["loadgen", "--preset", "tiny", "--rates", "20,60", "--duration", "0.5", "--warmup", "0.2",
                 "--sizes", "fixed:32", "--target-p95-ms", "500", "--report", str(report), "--quiet"]) == 0
    body = json.loads(report.read_text())
    assert [r["offered_qps"] for r in body["runs"]] == [20.0, 60.0]
    assert body["offered_qps"] == 60.0 and body["meets_target"]  # the highest rate meeting the target
    for key in ("achieved_qps", "requests", "rejected", "errors"):
        assert key in body
    assert set(body["latency_ms"]) >= {"p50", "p95", "p99"}
    assert body["target_stats"]["completed"] >= sum(r["requests"] for r in body["runs"])
    assert (tmp_path / "lg.png").stat().st_size > 1000


@pytest.mark.parametrize("argv, message", [
    (["--preset", "tiny", "--sizes", "gamma:1"], "not understood"),
    (["--preset", "tiny", "--sizes", "fixed:-3"], "a fixed size must be in [1, --max-size 1024]"),
    (["--preset", "tiny"], "needs --rate"),
    (["--rate", "10"], "name a model"),
    (["--preset", "tiny", "--rate", "10", "--model.depth", "3"], "only --model.scale"),
    (["--url", "http://127.0.0.1:9", "--rate", "10", "--sub-batch", "8"], "the server's"),
    (["--url", "http://127.0.0.1:9", "--rate", "10", "--workers", "4"], "the server's"),
    (["--url", "http://127.0.0.1:70000", "--rate", "10"], "out of range"),
    (["--preset", "tiny", "--scenario", "overload", "--rate", "10"], "--target-p95-ms"),
    # options the scenario would ignore
    (["--preset", "tiny", "--rate", "10", "--trace", "t.txt"], "--trace applies to --scenario trace"),
    (["--preset", "tiny", "--rate", "10", "--factor", "2"], "--factor applies to --scenario overload"),
    (["--preset", "tiny", "--scenario", "offline", "--rate", "10"], "--rate applies to --scenario server or overload"),
    (["--preset", "tiny", "--scenario", "offline", "--target-p95-ms", "5"], "--target-p95-ms applies"),
    (["--preset", "tiny", "--rate", "10", "--accelerator", "cuda"], "--offload-threshold"),
    # runs too large to hold in memory (were exit 137)
    (["--preset", "tiny", "--rate", "1e12"], "MAX_QUERIES"),
    (["--preset", "tiny", "--rate", "10", "--duration", "1e9"], "MAX_QUERIES"),
    (["--preset", "tiny", "--scenario", "offline", "--queries", "1000000000000"], "MAX_QUERIES"),
    (["--preset", "tiny", "--scenario", "overload", "--rate", "1e7", "--target-p95-ms", "5"], "MAX_QUERIES"),
])
def test_loadgen_command_bad_input_is_one_line(argv, message, capsys):
    from recstack.cli import main

    assert main(["loadgen", *argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["--percentile", "150"], "--percentile: expected a percentile in [0, 100]"),
    (["--percentile", "-1"], "--percentile: expected a percentile in [0, 100]"),
    (["--percentile", "nan"], "--percentile: expected a percentile in [0, 100]"),
    (["--sweep", "-1"], "--sweep: expected a positive integer"),
    (["--duration", "nan"], "--duration: expected a finite number > 0"),
    (["--duration", "inf"], "--duration: expected a finite number > 0"),
    (["--warmup", "nan"], "--warmup: expected a finite number >= 0"),
    (["--seed", "-1"], "--seed: expected a seed"),
    (["--workers", "100000"], "--workers: expected a number of workers in [1, 256]"),
    (["--max-size", "0"], "--max-size: expected a query size"),
    (["--rates", "5,6", "--rate", "5"], "argument --rate: not allowed with argument --rates"),
    (["--rate", "5", "--sweep", "3"], "argument --sweep: not allowed with argument --rate"),
    (["--rate", "5", "--mean-gap-ms", "3"], "argument --mean-gap-ms: not allowed with argument --rate"),
])
def test_loadgen_options_out_of_range_are_refused_by_argparse(argv, message, capsys):
    from recstack.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["loadgen", "--preset", "tiny", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("option, example", [("--report", "report.json"), ("--plot", "plot.png")])
def test_an_output_path_that_cannot_be_written_is_refused_before_the_run(tmp_path, option, example, capsys):
    from recstack.cli import main

    (tmp_path / "afile").write_text("")
    for path, message in ((tmp_path, f"is a directory; name a file (e.g. {tmp_path / example})"),
                          (tmp_path / "afile" / "x", "cannot write under")):
        assert main(["loadgen", "--preset", "tiny", "--rates", "5,6", option, str(path), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {option} ") and message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_write_report_into_a_directory_leaves_nothing_behind(tmp_path):
    from recstack.report import write_report

    (tmp_path / "adir").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        write_report(tmp_path / "adir", {"a": 1})
    with pytest.raises(TypeError):  # a failed write removes its temporary file
        write_report(tmp_path / "r.json", {"a": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir"]
    write_report(tmp_path / "new" / "r.json", {"a": 1})
    assert json.loads((tmp_path / "new" / "r.json").read_text()) == {"a": 1}
