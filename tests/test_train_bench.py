"""`recstack bench train` end to end on the tiny model, including data sets too small for its rounds."""

import json

from recstack.cli import main


def test_bench_train_runs_on_fewer_rows_than_its_rounds_need(tmp_path):
    # 1,000 rows are fewer batches than the rounds' steps plus the prefetch queue: it goes on over epochs
    # (it used to fail with "no median for empty data")
    report = tmp_path / "bench.json"
    assert main(["bench", "train", "--preset", "tiny", "--rows", "1000", "--steps", "2", "--quiet",
                 "--report", str(report)]) == 0
    body = json.loads(report.read_text())
    assert body["throughput"]["end_to_end_samples_per_s"] > 0 and body["throughput"]["compute_samples_per_s"] > 0
