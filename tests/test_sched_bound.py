"""The queueing model behind DeepRecSched's ceiling: hand-worked schedules, the Pollaczek-Khinchine
mean of an M/G/1 queue, and the bound on two cores."""

import json

import numpy as np
import pytest

from recstack.bench import sched_bound
from recstack.bench.sched_bound import BoundKnobs, Draws, Machine, Policy, bound, simulate
from recstack.errors import ConfigError
from recstack.serve.workload import SizeDistribution

NO_MERGE = 1  # max_batch 1: whole queries never merge (a sub-request larger than max_batch leaves alone)


def latencies(policy, machine, sizes, arrivals=None):
    arrivals = np.zeros(len(sizes)) if arrivals is None else np.asarray(arrivals, dtype=float)
    return simulate(policy, machine, arrivals, np.asarray(sizes)).tolist()


def test_busy_workers_beyond_the_cores_share_them():
    # one core, two workers: both queries run at half speed until the small one ends
    assert latencies(Policy(), Machine(cores=1, workers=2, max_batch=NO_MERGE), [100, 300]) == pytest.approx([200, 400])


def test_a_split_query_ends_with_its_last_sub_request():
    # 700 rows, b = 384: 384 and 316 rows in parallel on two cores
    assert latencies(Policy(sub_batch=384), Machine(cores=2, workers=2), [700]) == pytest.approx([384])
    # b = 256 on one worker: three sub-requests one after another
    assert latencies(Policy(sub_batch=256), Machine(cores=1, workers=1), [700]) == pytest.approx([700])


def test_a_free_worker_merges_queued_queries_up_to_max_batch():
    machine = Machine(cores=1, workers=1, max_batch=1024)
    # the first query finds the worker idle and leaves alone; the two queued behind it leave together
    assert latencies(Policy(), machine, [100, 100, 100]) == pytest.approx([100, 300, 300])
    # a 600-row query leaves alone; of the two queued behind it the second does not fit with the first
    assert latencies(Policy(), machine, [100, 600, 600]) == pytest.approx([100, 700, 1300])
    assert latencies(Policy(), machine, [100, 300, 600]) == pytest.approx([100, 1000, 1000])  # 900 rows fit
    # a query arriving while the worker is busy waits for the next batch
    assert latencies(Policy(), machine, [100, 100, 100], [0, 10, 20]) == pytest.approx([100, 290, 280])


def test_offloaded_queries_go_whole_to_the_accelerator_pool_on_shared_cores():
    machine = Machine(cores=2, workers=2, accelerator_workers=1, max_batch=NO_MERGE)
    # three busy workers on two cores run at 2/3 speed until the small queries end at 150; the
    # offloaded 700-row query then has 600 rows left at full speed
    assert latencies(Policy(offload_threshold=512), machine, [700, 100, 100]) == pytest.approx([750, 150, 150])
    # at exactly the threshold the query is offloaded (>=): it no longer waits behind the CPU queue
    cpu_only = latencies(Policy(), Machine(cores=1, workers=1, max_batch=NO_MERGE), [300, 512])
    offloaded = latencies(Policy(offload_threshold=512), Machine(cores=1, workers=1, max_batch=NO_MERGE), [300, 512])
    assert cpu_only == pytest.approx([300, 812])
    assert offloaded == pytest.approx([600, 812])  # both share the one core from the start


def test_whole_queries_on_one_worker_match_the_pollaczek_khinchine_mean():
    sizes = SizeDistribution.parse("mlperf").sample(200_000, np.random.default_rng(1))
    rate = 0.7 / sizes.mean()
    arrivals = np.cumsum(np.random.default_rng(2).exponential(1 / rate, len(sizes)))
    latency = simulate(Policy(), Machine(cores=1, workers=1, max_batch=NO_MERGE), arrivals, sizes)
    mean_s, mean_s2 = sizes.mean(), (sizes.astype(float) ** 2).mean()
    expected = mean_s + rate * mean_s2 / (2 * (1 - rate * mean_s))  # service + M/G/1 mean wait
    assert latency[20_000:].mean() == pytest.approx(expected, rel=0.04)


def test_the_sustainable_rate_is_the_highest_rate_that_meets_the_target():
    machine = Machine(cores=2, workers=2)
    draws = Draws.draw(SizeDistribution.parse("mlperf"), 4000, seed=0)
    target = 1000.0
    rate = sched_bound.sustainable_rate(Policy(), machine, draws, target, low=1e-5, high=0.02)
    assert draws.tail(Policy(), machine, rate, 95.0) <= target < draws.tail(Policy(), machine, rate * 1.02, 95.0)
    assert sched_bound.sustainable_rate(Policy(), machine, draws, 50.0, low=1e-5, high=0.02) == 0.0


def test_on_two_cores_the_best_policy_stays_under_one_and_a_half_times_the_static_rate():
    """MLPerf's sizes put the static p95 at 10% load on the 700-row queries (target 1,050 row-times)
    or, in a sample with fewer of them, on the 600-row ones (target 900). Splitting over two cores
    buys about 1.3x at the first and about 1.45x at the second in this model (ideal cores, no
    per-batch overhead): at best the edge of the serving issue's >= 1.5x on this machine."""
    knobs = BoundKnobs(batch_sizes=[0, 384, 128], thresholds=[0, 512], queries=6000)
    machine, sizes = Machine(cores=2, workers=2), SizeDistribution.parse("mlperf")
    result = bound(machine, sizes, knobs)
    assert result["target_s"] == pytest.approx(1.5 * 700) == pytest.approx(1.5 * result["low_load_tail_s"])
    assert result["static_qps"] > 0 and 1.1 < result["ratio"] < 1.4
    assert result["best"]["sub_batch"] in (384, 128) and result["best"]["offload_threshold"] == 0
    tighter = bound(machine, sizes, knobs, target_s=1.5 * 600)
    assert result["ratio"] < tighter["ratio"] < 1.5


def test_the_static_policy_is_measured_even_when_the_grid_leaves_it_out():
    result = bound(Machine(), SizeDistribution.parse("fixed:200"), BoundKnobs(batch_sizes=[128], thresholds=[0],
                                                                               queries=2000))
    assert [(p["sub_batch"], p["offload_threshold"]) for p in result["policies"]] == [(0, 0), (128, 0)]
    assert result["static_qps"] > 0


def test_the_command_prints_the_grid_and_writes_its_report(tmp_path, capsys):
    report = tmp_path / "bound.json"
    code = sched_bound.main(["--batch-sizes", "0,256", "--thresholds", "0", "--queries", "2000",
                             "--report", str(report)])
    assert code == 0
    result = json.loads(report.read_text())
    assert {p["sub_batch"] for p in result["policies"]} == {0, 256}
    assert "best: b=" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--cores", "0"], ["--batch-sizes", "a,b"], ["--sizes", "zipf:2"]])
def test_bad_arguments_get_one_line(argv, capsys):
    assert sched_bound.main(argv + ["--queries", "200"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


def test_the_accelerator_pool_merges_too():
    machine = Machine(cores=1, workers=1, accelerator_workers=1, accelerator_speed=1.0, max_batch=1024)
    assert latencies(Policy(offload_threshold=200), machine, [300, 300, 300]) == pytest.approx([300, 900, 900])


def test_bad_machines_and_arrivals_are_refused():
    with pytest.raises(ConfigError):
        latencies(Policy(offload_threshold=100), Machine(accelerator_workers=0), [100, 200])
    for arrivals in ([0.0, np.nan], [1.0, 0.0]):
        with pytest.raises(ValueError):
            latencies(Policy(), Machine(), [100, 100], arrivals)
    with pytest.raises(ConfigError):
        bound(Machine(), SizeDistribution.parse("mlperf"), BoundKnobs(batch_sizes=[], queries=200))


def test_an_accelerator_of_its_own_does_not_take_the_cores():
    machine = Machine(cores=2, workers=2, accelerator_workers=1, accelerator_speed=4.0, max_batch=NO_MERGE)
    assert latencies(Policy(offload_threshold=512), machine, [700, 100, 100]) == pytest.approx([175, 100, 100])
