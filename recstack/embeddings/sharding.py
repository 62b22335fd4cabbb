"""A sharding plan: how each table of a model is spread over the ranks of a torch.distributed job.

    data_parallel  a replica on every rank; each rank pools its own samples, the touched rows'
                   gradients are gathered so every replica takes the same step (small tables)
    table_wise     the whole table on one rank
    row_wise       rows split over the ranks in torch.chunk's way (ceil(rows / W) each, the last
                   rank the remainder): ids go to their rows' owner, partial sums come back
    column_wise    the embedding dimension split evenly over the ranks: ids go to every rank,
                   column slices come back and are concatenated

The row and column ranges follow torch.chunk, as DTensor's `Shard` placements do, so a table's
shards are a DTensor and `torch.distributed.checkpoint` reshards them on load (N -> M ranks, and
one process).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recstack.errors import ConfigError

DATA_PARALLEL, TABLE_WISE, ROW_WISE, COLUMN_WISE = "data_parallel", "table_wise", "row_wise", "column_wise"
SHARDING_TYPES = (DATA_PARALLEL, TABLE_WISE, ROW_WISE, COLUMN_WISE)


def chunks(size: int, parts: int) -> list[tuple[int, int]]:
    """[a, b) of each of `parts` chunks of range(size), torch.chunk's way (trailing chunks may be empty)."""
    step = -(-size // parts) if size else 0
    return [(min(i * step, size), min((i + 1) * step, size)) for i in range(parts)]


@dataclass(frozen=True)
class TableSharding:
    sharding: str
    ranks: tuple[int, ...]
    """The ranks holding the table (table_wise: its one owner; the others: every rank, in order)."""

    def __post_init__(self) -> None:
        if self.sharding not in SHARDING_TYPES:
            raise ConfigError(f"unknown sharding {self.sharding!r}; shardings: {', '.join(SHARDING_TYPES)}")
        if not self.ranks or (self.sharding == TABLE_WISE and len(self.ranks) != 1):
            raise ConfigError(f"{self.sharding} needs {'one rank' if self.sharding == TABLE_WISE else 'ranks'}, "
                              f"got {list(self.ranks)}")

    def shards(self, rows: int, dim: int) -> list[tuple[int, tuple[int, int], tuple[int, int]]]:
        """(rank, (first row, end row), (first column, end column)) of every shard."""
        if self.sharding == ROW_WISE:
            return [(r, span, (0, dim)) for r, span in zip(self.ranks, chunks(rows, len(self.ranks)))]
        if self.sharding == COLUMN_WISE:
            return [(r, (0, rows), span) for r, span in zip(self.ranks, chunks(dim, len(self.ranks)))]
        return [(r, (0, rows), (0, dim)) for r in self.ranks]


@dataclass
class ShardingPlan:
    world_size: int
    tables: dict[str, TableSharding] = field(default_factory=dict)

    def of(self, table: str) -> TableSharding:
        if table not in self.tables:
            raise ConfigError(f"the sharding plan has no table {table!r} (it was made for another model)")
        return self.tables[table]

    def check(self, tables: list[Any], whole_model: bool = True) -> None:
        """Refuse a plan that does not fit these tables (TableConfig list) and its world size;
        `whole_model` False: the tables of one of a model's collections (the plan may hold others)."""
        names = {t.name for t in tables}
        extra = sorted(set(self.tables) - names) if whole_model else []
        missing = sorted(names - set(self.tables))
        if missing or extra:
            raise ConfigError(f"the sharding plan does not match the model: tables without a plan {missing}, "
                              f"planned tables the model lacks {extra}")
        for t in tables:
            s = self.tables[t.name]
            if any(not 0 <= r < self.world_size for r in s.ranks):
                raise ConfigError(f"table {t.name}: ranks {list(s.ranks)} outside a world of {self.world_size}")
            if s.sharding == COLUMN_WISE and t.embedding_dim % len(s.ranks):
                raise ConfigError(f"table {t.name}: column_wise needs its dimension ({t.embedding_dim}) divisible "
                                  f"by the {len(s.ranks)} ranks")
            if s.sharding in (ROW_WISE, COLUMN_WISE, DATA_PARALLEL) and list(s.ranks) != list(range(self.world_size)):
                raise ConfigError(f"table {t.name}: {s.sharding} spans every rank in order, not {list(s.ranks)}")

    def to_dict(self) -> dict[str, Any]:
        return {"world_size": self.world_size,
                "tables": [{"name": n, "sharding": s.sharding, "ranks": list(s.ranks)} for n, s in self.tables.items()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardingPlan:
        try:
            tables = {t["name"]: TableSharding(t["sharding"], tuple(int(r) for r in t["ranks"])) for t in data["tables"]}
            return cls(int(data["world_size"]), tables)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"a sharding plan needs world_size and tables [{{name, sharding, ranks}}] ({exc})") from None

    @classmethod
    def uniform(cls, tables: list[Any], world_size: int, sharding: str) -> ShardingPlan:
        """Every table sharded one way (table_wise: round-robin owners, largest tables first)."""
        plan = cls(world_size)
        if sharding == TABLE_WISE:
            load = [0] * world_size
            for t in sorted(tables, key=lambda t: -t.num_embeddings * t.embedding_dim):
                owner = min(range(world_size), key=lambda r: (load[r], r))
                load[owner] += t.num_embeddings * t.embedding_dim
                plan.tables[t.name] = TableSharding(TABLE_WISE, (owner,))
            plan.tables = {t.name: plan.tables[t.name] for t in tables}
        else:
            plan.tables = {t.name: TableSharding(sharding, tuple(range(world_size))) for t in tables}
        return plan
