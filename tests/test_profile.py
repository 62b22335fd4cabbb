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
    assert main(["profile", "--model", "tiny", "--steps", "0"]) == 2
    assert "error:" in capsys.readouterr().err


def test_profile_attention_model_charges_attention_and_sequence_lookups(tmp_path):
    report = tmp_path / "din.json"
    assert main(["profile", "--model", "din", "--model.scale", "0.0001", "--steps", "3", "--warmup", "1",
                 "--train.batch_size", "128", "--report", str(report), "--quiet"]) == 0
    r = json.loads(report.read_text())
    assert r["seconds"]["attention"] > r["seconds"]["mlp"] > 0  # the activation unit runs per history item
    assert r["backward_seconds"]["attention"] > 0
    assert r["seconds"]["embedding"] > 0 and r["seconds"]["interaction"] == 0
