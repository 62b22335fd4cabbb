"""Measure an accelerator's random-row gather, scatter-update and GEMM rates (for the planner's at-scale model)."""
import json, os, sys, time
import torch
import torch.nn.functional as F

def timed(fn, reps=20):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps): fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t) / reps)
    ts.sort()
    return ts[len(ts) // 2]

out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
dev = "cuda"
for dim in (16, 64, 128):
    rows = (8 << 30) // (dim * 4)  # 8 GiB table, far beyond L2
    table = torch.full((rows, dim), 0.5, device=dev)
    for pooling in (1, 20):
        n = 1 << 20
        idx = torch.randint(0, rows, (n,), device=dev)
        offsets = torch.arange(0, n, pooling, device=dev)
        s = timed(lambda: F.embedding_bag(idx, table, offsets, mode="sum"))
        out[f"gather_gbs_dim{dim}_pool{pooling}"] = n * dim * 4 / s / 1e9
    idx = torch.randint(0, rows, (1 << 20,), device=dev).sort().values
    delta = torch.full((1 << 20, dim), 1e-6, device=dev)
    s = timed(lambda: table.index_add_(0, idx, delta, alpha=-1.0))
    out[f"scatter_gbs_dim{dim}"] = (1 << 20) * dim * 4 / s / 1e9
    del table, idx, delta
    torch.cuda.empty_cache()
for tf32 in (False, True):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a = torch.randn(8192, 8192, device=dev); b = torch.randn(8192, 8192, device=dev)
    s = timed(lambda: a @ b, reps=10)
    out[f"matmul_tflops_{'tf32' if tf32 else 'fp32'}"] = 2 * 8192**3 / s / 1e12
a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16); b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
out["matmul_tflops_bf16"] = 2 * 8192**3 / timed(lambda: a @ b, reps=10) / 1e12
print(json.dumps(out, indent=1))
os.makedirs(os.environ.get("OUT", "/tmp"), exist_ok=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "gpu_rates.json"), "w"), indent=1)
