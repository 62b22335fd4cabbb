"""Re-measure the quality figures of README.md: every recipe run from its config, on the shared data,
over the seeds the README quotes, with the mean and standard deviation of each figure.

    python tools/quality.py [--only NAME ...] [--work DIR] [--report FILE]

Names: criteo-dlrm, criteo-wnd, criteo-dcn-v2, criteo-deepfm, ncf-movielens, din-amazon, dien-amazon,
mtwnd-synth. Each recipe prepares its data once (under --work) and trains one process per seed with
the README's command, one thread each, two at a time (a 2-core machine). It prints one line per
recipe and writes every run's figures to --report (JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
CRITEO = ["criteo", "--input", str(SHARED / "criteo" / "train_sample.tsv"), "--split-tail", "0.15",
          "--vocab-min-count", "20"]
MOVIELENS = ["movielens", "--input", str(SHARED / "movielens" / "ml-100k")]
AMAZON = ["amazon", "--input", str(SHARED / "amazon-electronics-din")]
SEQUENCE_BASELINES = ["--baseline", "model.sequence_pooling=sum", "--baseline", "popularity"]

# name -> (prepare arguments or None, config, seeds, extra train arguments, figures to read from the test split)
RECIPES = {
    "criteo-dlrm": (CRITEO, "criteo-sample.yaml", range(5), [], ["auc", "logloss"]),
    "criteo-wnd": (CRITEO, "wnd-criteo.yaml", range(5), [], ["auc", "logloss"]),
    "criteo-dcn-v2": (CRITEO, "dcn-v2-criteo.yaml", range(5), [], ["auc", "logloss"]),
    "criteo-deepfm": (CRITEO, "deepfm-criteo.yaml", range(5), [], ["auc", "logloss"]),
    "ncf-movielens": (MOVIELENS, "ncf-movielens.yaml", range(3), [], ["hr_at_10", "ndcg_at_10"]),
    "din-amazon": (AMAZON, "din-amazon.yaml", range(3), SEQUENCE_BASELINES, ["auc"]),
    "dien-amazon": (AMAZON, "dien-amazon.yaml", range(3), SEQUENCE_BASELINES, ["auc"]),
    "mtwnd-synth": (None, "mtwnd-synth.yaml", range(3), [], ["auc"]),
}


def recstack(*args: str) -> list[str]:
    return [sys.executable, "-m", "recstack", *args]


def prepare(name: str, work: Path) -> Path | None:
    source = RECIPES[name][0]
    if source is None:
        return None
    out = work / "data" / source[0]
    if not (out / "schema.json").exists():
        subprocess.run(recstack("data", "prepare", *source, "--out", str(out), "--quiet", "--overwrite"), check=True)
    return out


def train(name: str, data: Path | None, seed: int, work: Path) -> dict:
    _, config, _, extra, _ = RECIPES[name]
    report = work / "reports" / f"{name}-{seed}.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    command = recstack("train", "--config", str(REPO / "configs" / config), "--seed", str(seed),
                       "--report", str(report), "--quiet", "--train.threads", "1", *extra)
    if data is not None:
        command += ["--data", str(data)]
    subprocess.run(command, check=True, cwd=work, stdout=subprocess.DEVNULL)
    return json.loads(report.read_text())


def figures(name: str, report: dict) -> dict[str, float]:
    """The recipe's test figures (per task for multi-task models), its baselines' test AUC, and the
    true model's AUC where the data has one."""
    keys = RECIPES[name][4]
    test = report["metrics_by_split"]["test"]
    out = {}
    for task, metrics in (test.get("tasks") or {"": test}).items():
        out.update({f"{task} {k}".strip(): float(metrics[k]) for k in keys})
    for spec, result in (report.get("baselines") or {}).items():
        out[f"baseline {spec} auc"] = float(result["metrics"]["auc"])
    true_auc = report["data"]["info"].get("true_auc")
    if isinstance(true_auc, dict):
        out.update({f"{task} true auc": float(v) for task, v in true_auc.items()})
    return out


def summary(runs: list[dict[str, float]]) -> dict[str, str]:
    return {k: (f"{statistics.mean(r[k] for r in runs):.4f} ± {statistics.stdev(r[k] for r in runs):.4f}"
                if len(runs) > 1 else f"{runs[0][k]:.4f}") for k in runs[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(RECIPES), default=sorted(RECIPES))
    parser.add_argument("--work", default="runs/quality", metavar="DIR")
    parser.add_argument("--report", default="runs/quality/quality.json", metavar="FILE")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.only:
        data = prepare(name, work)
        seeds = list(RECIPES[name][2])
        with ThreadPoolExecutor(2) as pool:
            reports = list(pool.map(lambda s: train(name, data, s, work), seeds))
        runs = [figures(name, r) for r in reports]
        results[name] = {"config": RECIPES[name][1], "seeds": seeds, "runs": runs, "summary": summary(runs)}
        print(f"{name} (seeds {seeds[0]}-{seeds[-1]}): " + "; ".join(f"{k} {v}" for k, v in results[name]["summary"].items()),
              flush=True)
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps(results, indent=2))
    print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
