"""The workload a load test offers (`recstack loadgen`, `recstack sched`): query sizes (fixed,
normal, lognormal, an empirical quantile file, MLPerf's DLRM aggregation), arrival processes
(Poisson, DeepRecSys's integer-millisecond Poisson gaps, fixed rate) and replayed traces, all drawn
with numpy from one seed. recstack.serve.loadgen drives a target with them."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recstack.errors import ConfigError, DataError
from recstack.serve.engine import MAX_QUERY_SIZE

MLPERF_QUANTILES = np.array([100, 100, *[200] * 12, 300, 300, 400, 500, 600, 700])
"""MLPerf DLRM's tools/dist_quantile.txt: user-item pairs per sample, a 20-point inverse CDF."""

ARRIVAL_KINDS = ("poisson", "deeprecsys", "fixed")

MAX_QUERIES = 10_000_000
"""The most queries one run may schedule: every query is kept until the summary, ~0.5 kB each, so
this is ~5 GB; more would exhaust memory before the first query is sent."""


# --- query sizes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeDistribution:
    """Candidates per query. Every draw is rounded and clipped to [1, max_size], as DeepRecSys does.

    kinds: `fixed:N`, `normal:MEAN,STD`, `lognormal:MU,SIGMA` (numpy's: of the underlying normal),
    `file:PATH` (an empirical quantile file: sizes separated by commas or white space, sampled
    uniformly by index, i.e. inverse-CDF sampling of the file's distribution), `mlperf`."""

    kind: str
    params: tuple[float, ...] = ()
    quantiles: np.ndarray | None = field(default=None, compare=False)
    max_size: int = 1024
    source: str = ""

    @classmethod
    def parse(cls, spec: str, max_size: int = 1024) -> SizeDistribution:
        if not 1 <= max_size <= MAX_QUERY_SIZE:
            raise ConfigError(f"--max-size must be in [1, {MAX_QUERY_SIZE}], got {max_size}")
        kind, _, rest = spec.partition(":")
        if kind == "mlperf" and not rest:
            return cls("mlperf", quantiles=MLPERF_QUANTILES, max_size=max_size, source=spec)
        if kind == "file":
            return cls("file", quantiles=_read_quantiles(rest), max_size=max_size, source=spec)
        arity = {"fixed": 1, "normal": 2, "lognormal": 2}.get(kind)
        try:
            params = tuple(float(p) for p in rest.split(",")) if rest else ()
        except ValueError:
            params = ()
        if arity is None or len(params) != arity or not all(map(math.isfinite, params)):
            raise ConfigError(
                f"query sizes {spec!r} not understood",
                "use fixed:N, normal:MEAN,STD, lognormal:MU,SIGMA, file:PATH or mlperf",
            )
        if kind != "fixed" and params[1] < 0:
            raise ConfigError(f"query sizes {spec!r}: the spread must not be negative")
        if kind == "fixed" and not 1 <= params[0] <= max_size:
            raise ConfigError(f"query sizes {spec!r}: a fixed size must be in [1, --max-size {max_size}]")
        return cls(kind, params, max_size=max_size, source=spec)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "fixed":
            raw = np.full(n, self.params[0])
        elif self.kind == "normal":
            raw = rng.normal(self.params[0], self.params[1], n)
        elif self.kind == "lognormal":
            raw = rng.lognormal(self.params[0], self.params[1], n)
        else:
            raw = self.quantiles[rng.integers(0, len(self.quantiles), n)]
        return np.clip(np.rint(raw), 1, self.max_size).astype(np.int64)

    def stream(self, rng: np.random.Generator, block: int = 1024) -> Iterator[int]:
        """Sizes one at a time, drawn in blocks."""
        while True:
            yield from self.sample(block, rng).tolist()

    def describe(self) -> dict[str, Any]:
        return {"spec": self.source or self.kind, "max_size": self.max_size}


def _read_quantiles(path: str) -> np.ndarray:
    if not path:
        raise ConfigError("query sizes file: needs a path (file:PATH)")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise DataError(f"cannot read the query-size file {path}: {exc.strerror or exc}") from None
    try:
        values = np.array(text.replace(",", " ").split(), dtype=np.float64)
    except ValueError:
        raise DataError(f"{path}: a query-size file holds numbers separated by commas or white space") from None
    if values.size == 0 or not np.isfinite(values).all() or (values < 1).any():
        raise DataError(f"{path}: a query-size file needs at least one size, every one >= 1")
    return values


# --- arrivals --------------------------------------------------------------------------------------


class Arrivals:
    """Gaps between scheduled arrivals at a rate (queries/s) that may change between draws.

    poisson: exponential gaps of mean 1/rate (a true Poisson process, as MLPerf's Server scenario).
    deeprecsys: `np.random.poisson(mean_gap_ms)` milliseconds, DeepRecSys's integer gaps (CV well
    under 1; kept to reproduce its results). fixed: exactly 1/rate."""

    def __init__(self, kind: str, rate: float, rng: np.random.Generator, block: int = 1024):
        if kind not in ARRIVAL_KINDS:
            raise ConfigError(f"unknown arrival process {kind!r}; choose one of {', '.join(ARRIVAL_KINDS)}")
        self.kind = kind
        self._rng = rng
        self._block = block
        self._buffer = np.empty(0)
        self._next = 0
        self.rate = rate

    @classmethod
    def deeprecsys(cls, mean_gap_ms: float, rng: np.random.Generator) -> Arrivals:
        return cls("deeprecsys", 1000.0 / mean_gap_ms, rng)

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, rate: float) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ConfigError(f"an arrival rate must be a positive number of queries/s, got {rate}")
        self._rate = float(rate)
        self._buffer, self._next = np.empty(0), 0  # draws at the old rate are dropped

    def gaps(self, n: int) -> np.ndarray:
        """n gaps in seconds at the current rate."""
        if self.kind == "poisson":
            return self._rng.exponential(1.0 / self._rate, n)
        if self.kind == "deeprecsys":
            return self._rng.poisson(1000.0 / self._rate, n) / 1000.0
        return np.full(n, 1.0 / self._rate)

    def next_gap(self) -> float:
        if self._next >= len(self._buffer):
            self._buffer, self._next = self.gaps(self._block), 0
        self._next += 1
        return float(self._buffer[self._next - 1])


def load_trace(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A replay trace: one query per line, `arrival_seconds[ size]` (commas or white space; `#`
    comments). Returns arrival offsets from the first query (sorted) and the sizes, if given."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise DataError(f"cannot read the trace {path}: {exc.strerror or exc}") from None
    rows = [line.split("#", 1)[0].replace(",", " ").split() for line in text.splitlines()]
    rows = [r for r in rows if r]
    widths = {len(r) for r in rows}
    try:
        table = np.array(rows, dtype=np.float64) if len(widths) == 1 else None
    except ValueError:
        table = None
    if table is None or table.shape[1] > 2 or not np.isfinite(table).all():
        raise DataError(f"{path}: a trace has one query per line: arrival_seconds and optionally its size")
    if (table[:, 0] < 0).any() or (table.shape[1] == 2 and (table[:, 1] < 1).any()):
        raise DataError(f"{path}: arrival times must be >= 0 and sizes >= 1")
    order = np.argsort(table[:, 0], kind="stable")
    arrivals = table[order, 0] - table[order[0], 0]
    sizes = np.rint(table[order, 1]).astype(np.int64) if table.shape[1] == 2 else None
    return arrivals, sizes


def check_query_count(queries: float, what: str) -> None:
    """Refuse a run of more than MAX_QUERIES queries before anything is allocated for it."""
    if not queries <= MAX_QUERIES:
        raise ConfigError(f"{what} makes {queries:.3g} queries; a run holds at most {MAX_QUERIES:.0e} "
                          "(MAX_QUERIES): lower the rate, the duration or --queries")


def timed_schedule(arrivals: Arrivals, duration_s: float) -> np.ndarray:
    """Arrival offsets in [0, duration_s) at the arrival process's rate."""
    check_query_count(arrivals.rate * duration_s, f"{arrivals.rate:.6g} queries/s for {duration_s:g} s")
    chunks, total = [], 0.0
    while total < duration_s:
        gaps = arrivals.gaps(int(arrivals.rate * duration_s * 1.1) + 64)
        offsets = total + np.cumsum(gaps)
        chunks.append(offsets)
        total = float(offsets[-1])
    offsets = np.concatenate(chunks)
    return offsets[offsets < duration_s]


@dataclass
class Workload:
    """What to offer: query sizes, arrival process, and the one seed for both."""

    sizes: SizeDistribution
    arrival: str = "poisson"
    seed: int = 0
    trace: tuple[np.ndarray, np.ndarray | None] | None = None
    _rng: np.random.Generator | None = field(default=None, init=False, repr=False)

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:
            self._rng = np.random.default_rng(self.seed)
        return self._rng

    def arrivals(self, rate: float) -> Arrivals:
        return Arrivals(self.arrival, rate, self.rng)
