"""`recstack profile`: the time of profiled training steps split by operator family; the parts add
up to the step time and every family the model has gets its forward and backward time."""

from __future__ import annotations

import json

import pytest

from recstack.cli import main


def test_profile_accounts_for_the_whole_step(tmp_path):
    report = tmp_path / "profile.json"
    assert main(["profile", "--model", "tiny", "--steps", "4", "--warmup", "1", "--report", str(report), "--quiet",
                 "--train.batch_size", "256"]) == 0
    r = json.loads(report.read_text())
    seconds = r["seconds"]
    assert set(seconds) == {"data", "embedding", "mlp", "interaction", "attention", "optimizer", "other"}
    total = r["step_ms"] * r["steps"] / 1e3
    assert sum(seconds.values()) == pytest.approx(total, rel=1e-6)
    assert sum(r["share"].values()) == pytest.approx(1.0, rel=1e-6)
    for family in ("data", "embedding", "mlp", "interaction", "optimizer"):
        assert seconds[family] > 0, family
    assert seconds["attention"] == 0  # DLRM has none
    # backward time found through the forward ops' sequence numbers, and the MLPs dominate it
    assert r["backward_seconds"]["mlp"] > 0 and r["backward_seconds"]["interaction"] > 0
    assert seconds["other"] < 0.5 * total
    assert (tmp_path / "profile.png").stat().st_size > 0


def test_profile_bad_arguments_are_one_line_errors(capsys):
    assert main(["profile", "--model", "no-such-model"]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps: expected a step count in [1, 10000]"),
        (["--steps", "99999999999"], "--steps: expected a step count in [1, 10000]"),  # sized synthetic data for it
        (["--warmup", "-1"], "--warmup: expected a step count in [0, 10000]"),
    ],
)
def test_profile_step_counts_are_refused_by_argparse(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["profile", "--model", "tiny", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--plot", "chart.txt"], "cannot write a .txt picture"),
        (["--train.threads", "100000"], "train.threads must be in [0, 1024]"),
        (["--seed", "-1"], "seed must be in [0, 4294967295]"),
    ],
)
def test_profile_refuses_bad_values_before_profiling(extra, message, tmp_path, capsys, monkeypatch):
    from recstack.analyze import profile

    monkeypatch.setattr(profile, "profile_training", lambda *a: pytest.fail("profiled despite a bad value"))
    monkeypatch.chdir(tmp_path)
    assert main(["profile", "--model", "tiny", "--steps", "1", "--warmup", "0", "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and message in err


def test_profile_quiet_prints_nothing(tmp_path):
    # kineto writes `USDT: ... profiler_start` lines to stderr from C++; --quiet silences them too
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "recstack.cli", "profile", "--model", "tiny", "--steps", "2",
                           "--warmup", "1", "--train.batch_size", "64", "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""


def test_profile_attention_model_charges_attention_and_sequence_lookups(tmp_path):
    report = tmp_path / "din.json"
    assert main(["profile", "--model", "din", "--model.scale", "0.0001", "--steps", "3", "--warmup", "1",
                 "--train.batch_size", "128", "--report", str(report), "--quiet"]) == 0
    r = json.loads(report.read_text())
    assert r["seconds"]["attention"] > r["seconds"]["mlp"] > 0  # the activation unit runs per history item
    assert r["backward_seconds"]["attention"] > 0
    assert r["seconds"]["embedding"] > 0 and r["seconds"]["interaction"] == 0
