set -x
export PYTHONPATH=$PWD RECSTACK_CACHE=/tmp/rc MASTER_ADDR=127.0.0.1 GLOO_SOCKET_IFNAME=lo
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch; print(torch.__version__, torch.cuda.is_available())"
# 1. GPU tests (FAE equivalence on cuda, GPU trainer equivalence)
timeout 110 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_tiered.py -k "cuda or gpu" 2>&1 | tail -5
# 2. FAE with a 1 KiB budget on the criteo-terabyte preset (tables without hot rows must train)
timeout 140 python3 -m recstack.cli train --model.preset criteo-terabyte --model.scale 0.05 --data.synth_rows 200000 \
  --train.device cuda --fae.budget 1KiB --train.batch_size 4096 --quiet --report $OUT/fae1k.json 2>&1 | tail -3
python3 -c "import json; r=json.load(open('$OUT/fae1k.json')); f=r['fae']; print('FAE 1KiB:', f['hot_rows'], len(f['untiered_tables']), 'untiered', f['hot_steps'], f['cold_steps'], r['metrics']['auc'])"
# 3. plain GPU trainer vs the sharded trainer on 1 rank (NCCL), alternately
common="--model.preset criteo-kaggle --data.synth_rows 400000 --train.device cuda --train.batch_size 4096 --train.max_steps 80 --train.epochs 0 --quiet"
for i in 1 2; do
  timeout 75 python3 -m recstack.cli train $common --report $OUT/plain$i.json 2>&1 | tail -2
  timeout 90 python3 -m torch.distributed.run --nproc-per-node 1 --master-addr 127.0.0.1 --master-port 29533 -m recstack.cli train $common \
    --embeddings.sharding table_wise --report $OUT/nccl$i.json 2>&1 | grep -v "^W\|\*\*\*" | tail -3
done
python3 - <<'PY'
import json, os
out = os.environ["OUT"]
for n in ("plain1", "nccl1", "plain2", "nccl2"):
    try:
        r = json.load(open(f"{out}/{n}.json")); d = r.get("distributed", {})
        print(n, round(r["throughput"]["samples_per_s"]), "auc", round(r["metrics"]["auc"], 4), "coll share", d.get("collective_share_per_rank"))
    except Exception as e:
        print(n, "missing", e)
PY
