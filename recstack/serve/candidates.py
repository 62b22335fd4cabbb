"""Candidate rows for synthetic queries (load tests and benchmarks): a pool of feature rows drawn
once, from which a query of any size gathers rows at random.

Where the rows come from, best first: the synthetic generator the model's data came from (same
tables, skew and bag sizes), the model's own prepared dataset, or uniform ids over the schema's
tables (bag sizes: the fixed length, or 1-8 for variable-length features).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recstack.data.batch import Batch, JaggedFeatures
from recstack.data.store import Dataset, Schema, gather_ranges
from recstack.errors import RecstackError
from recstack.serve.protocol import Query

POOL_ROWS = 8192
SERVE_STREAM = 7
"""The synthetic generator's random stream for serving candidates (training data uses streams 0-2)."""
UNIFORM_MAX_BAG = 8


class CandidatePool:
    """Rows in memory: dense [N, D] and, per sparse feature, flat ids with bag offsets [N + 1]."""

    def __init__(self, dense: np.ndarray, bags: dict[str, tuple[np.ndarray, np.ndarray]], source: str):
        self.dense = np.ascontiguousarray(dense, dtype=np.float32)
        self.keys = list(bags)
        self.bags = {k: (np.asarray(v, dtype=np.int64), np.asarray(o, dtype=np.int64)) for k, (v, o) in bags.items()}
        self.source = source

    def __len__(self) -> int:
        return int(self.dense.shape[0])

    @staticmethod
    def _offsets(lengths: np.ndarray) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))])

    @classmethod
    def from_synth(cls, schema: Schema, seed: int) -> CandidatePool:
        from recstack.data.synth import BLOCK_ROWS, _Streams, synth_model_from_info

        model = synth_model_from_info(schema.info)
        dense, bags = model.sample_features(_Streams(model.seed + seed, SERVE_STREAM, 0, BLOCK_ROWS))
        return cls(dense, {k: (v, cls._offsets(n)) for k, (v, n) in bags.items()}, "synthetic generator")

    @classmethod
    def from_dataset(cls, dataset: Dataset, seed: int) -> CandidatePool:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(dataset), size=min(POOL_ROWS, len(dataset)), replace=False))
        batch = dataset.gather(rows)
        bags = {k: (v.numpy(), cls._offsets(n.numpy())) for k, (v, n) in batch.sparse.to_dict().items()}
        return cls(batch.dense.numpy(), bags, f"dataset {dataset.path}")

    @classmethod
    def uniform(cls, schema: Schema, seed: int) -> CandidatePool:
        rng = np.random.default_rng(seed)
        bags = {}
        for f in schema.sparse:
            lengths = np.full(POOL_ROWS, f.length) if f.length is not None else rng.integers(1, UNIFORM_MAX_BAG + 1, POOL_ROWS)
            bags[f.name] = (rng.integers(0, f.num_embeddings, int(lengths.sum())), cls._offsets(lengths))
        return cls(rng.random((POOL_ROWS, len(schema.dense_names)), dtype=np.float32), bags, "uniform ids")

    @classmethod
    def for_schema(cls, schema: Schema, data_path: str | Path | None = None, seed: int = 0) -> CandidatePool:
        if schema.info.get("generator") == "recstack.data.synth":
            return cls.from_synth(schema, seed)
        if data_path:
            try:
                dataset = Dataset(data_path)
            except RecstackError:
                dataset = None
            if dataset is not None and len(dataset) and _same_features(dataset.schema, schema):
                return cls.from_dataset(dataset, seed)
        return cls.uniform(schema, seed)

    def draw(self, size: int, rng: np.random.Generator) -> Batch:
        """`size` rows picked uniformly at random (with replacement) as a Batch, features in pool order."""
        rows = rng.integers(0, len(self), size)
        values, lengths = [], []
        for key in self.keys:
            flat, offsets = self.bags[key]
            starts = offsets[rows]
            counts = offsets[rows + 1] - starts
            values.append(gather_ranges(flat, starts, counts))
            lengths.append(counts)
        sparse = JaggedFeatures(
            self.keys,
            torch.from_numpy(np.concatenate(values) if values else np.zeros(0, np.int64)),
            torch.from_numpy(np.concatenate(lengths).astype(np.int32) if lengths else np.zeros(0, np.int32)),
            size,
        )
        return Batch(torch.from_numpy(self.dense[rows]), sparse, torch.zeros(size))


def _same_features(a: Schema, b: Schema) -> bool:
    return a.dense_names == b.dense_names and [(f.name, f.num_embeddings) for f in a.sparse] == [
        (f.name, f.num_embeddings) for f in b.sparse
    ]


class SyntheticQueries:
    """The target's own synthetic queries (the engine: candidate rows of the model's data), drawn
    `variants` times per size and then reused in rotation, within a budget of sparse ids.

    DeepRecSys likewise draws its queries once and cycles them. Drawing is not free (a 700-candidate
    RMC2 query gathers 2.7M ids, ~35 ms): drawn afresh for every query, the generator would take that
    time from the target's cores."""

    def __init__(self, draw: Callable[[int, int, float, np.random.Generator], Query], rng: np.random.Generator,
                 variants: int = 4, budget_ids: int = 1 << 25):
        self._draw, self._rng = draw, rng
        self.variants, self.budget_ids = variants, budget_ids
        self._cache: dict[int, list[Any]] = {}
        self._turn: dict[int, int] = {}
        self._ids = 0

    def warm(self, sizes: Iterable[int]) -> None:
        """Draw ahead for these sizes (those the run will ask for), so the run itself rarely draws."""
        for size in sizes:
            self._batch(int(size))

    def _batch(self, size: int) -> Any:
        cached = self._cache.setdefault(size, [])
        if len(cached) < self.variants:
            batch = self._draw(-1, size, 0.0, self._rng).batch
            if batch is None or self._ids >= self.budget_ids:
                return batch
            cached.append(batch)
            self._ids += batch.sparse.values.numel()
            return batch
        turn = self._turn.get(size, 0)
        self._turn[size] = turn + 1
        return cached[turn % len(cached)]

    def __call__(self, query_id: int, size: int, arrival: float) -> Query:
        return Query(query_id, size, arrival, self._batch(size))
