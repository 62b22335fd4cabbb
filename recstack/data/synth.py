"""Synthetic recommendation data in the binary dataset format, labelled by a known true model.

A preset (recstack.data.synth_presets) names the shape of the data (dense features, embedding tables
with their sizes, pooling and skew, label tasks). `generate` streams any number of rows into a dataset
directory in bounded memory; `true_probabilities` scores rows exactly with the model that drew the
labels, so a trained model can be compared with the best possible one (the schema records its test
AUC and log loss).

How rows are drawn:

- Ids: rank ~ Zipf(s) over the table's rows by the inverse CDF of a bounded continuous power law
  (O(1) memory per table), then row = (rank * a + b) mod rows with gcd(a, rows) = 1, so hot rows
  are spread over the table as with real vocabularies and hashing.
- Dense features: log(1 + count), count = floor(exp(mu + sigma * logistic noise)) (log-logistic,
  Pareto-tailed, often 0): nonnegative and heavy-tailed like Criteo's log-transformed counts.
- Labels: Bernoulli(sigmoid(logit)) with logit = bias + dense @ w + sum over tables and bag members
  of w_t[row] + a few products of pooled per-row values of two tables (a rank-1 interaction that a
  DLRM dot product can find). Per-row values come from a hash of (seed, task, table, row), so huge
  tables need no weight arrays.

Row r draws only from the random generator of its block (r // BLOCK_ROWS), and every block is
drawn whole: the data does not depend on the chunk size, a longer run extends a shorter one, and
chunks are made in parallel.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from recstack.data.batch import Batch
from recstack.data.store import DatasetWriter, Schema, SparseFeature
from recstack.data.synth_presets import (
    CRITEO_KAGGLE_ROWS,
    CRITEO_TERABYTE_ROWS,
    DLRM_V2_MULTI_HOT,
    MIN_SCALED_ROWS,
    PRESETS,
    TERABYTE_MAX_IND_RANGE,
    Pooling,
    SynthPreset,
    TableSpec,
    default_zipf,
    get_preset,
    register_preset,
    scaled_rows,
    skewed_tables,
    with_tasks,
)
from recstack.errors import DataError
from recstack.memory import require_disk
from recstack.progress import progress_bar

GENERATOR = "recstack.data.synth"
BLOCK_ROWS = 8192
"""Rows per random generator; chunks are rounded up to a multiple of this."""
PILOT_ROWS = 1 << 15
"""Rows drawn (from their own stream) to calibrate the label model's scales and bias."""
FLOAT32_MAX_ROWS = 1 << 16
"""Tables up to this size sample ids in float32, larger ones in float64."""
MAX_TABLE_ROWS = 2**31 - 1
"""int32 ids, and rank * a fits int64 in the row bijection."""

# Variance of each logit component on the pilot rows: logit std ~1.6, true AUC ~0.83 (a Criteo-like 0.80
# for good models, which cannot learn the rare rows' weights).
DENSE_VARIANCE = 0.5
SPARSE_VARIANCE = 1.6
INTERACTION_VARIANCE = 0.5

# Independent random streams per seed.
_DATA, _PILOT, _PARAMS = 0, 1, 2
# Purposes of hashed per-row values.
_LINEAR, _PAIR = 0, 1


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


def zipf_ranks(u: np.ndarray, n: int, s: float) -> np.ndarray:
    """Map uniforms u in [0, 1) to ranks in [0, n) with P(rank k) = integral of x^-s over [k+1, k+2),
    normalized over [1, n+1): the inverse CDF of a bounded continuous power law, floored. Overwrites u."""
    if n == 1:
        return np.zeros(u.shape, dtype=np.int64)
    log_end = math.log(n + 1)
    if abs(1.0 - s) < 1e-9:  # the s -> 1 limit: x = (n+1)^u
        u *= log_end
    else:
        # CDF(x) = (x^(1-s) - 1) / ((n+1)^(1-s) - 1), solved for x as exp(log(1 + u c) / (1 - s));
        # log rather than log1p is accurate enough here (x is floored) and much faster
        u *= math.expm1((1.0 - s) * log_end)
        u += 1.0
        np.log(u, out=u)
        u *= 1.0 / (1.0 - s)
    np.exp(u, out=u)
    ranks = u.astype(np.int64)
    ranks -= 1
    return np.minimum(ranks, n - 1, out=ranks)  # guards float rounding at the top end


def row_values(ids: np.ndarray, key: int) -> np.ndarray:
    """A pseudo-random float32 in [-1, 1) for every id, fixed by (key, id): murmur3's fmix32 of id ^ key."""
    ids = np.asarray(ids)
    if ids.dtype.itemsize == 8:  # fold 64-bit ids to 32 bits (ids < 2^32 keep their value)
        wide = ids.view(np.uint64)
        ids = (wide ^ (wide >> np.uint64(32))).astype(np.uint32)
    x = np.bitwise_xor(ids.view(np.uint32) if ids.dtype.itemsize == 4 else ids.astype(np.uint32), np.uint32(key))
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x85EBCA6B)
    x ^= x >> np.uint32(13)
    x *= np.uint32(0xC2B2AE35)
    x ^= x >> np.uint32(16)
    out = x.astype(np.float32)
    out *= np.float32(2.0**-31)
    out -= np.float32(1.0)
    return out


def _bag_sums(x: np.ndarray, lengths: np.ndarray, fixed: int | None) -> np.ndarray:
    """Sum of x over each sample's bag; each sum depends only on its own bag's values."""
    if fixed == 1:
        return x
    if fixed is not None:
        return x.reshape(-1, fixed).sum(axis=1, dtype=np.float64)
    sample = np.repeat(np.arange(lengths.size), lengths)
    return np.bincount(sample, weights=x, minlength=lengths.size)


def _hash_key(seed: int, *parts: int) -> int:
    return int(np.random.SeedSequence([seed, *parts]).generate_state(1)[0])


def _coprime_multiplier(n: int, rng: np.random.Generator) -> int:
    if n <= 2:
        return 1
    a = int(rng.integers(n // 4, 3 * n // 4 + 1))
    while math.gcd(a, n) != 1:
        a += 1
    return a


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b without BLAS, whose threads would spin on the cores the chunk workers need."""
    if a.ndim == 2:
        return np.einsum("ij,j->i", a, b)
    return np.einsum("i,ij->j", a, b)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for any z


class _Streams:
    """The random generators of the blocks that cover rows [start, stop). Whole blocks are always
    drawn (and the surplus dropped), so row r is the same in every run that has it."""

    def __init__(self, seed: int, stream: int, start: int, stop: int):
        if start % BLOCK_ROWS:
            raise ValueError("a chunk must start on a block boundary")
        blocks = range(start // BLOCK_ROWS, -(-stop // BLOCK_ROWS))
        self.rngs = [np.random.default_rng([seed, stream, b]) for b in blocks]
        self.sizes = [BLOCK_ROWS] * len(blocks)

    def concat(self, draw: Callable[[np.random.Generator, int], np.ndarray]) -> np.ndarray:
        """draw(rng, rows) for every block, concatenated."""
        return np.concatenate([draw(rng, k) for rng, k in zip(self.rngs, self.sizes, strict=True)])


# ---------------------------------------------------------------------------------------------
# The true model: how features are drawn and how labels depend on them
# ---------------------------------------------------------------------------------------------

Bags = dict[str, tuple[np.ndarray, np.ndarray]]
"""table name -> (flat ids, bag lengths [n])."""


@dataclass(frozen=True)
class _Table:
    name: str
    rows: int
    pooling: Pooling
    zipf: float
    mult: int
    shift: int

    @property
    def float_dtype(self) -> type[np.floating]:
        """float32 sampling is exact enough for small tables (at most one rank off, for under 1% of draws) and 3x faster."""
        return np.float32 if self.rows <= FLOAT32_MAX_ROWS else np.float64

    def ids(self, u: np.ndarray) -> np.ndarray:
        """Uniforms -> row ids (int32): a Zipf rank, scattered over the table."""
        return self.scatter(zipf_ranks(u, self.rows, self.zipf))

    def scatter(self, ranks: np.ndarray) -> np.ndarray:
        """The bijection rank -> (rank * mult + shift) mod rows (gcd(mult, rows) = 1); overwrites ranks."""
        ranks *= self.mult
        ranks += self.shift
        ranks %= self.rows
        return ranks.astype(np.int32)


@dataclass
class _Task:
    dense_w: np.ndarray
    table_amp: np.ndarray
    table_keys: list[int]
    pairs: list[tuple[int, int]]
    pair_coef: np.ndarray
    pair_keys: list[tuple[int, int]]
    group_scale: np.ndarray = field(default_factory=lambda: np.ones(3))
    """Multipliers of the dense, sparse and interaction parts, set on the pilot rows."""
    bias: float = 0.0


class SynthModel:
    """The generative model of one (preset, seed, scale): feature samplers and the true label logits."""

    def __init__(self, preset: SynthPreset, seed: int = 0, scale: float = 1.0):
        self.preset = preset
        self.seed = int(seed)
        self.scale = float(scale)
        params = np.random.default_rng([self.seed, _PARAMS])
        self.tables: list[_Table] = []
        for i, spec in enumerate(preset.tables):
            self.tables.append(self._table(i, spec, params))
        self.dense_mu = params.uniform(-1.0, 3.0, preset.num_dense)
        self.dense_sigma = params.uniform(0.8, 2.0, preset.num_dense)
        dense, bags = self.sample_features(_Streams(self.seed, _PILOT, 0, PILOT_ROWS))
        dense_std = np.maximum(dense.std(axis=0), 1e-3) if dense.size else np.ones(0)
        self.tasks = [self._task(k, dense_std) for k in range(preset.num_tasks)]
        for task in self.tasks:
            self._calibrate(task, dense, bags)

    @property
    def dense_names(self) -> list[str]:
        return self.preset.dense_names

    @property
    def label_names(self) -> list[str]:
        return self.preset.label_names

    def sparse_features(self) -> list[SparseFeature]:
        return self.preset.sparse_features(self.scale)

    def _table(self, i: int, spec: TableSpec, params: np.random.Generator) -> _Table:
        rows = scaled_rows(spec.rows, self.scale)
        name = self.preset.feature_name(i)
        if rows > MAX_TABLE_ROWS:
            raise DataError(f"table {name} would have {rows:,} rows at scale {self.scale}; the limit is {MAX_TABLE_ROWS:,}")
        mult, shift = _coprime_multiplier(rows, params), int(params.integers(rows))
        if spec.table:  # the same popular rows as the feature whose table it shares
            shared = next(t for t in self.tables if t.name == spec.table)
            mult, shift = shared.mult, shared.shift
        return _Table(name, rows, spec.pooling, spec.zipf, mult, shift)

    def _task(self, k: int, dense_std: np.ndarray) -> _Task:
        rng = np.random.default_rng([self.seed, _PARAMS, 1 + k])
        importance = rng.exponential(1.0, len(self.tables))  # some tables matter much more than others
        importance /= max(importance.sum(), 1e-12)
        mean_len = np.array([max(t.pooling.mean_length, 1.0) for t in self.tables])
        eligible = [i for i, spec in enumerate(self.preset.tables) if spec.rows >= 3]
        candidates = [(i, j) for a, i in enumerate(eligible) for j in eligible[a + 1 :]]
        chosen = rng.permutation(len(candidates))[: self.preset.interactions]
        pairs = [candidates[c] for c in sorted(chosen)]
        return _Task(
            dense_w=rng.standard_normal(self.preset.num_dense) / dense_std,
            # uniform per-row values have variance 1/3; a bag sums ~mean_len of them
            table_amp=np.sqrt(3 * importance / mean_len),
            table_keys=[_hash_key(self.seed, k, t, _LINEAR) for t in range(len(self.tables))],
            pairs=pairs,
            pair_coef=rng.choice([-1.0, 1.0], len(pairs)) * 3 / np.sqrt([mean_len[i] * mean_len[j] for i, j in pairs]),
            pair_keys=[(_hash_key(self.seed, k, i, _PAIR), _hash_key(self.seed, k, j, _PAIR)) for i, j in pairs],
        )

    # -- features ------------------------------------------------------------------------------

    def sample_features(self, streams: _Streams) -> tuple[np.ndarray, Bags]:
        """Dense [n, D] float32 and every table's bags, drawn in a fixed order from each block's generator."""
        dense = streams.concat(self._dense_block)
        bags: Bags = {}
        for table in self.tables:
            lengths, u = self._draw_bags(table, streams)
            bags[table.name] = (table.ids(u), lengths)
        return dense, bags

    def _dense_block(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """log(1 + count), count = floor(exp(mu + sigma * logistic)): log-logistic counts, Pareto-tailed."""
        u = rng.random((n, self.preset.num_dense), dtype=np.float32)
        # uniforms lie on a 2^-24 grid in [0, 1): the half step keeps both sides of the logit finite
        z = np.log((u + np.float32(2.0**-25)) / (1 - u))
        z *= self.dense_sigma.astype(np.float32)
        z += self.dense_mu.astype(np.float32)
        np.minimum(z, np.float32(60.0), out=z)  # exp stays finite in float32
        np.exp(z, out=z)
        np.floor(z, out=z)  # an integer count, often 0
        z += np.float32(1.0)
        return np.log(z, out=z)  # log(1 + count): exact for integer counts, and far faster than log1p

    @staticmethod
    def _draw_bags(table: _Table, streams: _Streams) -> tuple[np.ndarray, np.ndarray]:
        """Bag lengths [n] and one uniform per id; per block: lengths first (if variable), then uniforms."""
        dtype = table.float_dtype
        fixed = table.pooling.length
        if fixed is None:
            lengths, u = [], []
            for rng, k in zip(streams.rngs, streams.sizes, strict=True):
                lengths.append(table.pooling.sample(rng, k))
                u.append(rng.random(int(lengths[-1].sum()), dtype=dtype))
            return np.concatenate(lengths), np.concatenate(u)
        out = np.empty(sum(streams.sizes) * fixed, dtype=dtype)
        pos = 0
        for rng, k in zip(streams.rngs, streams.sizes, strict=True):
            rng.random(dtype=dtype, out=out[pos : pos + k * fixed])
            pos += k * fixed
        return np.broadcast_to(np.int64(fixed), (sum(streams.sizes),)), out  # a view: no memory

    # -- labels --------------------------------------------------------------------------------

    def _components(self, task: _Task, dense: np.ndarray, bags: Bags) -> np.ndarray:
        """[3, n]: the unscaled dense, sparse and interaction parts of the logit."""
        n = dense.shape[0]
        out = np.zeros((3, n))
        if dense.shape[1]:
            out[0] = _dot(dense.astype(np.float64), task.dense_w)
        for t, table in enumerate(self.tables):
            out[1] += task.table_amp[t] * self._pooled(table, bags, task.table_keys[t])
        for (i, j), coef, (ki, kj) in zip(task.pairs, task.pair_coef, task.pair_keys, strict=True):
            out[2] += coef * self._pooled(self.tables[i], bags, ki) * self._pooled(self.tables[j], bags, kj)
        return out

    @staticmethod
    def _pooled(table: _Table, bags: Bags, key: int) -> np.ndarray:
        values, lengths = bags[table.name]
        return _bag_sums(row_values(values, key), lengths, table.pooling.length)

    def _calibrate(self, task: _Task, dense: np.ndarray, bags: Bags) -> None:
        parts = self._components(task, dense, bags)
        targets = np.array([DENSE_VARIANCE, SPARSE_VARIANCE, INTERACTION_VARIANCE])
        variance = parts.var(axis=1)
        task.group_scale = np.where(variance > 1e-12, np.sqrt(targets / np.maximum(variance, 1e-12)), 0.0)
        z = _dot(task.group_scale, parts)
        # Newton on mean(sigmoid(bias + z)) = base_rate
        p = self.preset.base_rate
        bias = math.log(p / (1 - p)) - float(z.mean())
        for _ in range(50):
            s = _sigmoid(bias + z)
            step = (s.mean() - p) / max(float((s * (1 - s)).mean()), 1e-12)
            bias -= step
            if abs(step) < 1e-12:
                break
        task.bias = float(bias)

    def logits(self, dense: np.ndarray, bags: Bags) -> np.ndarray:
        """True logits, float64 [n, tasks]."""
        n = len(next(iter(bags.values()))[1]) if bags else len(dense)  # dense may have no columns to count rows by
        dense = np.asarray(dense, dtype=np.float32).reshape(n, self.preset.num_dense)
        out = np.empty((n, len(self.tasks)))
        for k, task in enumerate(self.tasks):
            out[:, k] = task.bias + _dot(task.group_scale, self._components(task, dense, bags))
        return out


@lru_cache(maxsize=16)
def _cached_model(preset: SynthPreset, seed: int, scale: float) -> SynthModel:
    return SynthModel(preset, seed, scale)


def synth_model(preset: str | SynthPreset, seed: int = 0, scale: float = 1.0) -> SynthModel:
    """The (cached) generative model of a preset at a seed and scale."""
    return _cached_model(get_preset(preset), int(seed), float(scale))


def synth_model_from_info(info: Mapping[str, Any]) -> SynthModel:
    """The model that generated a dataset, from its schema.info."""
    if info.get("generator") != GENERATOR:
        raise DataError("this dataset was not made by the synthetic generator")
    return synth_model(SynthPreset.from_dict(info["preset_spec"]), info["seed"], info["scale"])


def _as_bags(model: SynthModel, sparse: Mapping[str, Any]) -> Bags:
    """Accept (values, lengths) per table, or an [n, L] / [n] array for fixed-size tables."""
    bags: Bags = {}
    for table in model.tables:
        if table.name not in sparse:
            raise DataError(f"sparse feature {table.name} is missing")
        item = sparse[table.name]
        if isinstance(item, tuple):
            values, lengths = (np.asarray(x) for x in item)
        else:
            values = np.asarray(item)
            n = values.shape[0]
            lengths = np.full(n, 1 if values.ndim == 1 else values.shape[1], dtype=np.int64)
        values, lengths = values.reshape(-1), lengths.astype(np.int64, copy=False)
        fixed = table.pooling.length
        if values.size != int(lengths.sum()) or (fixed is not None and values.size != fixed * lengths.size):
            raise DataError(f"sparse feature {table.name}: {values.size} ids do not fit its bags")
        bags[table.name] = (values, lengths)
    return bags


def true_logits(
    preset: str | SynthPreset,
    seed: int,
    scale: float,
    data: Batch | tuple[np.ndarray, Mapping[str, Any]],
) -> np.ndarray:
    """Exact true logits of rows: [n] for one task, [n, tasks] for several."""
    model = synth_model(preset, seed, scale)
    if isinstance(data, Batch):
        dense = data.dense.numpy()
        sparse: Mapping[str, Any] = {k: (v.numpy(), n.numpy()) for k, (v, n) in data.sparse.to_dict().items()}
    else:
        dense, sparse = data
    z = model.logits(dense, _as_bags(model, sparse))
    return z[:, 0] if z.shape[1] == 1 else z


def true_probabilities(
    preset: str | SynthPreset,
    seed: int,
    scale: float,
    data: Batch | tuple[np.ndarray, Mapping[str, Any]],
) -> np.ndarray:
    """P(label = 1) of rows under the true model: [n] for one task, [n, tasks] for several.

    `data` is a Batch, or (dense [n, D], {table: (values, lengths) or an [n, L] array}).
    """
    return _sigmoid(true_logits(preset, seed, scale, data))


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


@dataclass
class _Chunk:
    dense: np.ndarray
    labels: np.ndarray
    bags: Bags
    logits: np.ndarray


def _make_chunk(model: SynthModel, start: int, stop: int) -> _Chunk:
    streams = _Streams(model.seed, _DATA, start, stop)
    dense, bags = model.sample_features(streams)
    tasks = len(model.tasks)
    u = streams.concat(lambda rng, k: rng.random((k, tasks)))
    n = stop - start  # drop the surplus of a last, partial block
    dense, u = dense[:n], u[:n]
    bags = {name: (values[: int(lengths[:n].sum())], lengths[:n]) for name, (values, lengths) in bags.items()}
    logits = model.logits(dense, bags)
    return _Chunk(dense, (u < _sigmoid(logits)).astype(np.float32), bags, logits)


class _TrueMetrics:
    """Streaming AUC and log loss of the true logits on the test rows.

    AUC comes from a histogram of logits (2^20 bins over [-16, 16]); only pairs within one bin of
    width 3e-5 count as ties, so it is within ~1e-5 of the exact value, in bounded memory.
    """

    BINS = 1 << 20
    RANGE = 16.0

    def __init__(self, tasks: int):
        self.counts = np.zeros((tasks, 2, self.BINS), dtype=np.int64)
        self.loss = np.zeros(tasks)
        self.rows = 0

    def add(self, logits: np.ndarray, labels: np.ndarray) -> None:
        self.rows += logits.shape[0]
        for k in range(logits.shape[1]):
            z, y = logits[:, k], labels[:, k].astype(np.int64)
            self.loss[k] += float((np.logaddexp(0.0, z) - y * z).sum())
            self.counts[k] += np.bincount(self._bins(z) * 2 + y, minlength=2 * self.BINS).reshape(self.BINS, 2).T

    def _bins(self, z: np.ndarray) -> np.ndarray:
        scaled = (np.clip(z, -self.RANGE, self.RANGE) + self.RANGE) * (self.BINS / (2 * self.RANGE))
        return np.minimum(scaled.astype(np.int64), self.BINS - 1)

    def auc(self, k: int) -> float | None:
        neg, pos = self.counts[k]
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        if n_pos == 0 or n_neg == 0:
            return None
        below = np.cumsum(neg) - neg  # negatives in lower bins
        return float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))

    def logloss(self, k: int) -> float | None:
        return float(self.loss[k] / self.rows) if self.rows else None


def _in_order(work: Callable[[int, int], _Chunk], bounds: list[tuple[int, int]], workers: int) -> Iterator[_Chunk]:
    """work(start, stop) for every chunk on `workers` threads (numpy releases the GIL), in order,
    with at most workers + 1 chunks in memory."""
    if workers <= 1:
        for a, b in bounds:
            yield work(a, b)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="recstack-synth") as pool:
        pending: deque[Future[_Chunk]] = deque()
        try:
            for a, b in bounds:
                pending.append(pool.submit(work, a, b))
                if len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def _writer_sparse(model: SynthModel, bags: Bags, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for table in model.tables:
        values, lengths = bags[table.name]
        length = table.pooling.length
        out[table.name] = (values, lengths) if length is None else values.reshape(n, length)
    return out


def generate(
    preset: str | SynthPreset,
    rows: int,
    out: str | Path,
    *,
    seed: int = 0,
    scale: float = 1.0,
    test_fraction: float = 0.1,
    chunk_rows: int = 65536,
    show_progress: bool = True,
    workers: int | None = None,
) -> Schema:
    """Write `rows` synthetic rows to the dataset directory `out`: split `train` (the head) and
    `test` (the last `test_fraction`), with the true model's test AUC and log loss in schema.info.

    Memory stays bounded by a few chunks whatever `rows` is; `chunk_rows` is rounded up to a
    multiple of BLOCK_ROWS and does not change the data. `workers` threads (default: the CPU
    count, at most 4) make chunks in parallel; the calling thread writes them in order.
    """
    spec = get_preset(preset)
    test_start = first_test_row(rows, test_fraction)
    require_disk(out, rows * row_bytes(spec), f"writing {rows:,} rows of preset {spec.name}",
                 hint="generate fewer rows or write elsewhere")
    model = synth_model(spec, seed, scale)
    chunk = max(BLOCK_ROWS, -(-chunk_rows // BLOCK_ROWS) * BLOCK_ROWS)
    bounds = [(a, min(a + chunk, rows)) for a in range(0, rows, chunk)]
    workers = workers or min(4, os.cpu_count() or 1)

    writer = DatasetWriter(out, model.dense_names, model.label_names, model.sparse_features())
    metrics = _TrueMetrics(len(model.tasks))
    bar_context = (
        progress_bar(f"synth {spec.name}", total=rows, unit="rows") if show_progress else nullcontext(_Silent())
    )
    with bar_context as bar:
        for (a, b), c in zip(bounds, _in_order(lambda a, b: _make_chunk(model, a, b), bounds, workers), strict=True):
            writer.append(c.dense, c.labels, _writer_sparse(model, c.bags, b - a))
            if b > test_start:
                tail = max(test_start - a, 0)
                metrics.add(c.logits[tail:], c.labels[tail:])
            bar.update(b - a)
    return writer.finish(
        splits={"train": [0, test_start], "test": [test_start, rows]},
        info=_info(model, spec, rows, metrics),
    )


def first_test_row(rows: int, test_fraction: float) -> int:
    """The first row of the `test` split (the last round(rows * test_fraction) rows). A DataError when
    the fraction is not in [0, 1) or a split would come out empty: no train rows, or no test rows from a
    fraction > 0 (0 asks for no test split, as `bench train` does)."""
    if not 0.0 <= test_fraction < 1.0:  # NaN fails too
        raise DataError(f"the test fraction must be in [0, 1), got {test_fraction}")
    if rows < 1:
        raise DataError(f"the number of rows must be >= 1, got {rows}")
    test_start = rows - int(round(rows * test_fraction))
    if test_start == 0:
        raise DataError(f"a test fraction of {test_fraction} leaves no train rows out of {rows}; "
                        f"use at most {1 - 1 / rows:.6g} or generate more rows")
    if test_fraction > 0 and test_start == rows:
        raise DataError(f"a test fraction of {test_fraction} of {rows} rows gives no test rows; "
                        f"use at least {1 / rows:.6g}, or 0 for no test split")
    return test_start


def row_bytes(preset: SynthPreset) -> float:
    """Average bytes of one row on disk: float32 dense values and labels, int32 ids, and an int64 offset
    per row of each variable-length feature."""
    ids = sum(4 * t.pooling.mean_length + (8 if t.pooling.length is None else 0) for t in preset.tables)
    return 4 * (preset.num_dense + preset.num_tasks) + ids


class _Silent:
    def update(self, advance: float = 0, **fields: object) -> None:
        pass


def _info(model: SynthModel, spec: SynthPreset, rows: int, metrics: _TrueMetrics) -> dict[str, Any]:
    names = model.label_names
    auc = [metrics.auc(k) for k in range(len(names))]
    loss = [metrics.logloss(k) for k in range(len(names))]
    single = len(names) == 1
    return {
        "generator": GENERATOR,
        "preset": spec.name,
        "preset_spec": spec.to_dict(),
        "seed": model.seed,
        "scale": model.scale,
        "rows": rows,
        "table_rows": {t.name: t.rows for t in model.tables},
        "zipf": {t.name: t.zipf for t in model.tables},
        "pooling": {t.name: t.pooling.describe() for t in model.tables},
        "base_rate_target": spec.base_rate,
        "bias": [t.bias for t in model.tasks],
        "true_auc": auc[0] if single else dict(zip(names, auc, strict=True)),
        "true_logloss": loss[0] if single else dict(zip(names, loss, strict=True)),
        "true_auc_method": "histogram of true logits, 2^20 bins on [-16, 16]",
    }


# the presets' names (Pooling, SynthPreset, PRESETS, get_preset, with_tasks, ...) are re-exported here:
# their home is recstack.data.synth_presets
__all__ = [
    "BLOCK_ROWS", "CRITEO_KAGGLE_ROWS", "CRITEO_TERABYTE_ROWS", "DENSE_VARIANCE", "DLRM_V2_MULTI_HOT",
    "FLOAT32_MAX_ROWS", "GENERATOR", "INTERACTION_VARIANCE", "MAX_TABLE_ROWS", "MIN_SCALED_ROWS", "PILOT_ROWS",
    "PRESETS", "SPARSE_VARIANCE", "TERABYTE_MAX_IND_RANGE", "Bags", "Pooling", "SynthModel", "SynthPreset",
    "TableSpec", "default_zipf", "first_test_row", "generate", "get_preset", "register_preset", "row_bytes",
    "row_values", "scaled_rows", "skewed_tables", "synth_model", "synth_model_from_info", "true_logits",
    "true_probabilities", "with_tasks", "zipf_ranks",
]  # fmt: skip
