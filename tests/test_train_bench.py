"""`recstack bench train` end to end on the tiny model, including data sets too small for its rounds."""

import json

import pytest

from recstack.cli import main


def test_bench_train_runs_on_fewer_rows_than_its_rounds_need(tmp_path):
    # 1,000 rows are fewer batches than the rounds' steps plus the prefetch queue: it goes on over epochs
    # (it used to fail with "no median for empty data")
    report = tmp_path / "bench.json"
    assert main(["bench", "train", "--preset", "tiny", "--rows", "1000", "--steps", "2", "--quiet",
                 "--report", str(report)]) == 0
    body = json.loads(report.read_text())
    assert body["throughput"]["end_to_end_samples_per_s"] > 0 and body["throughput"]["compute_samples_per_s"] > 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seed", "-1"], "seed must be in [0, 4294967295]"),
        (["--train.threads", "100000"], "train.threads must be in [0, 1024]"),  # was a segfault
    ],
)
def test_bench_train_refuses_bad_config_values_in_one_line(extra, message, capsys):
    assert main(["bench", "train", "--preset", "tiny", "--rows", "1000", "--steps", "2", "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and message in err


def test_bench_train_with_a_batch_larger_than_the_data_measures_the_batch_it_runs(tmp_path):
    # the whole split is one batch: rates and the ceiling's GEMM shapes are for 1,000 rows, not for 10**12
    # (the ceiling used to allocate a 10**12-row MLP batch and die in the allocator)
    report = tmp_path / "bench.json"
    assert main(["bench", "train", "--preset", "tiny", "--rows", "1000", "--steps", "2", "--train.batch_size", "1e12",
                 "--quiet", "--report", str(report)]) == 0
    body = json.loads(report.read_text())
    assert body["batch_size"] == 1000 and body["ceiling"]["machine"]["mlp_batch"] == 1000
