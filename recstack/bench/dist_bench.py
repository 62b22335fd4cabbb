"""`recstack bench dist`: sharded training on 2 ranks x 1 thread against one process x 2 threads, on
the same machine, the same synthetic data and the same global batches.

Each variant is a real `recstack train` run (the 2-rank one through torch's launcher on 127.0.0.1),
run alternately for `--rounds` rounds; the figures are medians over rounds of the runs' training
samples/s (step time only: loading overlaps the step, evaluation is excluded), with the sharded
runs' share of step time in collectives and their all-to-all bytes per step against the plan's.
On a 2-core machine the two variants use the same cores; the ratio says what sharding costs there.

`--vs torchrec` also times TorchRec's DistributedModelParallel against recstack's sharded tables on
the same ranks (recstack.bench.torchrec_compare: embedding-only steps, table-wise), reported as
`torchrec.samples_per_s` and `recstack_embeddings.samples_per_s`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from recstack.argtypes import positive_int
from recstack.distributed import LOOPBACK_ENV, free_port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="criteo-kaggle", help="model preset (its synthetic data)")
    parser.add_argument("--steps", type=positive_int, default=80, help="training steps per run")
    parser.add_argument("--rounds", type=positive_int, default=3, help="alternating rounds of the two variants")
    parser.add_argument("--nproc", type=positive_int, default=2, help="ranks of the sharded variant")
    parser.add_argument("--sharding", default="auto", help="embeddings.sharding of the sharded variant")
    parser.add_argument("--vs", choices=["torchrec"], help="also time TorchRec's DistributedModelParallel against "
                        "recstack's sharded tables, embedding-only steps on the same ranks (needs the torchrec extra)")
    parser.add_argument("--report", metavar="FILE", help="write the JSON report here")
    parser.add_argument("--quiet", action="store_true")


def _train(preset: str, steps: int, report: Path, extra: list[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "recstack.cli", "train", "--model.preset", preset, "--train.max_steps", str(steps),
               "--train.epochs", "0", "--data.synth_test_fraction", "0.01", "--data.synth_rows", str(steps * 1024 + 4096),
               "--report", str(report), "--quiet", *extra]
    subprocess.run(command, check=True, env={**os.environ, **LOOPBACK_ENV})
    return json.loads(report.read_text())


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from recstack.config import parse_overrides
    from recstack.progress import console, is_quiet, say
    from recstack.report import check_output_path, new_report, write_report

    check_output_path(args.report)
    if args.vs == "torchrec":  # refused in one line before anything runs when TorchRec does not import
        from recstack.bench.torchrec_compare import require

        require()
    passed = [f"--{k}={v}" for k, v in parse_overrides(extra).items()]
    single, sharded = [], []
    with tempfile.TemporaryDirectory(prefix="recstack-bench-dist-") as scratch:
        for r in range(args.rounds):
            say(f"round {r + 1}/{args.rounds}: 1 process x 2 threads, then {args.nproc} ranks x 1 thread")
            single.append(_train(args.preset, args.steps, Path(scratch) / f"single-{r}.json",
                                 ["--train.threads", "2", *passed]))
            sharded.append(_train(args.preset, args.steps, Path(scratch) / f"sharded-{r}.json",
                                  ["--nproc", str(args.nproc), "--embeddings.sharding", args.sharding, *passed]))
        versus = _vs_torchrec(args, parse_overrides(extra), Path(scratch)) if args.vs == "torchrec" else None
    rate = lambda runs: statistics.median(r["throughput"]["samples_per_s"] for r in runs)  # noqa: E731
    d = [r["distributed"] for r in sharded]
    shares = [statistics.mean(x["collective_share_per_rank"]) for x in d]
    result = {
        "preset": args.preset,
        "steps": args.steps,
        "rounds": args.rounds,
        "single": {"samples_per_s": rate(single), "threads": 2, "runs": [r["throughput"] for r in single]},
        "sharded": {"samples_per_s": rate(sharded), "ranks": args.nproc, "threads_per_rank": 1,
                    "runs": [r["throughput"] for r in sharded], "plan": d[0]["plan"],
                    "collective_bytes_per_step": d[0]["collective_bytes_per_step"]},
        "ratio": rate(sharded) / rate(single),
        "collective_share": statistics.median(shares),
        "all_to_all_bytes_per_step": statistics.median(x["all_to_all_bytes_per_step"] for x in d),
        "predicted_all_to_all_bytes_per_step": d[0]["predicted_all_to_all_bytes_per_step"],
    }
    if versus is not None:
        result["torchrec"] = versus.pop("torchrec")
        result["recstack_embeddings"] = versus.pop("recstack_embeddings")
        result["vs_torchrec"] = versus
    if args.report:
        report = new_report("bench dist", sharded[0]["config"])
        report.update(result)
        write_report(args.report, report)
    if not is_quiet():
        console.print(f"{args.preset}: 1 process x 2 threads {result['single']['samples_per_s']:,.0f} samples/s; "
                      f"{args.nproc} ranks x 1 thread {result['sharded']['samples_per_s']:,.0f} samples/s "
                      f"({result['ratio']:.2f}x); collectives {result['collective_share']:.0%} of the sharded step; "
                      f"all-to-all {result['all_to_all_bytes_per_step']:,.0f} B/step (plan: "
                      f"{result['predicted_all_to_all_bytes_per_step']:,.0f})")
        if versus is not None:
            console.print(f"embedding-only step (forward, backward, SGD), {args.nproc} ranks, table-wise: TorchRec "
                          f"{result['torchrec']['samples_per_s']:,.0f} samples/s; recstack "
                          f"{result['recstack_embeddings']['samples_per_s']:,.0f} samples/s ({versus['ratio']:.2f}x)")
    return 0


def _vs_torchrec(args: argparse.Namespace, overrides: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """TorchRec against recstack's sharded collection on the preset's tables and the train runs'
    synthetic batches: one torchrun job of `args.nproc` ranks (recstack.bench.torchrec_compare)."""
    from recstack.config import resolve
    from recstack.progress import say
    from recstack.train.datasets import open_dataset

    settings = {"model.preset": args.preset, "data.synth_test_fraction": 0.01,
                "data.synth_rows": args.steps * 1024 + 4096, **overrides,
                "embeddings.kind": "sharded", "train.sparse_optimizer": "sgd"}
    config = resolve(None, settings)
    data = open_dataset(config).path  # generated here, once, not by every rank
    spec = {"overrides": settings, "data": str(data), "steps": args.steps, "rounds": args.rounds,
            "lr": config.train.sparse_lr, "seed": config.seed, "out": str(scratch / "vs-torchrec.json")}
    (scratch / "vs-torchrec-spec.json").write_text(json.dumps(spec))
    say(f"TorchRec against recstack: {args.nproc} ranks, embedding-only steps, {args.rounds} alternating rounds")
    env = {**os.environ, **LOOPBACK_ENV, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.nproc),
                    "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m",
                    "recstack.bench.torchrec_compare", str(scratch / "vs-torchrec-spec.json")], check=True, env=env)
    return json.loads((scratch / "vs-torchrec.json").read_text())
