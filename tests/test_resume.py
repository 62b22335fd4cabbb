"""Kill a real training process with SIGKILL and resume it: the final parameters must equal those
of a run that was never interrupted (same seed, same config)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from recstack import checkpoint

RECSTACK = [sys.executable, "-m", "recstack.cli"]


def synth(out: Path, rows: int) -> None:
    subprocess.run([*RECSTACK, "data", "synth", "--preset", "tiny", "--rows", str(rows), "--out", str(out), "--quiet"],
                   check=True)


def train_cmd(data: Path, ckpt: Path, *extra: str) -> list[str]:
    return [
        *RECSTACK, "train", "--data", str(data), "--checkpoint-dir", str(ckpt), "--quiet",
        "--model.preset", "tiny", "--model.dropout", "0.2",  # dropout: the RNG state must resume too
        "--train.batch_size", "32", "--train.epochs", "3", "--train.checkpoint_every", "25",
        "--train.keep_checkpoints", "2", "--train.eval_every", "400", "--train.threads", "1",
        "--train.optimizer", "adam", "--train.warmup_steps", "50", "--train.decay_start_step", "500",
        "--train.decay_steps", "1500", "--data.val_fraction", "0.1", "--seed", "7", *extra,
    ]


def final_state(ckpt_dir: Path) -> dict:
    return checkpoint.load(checkpoint.latest(ckpt_dir))


@pytest.mark.parametrize(
    "extra",
    [(), ("--fae.budget", "8KiB", "--fae.switch_period", "7")],
    ids=["plain", "fae"],  # FAE: the position is the hot/cold schedule's, the hot rows live in a second tier
)
def test_killed_training_resumes_to_identical_parameters(tmp_path, extra):
    data = tmp_path / "data"
    synth(data, rows=24_000)
    env = {**os.environ, "PYTHONHASHSEED": "0"}

    straight = tmp_path / "straight"
    subprocess.run(train_cmd(data, straight, *extra), check=True, env=env)

    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(train_cmd(data, resumed, *extra), env=env)
    deadline = time.time() + 120
    try:
        # kill somewhere after a few checkpoints, mid-run
        while time.time() < deadline and proc.poll() is None:
            done = checkpoint.list_checkpoints(resumed)
            if done and int(done[-1].name[5:15]) >= 300:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed: the test proves nothing"
    killed_at = int(checkpoint.latest(resumed).name[5:15])
    expected_final = int(final_state(straight)["trainer"]["step"])
    assert killed_at < expected_final

    subprocess.run([*train_cmd(data, resumed, *extra), "--resume"], check=True, env=env)

    a, b = final_state(straight), final_state(resumed)
    assert a["trainer"]["step"] == b["trainer"]["step"] == expected_final
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), f"{name} differs after resume"
    for sa, sb in zip(a["dense_optimizer"]["state"].values(), b["dense_optimizer"]["state"].values()):
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key]))
    assert [h["auc"] for h in a["trainer"]["history"]] == [h["auc"] for h in b["trainer"]["history"]]


def test_partial_write_is_never_the_latest(tmp_path):
    d = tmp_path / "ckpt"
    checkpoint.save(d / checkpoint.checkpoint_name(10), {"model": {"w": torch.ones(2)}, "trainer": {"step": 10}})
    # a crash mid-write leaves a temporary file with a later step: it must be ignored
    (d / (checkpoint.checkpoint_name(20) + ".tmp")).write_bytes(b"PK\x03\x04 half a zip")
    assert checkpoint.latest(d).name == checkpoint.checkpoint_name(10)
    assert torch.equal(checkpoint.load(d)["model"]["w"], torch.ones(2))


def test_damaged_checkpoint_is_a_one_line_error(tmp_path):
    from recstack.errors import CheckpointError

    bad = tmp_path / checkpoint.checkpoint_name(5)
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        checkpoint.load(bad)
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        checkpoint.load(tmp_path / "empty-dir" if (tmp_path / "empty-dir").mkdir() is None else None)


def test_with_early_stopping_each_checkpoint_holds_the_model_its_name_says(tmp_path):
    """The final ckpt-N holds step N's model (what --resume continues); the kept model is best.pt,
    written at the step validation chose, and the report names it."""
    data = tmp_path / "data"
    synth(data, rows=6000)
    ckpt = tmp_path / "ckpt"
    report = tmp_path / "r.json"
    subprocess.run([*RECSTACK, "train", "--data", str(data), "--checkpoint-dir", str(ckpt), "--quiet",
                    "--model.preset", "tiny", "--train.batch_size", "64", "--train.epochs", "3", "--train.eval_every", "10",
                    "--train.early_stopping_patience", "100", "--data.val_fraction", "0.2", "--train.lr", "0.05",
                    "--train.sparse_lr", "0.5", "--report", str(report)], check=True)
    import json

    r = json.loads(report.read_text())
    last = checkpoint.latest(ckpt)
    payload = checkpoint.load(last)
    assert int(last.stem.split("-")[1]) == payload["trainer"]["step"] == r["training"]["history"][-1]["step"]
    best = checkpoint.load(ckpt / checkpoint.BEST)
    assert r["checkpoint"] == str(ckpt / checkpoint.BEST)
    assert best["trainer"]["step"] == r["training"]["best_step"] < payload["trainer"]["step"]
    changed = [k for k in best["model"] if not torch.equal(best["model"][k], payload["model"][k])]
    assert changed, "the last model and the kept one differ"
