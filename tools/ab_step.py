"""Training-step time of an older commit against the working tree, alternately in ONE process:
    .venv-test/bin/python tools/ab_step.py OLD_COMMIT [--rounds 30] [--set model.scale=0.1 ...]
The older commit's package is unpacked beside (`git archive`) under the name recstack_old, both
trainers are built on the same synthetic data and config, and rounds of 8 steps alternate between
them (the order flips every round), so the shared machine's noise falls on both alike. Prints the
medians and their ratio (docs/PERFORMANCE.md)."""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path


def unpack_old(commit: str, into: Path) -> None:
    archive = into / "old.tar"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), commit, "recstack"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    (into / "recstack").rename(into / "recstack_old")
    for path in (into / "recstack_old").rglob("*.py"):
        text = path.read_text()
        path.write_text(re.sub(r"\brecstack(\.|\b(?= import))", lambda m: "recstack_old" + m.group(1), text))


def trainer(package: str, overrides: dict):
    import importlib

    import torch

    config = importlib.import_module(f"{package}.config").resolve(None, overrides)
    run = importlib.import_module(f"{package}.train.run")
    zoo = importlib.import_module(f"{package}.models.zoo")
    torch.manual_seed(0)
    dataset = run.open_dataset(config)
    return importlib.import_module(f"{package}.train.trainer").Trainer(config, dataset, zoo.build_model(config, dataset.schema))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("old")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = {"train.batch_size": "1024", **dict(s.split("=", 1) for s in args.set)}
    import torch

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        unpack_old(args.old, Path(scratch))
        sys.path.insert(0, scratch)
        sides = {"old": trainer("recstack_old", overrides), "new": trainer("recstack", overrides)}
        batches = {k: [b for _, b in zip(range(8), t.loader.epoch(0))] for k, t in sides.items()}
        times: dict[str, list[float]] = {"old": [], "new": []}
        for name, t in sides.items():
            for b in batches[name][:3]:
                t.train_step(b)
        for r in range(args.rounds):
            for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
                start = time.perf_counter()
                for b in batches[name]:
                    sides[name].train_step(b)
                times[name].append((time.perf_counter() - start) / len(batches[name]) * 1e3)
    old, new = (statistics.median(times[k]) for k in ("old", "new"))
    print(f"{args.old}: {old:.2f} ms/step; working tree: {new:.2f} ms/step (medians of {args.rounds} alternating "
          f"rounds of 8 steps, batch {overrides['train.batch_size']}); new/old {new / old:.3f}")


if __name__ == "__main__":
    main()
