#!/usr/bin/env bash
# Speed of two commits, measured alternately in one run on this machine (docs/PERFORMANCE.md):
#   tools/ab_commits.sh OLD NEW [ROUNDS]
# Each round runs, for each commit in turn, `recstack bench train --preset criteo-kaggle` (training
# samples/s end to end and step only) and a short FAE training on synthetic criteo-kaggle data at
# scale 0.1 (hot and cold step times). The commits are checked out as git worktrees beside each other
# and run with the same interpreter; the synthetic data is generated once and shared. Reports go to
# runs/ab/, and the medians per commit are printed at the end.
set -euo pipefail
old=${1:?usage: tools/ab_commits.sh OLD NEW [ROUNDS]}; new=${2:?usage: tools/ab_commits.sh OLD NEW [ROUNDS]}
rounds=${3:-3}
python=${PYTHON:-$(pwd)/.venv-test/bin/python}
out=$(pwd)/runs/ab; mkdir -p "$out"
export RECSTACK_CACHE=${RECSTACK_CACHE:-$out/cache}
trees=$(mktemp -d)
trap 'for c in old new; do git worktree remove --force "$trees/$c" >/dev/null 2>&1 || true; done; rm -rf "$trees"' EXIT
git worktree add --detach "$trees/old" "$old" >/dev/null
git worktree add --detach "$trees/new" "$new" >/dev/null
fae=(--model.scale 0.1 --data.synth_rows 262144 --fae.budget 8MiB --fae.hot_device cpu --train.threads 2 --quiet)
for round in $(seq "$rounds"); do
  for side in old new; do
    (cd "$trees/$side" && PYTHONPATH="$trees/$side" "$python" -m recstack.cli bench train --preset criteo-kaggle \
        --report "$out/bench-$side-$round.json" --quiet)
    (cd "$trees/$side" && PYTHONPATH="$trees/$side" "$python" -m recstack.cli train "${fae[@]}" \
        --report "$out/fae-$side-$round.json")
  done
done
"$python" - "$out" "$rounds" "$old" "$new" <<'PY'
import json, statistics, sys
out, rounds, names = sys.argv[1], int(sys.argv[2]), dict(old=sys.argv[3], new=sys.argv[4])
def load(kind, side): return [json.load(open(f"{out}/{kind}-{side}-{r}.json")) for r in range(1, rounds + 1)]
rows = {}
for side in ("old", "new"):
    bench, fae = load("bench", side), load("fae", side)
    rows[side] = {
        "end_to_end_samples_per_s": statistics.median(b["throughput"]["end_to_end_samples_per_s"] for b in bench),
        "compute_samples_per_s": statistics.median(b["throughput"]["compute_samples_per_s"] for b in bench),
        "fae_hot_ms_per_step": statistics.median(1e3 * f["fae"]["hot_seconds"] / max(f["fae"]["hot_steps"], 1) for f in fae),
        "fae_cold_ms_per_step": statistics.median(1e3 * f["fae"]["cold_seconds"] / max(f["fae"]["cold_steps"], 1) for f in fae),
    }
print(f"{'median of ' + str(rounds) + ' rounds':<28}" + "".join(f"{names[s][:12]:>14}" for s in rows) + f"{'new/old':>10}")
for key in rows["old"]:
    a, b = rows["old"][key], rows["new"][key]
    print(f"{key:<28}{a:>14,.1f}{b:>14,.1f}{b / a:>10.3f}")
json.dump({"rounds": rounds, "commits": names, **rows}, open(f"{out}/summary.json", "w"), indent=1)
PY
