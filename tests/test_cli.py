"""The command line end to end: train on synthetic data, the report keys other tools read,
evaluate and predict from a checkpoint on real Criteo rows, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from recstack.data.store import Dataset
from tests.conftest import shared_data

RECSTACK = [sys.executable, "-m", "recstack.cli"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*RECSTACK, *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"recstack {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_train_on_synthetic_data_writes_the_report(tmp_path):
    report_path = tmp_path / "report.json"
    run("train", "--model.preset", "tiny", "--data.synth_rows", "20000", "--train.epochs", "2",
        "--train.batch_size", "256", "--report", str(report_path), "--quiet")
    report = json.loads(report_path.read_text())
    for key in ("auc", "logloss", "ne", "accuracy"):
        assert np.isfinite(report["metrics"][key])
    assert report["throughput"]["samples_per_s"] > 0
    assert report["config"]["model"]["preset"] == "tiny"
    assert report["versions"]["torch"]
    # the tiny generator's labels come from a known model: training must get most of the way there
    true_auc = report["data"]["info"]["true_auc"]
    assert report["metrics"]["auc"] > 0.5 + 0.6 * (true_auc - 0.5)
    assert (tmp_path / "metrics.jsonl").read_text().count('"event"') >= 1


@pytest.fixture(scope="module")
def criteo_checkpoint(tmp_path_factory):
    sample = shared_data("criteo", "train_sample.tsv")
    root = tmp_path_factory.mktemp("criteo")
    data = root / "data"
    run("data", "prepare", "criteo", "--input", str(sample), "--out", str(data), "--split-tail", "0.15", "--quiet")
    ckpt = root / "ckpt"
    run("train", "--data", str(data), "--checkpoint-dir", str(ckpt), "--model.preset", "tiny",
        "--train.batch_size", "512", "--train.epochs", "1", "--quiet", "--report", str(root / "train.json"))
    return root, data, ckpt


def test_evaluate_checkpoint_on_data_and_on_raw_input_agree(criteo_checkpoint, tmp_path):
    root, data, ckpt = criteo_checkpoint
    on_data = tmp_path / "on_data.json"
    run("evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--report", str(on_data), "--quiet")
    m = json.loads(on_data.read_text())["metrics"]
    train_report = json.loads((root / "train.json").read_text())
    assert m["auc"] == pytest.approx(train_report["metrics"]["auc"], abs=1e-9)
    assert m["count"] == 12108 - 10292

    # the raw tail mapped through the checkpoint's own vocabulary scores exactly like the prepared tail
    lines = shared_data("criteo", "train_sample.tsv").read_text().splitlines(keepends=True)
    tail = tmp_path / "tail.tsv"
    tail.write_text("".join(lines[10292:]))
    on_raw = tmp_path / "on_raw.json"
    run("evaluate", "--checkpoint", str(ckpt), "--input", str(tail), "--report", str(on_raw), "--quiet")
    raw = json.loads(on_raw.read_text())
    assert raw["metrics"]["count"] == m["count"]
    assert raw["metrics"]["auc"] == pytest.approx(m["auc"], abs=1e-6)
    assert raw["metrics"]["logloss"] == pytest.approx(m["logloss"], abs=1e-5)


def test_predict_scores_every_line_and_marks_rejects(criteo_checkpoint, tmp_path):
    _, _, ckpt = criteo_checkpoint
    unlabeled = shared_data("criteo", "test_unlabeled_sample.tsv")
    lines = unlabeled.read_text().splitlines(keepends=True)[:500]
    lines[3] = "garbage\tline\n"
    lines[10] = lines[10].replace("\t", "\tzz", 1)  # a non-integer dense value
    raw = tmp_path / "in.tsv"
    raw.write_text("".join(lines))
    out = tmp_path / "scores.txt"
    report = tmp_path / "predict.json"
    run("predict", "--checkpoint", str(ckpt), "--input", str(raw), "--output", str(out), "--report", str(report),
        "--quiet")
    scores = out.read_text().splitlines()
    assert len(scores) == 500
    assert scores[3] == "nan" and scores[10] == "nan"
    values = np.array([float(s) for i, s in enumerate(scores) if i not in (3, 10)])
    assert ((values > 0) & (values < 1)).all()
    rep = json.loads(report.read_text())
    assert rep["rows_read"] == 500 and rep["rows_rejected"] == 2 and rep["rows_scored"] == 498


def test_predict_on_a_damaged_gzip_scores_what_it_can_read_and_says_where_it_stopped(criteo_checkpoint, tmp_path):
    import gzip

    _, _, ckpt = criteo_checkpoint
    data = shared_data("criteo", "test_unlabeled_sample.tsv").read_bytes()
    compressed = bytearray(gzip.compress(data))
    for i in range(60):
        compressed[len(compressed) // 2 + i] ^= 0xFF
    raw = tmp_path / "in.tsv.gz"
    raw.write_bytes(bytes(compressed))
    out, report = tmp_path / "scores.txt", tmp_path / "predict.json"
    proc = run("predict", "--checkpoint", str(ckpt), "--input", str(raw), "--output", str(out), "--report", str(report),
               "--quiet")
    rep = json.loads(report.read_text())
    assert rep["rows_read"] >= 3000 and len(out.read_text().splitlines()) == rep["rows_read"]
    assert rep["notes"] and "gzip stream ends early" in rep["notes"][0]
    assert "warning:" in proc.stderr and "gzip stream ends early" in proc.stderr  # said even with --quiet


def test_predict_and_evaluate_on_a_gzip_broken_before_its_first_line_fail(criteo_checkpoint, tmp_path):
    """Nothing could be read: an empty score file with exit 0 would pass for a result."""
    import gzip

    _, _, ckpt = criteo_checkpoint
    raw = tmp_path / "in.tsv.gz"
    raw.write_bytes(gzip.compress(shared_data("criteo", "test_unlabeled_sample.tsv").read_bytes())[:30])
    out = tmp_path / "scores.txt"
    proc = run("predict", "--checkpoint", str(ckpt), "--input", str(raw), "--output", str(out), "--quiet", check=False)
    assert proc.returncode == 2 and "no line could be read (the input holds no line: see the warning above)" in proc.stderr
    assert proc.stderr.count("gzip stream ends early") == 1
    assert "Traceback" not in proc.stderr and not out.exists()
    proc = run("evaluate", "--checkpoint", str(ckpt), "--input", str(raw), "--quiet", check=False)
    assert proc.returncode == 2 and "(the input holds no line: see the warning above)" in proc.stderr and "all rejected" not in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--train.batch_size", "many"], "expected an integer"),
        (["train", "--train.no_such_key", "1"], "unknown config key"),
        (["train", "--data", "/nonexistent/dir"], "does not exist"),
        (["train", "--config", "/nonexistent.yaml"], "does not exist"),
        (["train", "--model.preset", "nope"], "unknown model preset"),
        (["evaluate", "--checkpoint", "/nonexistent.pt", "--data", "/tmp"], "does not exist"),
        (["data", "prepare", "criteo", "--input", "/nonexistent.tsv", "--out", "/tmp/x"], "nonexistent.tsv"),
    ],
)
def test_bad_input_is_one_line_error(args, message):
    proc = run(*args, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], proc.stderr


def test_evaluate_refuses_a_dataset_with_other_vocabularies(criteo_checkpoint, tmp_path):
    _, _, ckpt = criteo_checkpoint
    other = tmp_path / "other"
    run("data", "prepare", "criteo", "--input", str(shared_data("criteo", "train_sample.tsv")), "--out", str(other),
        "--split-tail", "0.15", "--vocab-min-count", "40", "--quiet")
    proc = run("evaluate", "--checkpoint", str(ckpt), "--data", str(other), check=False)
    assert proc.returncode == 2 and "ids would mean other values" in proc.stderr


def test_resume_under_other_settings_is_refused(criteo_checkpoint, tmp_path):
    _, data, ckpt = criteo_checkpoint
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt, copy)
    proc = run("train", "--data", str(data), "--checkpoint-dir", str(copy), "--resume", "--model.preset", "tiny",
               "--train.batch_size", "64", "--quiet", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "train.batch_size" in proc.stderr and "cannot resume" in proc.stderr


def test_train_with_fae_reports_its_counters(tmp_path):
    data = tmp_path / "data"
    run("data", "synth", "--preset", "tiny", "--rows", "12000", "--out", str(data), "--quiet")
    report_path = tmp_path / "fae.json"
    run("train", "--data", str(data), "--model.preset", "tiny", "--fae.budget", "8KiB", "--fae.switch_period", "3",
        "--train.epochs", "2", "--train.batch_size", "256", "--report", str(report_path), "--quiet")
    report = json.loads(report_path.read_text())
    fae = report["fae"]
    assert 0 < fae["hot_input_fraction"] < 1 and fae["hot_rows"] > 0
    assert fae["switches"] >= 2 and fae["bytes_synced"] >= fae["switches"] * fae["hot_bytes"]
    assert report["throughput"]["steps"] == report["training"]["epochs_completed"] * (report["throughput"]["steps"] // 2)
    # every step is a hot or a cold one, and their times make up the training time
    assert fae["hot_steps"] > 0 and fae["cold_steps"] > 0
    assert fae["hot_steps"] + fae["cold_steps"] == report["throughput"]["steps"]
    assert fae["hot_seconds"] + fae["cold_seconds"] == pytest.approx(report["throughput"]["train_seconds"])
    assert (data / "hotcold" / "summary.json").is_file()
    assert report["metrics"]["auc"] > 0.6


def test_predict_ignores_labels_of_labelled_input(criteo_checkpoint, tmp_path):
    _, _, ckpt = criteo_checkpoint
    lines = shared_data("criteo", "train_sample.tsv").read_text().splitlines(keepends=True)[:50]
    lines[2] = "7" + lines[2][1:]  # not a click label, but predict only scores
    raw = tmp_path / "labelled.tsv"
    raw.write_text("".join(lines))
    out = tmp_path / "scores.txt"
    run("predict", "--checkpoint", str(ckpt), "--input", str(raw), "--output", str(out), "--quiet")
    scores = out.read_text().splitlines()
    assert len(scores) == 50 and "nan" not in scores


def test_prepare_that_keeps_nothing_still_reports_what_it_counted(tmp_path):
    garbage = tmp_path / "garbage.tsv"
    garbage.write_bytes(b"\x00\x01binary\xff\n" * 5 + b"1\t2\t3\n" * 3)
    report = tmp_path / "r.json"
    proc = run("data", "prepare", "criteo", "--input", str(garbage), "--out", str(tmp_path / "out"),
               "--report", str(report), check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no usable rows")
    counted = json.loads(report.read_text())
    assert counted["rows_read"] == 8 == counted["rows_kept"] + counted["rows_rejected"]
    assert counted["rejects_by_reason"]["binary_garbage"] == 5
    assert counted["rejects_by_reason"]["wrong_field_count"] == 3


def test_a_config_file_that_is_not_text_is_one_line(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    listed = tmp_path / "model_list.yaml"
    listed.write_text("model: [1, 2]\n")
    for path, message in ((binary, "is not UTF-8 text"), (listed, "config section 'model' must be a mapping")):
        proc = run("train", "--config", str(path), "--quiet", check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and message in err[0], proc.stderr


@pytest.mark.parametrize("seed", ["-1", "4294967296", "99999999999999999999"])
@pytest.mark.parametrize(
    "command",
    [
        ["train"],
        ["data", "synth", "--preset", "tiny", "--rows", "10", "--out", "unused"],
        ["data", "hotcold", "--data", "unused", "--budget", "1KiB"],
        ["analyze", "skew", "--data", "unused"],
        ["bench", "train", "--preset", "tiny"],
    ],
)
def test_seeds_outside_the_generators_range_are_refused(command, seed, capsys):
    from recstack.cli import main

    try:
        code = main([*command, f"--seed={seed}", "--quiet"])
    except SystemExit as exc:  # refused by argparse (its usage line comes first)
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("4294967295" in err or "too large" in err), err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "hotcold", "--data", "unused", "--budget", "1KiB", "--dim", "0"], "--dim: expected a positive integer"),
        (["analyze", "skew", "--data", "unused", "--state-bytes-per-row", "-1"],
         "--state-bytes-per-row: expected an integer >= 0"),
    ],
)
def test_sizes_are_refused_by_argparse(argv, message, capsys):
    from recstack.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_ctrl_c_while_building_the_parser_is_not_a_traceback(monkeypatch, capsys):
    from recstack import cli

    def interrupted():  # the plugged modules' imports run here, before any command
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["models"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_train_refuses_a_report_path_it_cannot_write_before_training(tmp_path, monkeypatch, capsys):
    from recstack.cli import main
    from recstack.train import run as train_run

    monkeypatch.setattr(train_run, "open_dataset", lambda *a: pytest.fail("trained despite an unwritable --report"))
    assert main(["train", "--model.preset", "tiny", "--report", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --report {tmp_path} is a directory; name a file (e.g. {tmp_path / 'report.json'})"


@pytest.mark.parametrize("source", ["amazon", "movielens", "taobao", "synth"])
def test_preparing_into_a_dataset_needs_overwrite(source, tmp_path, capsys):
    """Every converter, and synth, refuses an --out that holds something (one line), and replaces it
    with --overwrite."""
    from recstack.cli import main
    from tests.test_amazon import write_din_dir

    if source == "amazon":
        raw = write_din_dir(tmp_path / "raw")
    elif source == "movielens":
        raw = tmp_path / "u.data"
        raw.write_text("".join(f"{u}\t{i}\t5\t{u * 10 + i}\n" for u in (1, 2, 3) for i in range(u, u + 20)))
    else:  # taobao (synth reads nothing)
        raw = tmp_path / "ub.csv"
        raw.write_text("".join(f"{u},{i},{i % 3},pv,{i}\n" for u in (1, 2) for i in range(10, 16)))
    argv = ["data", "prepare", source, "--input", str(raw), "--out", str(tmp_path / "out"), "--quiet"]
    if source == "synth":
        argv = ["data", "synth", "--preset", "tiny", "--rows", "100", "--out", str(tmp_path / "out"), "--quiet"]
    elif source == "movielens":
        argv += ["--test-negatives", "2"]
    assert main(argv) == 0
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a dataset; give --overwrite" in err[0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before and Dataset(tmp_path / "out")
    assert main([*argv, "--overwrite"]) == 0
