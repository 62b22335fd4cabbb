"""`recstack train --nproc N` end to end (torch's launcher, gloo, 127.0.0.1): sharded checkpoints
that load on another number of ranks and in one process with identical scores, a rank killed with
SIGKILL and a relaunch with --resume ending where an uninterrupted run ends, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from recstack import checkpoint
from recstack.distributed import LOOPBACK_ENV

RECSTACK = [sys.executable, "-m", "recstack.cli"]
ENV = {**os.environ, **LOOPBACK_ENV, "PYTHONHASHSEED": "0", "RECSTACK_DIST_TIMEOUT": "60"}


def run(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([*RECSTACK, *args], capture_output=True, text=True, timeout=timeout, env=ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"recstack {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    run("data", "synth", "--preset", "tiny", "--rows", "6000", "--out", str(path), "--quiet")
    return path


def train_args(data: Path, ckpt: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--model.preset", "tiny", "--train.batch_size", "128",
            "--checkpoint-dir", str(ckpt), "--train.checkpoint_every", "10", "--quiet", *extra]


def report(path: Path) -> dict:
    return json.loads(path.read_text())


def test_a_checkpoint_of_two_ranks_scores_alike_on_one_and_on_three(tmp_path, data):
    ckpt = tmp_path / "ckpt"
    run(*train_args(data, ckpt, "--nproc", "2", "--embeddings.sharding", "row_wise", "--report", str(tmp_path / "r2.json")))
    latest = checkpoint.latest(ckpt)
    assert latest.is_dir() and (latest / "meta.pt").is_file()
    two = report(tmp_path / "r2.json")
    assert two["distributed"]["world_size"] == 2
    assert {t["sharding"] for t in two["distributed"]["plan"]} == {"row_wise"}
    measured, predicted = (two["distributed"][k] for k in ("all_to_all_bytes_per_step",
                                                              "predicted_all_to_all_bytes_per_step"))
    assert abs(measured - predicted) <= 0.05 * predicted
    # one process: evaluate reads the shards into plain tables
    run("evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--report", str(tmp_path / "e1.json"), "--quiet")
    one = report(tmp_path / "e1.json")["metrics"]
    # three ranks, another plan: a resume with nothing left to train scores the test split
    run(*train_args(data, ckpt, "--nproc", "3", "--embeddings.sharding", "table_wise", "--resume",
                    "--report", str(tmp_path / "r3.json")))
    three = report(tmp_path / "r3.json")["metrics"]
    for metrics in (one, three):
        assert metrics["count"] == two["metrics"]["count"]
        assert metrics["auc"] == pytest.approx(two["metrics"]["auc"], abs=1e-9)
        assert metrics["logloss"] == pytest.approx(two["metrics"]["logloss"], abs=1e-6)


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def final_state(ckpt: Path) -> dict:
    payload = checkpoint.load(checkpoint.latest(ckpt), require=checkpoint.SCORING)
    _, _, model = checkpoint.rebuild_model(payload)
    checkpoint.load_model(model, payload)
    return model.state_dict()


def test_a_rank_killed_mid_epoch_resumes_to_the_parameters_of_an_uninterrupted_run(tmp_path, data):
    extra = ("--nproc", "2", "--embeddings.sharding", "table_wise", "--train.epochs", "2", "--model.dropout", "0.2")
    straight = tmp_path / "straight"
    run(*train_args(data, straight, *extra))
    resumed = tmp_path / "resumed"
    launcher = subprocess.Popen([*RECSTACK, *train_args(data, resumed, *extra)], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    try:
        while time.time() < deadline and launcher.poll() is None and len(checkpoint.list_checkpoints(resumed)) < 2:
            time.sleep(0.05)
        assert launcher.poll() is None, "the run ended before it could be killed"
        agent = children(launcher.pid)
        ranks = [c for a in agent for c in children(a)] or agent
        os.kill(ranks[-1], signal.SIGKILL)  # one rank dies; torchrun takes the others down
        launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    before = checkpoint.latest(resumed)
    run(*train_args(data, resumed, *extra, "--resume"))
    assert checkpoint.latest(resumed) != before
    expected, got = final_state(straight), final_state(resumed)
    assert list(got) == list(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


def test_a_plan_for_another_model_is_one_line(tmp_path, data):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"world_size": 2, "tables": [{"name": "nope", "sharding": "table_wise", "ranks": [0]}]}))
    proc = run(*train_args(data, tmp_path / "c", "--nproc", "2", "--embeddings.plan", str(plan)), check=False)
    assert proc.returncode != 0
    assert "the sharding plan does not match the model" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_node_that_never_comes_is_a_timeout_with_one_line(tmp_path, data):
    env = {**ENV, "RECSTACK_DIST_TIMEOUT": "5"}
    proc = subprocess.run([*RECSTACK, "train", "--nproc", "1", "--nnodes", "2", "--node-rank", "0", "--data", str(data),
                           "--model.preset", "tiny", "--quiet"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert "did not all reach the rendezvous at 127.0.0.1:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_launcher_meets_on_loopback_only():
    from recstack.distributed import loopback_endpoint
    from recstack.errors import ConfigError

    assert loopback_endpoint("127.0.0.1:29500") == ("127.0.0.1", "29500")
    host, port = loopback_endpoint(None)
    assert host == "127.0.0.1" and int(port) > 0
    for other in ("10.0.0.5:29500", "localhost:29500", "node1:29500", "127.0.0.1:x"):
        with pytest.raises(ConfigError, match="127.0.0.1:PORT only"):
            loopback_endpoint(other)
