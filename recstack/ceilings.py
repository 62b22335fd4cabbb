"""Ceilings of this machine, measured, so that `recstack bench` can print every achieved figure
next to the limit it is chasing (DESIGN.md principle 6).

What is measured (all with torch on the CPU, `threads` intra-op threads, after a warm-up, as the
median rate over several timing windows):

- `matmul_gflops`: sustained fp32 GEMM rate of `torch.mm` on square matrices (2 n^3 FLOPs each).
- `mlp_gemm_gflops`: the rate torch reaches on one model's own layer shapes, forward GEMM plus
  both backward GEMMs (input gradient and weight gradient) of every layer. Narrow layers and small
  batches run well below the square-GEMM peak; the report can show both.
- `stream_bandwidth_gbs`: STREAM-style copy (c = a, 2 x 4 bytes per element counted) and triad
  (a = b + s c, 3 x 4 bytes counted) over arrays far larger than the last-level cache. Write-allocate
  traffic is not counted (the STREAM convention).
- `gather_bandwidth_gbs`: random row gathers from a float32 table of `row_bytes / 4` columns sized
  well beyond the last-level cache (1 GiB by default): `torch.index_select` (pooling 1) or
  `F.embedding_bag(mode="sum")` over bags of `pooling` rows. Counted: bytes of table rows read per
  second. Indices are uniform at random, so this is the cold-miss rate; skewed real traffic, whose
  hot rows stay in cache, can beat it (that is what FAE-style hot/cold placement exploits). The
  kernel matters as much as the memory: pooled embedding_bag reads rows several times faster than
  index_select of single rows (it writes one row per bag), so measure with the model's pooling.
- `scatter_update_bandwidth_gbs`: read-modify-write of random rows, what a sparse optimizer does to
  the rows a batch touched: `index_add_` (the kernel behind torch's sparse SGD-style updates),
  `index_select` + add + `index_copy_`, or a plain `index_copy_`. Counted: bytes of table rows
  updated per second (each row once, although the memory reads and writes it). Indices are sorted
  by default, because sparse optimizers coalesce gradients (sort + unique) before updating.

The roofline model (`roofline_samples_per_s`): a training step runs its phases one after the
other, each at its measured rate, so the time per sample is

    t = flops_per_sample / matmul_rate + gather_bytes_per_sample / gather_rate
        + update_bytes_per_sample / scatter_rate

and the ceiling is 1 / t samples/s. The phase with the largest share of t is the bound. This is an
additive (no-overlap) model: phases that overlap (e.g. pipelined embedding and MLP work on
different cores) could in principle go faster, up to 1 / max(component). Count
`update_bytes_per_sample` as the bytes of every table row an optimizer step rewrites, per sample,
including optimizer state rows (an Adagrad row doubles it).

Measurements are of a shared machine: other processes lower them, so run the command a couple of
times and treat the spread as the error bar. `python -m recstack.bench.roofline` prints a table and
can write the figures as a JSON report.

Torch only, below every recstack package: `recstack bench` and the DeepRecSched search of `recstack
sched` (serve) both hold their figures against these ceilings.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "gather_bandwidth_gbs",
    "matmul_gflops",
    "measure_ceilings",
    "mlp_flops_per_sample",
    "mlp_gemm_gflops",
    "roofline_samples_per_s",
    "scatter_update_bandwidth_gbs",
    "stream_bandwidth_gbs",
]

GIB = 1 << 30
MIB = 1 << 20
DEFAULT_TABLE_BYTES = GIB  # 32x the 32 MiB L3 of the reference machine
BATCH_ROWS = 65536
"""Rows gathered or updated per call of the gather and scatter measurements."""
SCATTER_OPS = ("index_add", "gather_add_copy", "index_copy")


# --------------------------------------------------------------------------------------------
# timing


@contextmanager
def _num_threads(threads: int | None) -> Iterator[int]:
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if threads is not None:
            torch.set_num_threads(before)


def _rate(step: Callable[[], Any], work_per_call: float, seconds: float, windows: int = 5, warmup: int = 2) -> float:
    """Median over `windows` timing windows (each about seconds / windows long, at least one call)
    of work per second."""
    for _ in range(warmup):
        step()
    window = max(seconds, 0.0) / windows
    rates = []
    for _ in range(windows):
        calls = 0
        start = time.perf_counter()
        while True:
            step()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= window:
                break
        rates.append(work_per_call * calls / max(elapsed, 1e-9))
    return float(statistics.median(rates))


# --------------------------------------------------------------------------------------------
# compute


def matmul_gflops(
    threads: int | None = None, size: int = 2048, dtype: torch.dtype = torch.float32, seconds: float = 1.0
) -> float:
    """Sustained GEMM rate of torch.mm on [size, size] x [size, size], GFLOP/s (2 size^3 FLOPs)."""
    with _num_threads(threads):
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=gen).to(dtype)
        b = torch.randn(size, size, generator=gen).to(dtype)
        c = torch.empty(size, size, dtype=dtype)
        return _rate(lambda: torch.mm(a, b, out=c), 2.0 * size**3, seconds) / 1e9


def _mlps(widths: Sequence[int] | Sequence[Sequence[int]]) -> list[list[int]]:
    """One MLP [in, h1, ..., out] or several, as a list of width lists."""
    if len(widths) and isinstance(widths[0], Sequence):
        return [[int(w) for w in m] for m in widths]  # type: ignore[union-attr]
    return [[int(w) for w in widths]]  # type: ignore[arg-type]


def _layer_shapes(widths: Sequence[int] | Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """(in, out) of every Linear layer of one MLP [in, h1, ..., out] or of several MLPs."""
    shapes = [(m[i], m[i + 1]) for m in _mlps(widths) for i in range(len(m) - 1)]
    if not shapes or any(k < 1 or n < 1 for k, n in shapes):
        raise ValueError(f"widths must list at least two positive layer widths, got {widths}")
    return shapes


def mlp_flops_per_sample(widths: Sequence[int] | Sequence[Sequence[int]], backward: bool = True) -> float:
    """GEMM FLOPs per sample of an MLP [in, h1, ..., out] (or several): 2 k n per layer forward,
    three times that with backward (input and weight gradients), the same count that
    `mlp_gemm_gflops` times."""
    return 2.0 * sum(k * n for k, n in _layer_shapes(widths)) * (3 if backward else 1)


def mlp_gemm_gflops(
    batch: int,
    widths: Sequence[int] | Sequence[Sequence[int]],
    *,
    backward: bool = True,
    threads: int | None = None,
    dtype: torch.dtype = torch.float32,
    seconds: float = 0.5,
) -> float:
    """GEMM rate torch reaches on one MLP's own layer shapes, GFLOP/s.

    widths: [in, h1, ..., out] of one MLP, or a list of them (e.g. bottom and top MLP of DLRM).
    Per layer (k -> n) it runs what nn.Linear does: forward addmm([B, k] x [k, n]) and, with
    backward, the input gradient [B, n] x [n, k] and the weight gradient [n, B] x [B, k]
    (the first layer's input gradient is counted even though a model whose input needs no
    gradient skips it). Bias, activation and memory traffic outside the GEMMs are not included.
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    shapes = _layer_shapes(widths)
    with _num_threads(threads):
        gen = torch.Generator().manual_seed(0)
        layers = []
        for k, n in shapes:
            layers.append(
                (
                    torch.randn(batch, k, generator=gen).to(dtype),  # x
                    torch.randn(n, k, generator=gen).to(dtype),  # weight
                    torch.randn(n, generator=gen).to(dtype),  # bias
                    torch.empty(batch, n, dtype=dtype),  # y
                    torch.randn(batch, n, generator=gen).to(dtype),  # grad y
                    torch.empty(batch, k, dtype=dtype),  # grad x
                    torch.empty(n, k, dtype=dtype),  # grad weight
                )
            )

        def step() -> None:
            for x, w, b, y, _, _, _ in layers:
                torch.addmm(b, x, w.t(), out=y)
            if backward:
                for x, w, _, _, gy, gx, gw in reversed(layers):
                    torch.mm(gy, w, out=gx)
                    torch.mm(gy.t(), x, out=gw)

        return _rate(step, batch * mlp_flops_per_sample(widths, backward), seconds) / 1e9


# --------------------------------------------------------------------------------------------
# memory


def stream_bandwidth_gbs(
    kind: str = "triad", array_mib: int = 512, threads: int | None = None, seconds: float = 0.5
) -> float:
    """STREAM-style bandwidth in GB/s (1e9 bytes/s) over float32 arrays of `array_mib` MiB each.

    kind="copy": c = a, counts 8 bytes per element (read + write).
    kind="triad": a = b + s * c, counts 12 bytes per element (two reads + a write).
    """
    if kind not in ("copy", "triad"):
        raise ValueError(f"kind must be 'copy' or 'triad', got {kind!r}")
    n = max(1, int(array_mib * MIB) // 4)
    with _num_threads(threads):
        a = torch.full((n,), 1.0)
        c = torch.full((n,), 0.5)
        if kind == "copy":
            return _rate(lambda: c.copy_(a), 8.0 * n, seconds) / 1e9
        b = torch.full((n,), 2.0)
        return _rate(lambda: torch.add(b, c, alpha=3.0, out=a), 12.0 * n, seconds) / 1e9


def _check_row_bytes(row_bytes: int) -> int:
    if row_bytes < 4 or row_bytes % 4:
        raise ValueError(f"row_bytes must be a positive multiple of 4 (float32 rows), got {row_bytes}")
    return row_bytes // 4


def _table(row_bytes: int, table_rows: int | None, batch_rows: int) -> torch.Tensor:
    dim = _check_row_bytes(row_bytes)
    rows = table_rows if table_rows is not None else max(-(-DEFAULT_TABLE_BYTES // row_bytes), batch_rows)
    if rows < 1:
        raise ValueError("table_rows must be >= 1")
    return torch.full((rows, dim), 0.5)  # written, so every page is really backed by memory


def _index_pool(rows: int, batch_rows: int, row_bytes: int, sort: bool, seed: int = 0) -> torch.Tensor:
    """Several batches of random row ids, cycled so that consecutive calls touch different rows:
    enough batches to sweep >= 256 MiB of rows, capped at 4M ids (32 MiB of int64)."""
    per_batch = batch_rows * row_bytes
    count = min(max(4, -(-256 * MIB // per_batch)), max(4, (4 << 20) // batch_rows), 256)
    gen = torch.Generator().manual_seed(seed)
    pool = torch.randint(0, rows, (count, batch_rows), generator=gen)
    return pool.sort(dim=1).values if sort else pool


def _gather_rate(table: torch.Tensor, batch_rows: int, pooling: int, seconds: float, sort: bool = False) -> float:
    rows, dim = table.shape
    row_bytes = dim * 4
    if not 1 <= pooling <= batch_rows:
        raise ValueError(f"pooling must be between 1 and batch_rows ({batch_rows}), got {pooling}")
    batch_rows -= batch_rows % pooling  # whole bags only
    pool = _index_pool(rows, batch_rows, row_bytes, sort)
    turn = [0]
    if pooling == 1:
        out = torch.empty(batch_rows, dim)

        def step() -> None:
            torch.index_select(table, 0, pool[turn[0] % len(pool)], out=out)
            turn[0] += 1
    else:
        offsets = torch.arange(0, batch_rows, pooling)

        def step() -> None:
            F.embedding_bag(pool[turn[0] % len(pool)], table, offsets, mode="sum")
            turn[0] += 1

    return _rate(step, float(batch_rows * row_bytes), seconds) / 1e9


def _scatter_rate(table: torch.Tensor, batch_rows: int, op: str, seconds: float, sort: bool = True) -> float:
    if op not in SCATTER_OPS:
        raise ValueError(f"op must be one of {SCATTER_OPS}, got {op!r}")
    rows, dim = table.shape
    pool = _index_pool(rows, batch_rows, dim * 4, sort, seed=1)
    delta = torch.full((batch_rows, dim), 1e-6)
    buf = torch.empty(batch_rows, dim)
    turn = [0]

    def step() -> None:
        idx = pool[turn[0] % len(pool)]
        turn[0] += 1
        if op == "index_add":
            table.index_add_(0, idx, delta, alpha=-1.0)
        elif op == "gather_add_copy":
            torch.index_select(table, 0, idx, out=buf)
            buf.sub_(delta)
            table.index_copy_(0, idx, buf)
        else:
            table.index_copy_(0, idx, delta)

    return _rate(step, float(batch_rows * dim * 4), seconds) / 1e9


def gather_bandwidth_gbs(
    row_bytes: int,
    table_rows: int | None = None,
    batch_rows: int = BATCH_ROWS,
    *,
    pooling: int = 1,
    sorted_indices: bool = False,
    threads: int | None = None,
    seconds: float = 1.0,
) -> float:
    """Random row gathers, GB/s of table rows read.

    A float32 table of `row_bytes / 4` columns and `table_rows` rows (default: 1 GiB worth), read
    `batch_rows` uniformly random rows per call: torch.index_select into a preallocated output
    (pooling 1) or F.embedding_bag(mode="sum") over bags of `pooling` rows (pooled lookups, as in
    DLRM; `batch_rows` is rounded down to whole bags).
    """
    with _num_threads(threads):
        table = _table(row_bytes, table_rows, batch_rows)
        return _gather_rate(table, batch_rows, pooling, seconds, sorted_indices)


def scatter_update_bandwidth_gbs(
    row_bytes: int,
    table_rows: int | None = None,
    batch_rows: int = BATCH_ROWS,
    *,
    op: str = "index_add",
    sorted_indices: bool = True,
    threads: int | None = None,
    seconds: float = 1.0,
) -> float:
    """Read-modify-write of random rows (a sparse optimizer's update), GB/s of table rows updated.

    op="index_add": table.index_add_(0, idx, -delta); op="gather_add_copy": index_select, subtract,
    index_copy_ (the same update split into kernels that run on all threads); op="index_copy": a
    plain scatter of new rows (write only, no read of the old value in the program). Indices are
    sorted by default, as after coalescing a sparse gradient.
    """
    with _num_threads(threads):
        table = _table(row_bytes, table_rows, batch_rows)
        return _scatter_rate(table, batch_rows, op, seconds, sorted_indices)


# --------------------------------------------------------------------------------------------
# all at once, and the roofline


def _thp_mode() -> str | None:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else text.strip()


def measure_ceilings(
    row_bytes: int,
    *,
    pooling: int = 1,
    threads: int | None = None,
    mlp_batch: int | None = None,
    mlp_widths: Sequence[int] | Sequence[Sequence[int]] | None = None,
    seconds: float = 0.6,
    matmul_size: int = 2048,
    stream_mib: int = 512,
    table_bytes: int = DEFAULT_TABLE_BYTES,
    batch_rows: int = BATCH_ROWS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every ceiling once (about 5-8 s at the defaults on an idle 2-core machine) and return them in one dict.

    Keys (units in the names): threads, matmul_gflops, matmul_size, [mlp_gemm_gflops, mlp_batch,
    mlp_widths when an MLP is given], stream_copy_gbs, stream_triad_gbs, stream_gbs (the better of
    the two), row_bytes, table_bytes, gather_pooling, gather_gbs, gather_mrows_per_s,
    scatter_index_add_gbs, scatter_gather_add_copy_gbs, scatter_gbs (the better read-modify-write),
    scatter_op, scatter_mrows_per_s, thp, measure_s, loadavg_1m (load before measuring) and
    cpu_share (CPU time this process got / (wall time x threads); well below 1 means other
    processes took cores and the figures are low; about 0.9 on an idle machine),
    cpu_share_by_phase (the same per measurement; the scatter phase shows about 0.5 even when idle
    because torch's index_add_ runs on one thread).
    """
    dim = _check_row_bytes(row_bytes)
    phases: dict[str, float] = {}
    mark = [time.perf_counter(), time.process_time(), ""]

    def say(phase: str) -> None:  # also books the CPU share each phase got
        now, cpu = time.perf_counter(), time.process_time()
        if mark[2]:
            phases[mark[2]] = (cpu - mark[1]) / (max(now - mark[0], 1e-9) * torch.get_num_threads())
        mark[:] = [now, cpu, phase]
        if progress is not None and phase:
            progress(phase)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0, cpu0 = time.perf_counter(), time.process_time()
    with _num_threads(threads) as used:
        out: dict[str, Any] = {"threads": used}
        say("matmul")
        out["matmul_gflops"] = matmul_gflops(size=matmul_size, seconds=seconds)
        out["matmul_size"] = matmul_size
        if mlp_widths is not None:
            batch = mlp_batch or 2048
            say("mlp gemm")
            out["mlp_gemm_gflops"] = mlp_gemm_gflops(batch, mlp_widths, seconds=seconds)
            out["mlp_batch"] = batch
            out["mlp_widths"] = _mlps(mlp_widths)
        say("stream")
        out["stream_copy_gbs"] = stream_bandwidth_gbs("copy", stream_mib, seconds=seconds / 2)
        out["stream_triad_gbs"] = stream_bandwidth_gbs("triad", stream_mib, seconds=seconds / 2)
        out["stream_gbs"] = max(out["stream_copy_gbs"], out["stream_triad_gbs"])
        say("gather")
        rows = max(-(-table_bytes // row_bytes), batch_rows)
        table = torch.full((rows, dim), 0.5)
        out["row_bytes"] = row_bytes
        out["table_bytes"] = rows * row_bytes
        out["gather_pooling"] = pooling
        out["gather_gbs"] = _gather_rate(table, batch_rows, pooling, seconds)
        out["gather_mrows_per_s"] = out["gather_gbs"] * 1e3 / row_bytes
        say("scatter")
        for op in ("index_add", "gather_add_copy"):
            out[f"scatter_{op}_gbs"] = _scatter_rate(table, batch_rows, op, seconds / 2)
        best = max(("index_add", "gather_add_copy"), key=lambda op: out[f"scatter_{op}_gbs"])
        out["scatter_gbs"] = out[f"scatter_{best}_gbs"]
        out["scatter_op"] = best
        out["scatter_mrows_per_s"] = out["scatter_gbs"] * 1e3 / row_bytes
        del table
        say("")
    out["thp"] = _thp_mode()
    out["measure_s"] = time.perf_counter() - t0
    # contention: the load before we started, and the share of `threads` cores this process got
    out["loadavg_1m"] = load
    out["cpu_share"] = (time.process_time() - cpu0) / (out["measure_s"] * out["threads"])
    out["cpu_share_by_phase"] = phases
    return out


def roofline_samples_per_s(
    flops_per_sample: float,
    gather_bytes_per_sample: float,
    update_bytes_per_sample: float,
    ceilings: dict[str, Any],
    *,
    matmul_key: str = "matmul_gflops",
    gather_key: str = "gather_gbs",
    scatter_key: str = "scatter_gbs",
) -> dict[str, Any]:
    """Ceiling samples/s of a training (or, with update bytes 0, inference) step.

    Time per sample = flops / matmul rate + gather bytes / gather rate + update bytes / scatter rate
    (phases one after the other, each at its measured rate; rates in GFLOP/s and GB/s read from
    `ceilings` under the given keys, e.g. matmul_key="mlp_gemm_gflops" for the model's own GEMM
    shapes). Returns samples_per_s, s_per_sample, each phase's mlp/gather/update_s_per_sample and
    _share of the time, the `bound` (phase with the largest share, or None when all are zero), and
    the rates used.
    """
    parts = {
        "mlp": (flops_per_sample, matmul_key),
        "gather": (gather_bytes_per_sample, gather_key),
        "update": (update_bytes_per_sample, scatter_key),
    }
    result: dict[str, Any] = {}
    times: dict[str, float] = {}
    for name, (amount, key) in parts.items():
        amount = float(amount)
        if not amount >= 0 or math.isinf(amount):
            raise ValueError(f"{name} work per sample must be a finite number >= 0, got {amount}")
        rate = ceilings.get(key)
        if amount == 0:
            times[name] = 0.0
        else:
            if rate is None or not float(rate) > 0:
                raise ValueError(f"ceilings lack a positive {key!r} (have {sorted(ceilings)})")
            times[name] = amount / (float(rate) * 1e9)
        result[key] = rate
    total = sum(times.values())
    result["samples_per_s"] = 1.0 / total if total > 0 else math.inf
    result["s_per_sample"] = total
    for name, t in times.items():
        result[f"{name}_s_per_sample"] = t
        result[f"{name}_share"] = t / total if total > 0 else 0.0
    result["bound"] = max(times, key=lambda k: times[k]) if total > 0 else None
    return result
