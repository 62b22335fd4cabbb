"""The presets of the synthetic data (`recstack data synth --preset`, `--data.synth_preset`): each names
a shape of data (dense features, embedding tables with their rows, pooling and Zipf skew, label
tasks), from the Criteo tables to DeepRecSys's production models. recstack.data.synth generates rows
of any of them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np

from recstack.data.store import SparseFeature
from recstack.errors import DataError

MIN_SCALED_ROWS = 4
"""`scale` never shrinks a table below min(rows, this)."""


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pooling:
    """How many ids a sample looks up in one table: a fixed count, or a distribution of bag sizes."""

    kind: Literal["fixed", "uniform", "poisson"] = "fixed"
    low: int = 1
    """fixed: the bag size; uniform and poisson: the smallest bag (0 allows empty bags)."""
    high: int = 1
    """uniform and poisson: the largest bag."""
    mean: float = 0.0
    """poisson: the mean before clipping to [low, high]."""

    @staticmethod
    def fixed(size: int) -> Pooling:
        return Pooling("fixed", size, size)

    @staticmethod
    def uniform(low: int, high: int) -> Pooling:
        return Pooling("uniform", low, high)

    @staticmethod
    def poisson(mean: float, high: int, low: int = 0) -> Pooling:
        return Pooling("poisson", low, high, float(mean))

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "uniform", "poisson"):
            raise DataError(f"unknown pooling kind {self.kind!r} (use fixed, uniform or poisson)")
        bad_fixed = self.kind == "fixed" and not 1 <= self.low == self.high
        if not 0 <= self.low <= self.high or bad_fixed:
            raise DataError(f"pooling {self.describe()} has bad bounds")

    @property
    def length(self) -> int | None:
        """The fixed bag size, or None for variable-length bags."""
        return self.low if self.kind == "fixed" else None

    @property
    def mean_length(self) -> float:
        if self.kind == "uniform":
            return (self.low + self.high) / 2
        if self.kind == "poisson":
            return min(max(self.mean, self.low), self.high)  # close enough for scaling weights
        return float(self.low)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "uniform":
            return rng.integers(self.low, self.high + 1, size=n)
        if self.kind == "poisson":
            return np.clip(rng.poisson(self.mean, size=n), self.low, self.high)
        return np.full(n, self.low, dtype=np.int64)

    def describe(self) -> str:
        if self.kind == "uniform":
            return f"uniform {self.low}..{self.high}"
        if self.kind == "poisson":
            return f"poisson {self.mean:g} ({self.low}..{self.high})"
        return str(self.low)


@dataclass(frozen=True)
class TableSpec:
    rows: int
    pooling: Pooling = field(default_factory=lambda: Pooling.fixed(1))
    zipf: float = 1.05
    """Zipf exponent of id popularity (0 is uniform)."""
    name: str = ""
    """Feature name (default C1, C2, ... by position)."""
    table: str = ""
    """Name of an earlier feature whose table this one indexes too (same rows, same popular ids):
    a behaviour history over the items of the target item's table."""
    sequence: bool = False
    """The bag is an ordered behaviour sequence (attention models read it unpooled)."""


@dataclass(frozen=True)
class SynthPreset:
    name: str
    num_dense: int
    tables: tuple[TableSpec, ...]
    num_tasks: int = 1
    interactions: int = 4
    """Pairwise table interaction terms in each task's true logit."""
    base_rate: float = 0.25
    """Fraction of positive labels the bias is calibrated to."""
    description: str = ""

    def __post_init__(self) -> None:
        if self.num_dense < 0 or self.num_tasks < 1 or not 0 < self.base_rate < 1:
            raise DataError(f"preset {self.name!r}: bad num_dense, num_tasks or base_rate")
        names = []
        for i, t in enumerate(self.tables):
            if t.rows < 1:
                raise DataError(f"preset {self.name!r}: every table needs at least one row")
            if t.table:
                shared = next((s for s, n in zip(self.tables, names) if n == t.table), None)
                if shared is None or shared.rows != t.rows:
                    raise DataError(f"preset {self.name!r}: {t.name} shares table {t.table!r}, which must be an earlier feature with as many rows")
            names.append(self.feature_name(i))

    @property
    def rows(self) -> list[int]:
        return [t.rows for t in self.tables]

    @property
    def dense_names(self) -> list[str]:
        return [f"I{j + 1}" for j in range(self.num_dense)]

    @property
    def label_names(self) -> list[str]:
        return ["label"] if self.num_tasks == 1 else [f"label_{t}" for t in range(self.num_tasks)]

    def feature_name(self, index: int) -> str:
        return self.tables[index].name or f"C{index + 1}"

    def sparse_features(self, scale: float = 1.0) -> list[SparseFeature]:
        """The schema's sparse features of data generated at this scale."""
        return [
            SparseFeature(self.feature_name(i), scaled_rows(t.rows, scale), t.pooling.length, "int32",
                          table=t.table or None, sequence=t.sequence)
            for i, t in enumerate(self.tables)
        ]

    @property
    def zipf(self) -> list[float]:
        return [t.zipf for t in self.tables]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SynthPreset:
        tables = tuple(
            TableSpec(int(t["rows"]), Pooling(**t["pooling"]), float(t["zipf"]), t.get("name", ""), t.get("table", ""),
                      bool(t.get("sequence", False)))
            for t in raw["tables"]
        )
        return cls(**{**raw, "tables": tables})


def default_zipf(rows: int, index: int) -> float:
    """Skew that grows with table size (0.9 for tiny tables to 1.3 at 10M rows), jittered per table."""
    base = 0.9 + 0.4 * min(max((math.log10(rows) - 1) / 6, 0.0), 1.0)
    jitter = 0.05 * (((index * 0.6180339887) % 1.0) * 2 - 1)
    return round(base + jitter, 3)


def skewed_tables(rows: Sequence[int], pooling: Sequence[Pooling] | Pooling | None = None) -> tuple[TableSpec, ...]:
    """Table specs with the default per-table skew."""
    if pooling is None or isinstance(pooling, Pooling):
        pooling = [pooling or Pooling.fixed(1)] * len(rows)
    return tuple(
        TableSpec(int(r), p, default_zipf(int(r), i)) for i, (r, p) in enumerate(zip(rows, pooling, strict=True))
    )


PRESETS: dict[str, SynthPreset] = {}


def register_preset(preset: SynthPreset) -> SynthPreset:
    PRESETS[preset.name] = preset
    return preset


def get_preset(preset: str | SynthPreset) -> SynthPreset:
    if isinstance(preset, SynthPreset):
        return preset
    if preset not in PRESETS:
        raise DataError(f"unknown synthetic preset {preset!r} (known: {', '.join(sorted(PRESETS))})")
    return PRESETS[preset]


# fmt: off
CRITEO_KAGGLE_ROWS = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
                      27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
CRITEO_TERABYTE_ROWS = [45833188, 36746, 17245, 7413, 20243, 3, 7114, 1441, 62, 29275261, 1572176, 345138, 10,
                        2209, 11267, 128, 4, 974, 14, 48937457, 11316796, 40094537, 452104, 12606, 104, 35]
TERABYTE_MAX_IND_RANGE = 10_000_000  # the DLRM reference's --max-ind-range for Terabyte
DLRM_V2_MULTI_HOT = [3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1]
# fmt: on

_terabyte_capped = [min(r, TERABYTE_MAX_IND_RANGE) for r in CRITEO_TERABYTE_ROWS]
register_preset(
    SynthPreset(
        "criteo-kaggle",
        13,
        skewed_tables(CRITEO_KAGGLE_ROWS),
        description="Criteo Kaggle (DLRM reference cardinalities): 13 dense, 26 one-hot tables",
    )
)
register_preset(
    SynthPreset(
        "criteo-terabyte",
        13,
        skewed_tables(_terabyte_capped),
        description="Criteo Terabyte, tables capped at 10M rows (--max-ind-range=10000000): 13 dense, 26 one-hot",
    )
)
register_preset(
    SynthPreset(
        "criteo-multihot",
        13,
        skewed_tables(_terabyte_capped, [Pooling.fixed(k) for k in DLRM_V2_MULTI_HOT]),
        description="DLRM-v2 (MLPerf) multi-hot bag sizes on the capped Terabyte tables",
    )
)
register_preset(
    SynthPreset(
        "tiny",
        4,
        skewed_tables(
            [50, 1000, 200, 1000, 500],
            [Pooling.fixed(1), Pooling.fixed(1), Pooling.fixed(3), Pooling.uniform(0, 4), Pooling.poisson(2.0, 8)],
        ),
        interactions=2,
        description="for tests: small tables, fixed and variable pooling with empty bags",
    )
)


# The industry-representative models of DeepRecSys (Gupta et al. ISCA 2020; ANCHORS.md section 1.1) at their
# published sizes. DIN and DIEN read their behaviour history through the target item's table.
_seq = Pooling.poisson(20.0, 100, low=1)
for _name, _dense, _specs, _tasks, _description in [
    ("rmc1", 128, skewed_tables([4_000_000] * 8, Pooling.fixed(80)), 1, "DLRM-RMC1: 8 tables x 4M rows, 80 lookups each"),
    ("rmc2", 256, skewed_tables([500_000] * 32, Pooling.fixed(120)), 1, "DLRM-RMC2: 32 tables x 500k rows, 120 lookups each"),
    ("rmc3", 2560, skewed_tables([2_000_000] * 10, Pooling.fixed(20)), 1, "DLRM-RMC3: 10 tables x 2M rows, 20 lookups each, 2560 dense"),
    ("ncf", 0, (TableSpec(140_000, name="user", zipf=0.9), TableSpec(28_000, name="item", zipf=1.0)), 1,
     "NCF: user and item ids"),
    ("wnd", 512, skewed_tables([1_000_000] * 27), 1, "Wide & Deep: 512 dense, 27 one-hot tables x 1M rows"),
    ("mtwnd", 512, skewed_tables([500_000] * 41 + [5_000_000] * 2), 2,
     "multi-task Wide & Deep: 512 dense, 41 x 500k + 2 x 5M one-hot tables, two tasks"),
    ("din", 0, (TableSpec(1_000_000, Pooling.fixed(3), 1.1, "user_profile"), TableSpec(10_000_000, zipf=1.2, name="item"),
                TableSpec(10_000_000, _seq, 1.2, "hist_item", table="item", sequence=True),
                TableSpec(10_000_000, Pooling.fixed(3), 1.2, "context")), 1,
     "DIN: user profile, candidate item, a behaviour history over the item table (1-100 items), context"),
    ("dien", 0, (TableSpec(500_000, zipf=1.1, name="user_profile"), TableSpec(5_000_000, zipf=1.2, name="item"),
                 TableSpec(5_000_000, Pooling.fixed(40), 1.2, "hist_item", table="item", sequence=True),
                 TableSpec(5_000_000, zipf=1.2, name="context")), 1,
     "DIEN: user profile, candidate item, a 40-step behaviour sequence over the item table, context"),
]:
    register_preset(SynthPreset(_name, _dense, _specs, num_tasks=_tasks, description=_description))


def scaled_rows(rows: int, scale: float) -> int:
    return max(min(rows, MIN_SCALED_ROWS), int(round(rows * scale)))


def with_tasks(preset: str | SynthPreset, num_tasks: int, name: str | None = None) -> SynthPreset:
    """A copy of a preset with another number of label tasks (each with its own true weights)."""
    base = get_preset(preset)
    return replace(base, num_tasks=num_tasks, name=name or f"{base.name}-{num_tasks}task")


# two label tasks on the Criteo shapes: the multi-task recipe's data (configs/mtwnd-synth.yaml)
register_preset(with_tasks("criteo-kaggle", 2))
