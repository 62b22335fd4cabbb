"""Tables sharded over the ranks of a torch.distributed job (`--embeddings.kind sharded`), by a
ShardingPlan: data-parallel, table-wise, row-wise or column-wise per table (see sharding.py).

Every rank holds its shards as plain dense collections (`local`, one per width; column-wise shards
apart, since their row-wise Adagrad step needs the whole row), and a replica of the data-parallel
tables (`replicas`). A forward on a rank's share of the global batch, in TorchRec's shapes:

1. input dist: the ids of each (shard, feature) block go to the shard's rank in two all-to-alls
   of jagged values (first the counts, then the ids, the bag lengths and, where pooling needs them,
   per-id weights). Ids are folded and made shard-local by the sender; a row-wise shard gets only
   the ids of its rows, a mean-pooled bag becomes a sum weighted by 1 / (its whole length).
2. each rank pools the blocks it received, for every sender's samples at once, in its dense
   collections (which record the lookups for their fused sparse optimizer).
3. output dist: the pooled blocks go back to their senders in an all-to-all that autograd runs
   in reverse in backward (torch.distributed.nn.functional.all_to_all_single), so each owner's
   pooled outputs receive exactly the gradient of the rows it owns. The sender sums row-wise
   partial sums and concatenates column-wise slices.
Sequence features run the same exchange with one vector per id instead of a pooled bag.

`apply_gradients` steps every owned row once on the sum of its gradients over all ranks' samples
(column-wise rows' row-wise Adagrad squares summed over the shards by an all-reduce), and the
data-parallel replicas take the same step on every rank from an all-gather of the touched rows.
With the loss of each rank's share scaled to its part of the global batch's mean (TrainStep does),
this is the single-process step on the global batch: tests/test_sharded.py checks it.

Bytes sent to other ranks and the wall time of each kind of collective are counted in `comm`.
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from recstack.data.batch import JaggedFeatures
from recstack.distributed import Collectives, comm_device
from recstack.embeddings.base import (
    EmbeddingCollection,
    SequenceEmbeddings,
    SparseOptimizerConfig,
    TableConfig,
    TableState,
)
from recstack.embeddings.dense import DenseEmbeddingCollection
from recstack.embeddings.optim import sum_duplicate_rows, update_rows
from recstack.embeddings.plan import Placement, register
from recstack.embeddings.sharding import COLUMN_WISE, DATA_PARALLEL, ROW_WISE, ShardingPlan
from recstack.errors import ConfigError

INIT_CHUNK = 1 << 16
"""Rows initialized from one generator (see `_init_shards`)."""
SEQ = "@seq"
warnings.filterwarnings("ignore", message=r".*nn\.functional\.all_to_all_single is deprecated", category=FutureWarning)
"""The autograd-aware all-to-all recstack uses is public API; the one the warning suggests is private."""
"""Suffix of a sequence feature's block: one bag per id, unpooled."""


@dataclass(frozen=True)
class _Block:
    """The ids of one feature for one shard of its table (the feature's name in the owner's local
    collection; a sequence feature's ends in SEQ)."""

    table: str
    feature: str
    rank: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    sharding: str

    @property
    def width(self) -> int:
        return self.cols[1] - self.cols[0]


class ShardedEmbeddingCollection(EmbeddingCollection):
    def __init__(self, tables: list[TableConfig], plan: ShardingPlan, optimizer: SparseOptimizerConfig | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        super().__init__()
        if not dist.is_initialized():
            raise ConfigError("embeddings kind sharded needs torch.distributed: launch with torchrun or --nproc")
        self.tables, self.optimizer = list(tables), optimizer or SparseOptimizerConfig()
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if plan.world_size != self.world_size:
            raise ConfigError(f"the sharding plan is for {plan.world_size} ranks, this job has {self.world_size}")
        plan.check(self.tables, whole_model=False)
        self.plan = plan
        self.comm = Collectives()
        # every (table, feature) block, by destination rank, in one order all ranks agree on
        self._blocks: list[list[_Block]] = [[] for _ in range(self.world_size)]
        self._seq_blocks: list[list[_Block]] = [[] for _ in range(self.world_size)]
        local_tables: dict[tuple[int, bool], list[TableConfig]] = defaultdict(list)
        replica_tables: list[TableConfig] = []
        self._shard_of: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
        for t in self.tables:
            s = plan.of(t.name)
            if s.sharding == DATA_PARALLEL:
                replica_tables.append(t)
                continue
            for rank, rows, cols in s.shards(t.num_embeddings, t.embedding_dim):
                for f in t.feature_names:
                    self._blocks[rank].append(_Block(t.name, f, rank, rows, cols, s.sharding))
                for f in t.sequence_names:
                    self._seq_blocks[rank].append(_Block(t.name, f + SEQ, rank, rows, cols, s.sharding))
                if rank == self.rank:
                    self._shard_of[t.name] = (rows, cols)
                    shard = TableConfig(t.name, max(rows[1] - rows[0], 1), cols[1] - cols[0],
                                        feature_names=list(t.feature_names) + [f + SEQ for f in t.sequence_names],
                                        init=t.init)
                    local_tables[(shard.embedding_dim, s.sharding == COLUMN_WISE)].append(shard)
        self.local = torch.nn.ModuleList(
            self.adopt(DenseEmbeddingCollection(ts, self.optimizer, device, dtype)) for ts in local_tables.values())
        self._local_is_cw = [cw for _, cw in local_tables]
        self._local_of = {t.name: i for i, ts in enumerate(local_tables.values()) for t in ts}
        self.replicas = (self.adopt(DenseEmbeddingCollection(replica_tables, self.optimizer, device, dtype))
                         if replica_tables else None)
        self._split_means = any(b.sharding == ROW_WISE and self.table(b.table).pooling == "mean"
                                for bs in self._blocks for b in bs)
        """A mean-pooled table split by rows: its pooled blocks carry per-id weights."""
        self._init_shards()

    # --- sizes and state -----------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return (self.local[0] if len(self.local) else self.replicas).dtype

    @property
    def ids_device(self) -> torch.device | None:
        return None  # ids are routed on the host

    def _owner(self, name: str) -> DenseEmbeddingCollection | None:
        if self.replicas is not None and name in self.replicas.layout.spans:
            return self.replicas
        return self.local[self._local_of[name]] if name in self._local_of else None

    @torch.no_grad()
    def _init_shards(self) -> None:
        """Rows as each table's `init` says, the same whatever the plan and the world size: rows come
        in chunks of INIT_CHUNK, each drawn from a generator seeded by (torch's seed, table, chunk),
        and each rank draws only the chunks its shard overlaps."""
        base = int(torch.initial_seed())
        for i, t in enumerate(self.tables):
            owner = self._owner(t.name)
            if owner is None:
                continue
            (r0, r1), (c0, c1) = self._shard_of.get(t.name, ((0, t.num_embeddings), (0, t.embedding_dim)))
            mine = owner.table_state(t.name).weight
            if t.init == "zeros":
                mine.zero_()
                continue
            bound = (1.0 / t.num_embeddings) ** 0.5
            for start in range(r0 - r0 % INIT_CHUNK, r1, INIT_CHUNK):
                end = min(start + INIT_CHUNK, t.num_embeddings)
                generator = torch.Generator().manual_seed(hash((base, i, start)) % 2**63)
                chunk = torch.empty(end - start, t.embedding_dim, dtype=mine.dtype).uniform_(-bound, bound,
                                                                                           generator=generator)
                a, b = max(start, r0), min(end, r1)
                mine[a - r0 : b - r0].copy_(chunk[a - start : b - start, c0:c1])

    def reset_parameters(self) -> None:
        self._init_shards()
        for c in [*self.local, self.replicas]:
            if c is not None:
                c.optimizer_state.zero_()

    def table_state(self, name: str) -> TableState:
        """This rank's part of table `name` (its shard, or the whole replica); the whole table is
        the union over the ranks (`shard_spans`), which `state_dict` gives as DTensors."""
        owner = self._owner(name)
        if owner is None:
            width = self.optimizer.state_floats_per_row(self.table(name).embedding_dim)
            return TableState(torch.zeros(0, self.table(name).embedding_dim), torch.zeros(0, width))
        state = owner.table_state(name)
        rows, _ = self._shard_of.get(name, ((0, self.table(name).num_embeddings), None))
        n = rows[1] - rows[0]
        return TableState(state.weight[:n], state.optimizer_state[:n])

    def load_table_state(self, name: str, state: TableState, rows_only: bool = False) -> None:
        """Take this rank's part of a whole table's state (a logical state from any collection)."""
        owner = self._owner(name)
        if owner is None:
            return
        (r0, r1), (c0, c1) = self._shard_of.get(name, ((0, self.table(name).num_embeddings),
                                                      (0, self.table(name).embedding_dim)))
        mine = owner.table_state(name)
        with torch.no_grad():
            mine.weight[: r1 - r0].copy_(state.weight[r0:r1, c0:c1])
            if not rows_only:
                opt = state.optimizer_state[r0:r1]
                if self.plan.of(name).sharding == COLUMN_WISE and opt.shape[1] == self.table(name).embedding_dim:
                    opt = opt[:, c0:c1]  # element-wise Adagrad: the shard's columns
                mine.optimizer_state[: r1 - r0].copy_(opt)

    def place(self, device: torch.device | str) -> None:
        for c in [*self.local, self.replicas]:
            if c is not None:
                c.place(device)

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """Each table's logical state as DTensors over the ranks holding it (row-wise: rows sharded,
        column-wise: columns, table-wise: one rank's, data-parallel: replicated), the layout
        torch.distributed.checkpoint saves shard by shard and reshards on load."""
        from collections import OrderedDict

        from recstack.embeddings.distributed_state import table_dtensors

        destination = OrderedDict() if destination is None else destination
        for t in self.tables:
            for field, value in table_dtensors(self, t).items():
                destination[f"{prefix}tables.{t.name}.{field}"] = value
        return destination

    # --- forward ---------------------------------------------------------------------------------

    def forward(self, features: JaggedFeatures) -> torch.Tensor:
        features = features.select(self.feature_names)
        batch = features.batch_size
        parts, weights = _by_feature(features)
        out: dict[str, torch.Tensor] = {}
        if self.replicas is not None:
            pooled = self.replicas(features.select(self.replicas.feature_names))
            out.update({f: pooled[:, i] for i, f in enumerate(self.replicas.feature_names)})
        if any(self._blocks):  # all tables data-parallel: nothing to exchange
            rows = {b.feature: batch for bs in self._blocks for b in bs}
            out.update(self._exchange(self._blocks, parts, weights, rows, pooled=True))
        if not self.feature_names:
            return torch.zeros(batch, 0, self.dim, dtype=self.dtype)
        return torch.stack([out[f] for f in self.feature_names], 1)

    def sequences(self, features: JaggedFeatures, max_length: int) -> dict[str, SequenceEmbeddings]:
        batch = features.batch_size
        all_parts, _ = _by_feature(features)
        parts, kept = {}, {}
        for t in self.tables:
            if self.plan.of(t.name).sharding == DATA_PARALLEL:
                continue
            for f in t.sequence_names:
                if f not in all_parts:
                    raise KeyError(f"batch lacks sequence feature {f!r}")
                values, lengths = all_parts[f]
                lengths = lengths.to(torch.int64)
                keep = lengths.clamp(max=max_length)  # each sample's last max_length ids, the most recent
                first = torch.cumsum(lengths, 0) - keep
                ids = values[torch.repeat_interleave(first, keep) + _position_in_bag(keep)]
                parts[f + SEQ] = (ids, torch.ones(ids.numel(), dtype=torch.int32))
                kept[f] = keep
        out = {}
        if self.replicas is not None and self.replicas.sequence_names:
            out.update(self.replicas.sequences(features, max_length))
        rows = {f + SEQ: int(k.sum()) for f, k in kept.items()}
        vectors = self._exchange(self._seq_blocks, parts, {}, rows, pooled=False) if any(self._seq_blocks) else {}
        for f, keep in kept.items():
            width = max(int(keep.max()) if batch else 0, 1)
            slot = torch.repeat_interleave(torch.arange(batch), keep) * width + _position_in_bag(keep)
            found = vectors[f]
            padded = found.new_zeros(batch * width, found.shape[1]).index_copy(0, slot.to(found.device), found)
            out[f] = SequenceEmbeddings(padded.view(batch, width, -1), keep)
        return out

    def _exchange(self, blocks: list[list[_Block]], parts: dict, weights: dict, rows: dict[str, int],
                  pooled: bool) -> dict[str, torch.Tensor]:
        """Send every block's ids to its rank, pool them there (or, `pooled` False, look up one vector
        per id), bring the results back and combine each feature's shards: feature -> [rows, D]."""
        routed = [[self._route(b, parts, weights) for b in rank_blocks] for rank_blocks in blocks]
        send_ids = [_cat([r.ids for r in rs], torch.int64) for rs in routed]
        send_bags = [_cat([r.bags for r in rs], torch.int32) for rs in routed]
        # phase 1: how many ids and bags go from each rank to each
        sizes = torch.tensor([[i.numel(), b.numel()] for i, b in zip(send_ids, send_bags)], dtype=torch.int64)
        got = self._all_to_all("input_counts", torch.empty_like(sizes), sizes)
        id_counts, bag_counts = got[:, 0].tolist(), got[:, 1].tolist()
        # phase 2: the jagged values (ids, bag lengths and, when some bag is weighted, per-id weights)
        ids = self._all_to_all("input_ids", torch.empty(sum(id_counts), dtype=torch.int64), torch.cat(send_ids),
                               id_counts, [t.numel() for t in send_ids])
        bags = self._all_to_all("input_lengths", torch.empty(sum(bag_counts), dtype=torch.int32),
                                torch.cat(send_bags), bag_counts, [t.numel() for t in send_bags])
        weighted = pooled and self._weighted(blocks, weights)
        received_weights = None
        if weighted:
            send_weights = [_cat([r.weights for r in rs], self.dtype) for rs in routed]
            received_weights = self._all_to_all("input_weights", torch.empty(sum(id_counts), dtype=self.dtype),
                                                torch.cat(send_weights), id_counts, [t.numel() for t in send_weights])
        results = self._pool_received(blocks[self.rank], ids, bags, received_weights, id_counts, bag_counts, pooled)
        # output dist: results back to their senders; autograd runs it in reverse in backward
        expect = [sum(r.rows_back(rows[b.feature], pooled) * b.width for r, b in zip(rs, bs))
                  for rs, bs in zip(routed, blocks)]
        back = self._all_to_all_grad("output", _cat(results, self.dtype), expect, [t.numel() for t in results])
        return self._combine(blocks, routed, torch.split(back, expect), rows, pooled)

    def _weighted(self, blocks: list[list[_Block]], weights: dict) -> bool:
        """Per-id weights travel when some bag is weighted: a batch with weights, or a mean-pooled table
        split by rows (its bags are split, so no owner knows their whole length)."""
        return bool(weights) or (blocks is self._blocks and self._split_means)

    def _route(self, b: _Block, parts: dict, weights: dict) -> _Routed:
        """Block b's share of this rank's batch: shard-local ids, bag lengths, per-id weights."""
        t = self.table(b.table)
        values, lengths = parts[b.feature]
        values, lengths = values.to(torch.int64), lengths.to(torch.int64)
        if t.fold:
            values = torch.remainder(values, t.num_embeddings)
        elif values.numel() and (int(values.min()) < 0 or int(values.max()) >= t.num_embeddings):
            bad = values[(values < 0) | (values >= t.num_embeddings)][0]
            raise IndexError(f"id {int(bad)} of feature {b.feature.removesuffix(SEQ)} is outside its table's "
                             f"{t.num_embeddings} rows")
        w = weights.get(b.feature)
        w = torch.ones(values.numel(), dtype=self.dtype) if w is None else w.to(self.dtype)
        if t.pooling == "mean" and not b.feature.endswith(SEQ):
            w = w / lengths.clamp(min=1).repeat_interleave(lengths).to(self.dtype)
        position = None
        if b.sharding == ROW_WISE:
            inside = (values >= b.rows[0]) & (values < b.rows[1])
            bag = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
            lengths = torch.bincount(bag[inside], minlength=lengths.numel())
            position = inside.nonzero().squeeze(1)
            values, w = values[inside] - b.rows[0], w[inside]
        return _Routed(values, lengths.to(torch.int32), w, position)

    def _pool_received(self, mine: list[_Block], ids: torch.Tensor, bags: torch.Tensor, weights: torch.Tensor | None,
                       id_counts: list[int], bag_counts: list[int], pooled: bool) -> list[torch.Tensor]:
        """Per sender: this rank's blocks' results for that sender, [rows, width] each, flattened in
        block order. Every sender's bags of a block are pooled in one call."""
        senders = range(self.world_size)
        if not mine:
            return [torch.zeros(0, dtype=self.dtype) for _ in senders]
        lengths = [piece.view(len(mine), -1) for piece in torch.split(bags, bag_counts)]
        split_sizes = [piece.sum(1).tolist() for piece in lengths]
        ids_of = [torch.split(piece, split_sizes[s]) for s, piece in enumerate(torch.split(ids, id_counts))]
        weights_of = None if weights is None else [torch.split(piece, split_sizes[s])
                                                   for s, piece in enumerate(torch.split(weights, id_counts))]
        columns: dict[int, tuple[torch.Tensor, list[int]]] = {}  # block -> (its results, rows per sender)
        for ci, collection in enumerate(self.local):
            chosen = [j for j, b in enumerate(mine) if self._local_of[b.table] == ci]
            if not chosen:
                continue
            keys = [mine[j].feature for j in chosen]
            values = torch.cat([ids_of[s][j] for j in chosen for s in senders])
            if pooled:
                per_sender = [lengths[s].shape[1] for s in senders]
                bag_lengths = torch.cat([lengths[s][j] for j in chosen for s in senders])
                w = None if weights_of is None else torch.cat([weights_of[s][j] for j in chosen for s in senders])
                result = _pool(collection, JaggedFeatures(keys, values, bag_lengths, sum(per_sender), w))
                columns.update({j: (result[:, k], per_sender) for k, j in enumerate(chosen)})
            else:  # one vector per id: each id a bag of one
                counts = [[ids_of[s][j].numel() for s in senders] for j in chosen]
                width = max(sum(c) for c in counts)
                ones = torch.cat([(torch.arange(width) < sum(c)).to(torch.int32) for c in counts])
                result = _pool(collection, JaggedFeatures(keys, values, ones, width))
                columns.update({j: (result[:, k], c) for k, (j, c) in enumerate(zip(chosen, counts))})
        out = []
        for s in senders:
            pieces = []
            for j in range(len(mine)):
                column, per_sender = columns[j]
                start = sum(per_sender[:s])
                pieces.append(column[start : start + per_sender[s]].reshape(-1))
            out.append(torch.cat(pieces))
        return out

    def _combine(self, blocks: list[list[_Block]], routed: list[list[_Routed]], back: tuple[torch.Tensor, ...],
                 rows: dict[str, int], pooled: bool) -> dict[str, torch.Tensor]:
        """Each feature's result from its shards' pieces: row-wise partial sums added (or, per id,
        put in place), column-wise slices concatenated in rank order."""
        pieces: dict[str, list[tuple[_Block, _Routed, torch.Tensor]]] = defaultdict(list)
        for rank_blocks, rank_routed, data in zip(blocks, routed, back):
            offset = 0
            for b, r in zip(rank_blocks, rank_routed):
                n = r.rows_back(rows[b.feature], pooled)
                pieces[b.feature].append((b, r, data[offset : offset + n * b.width].view(n, b.width)))
                offset += n * b.width
        out = {}
        for feature, shards in pieces.items():
            b = shards[0][0]
            values = [p for _, _, p in shards]
            if b.sharding == COLUMN_WISE:
                out[feature] = torch.cat(values, 1)
            elif b.sharding == ROW_WISE and pooled:
                out[feature] = torch.stack(values).sum(0)
            elif b.sharding == ROW_WISE:
                full = values[0].new_zeros(rows[feature], self.table(b.table).embedding_dim)
                for _, r, p in shards:
                    full = full.index_copy(0, r.position.to(p.device), p)
                out[feature] = full
            else:
                out[feature] = values[0]
        return {f.removesuffix(SEQ): v for f, v in out.items()}

    # --- collectives -------------------------------------------------------------------------

    def _all_to_all(self, kind: str, output: torch.Tensor, data: torch.Tensor, out_splits: list[int] | None = None,
                    in_splits: list[int] | None = None) -> torch.Tensor:
        start = time.perf_counter()
        device = comm_device()
        if device.type == "cpu":
            dist.all_to_all_single(output, data, out_splits, in_splits)
        else:  # NCCL takes GPU tensors; the routing stays on the host
            moved = output.to(device)
            dist.all_to_all_single(moved, data.to(device), out_splits, in_splits)
            output.copy_(moved)
        self._count(kind, data, in_splits, time.perf_counter() - start)
        return output

    def _all_to_all_grad(self, kind: str, data: torch.Tensor, out_splits: list[int], in_splits: list[int]) -> torch.Tensor:
        if self.training and torch.is_grad_enabled() and not data.requires_grad:
            # a rank that owns none of these blocks still takes part in the backward exchange
            data = data.detach().requires_grad_(True)
        start = time.perf_counter()
        data = data.to(comm_device()) if comm_device().type != data.device.type else data
        output = dist_fn.all_to_all_single(data.new_empty(sum(out_splits)), data, out_splits, in_splits)
        self._count(kind, data, in_splits, time.perf_counter() - start)
        if self.training and torch.is_grad_enabled() and data.requires_grad:  # backward sends back the same sizes
            self.comm.add(kind + "_grad", (sum(out_splits) - out_splits[self.rank]) * data.element_size())
        return output

    def _count(self, kind: str, data: torch.Tensor, splits: list[int] | None, seconds: float) -> None:
        if not self.training:  # evaluation's exchanges are not the training step's
            return
        per_rank = data.numel() // self.world_size if splits is None else None
        own = per_rank if splits is None else splits[self.rank]
        self.comm.add(kind, (data.numel() - own) * data.element_size(), seconds)

    # --- training ----------------------------------------------------------------------------

    @torch.no_grad()
    def apply_gradients(self, lr: float) -> None:
        for collection, column_wise in zip(self.local, self._local_is_cw):
            if column_wise and self.optimizer.kind == "rowwise_adagrad":
                self._apply_column_wise(collection, lr)
            else:
                collection.apply_gradients(lr)
        if self.replicas is not None:
            self._apply_replicated(lr)

    def _apply_column_wise(self, collection: DenseEmbeddingCollection, lr: float) -> None:
        """Row-wise Adagrad's mean square over whole rows: every rank holds a column slice of the same
        rows (each got every id), so the squares' sums are all-reduced in the same row order."""
        touched = collection.pending_gradients()
        if touched is None:
            return
        rows, summed = sum_duplicate_rows(*touched)

        def whole_row(squares: torch.Tensor) -> torch.Tensor:
            start = time.perf_counter()
            dist.all_reduce(squares)
            self.comm.add("all_reduce", squares.numel() * squares.element_size(), time.perf_counter() - start)
            return squares

        update_rows(self.optimizer, collection.weight, collection.optimizer_state, rows, summed, lr,
                    row_squares=whole_row, row_width=collection.dim * self.world_size)

    def _apply_replicated(self, lr: float) -> None:
        """Every replica takes the same step: the touched rows and their gradients of all ranks, gathered."""
        c = self.replicas
        touched = c.pending_gradients()
        rows, grads = touched if touched is not None else (torch.zeros(0, dtype=torch.int64),
                                                           torch.zeros(0, c.dim, dtype=c.dtype))
        start = time.perf_counter()
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world_size)]
        device = comm_device()
        sizes = [s.to(device) for s in sizes]
        dist.all_gather(sizes, torch.tensor([rows.numel()], device=device))
        most = max(int(n) for n in sizes)
        padded_rows = torch.zeros(most, dtype=torch.int64, device=device)
        padded_rows[: rows.numel()] = rows
        padded_grads = grads.new_zeros(most, c.dim, device=device)
        padded_grads[: rows.numel()] = grads
        all_rows = [torch.empty_like(padded_rows) for _ in range(self.world_size)]
        all_grads = [torch.empty_like(padded_grads) for _ in range(self.world_size)]
        dist.all_gather(all_rows, padded_rows)
        dist.all_gather(all_grads, padded_grads)
        sent = (self.world_size - 1) * (8 + most * (8 + c.dim * padded_grads.element_size()))
        self.comm.add("all_gather", sent, time.perf_counter() - start)
        n = [int(k) for k in sizes]
        rows = torch.cat([r[:k] for r, k in zip(all_rows, n)]).to(c.weight.device)
        if rows.numel():
            unique, summed = sum_duplicate_rows(rows, torch.cat([g[:k] for g, k in zip(all_grads, n)]).to(c.weight.device))
            update_rows(self.optimizer, c.weight, c.optimizer_state, unique, summed, lr)

    def discard_gradients(self) -> None:
        for c in [*self.local, self.replicas]:
            if c is not None:
                c.discard_gradients()


@dataclass
class _Routed:
    """One block of this rank's batch, ready to send."""

    ids: torch.Tensor
    bags: torch.Tensor
    weights: torch.Tensor
    position: torch.Tensor | None
    """Row-wise shards: where the block's ids sit among the feature's ids (to put vectors back)."""

    def rows_back(self, rows: int, pooled: bool) -> int:
        """Rows of the result that comes back: one per bag, or one per id sent (row-wise sequences)."""
        return rows if pooled or self.position is None else int(self.position.numel())


def _by_feature(features: JaggedFeatures) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]]:
    """(feature -> (ids, bag lengths), feature -> per-id weights when the batch has any)."""
    parts = features.to_dict()
    if features.weights is None:
        return parts, {}
    return parts, dict(zip(features.keys, torch.split(features.weights, features.length_per_key())))


def _position_in_bag(lengths: torch.Tensor) -> torch.Tensor:
    """0, 1, ..., n-1 for every bag of length n, concatenated."""
    starts = torch.cumsum(lengths, 0) - lengths
    return torch.arange(int(lengths.sum())) - torch.repeat_interleave(starts, lengths)


def _cat(tensors: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat(tensors) if tensors else torch.zeros(0, dtype=dtype)


def _pool(collection: DenseEmbeddingCollection, features: JaggedFeatures) -> torch.Tensor:
    """[bags, F, D] of a local collection for `features`' keys (its other features pool empty bags)."""
    if features.keys != collection.feature_names:
        batch = features.batch_size
        given = features.to_dict()
        given_weights = (dict(zip(features.keys, torch.split(features.weights, features.length_per_key())))
                         if features.weights is not None else None)
        empty = (torch.zeros(0, dtype=torch.int64), torch.zeros(batch, dtype=torch.int32))
        full = JaggedFeatures.from_dict({f: given.get(f, empty) for f in collection.feature_names})
        full = JaggedFeatures(full.keys, full.values, full.lengths, batch,
                              None if given_weights is None else torch.cat(
                                  [given_weights.get(f, features.weights[:0]) for f in collection.feature_names]))
        pooled = collection(full)
        return pooled[:, [collection.feature_names.index(k) for k in features.keys]]
    return collection(features)


@register("sharded")
def build(tables: list[TableConfig], placement: Placement) -> EmbeddingCollection:
    """Shards over the job's ranks by the placement's sharding plan (default: table-wise)."""
    from recstack.embeddings.sharding import TABLE_WISE

    if torch.device(placement.device).type == "meta" or not dist.is_initialized():
        # sizing on meta, or a world of one (evaluate, predict, serve a sharded checkpoint): every row here
        return DenseEmbeddingCollection(tables, placement.optimizer, device=placement.device)
    plan = placement.sharding
    if plan is None:
        plan = ShardingPlan.uniform(tables, dist.get_world_size() if dist.is_initialized() else 1, TABLE_WISE)
    return ShardedEmbeddingCollection(tables, plan, placement.optimizer, placement.device)
