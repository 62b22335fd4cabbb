import json
import math

import pytest
import torch

from recstack.bench import roofline
from recstack.bench.roofline import (
    gather_bandwidth_gbs,
    matmul_gflops,
    measure_ceilings,
    mlp_flops_per_sample,
    mlp_gemm_gflops,
    roofline_samples_per_s,
    scatter_update_bandwidth_gbs,
    stream_bandwidth_gbs,
)

FAST = 0.02  # seconds per measurement: the figures are meaningless, only their sanity is checked


def _ok(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_matmul_and_mlp_rates_positive():
    before = torch.get_num_threads()
    assert _ok(matmul_gflops(threads=1, size=64, seconds=FAST))
    assert torch.get_num_threads() == before  # threads restored
    assert _ok(matmul_gflops(size=32, dtype=torch.float64, seconds=FAST))
    assert _ok(mlp_gemm_gflops(32, [13, 64, 16], seconds=FAST))
    assert _ok(mlp_gemm_gflops(32, [[13, 32, 8], [40, 16, 1]], backward=False, threads=1, seconds=FAST))


def test_mlp_flops_per_sample():
    assert mlp_flops_per_sample([13, 512, 256], backward=False) == 2 * (13 * 512 + 512 * 256)
    assert mlp_flops_per_sample([13, 512, 256]) == 3 * 2 * (13 * 512 + 512 * 256)
    assert mlp_flops_per_sample([[4, 8], [8, 2, 1]]) == 3 * 2 * (32 + 16 + 2)
    with pytest.raises(ValueError):
        mlp_flops_per_sample([13])


def test_memory_rates_positive():
    assert _ok(stream_bandwidth_gbs("copy", array_mib=1, seconds=FAST))
    assert _ok(stream_bandwidth_gbs("triad", array_mib=1, threads=1, seconds=FAST))
    assert _ok(gather_bandwidth_gbs(64, table_rows=4096, batch_rows=256, seconds=FAST))
    assert _ok(gather_bandwidth_gbs(16, table_rows=4096, batch_rows=256, pooling=8, seconds=FAST))
    assert _ok(gather_bandwidth_gbs(16, table_rows=4096, batch_rows=250, pooling=20, seconds=FAST))
    for op in roofline.SCATTER_OPS:
        assert _ok(scatter_update_bandwidth_gbs(64, table_rows=4096, batch_rows=256, op=op, seconds=FAST))
    assert _ok(scatter_update_bandwidth_gbs(4, table_rows=100, batch_rows=256, sorted_indices=False, seconds=FAST))


def test_bad_arguments():
    with pytest.raises(ValueError):
        stream_bandwidth_gbs("scale", array_mib=1)
    with pytest.raises(ValueError):
        gather_bandwidth_gbs(10, table_rows=16, batch_rows=4)
    with pytest.raises(ValueError):
        gather_bandwidth_gbs(16, table_rows=16, batch_rows=10, pooling=11)
    with pytest.raises(ValueError):
        scatter_update_bandwidth_gbs(16, table_rows=16, batch_rows=4, op="nope")
    with pytest.raises(ValueError):
        matmul_gflops(threads=0, size=8)


def test_measure_ceilings_small():
    seen = []
    c = measure_ceilings(
        64,
        pooling=4,
        mlp_batch=16,
        mlp_widths=[[13, 32, 8], [16, 8, 1]],
        seconds=FAST,
        matmul_size=64,
        stream_mib=1,
        table_bytes=1 << 18,
        batch_rows=256,
        progress=seen.append,
    )
    for key in (
        "matmul_gflops",
        "mlp_gemm_gflops",
        "stream_copy_gbs",
        "stream_triad_gbs",
        "stream_gbs",
        "gather_gbs",
        "gather_mrows_per_s",
        "scatter_index_add_gbs",
        "scatter_gather_add_copy_gbs",
        "scatter_gbs",
        "scatter_mrows_per_s",
        "measure_s",
        "cpu_share",
    ):
        assert _ok(c[key]), key
    assert c["threads"] == torch.get_num_threads()
    assert c["row_bytes"] == 64 and c["gather_pooling"] == 4 and c["table_bytes"] == 1 << 18
    assert c["stream_gbs"] == max(c["stream_copy_gbs"], c["stream_triad_gbs"])
    assert c["scatter_gbs"] == c[f"scatter_{c['scatter_op']}_gbs"]
    assert c["mlp_widths"] == [[13, 32, 8], [16, 8, 1]]
    assert c["gather_mrows_per_s"] == pytest.approx(c["gather_gbs"] * 1e3 / 64)
    assert seen == ["matmul", "mlp gemm", "stream", "gather", "scatter"]
    assert set(c["cpu_share_by_phase"]) == set(seen)
    json.dumps(c)  # serializable as is
    bound = roofline_samples_per_s(1e6, 1e3, 1e3, c)
    assert _ok(bound["samples_per_s"])


def test_roofline_arithmetic():
    ceilings = {"matmul_gflops": 100.0, "gather_gbs": 4.0, "scatter_gbs": 1.0, "mlp_gemm_gflops": 50.0}
    # 2 MFLOP at 100 GFLOP/s = 20 us; 8 kB at 4 GB/s = 2 us; 3 kB at 1 GB/s = 3 us; total 25 us
    r = roofline_samples_per_s(2e6, 8e3, 3e3, ceilings)
    assert r["mlp_s_per_sample"] == pytest.approx(20e-6)
    assert r["gather_s_per_sample"] == pytest.approx(2e-6)
    assert r["update_s_per_sample"] == pytest.approx(3e-6)
    assert r["s_per_sample"] == pytest.approx(25e-6)
    assert r["samples_per_s"] == pytest.approx(40_000)
    assert r["mlp_share"] == pytest.approx(0.8)
    assert r["gather_share"] == pytest.approx(0.08)
    assert r["update_share"] == pytest.approx(0.12)
    assert r["bound"] == "mlp"
    assert r["matmul_gflops"] == 100.0 and r["gather_gbs"] == 4.0 and r["scatter_gbs"] == 1.0

    # the model's own GEMM rate instead of the square-GEMM peak: 2 MFLOP at 50 GFLOP/s = 40 us
    r = roofline_samples_per_s(2e6, 8e3, 3e3, ceilings, matmul_key="mlp_gemm_gflops")
    assert r["samples_per_s"] == pytest.approx(1 / 45e-6)

    # inference: nothing updated, and gather-bound
    r = roofline_samples_per_s(1e5, 1e4, 0, {"matmul_gflops": 100.0, "gather_gbs": 2.0})
    assert r["update_s_per_sample"] == 0.0 and r["update_share"] == 0.0
    assert r["samples_per_s"] == pytest.approx(1 / (1e-6 + 5e-6))
    assert r["bound"] == "gather"

    r = roofline_samples_per_s(0, 0, 0, {})
    assert r["samples_per_s"] == math.inf and r["bound"] is None


def test_roofline_bad_inputs():
    with pytest.raises(ValueError, match="scatter_gbs"):
        roofline_samples_per_s(1.0, 1.0, 1.0, {"matmul_gflops": 1.0, "gather_gbs": 1.0})
    with pytest.raises(ValueError):
        roofline_samples_per_s(-1.0, 0, 0, {"matmul_gflops": 1.0})
    with pytest.raises(ValueError):
        roofline_samples_per_s(1.0, 0, 0, {"matmul_gflops": 0.0})


def test_main_writes_report(tmp_path, monkeypatch, capsys):
    def fake(row_bytes, **kwargs):
        return measure_ceilings(
            row_bytes,
            **kwargs,
            matmul_size=32,
            stream_mib=1,
            table_bytes=1 << 16,
            batch_rows=128,
        )

    monkeypatch.setattr(roofline, "measure_ceilings", fake)
    out = tmp_path / "ceilings.json"
    roofline.main(["--row-bytes", "32", "--seconds", "0.01", "--mlp-widths", "8,16,1", "--report", str(out)])
    doc = json.loads(out.read_text())
    assert doc["command"] == "bench.roofline"
    assert doc["ceilings"]["row_bytes"] == 32 and doc["ceilings"]["mlp_widths"] == [[8, 16, 1]]
    assert "gather" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--threads", "100000"], "--threads: expected a thread count in [1, 1024]"),  # was a segfault
        (["--seconds", "nan"], "--seconds: expected seconds in (0, 600]"),  # was a hang
        (["--seconds", "0"], "--seconds: expected seconds in (0, 600]"),
        (["--row-bytes", "6"], "--row-bytes: expected a multiple of 4"),
        (["--row-bytes", "99999999999"], "--row-bytes: expected row bytes in [4, 16384]"),
        (["--pooling", "0"], "--pooling: expected rows per lookup in [1, 65536]"),
        (["--mlp-widths", "0,4"], "--mlp-widths: expected comma-separated layer widths >= 1"),
        (["--mlp-batch", "99999999999"], "--mlp-batch: expected a batch in [1, 1048576]"),
    ],
)
def test_main_refuses_bad_options_before_measuring(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(roofline, "measure_ceilings", lambda *a, **k: pytest.fail("measured despite a bad option"))
    with pytest.raises(SystemExit) as exit_:
        roofline.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


# `python -m recstack.bench.sched_bound`, the other bench command line (its own tests: test_sched_bound.py)
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cores", "99999999"], "--cores: expected a core count in [1, 1024]"),  # was a hang
        (["--target-factor", "nan"], "--target-factor: expected a finite number > 0"),  # was a made-up 'unbounded'
        (["--overhead", "inf"], "--overhead: expected a number in [0, 1e+06]"),  # was a traceback
        (["--queries", "100000000000"], "--queries: expected a query count in [100, 10,000,000]"),
        (["--seed", "-1"], "--seed: expected a seed in [0, 4294967295]"),
    ],
)
def test_sched_bound_refuses_bad_options_in_one_line(argv, message, capsys):
    from recstack.bench import sched_bound

    assert sched_bound.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and message in err
