"""The sharding planner: a cost model per table and sharding type, and a greedy search over plans.

Inputs: the model's tables (TableConfig, grouped by the collection that holds them), the mean ids
per sample of every feature (the pooling factor; for a behaviour sequence the mean of
min(length, max_sequence_length), the ids it keeps), the global batch B, the world size W, the
sparse optimizer, an optional memory limit per rank, and a `Machine` (gather rate, link rates).

Per table and sharding type the model counts, per rank:

- storage: rows x dim x 4 plus rows x the optimizer's state floats x 4, split as the type splits
  the table (row_wise: torch.chunk's row ranges, an empty shard holds one row as the collection
  does; column_wise: dim / W columns, and its own row-wise Adagrad accumulator; data_parallel: the
  whole table on every rank);
- lookups: bytes of rows gathered per step (ids x the width the rank holds) and bytes the sparse
  optimizer rewrites (the same ids x (width + state floats)), ids spread evenly over row shards;
- all-to-all bytes per step, sent to other ranks, in the protocol of the sharded collection
  (recstack.embeddings.sharded), counted as its `comm` counts them (bytes a rank sends to OTHER
  ranks, summed over ranks; B_r = B / W; every figure below is a total over ranks):

      input_counts   per exchange W (W-1) 16; one exchange per collection for its pooled features
                     when a non-data-parallel table has some, one more for its sequence features
      table_wise     ids B (W-1)/W L 8, bag lengths B (W-1)/W 4, output B (W-1)/W D 4, gradient the same
      row_wise       ids B L (W-1)/W 8, bag lengths (W-1) B 4, output (W-1) B D 4, gradient the same
      column_wise    ids (W-1) B L 8, bag lengths (W-1) B 4, output (W-1)/W B D 4, gradient the same
      sequences      per id instead of per bag (S = kept ids per sample): table_wise ids B (W-1)/W S 8,
                     lengths B (W-1)/W S 4, output and gradient B (W-1)/W S D 4 each; row_wise ids
                     B S (W-1)/W 8, lengths (W-1) B S 4, output and gradient B S (W-1)/W D 4 each;
                     column_wise ids (W-1) B S 8, lengths (W-1) B S 4, output and gradient
                     (W-1)/W B S D 4 each
      input_weights  ids to others x 4 for every pooled block of a collection whose bags are
                     weighted: a mean-pooled row_wise table (its bags are split), or a batch that
                     carries per-id weights (`weighted_batch`; recstack's datasets carry none)
      data_parallel  no all-to-all: its gradient sync is an all-gather, counted apart: per
                     collection with replicas each rank sends each other rank 8 + U (8 + D 4) bytes,
                     U the most ids any rank looked up in them (estimated as B_r x its ids per
                     sample, the mean: variable-length bags make the most a little larger)

  column_wise tables under row-wise Adagrad also all-reduce each touched row's squared-gradient sum
  (4 bytes a row, counted as the collection counts it: an upper bound, every id a distinct row).

- time per rank: gathers / gather rate + rewrites / update rate + the rank's exchange (the larger of
  what it sends and receives, its peers on its node at the intra-node rate and the others at the
  inter-node rate, both links busy at once) + a latency per collective. Phases add up (no
  overlap), as recstack.ceilings' roofline does.

The search assigns each table, largest first, the type (and, table_wise, the owner) that keeps the
slowest rank's estimated time lowest, among those that fit the memory limit on every rank;
data_parallel only for tables under `dp_max_bytes`. A table that fits nowhere is refused with one
line naming it and the shortfall. Tables that share a name across collections (Wide & Deep's deep
and wide tables) are planned together: a plan gives a name one sharding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from recstack.embeddings.base import SparseOptimizerConfig, TableConfig
from recstack.embeddings.sharding import (
    COLUMN_WISE,
    DATA_PARALLEL,
    ROW_WISE,
    TABLE_WISE,
    ShardingPlan,
    TableSharding,
)
from recstack.errors import ConfigError
from recstack.memory import format_bytes

FP32, ID, LENGTH, COUNTS = 4, 8, 4, 16
"""Bytes of an embedding value, an id (int64), a bag length (int32), a rank's (ids, bags) counts."""
A2A_KINDS = ("input_counts", "input_ids", "input_lengths", "input_weights", "output", "output_grad")
"""The all-to-all kinds of the sharded collection's `comm` counters, in the order of a step."""
DP_MAX_BYTES = 1 << 20
"""Tables up to this size (rows and optimizer state) may be replicated (data_parallel)."""


@dataclass
class Machine:
    """Rates the cost model divides bytes by. The defaults are this project's 2-core CPU machine:
    random-row gather and row-update rates measured by recstack.ceilings (64-byte rows, a 256 MiB
    table, 2 threads), gloo over loopback assumed at about its memory-copy rate. `measured()` takes
    the rates of the machine it runs on; `at_scale` in recstack.train.plan_command states a GPU one."""

    name: str = "cpu (2 cores, loopback)"
    gather_bytes_per_s: float = 0.5e9
    """Rows read by the lookups (random gathers, cold misses: recstack.ceilings.gather_bandwidth_gbs)."""
    update_bytes_per_s: float = 0.3e9
    """Rows (and optimizer state) rewritten by the sparse optimizer (ceilings.scatter_update_bandwidth_gbs)."""
    intra_node_bytes_per_s: float = 2e9
    """All-to-all rate per rank to the ranks on its own node (NVLink, shared memory, loopback)."""
    inter_node_bytes_per_s: float = 1.25e9
    """All-to-all rate per rank to ranks on other nodes (its share of the network)."""
    ranks_per_node: int = 8
    latency_s: float = 50e-6
    """Fixed cost of one collective."""
    matmul_flops_per_s: float = 0.0
    """Dense (MLP) compute rate for the step estimate; 0: dense compute is not modelled."""

    def __post_init__(self) -> None:
        rates = (self.gather_bytes_per_s, self.update_bytes_per_s, self.intra_node_bytes_per_s,
                 self.inter_node_bytes_per_s)
        if not all(math.isfinite(r) and r > 0 for r in rates) or self.ranks_per_node < 1:
            raise ConfigError("machine rates must be finite numbers > 0 and ranks per node >= 1")
        if not (math.isfinite(self.latency_s) and self.latency_s >= 0 and self.matmul_flops_per_s >= 0):
            raise ConfigError("machine latency and matmul rate must be >= 0")

    @classmethod
    def measured(cls, row_bytes: int = 64, seconds: float = 0.3, table_bytes: int = 256 << 20,
                 **links: Any) -> Machine:
        """This machine's gather, update and matmul rates, measured now by recstack.ceilings (about
        2 s); link rates as given (`links`: intra_node_bytes_per_s, ...) or the defaults."""
        from recstack import ceilings

        rows = max(table_bytes // row_bytes, 1)
        gather = ceilings.gather_bandwidth_gbs(row_bytes, table_rows=rows, seconds=seconds)
        update = ceilings.scatter_update_bandwidth_gbs(row_bytes, table_rows=rows, seconds=seconds)
        matmul = ceilings.matmul_gflops(size=1024, seconds=seconds)
        return cls(name="this machine (measured)", gather_bytes_per_s=gather * 1e9, update_bytes_per_s=update * 1e9,
                   matmul_flops_per_s=matmul * 1e9, **links)

    def exchange_seconds(self, nbytes: np.ndarray | float, world_size: int) -> np.ndarray | float:
        """Seconds for a rank to move `nbytes` to (or from) its peers, spread evenly over them."""
        if world_size <= 1:
            return nbytes * 0.0
        local = min(self.ranks_per_node, world_size)
        on_node = (local - 1) / (world_size - 1)
        return np.maximum(nbytes * on_node / self.intra_node_bytes_per_s,
                          nbytes * (1 - on_node) / self.inter_node_bytes_per_s)


@dataclass
class TablePrediction:
    name: str
    sharding: str
    ranks: list[int]
    rows: int
    dim: int
    bytes: int
    """Storage over all ranks (rows and optimizer state; data_parallel: every replica)."""
    max_rank_bytes: int
    """Storage on the rank that holds most of it."""
    lookup_bytes_per_step: int
    """Rows gathered per step, over all ranks."""
    all_to_all_bytes_per_step: int
    """This table's blocks in the exchange (counts and, where they travel, weights apart)."""
    all_gather_bytes_per_step: int


@dataclass
class PlanPrediction:
    """What the cost model predicts for a plan (bytes are per step of the global batch)."""

    world_size: int
    batch_size: int
    per_rank_bytes: list[int]
    """Storage per rank: tables and optimizer state, plus `reserved_bytes` (dense replicas)."""
    per_rank_seconds: list[float]
    """Estimated embedding time per rank (lookups, updates, exchanges)."""
    per_rank_lookup_bytes: list[int]
    per_rank_all_to_all_bytes: list[int]
    """Bytes each rank sends to others in all-to-alls."""
    all_to_all_bytes_per_step: int
    all_to_all_by_kind: dict[str, int]
    all_gather_bytes_per_step: int
    all_reduce_bytes_per_step: int
    dense_seconds: float
    """Dense compute and the gradient all-reduce of the replicated dense layers (0 when not modelled)."""
    step_seconds: float
    """The slowest rank's embedding time plus the dense part."""
    reserved_bytes: int
    tables: list[TablePrediction]
    machine: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def samples_per_s(self) -> float:
        return self.batch_size / self.step_seconds if self.step_seconds > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["samples_per_s"] = self.samples_per_s
        return out


# --- the cost of one table instance under one sharding --------------------------------------------


@dataclass
class _Cost:
    """One table's share of the per-rank totals (arrays of W) and of its collection's."""

    storage: np.ndarray
    gather: np.ndarray
    update: np.ndarray
    send: np.ndarray
    recv: np.ndarray
    kinds: dict[str, float]
    """All-to-all bytes by kind, totals over ranks (input_counts and input_weights apart)."""
    weight_send: np.ndarray
    """Bytes of per-id weights this table's pooled blocks would send (when its collection's travel)."""
    weight_recv: np.ndarray
    pooled_exchange: bool = False
    sequence_exchange: bool = False
    weighted: bool = False
    """This table makes its collection's pooled weights travel (a mean-pooled row_wise table)."""
    dp_ids: float = 0.0
    """Ids per rank looked up in replicas (data_parallel), for the all-gather."""
    cw_ids: float = 0.0
    """Ids per step looked up in column_wise shards (an all-reduce under row-wise Adagrad)."""
    replicas: bool = False
    """The collection holds data_parallel tables (their all-gather runs)."""

    def __add__(self, other: _Cost) -> _Cost:
        kinds = {k: self.kinds.get(k, 0.0) + other.kinds.get(k, 0.0) for k in {*self.kinds, *other.kinds}}
        return _Cost(self.storage + other.storage, self.gather + other.gather, self.update + other.update,
                     self.send + other.send, self.recv + other.recv, kinds, self.weight_send + other.weight_send,
                     self.weight_recv + other.weight_recv, self.pooled_exchange or other.pooled_exchange,
                     self.sequence_exchange or other.sequence_exchange, self.weighted or other.weighted,
                     self.dp_ids + other.dp_ids, self.cw_ids + other.cw_ids, self.replicas or other.replicas)

    @classmethod
    def zero(cls, world_size: int) -> _Cost:
        z = np.zeros(world_size)
        return cls(z, z, z, z, z, {}, z, z)


def shard_bytes(rows: int, dim: int, optimizer: SparseOptimizerConfig) -> int:
    """Bytes of one shard of `rows` x `dim` fp32 rows with its optimizer state."""
    return rows * dim * FP32 + rows * optimizer.state_floats_per_row(dim) * FP32


def storage_per_rank(table: TableConfig, sharding: TableSharding, world_size: int,
                     optimizer: SparseOptimizerConfig) -> np.ndarray:
    """Bytes each rank holds of `table` under `sharding`, as the sharded collection lays it out."""
    out = np.zeros(world_size)
    rows, dim = table.num_embeddings, table.embedding_dim
    for rank, (r0, r1), (c0, c1) in sharding.shards(rows, dim):
        # the collection keeps at least one row in a shard (an empty row range of a short table)
        out[rank] += shard_bytes(max(r1 - r0, 1) if sharding.sharding == ROW_WISE else r1 - r0, c1 - c0, optimizer)
    return out


def table_cost(table: TableConfig, sharding: TableSharding, batch_size: int, world_size: int,
               pooling: Mapping[str, float], sequence_lengths: Mapping[str, float],
               optimizer: SparseOptimizerConfig, weighted_batch: bool = False) -> _Cost:
    """Per-rank storage, lookup, update and exchange bytes of one table under one sharding."""
    W, B, D = world_size, float(batch_size), table.embedding_dim
    b, P = B / W, W - 1
    kind = sharding.sharding
    k = optimizer.state_floats_per_row
    pooled = [float(pooling.get(f, 0.0)) for f in table.feature_names]
    seqs = [float(sequence_lengths.get(f, 0.0)) for f in table.sequence_names]
    ids = sum(pooled) + sum(seqs)  # ids per sample this table serves
    z = np.zeros(W)
    storage = storage_per_rank(table, sharding, W, optimizer)
    gather, update, send, recv, wsend, wrecv = (z.copy() for _ in range(6))
    kinds = dict.fromkeys(A2A_KINDS[1:], 0.0)
    kinds.pop("input_weights")
    cost = _Cost(storage, gather, update, send, recv, kinds, wsend, wrecv)
    if kind == DATA_PARALLEL or W == 1:
        gather += b * ids * D * FP32
        update += B * ids * (D + k(D)) * FP32  # every replica takes the whole step
        cost.replicas = kind == DATA_PARALLEL and W > 1
        cost.dp_ids = b * ids if cost.replicas else 0.0
        if W == 1 and kind != DATA_PARALLEL:  # one rank: the exchange stays local, nothing is sent
            cost.pooled_exchange, cost.sequence_exchange = bool(pooled), bool(seqs)
        return cost
    cost.pooled_exchange, cost.sequence_exchange = bool(pooled), bool(seqs)
    cost.weighted = kind == ROW_WISE and table.pooling == "mean" and bool(pooled)

    def add(what: str, total: float, sender: np.ndarray, receiver: np.ndarray) -> None:
        """`total` bytes of kind `what`, sent in proportion `sender`, received in proportion `receiver`."""
        kinds[what] += total
        send[:] += total * sender
        recv[:] += total * receiver

    even = np.full(W, 1.0 / W)
    if kind == TABLE_WISE:
        owner = sharding.ranks[0]
        others = np.full(W, 1.0 / P)
        others[owner] = 0.0
        at_owner = np.zeros(W)
        at_owner[owner] = 1.0
        forward, back = (others, at_owner), (at_owner, others)  # ids go to the owner, outputs come back
        for L in pooled:
            add("input_ids", B * P / W * L * ID, *forward)
            add("input_lengths", B * P / W * LENGTH, *forward)
            add("output", B * P / W * D * FP32, *back)
            add("output_grad", B * P / W * D * FP32, *forward)
            wsend += B * P / W * L * FP32 * others
            wrecv += B * P / W * L * FP32 * at_owner
        for S in seqs:
            add("input_ids", B * P / W * S * ID, *forward)
            add("input_lengths", B * P / W * S * LENGTH, *forward)
            add("output", B * P / W * S * D * FP32, *back)
            add("output_grad", B * P / W * S * D * FP32, *forward)
        gather[owner] += B * ids * D * FP32
        update[owner] += B * ids * (D + k(D)) * FP32
    elif kind == ROW_WISE:
        for L in pooled:
            add("input_ids", B * L * P / W * ID, even, even)
            add("input_lengths", P * B * LENGTH, even, even)
            add("output", P * B * D * FP32, even, even)
            add("output_grad", P * B * D * FP32, even, even)
            wsend += B * L * P / W * FP32 * even
            wrecv += B * L * P / W * FP32 * even
        for S in seqs:
            add("input_ids", B * S * P / W * ID, even, even)
            add("input_lengths", P * B * S * LENGTH, even, even)
            add("output", B * S * P / W * D * FP32, even, even)
            add("output_grad", B * S * P / W * D * FP32, even, even)
        gather += b * ids * D * FP32
        update += b * ids * (D + k(D)) * FP32
    elif kind == COLUMN_WISE:
        d = D // W
        for L in pooled:
            add("input_ids", P * B * L * ID, even, even)
            add("input_lengths", P * B * LENGTH, even, even)
            add("output", P / W * B * D * FP32, even, even)
            add("output_grad", P / W * B * D * FP32, even, even)
            wsend += P * B * L * FP32 * even
            wrecv += P * B * L * FP32 * even
        for S in seqs:
            add("input_ids", P * B * S * ID, even, even)
            add("input_lengths", P * B * S * LENGTH, even, even)
            add("output", P / W * B * S * D * FP32, even, even)
            add("output_grad", P / W * B * S * D * FP32, even, even)
        gather += B * ids * d * FP32
        update += B * ids * (d + k(d)) * FP32
        cost.cw_ids = B * ids if optimizer.kind == "rowwise_adagrad" else 0.0
    if weighted_batch:
        cost.weighted = cost.weighted or bool(pooled)
    return cost


# --- a whole assignment ------------------------------------------------------------------------


@dataclass
class _Instance:
    collection: int
    table: TableConfig


@dataclass
class _Problem:
    world_size: int
    batch_size: int
    optimizer: SparseOptimizerConfig
    machine: Machine
    pooling: Mapping[str, float]
    sequence_lengths: Mapping[str, float]
    weighted_batch: bool
    dims: dict[int, int]
    """Collection -> the width of its tables (for the data-parallel all-gather)."""


def _collection_totals(problem: _Problem, by_collection: dict[int, _Cost]) -> dict[str, Any]:
    """Per-rank bytes and seconds of everything a plan's collections do, and the totals by kind."""
    W, m = problem.world_size, problem.machine
    P = W - 1
    storage, gather, update = np.zeros(W), np.zeros(W), np.zeros(W)
    send, recv, gathered, reduced = np.zeros(W), np.zeros(W), np.zeros(W), np.zeros(W)
    kinds = dict.fromkeys(A2A_KINDS, 0.0)
    all_gather = all_reduce = 0.0
    collectives = 0
    for c, cost in by_collection.items():
        storage += cost.storage
        gather += cost.gather
        update += cost.update
        if W == 1:
            continue
        send += cost.send
        recv += cost.recv
        for k, v in cost.kinds.items():
            kinds[k] += v
        exchanges = int(cost.pooled_exchange) + int(cost.sequence_exchange)
        kinds["input_counts"] += exchanges * W * P * COUNTS
        send += exchanges * P * COUNTS
        recv += exchanges * P * COUNTS
        collectives += exchanges * 5  # counts, ids, lengths, output, output_grad
        if cost.weighted and cost.pooled_exchange:
            kinds["input_weights"] += float(cost.weight_send.sum())
            send += cost.weight_send
            recv += cost.weight_recv
            collectives += 1
        if cost.replicas:
            per_peer = 8 + math.ceil(cost.dp_ids) * (8 + problem.dims[c] * FP32)
            all_gather += W * P * per_peer
            gathered += P * per_peer
            collectives += 3
        if cost.cw_ids > 0:
            per_rank = cost.cw_ids * FP32
            all_reduce += W * per_rank
            reduced += 2 * P / W * per_rank  # a ring all-reduce moves 2 (W-1)/W of it
            collectives += 1
    a2a = np.maximum(send, recv)
    seconds = (gather / m.gather_bytes_per_s + update / m.update_bytes_per_s
               + m.exchange_seconds(a2a + gathered + reduced, W) + collectives * m.latency_s)
    return {"storage": storage, "gather": gather, "send": send, "seconds": seconds, "kinds": kinds,
            "all_gather": all_gather, "all_reduce": all_reduce}



# --- the search ----------------------------------------------------------------------------------


def _collections(tables: Sequence[TableConfig] | Sequence[Sequence[TableConfig]]) -> list[list[TableConfig]]:
    """A flat table list is one collection; a list of lists, one per collection."""
    if tables and all(isinstance(t, TableConfig) for t in tables):
        return [list(tables)]  # type: ignore[arg-type]
    return [list(c) for c in tables]  # type: ignore[union-attr]


def _units(collections: list[list[TableConfig]]) -> dict[str, list[_Instance]]:
    """Table name -> its instances in every collection (one plan entry each name)."""
    units: dict[str, list[_Instance]] = {}
    for c, tables in enumerate(collections):
        for t in tables:
            units.setdefault(t.name, []).append(_Instance(c, t))
    return units


def _problem(collections: list[list[TableConfig]], batch_size: int, world_size: int,
             optimizer: SparseOptimizerConfig | None, machine: Machine | None, pooling: Mapping[str, float],
             sequence_lengths: Mapping[str, float] | None, weighted_batch: bool) -> _Problem:
    if world_size < 1 or batch_size < 1:
        raise ConfigError(f"the planner needs a world size and a batch size >= 1, got {world_size} and {batch_size}")
    bad = sorted(f for f, v in {**pooling, **(sequence_lengths or {})}.items() if not (math.isfinite(v) and v >= 0))
    if bad:
        raise ConfigError(f"mean ids per sample must be finite numbers >= 0; features {bad} are not")
    dims = {c: (ts[0].embedding_dim if ts else 0) for c, ts in enumerate(collections)}
    return _Problem(world_size, batch_size, optimizer or SparseOptimizerConfig(), machine or Machine(), pooling,
                    sequence_lengths or {}, weighted_batch, dims)


def _options(instances: list[_Instance], world_size: int, optimizer: SparseOptimizerConfig,
             dp_max_bytes: int) -> list[TableSharding]:
    every = tuple(range(world_size))
    full = sum(shard_bytes(i.table.num_embeddings, i.table.embedding_dim, optimizer) for i in instances)
    out = [TableSharding(DATA_PARALLEL, every)] if full <= dp_max_bytes and world_size > 1 else []
    out += [TableSharding(TABLE_WISE, (r,)) for r in range(world_size)]
    if world_size > 1:
        out.append(TableSharding(ROW_WISE, every))
        if all(i.table.embedding_dim % world_size == 0 for i in instances):
            out.append(TableSharding(COLUMN_WISE, every))
    return out


def _with(by_collection: dict[int, _Cost], instances: list[_Instance], sharding: TableSharding,
          problem: _Problem) -> dict[int, _Cost]:
    out = dict(by_collection)
    for i in instances:
        cost = table_cost(i.table, sharding, problem.batch_size, problem.world_size, problem.pooling,
                          problem.sequence_lengths, problem.optimizer, problem.weighted_batch)
        out[i.collection] = out[i.collection] + cost if i.collection in out else cost
    return out


def _greedy(problem: _Problem, units: dict[str, list[_Instance]], limit: int | None, reserved_bytes: int,
            dp_max_bytes: int, memory_first: bool) -> dict[str, TableSharding]:
    """Largest table first, the option that keeps the slowest rank fastest (`memory_first`: the
    fullest rank emptiest), among those that fit `limit` on every rank."""
    W = problem.world_size

    def size(instances: list[_Instance]) -> int:
        return sum(shard_bytes(i.table.num_embeddings, i.table.embedding_dim, problem.optimizer) for i in instances)

    chosen: dict[str, TableSharding] = {}
    state: dict[int, _Cost] = {}
    order = list(units)
    for name in sorted(units, key=lambda n: (-size(units[n]), order.index(n))):
        instances = units[name]
        current = _collection_totals(problem, state)
        seen_owners: set[tuple[float, ...]] = set()
        best, best_key, least_need = None, None, None
        for option in _options(instances, W, problem.optimizer, dp_max_bytes):
            if option.sharding == TABLE_WISE:
                r = option.ranks[0]  # ranks that are loaded alike are the same choice: try one of each
                signature = (current["storage"][r], current["seconds"][r], current["send"][r])
                if signature in seen_owners:
                    continue
                seen_owners.add(signature)
            trial = _with(state, instances, option, problem)
            totals = _collection_totals(problem, trial)
            need = float(totals["storage"].max()) + reserved_bytes
            if limit is not None and need > limit:
                least_need = need if least_need is None else min(least_need, need)
                continue
            slowest = round(float(totals["seconds"].max()), 12)
            key = (need, slowest) if memory_first else (slowest, need)
            key += (sum(totals["kinds"].values()),)
            if best_key is None or key < best_key:
                best, best_key = option, key
        if best is None:
            t = instances[0].table
            assert limit is not None and least_need is not None
            raise ConfigError(
                f"table {name} ({t.num_embeddings:,} rows x {t.embedding_dim}) fits on no rank: its smallest "
                f"placement needs {format_bytes(int(least_need))} on a rank of {format_bytes(int(limit))}, "
                f"{format_bytes(int(math.ceil(least_need - limit)))} short (raise --memory-per-rank or "
                "--world-size, or lower --model.scale)")
        chosen[name] = best
        state = _with(state, instances, best, problem)
    return chosen


def plan_tables(
    tables: Sequence[TableConfig] | Sequence[Sequence[TableConfig]],
    pooling: Mapping[str, float],
    batch_size: int,
    world_size: int,
    optimizer: SparseOptimizerConfig | None = None,
    memory_per_rank: int | None = None,
    machine: Machine | None = None,
    *,
    sequence_lengths: Mapping[str, float] | None = None,
    dp_max_bytes: int = DP_MAX_BYTES,
    weighted_batch: bool = False,
    reserved_bytes: int = 0,
    dense_flops_per_sample: float = 0.0,
    dense_params: int = 0,
) -> tuple[ShardingPlan, PlanPrediction]:
    """A sharding plan for `tables` (one collection's, or a list per collection) and its prediction.

    `pooling`: feature -> mean ids per sample of a pooled feature; `sequence_lengths`: feature -> mean
    ids per sample a sequence feature keeps (min(length, max_sequence_length)); `batch_size`: the
    global batch; `memory_per_rank`: bytes a rank may hold (None: no limit), of which
    `reserved_bytes` (dense layers, their gradients and optimizer moments) are taken first.
    `dense_flops_per_sample` and `dense_params` add the dense step to the time estimate."""
    collections = _collections(tables)
    problem = _problem(collections, batch_size, world_size, optimizer, machine, pooling, sequence_lengths,
                       weighted_batch)
    W, limit = world_size, memory_per_rank
    units = _units(collections)

    try:
        chosen = _greedy(problem, units, limit, reserved_bytes, dp_max_bytes, memory_first=False)
    except ConfigError:  # the fastest choices left too little room for a later table: fit first, then speed
        chosen = _greedy(problem, units, limit, reserved_bytes, dp_max_bytes, memory_first=True)
    plan = ShardingPlan(W, {name: chosen[name] for name in units})
    return plan, _predict(plan, collections, problem, reserved_bytes, dense_flops_per_sample, dense_params)


def predict(
    plan: ShardingPlan,
    tables: Sequence[TableConfig] | Sequence[Sequence[TableConfig]],
    pooling: Mapping[str, float],
    batch_size: int,
    optimizer: SparseOptimizerConfig | None = None,
    machine: Machine | None = None,
    *,
    sequence_lengths: Mapping[str, float] | None = None,
    weighted_batch: bool = False,
    reserved_bytes: int = 0,
    dense_flops_per_sample: float = 0.0,
    dense_params: int = 0,
) -> PlanPrediction:
    """The cost model's figures for a given plan (any plan: the planner's, a uniform one, a file's)."""
    collections = _collections(tables)
    plan.check([t for ts in collections for t in ts])
    problem = _problem(collections, batch_size, plan.world_size, optimizer, machine, pooling, sequence_lengths,
                       weighted_batch)
    return _predict(plan, collections, problem, reserved_bytes, dense_flops_per_sample, dense_params)


def _predict(plan: ShardingPlan, collections: list[list[TableConfig]], problem: _Problem, reserved_bytes: int,
             dense_flops_per_sample: float, dense_params: int) -> PlanPrediction:
    W, B, m = problem.world_size, problem.batch_size, problem.machine
    state: dict[int, _Cost] = {}
    rows: list[TablePrediction] = []
    for name, instances in _units(collections).items():
        sharding = plan.of(name)
        alone = _with({}, instances, sharding, problem)
        state = _with(state, instances, sharding, problem)
        t = instances[0].table
        storage = sum(c.storage for c in alone.values())
        gathered = sum(W * (W - 1) * c.dp_ids * (8 + t.embedding_dim * FP32) for c in alone.values())
        rows.append(TablePrediction(
            name, sharding.sharding, list(sharding.ranks), t.num_embeddings, t.embedding_dim,
            int(round(float(storage.sum()))), int(round(float(storage.max()))),
            int(round(float(sum(c.gather.sum() for c in alone.values())))),
            int(round(sum(sum(c.kinds.values()) for c in alone.values()))), int(round(gathered))))
    totals = _collection_totals(problem, state)
    kinds = {k: int(round(v)) for k, v in totals["kinds"].items()}
    dense_seconds = 0.0
    if m.matmul_flops_per_s > 0 and dense_flops_per_sample > 0:
        dense_seconds += 3 * dense_flops_per_sample * B / W / m.matmul_flops_per_s  # forward and two backward GEMMs
    if W > 1 and dense_params:
        dense_seconds += float(m.exchange_seconds(2 * (W - 1) / W * dense_params * FP32, W)) + m.latency_s
    seconds = totals["seconds"]
    notes = [
        "modelled: rates of the machine named, bytes from mean ids per sample; phases add up (no overlap)",
        "row_wise: ids assumed spread evenly over the row shards (skewed ids load the first shards more)",
    ]
    if any(s.sharding == DATA_PARALLEL for s in plan.tables.values()):
        notes.append("data_parallel all-gather: U (ids per rank) estimated as B/W x mean ids per sample; "
                     "the collection sends the most over ranks, a little more with variable-length bags")
    if totals["all_reduce"]:
        notes.append("column_wise row-wise Adagrad all-reduce: an upper bound (every id counted as a distinct row)")
    return PlanPrediction(
        world_size=W, batch_size=B,
        per_rank_bytes=[int(round(float(x))) + reserved_bytes for x in totals["storage"]],
        per_rank_seconds=[float(x) for x in seconds],
        per_rank_lookup_bytes=[int(round(float(x))) for x in totals["gather"]],
        per_rank_all_to_all_bytes=[int(round(float(x))) for x in totals["send"]],
        all_to_all_bytes_per_step=int(round(sum(totals["kinds"].values()))),
        all_to_all_by_kind=kinds,
        all_gather_bytes_per_step=int(round(totals["all_gather"])),
        all_reduce_bytes_per_step=int(round(totals["all_reduce"])),
        dense_seconds=dense_seconds,
        step_seconds=float(seconds.max()) + dense_seconds,
        reserved_bytes=reserved_bytes,
        tables=rows,
        machine=asdict(m),
        notes=notes,
    )
