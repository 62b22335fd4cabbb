"""FAE's runtime (specs/TECHNIQUES.md section 1, step 6): the hot/cold batch schedule, batches drawn
from the stored hot and cold input pools, and one training epoch over a TieredEmbeddingCollection.

The schedule is a parameter R (`switch_period`): runs of R consecutive batches of one kind, then a
switch. R = None (infinity) is the reference code's order: every cold batch, then every hot batch.
With a finite R, the next run goes to the pool that is further behind (the larger fraction of its
batches left; ties go to the kind that did not run last, cold at the start), so both pools are used
up together over the epoch: with 30 hot and 10 cold batches and R = 5 the epoch runs C5 H15 C5 H15.
With `seed`, the kind of each run is drawn instead with probability proportional to the batches
left in each pool (the spec's [D] rule), from a generator seeded by (seed, epoch).

Each switch costs one copy of the hot rows (rows + optimizer state), amortised over the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from recstack.data.batch import Batch
from recstack.data.hotcold import HotCold
from recstack.data.loader import IndexBatchLoader
from recstack.data.store import Dataset
from recstack.embeddings.tiered import COLD, HOT, TieredEmbeddingCollection
from recstack.train.pipeline import TrainStep

__all__ = ["COLD", "HOT", "FAEBatches", "FAESchedule", "IndexBatchLoader", "fae_train_epoch"]


@dataclass(frozen=True)
class FAESchedule:
    """The order of an epoch's hot and cold batches: ("hot" | "cold", index in that pool)."""

    hot_batches: int
    cold_batches: int
    switch_period: int | None = None
    """R: batches per run; None runs all cold batches, then all hot ones."""
    seed: int | None = None
    """None: deterministic proportional interleaving; an int: runs drawn at random (see module doc)."""

    def __post_init__(self) -> None:
        if self.hot_batches < 0 or self.cold_batches < 0:
            raise ValueError("batch counts must be >= 0")
        if self.switch_period is not None and self.switch_period < 1:
            raise ValueError(f"switch_period must be >= 1 or None (infinity), not {self.switch_period}")

    def __len__(self) -> int:
        return self.hot_batches + self.cold_batches

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self.epoch(0))

    def epoch(self, epoch: int = 0) -> list[tuple[str, int]]:
        total = {HOT: self.hot_batches, COLD: self.cold_batches}
        if self.switch_period is None:
            return [(COLD, i) for i in range(total[COLD])] + [(HOT, i) for i in range(total[HOT])]
        rng = None if self.seed is None else np.random.default_rng([self.seed, epoch])
        done = {HOT: 0, COLD: 0}
        out: list[tuple[str, int]] = []
        last = HOT  # so that a tie at the start goes to cold, as the reference code begins
        while len(out) < len(self):
            left = {k: total[k] - done[k] for k in total}
            if not left[HOT] or not left[COLD]:
                kind = HOT if left[HOT] else COLD
            elif rng is not None:
                kind = HOT if rng.random() * (left[HOT] + left[COLD]) < left[HOT] else COLD
            else:  # compare left[HOT] / total[HOT] with left[COLD] / total[COLD], exactly
                ahead = left[HOT] * total[COLD] - left[COLD] * total[HOT]
                kind = HOT if ahead > 0 else COLD if ahead < 0 else (COLD if last == HOT else HOT)
            n = min(self.switch_period, left[kind])
            out.extend((kind, done[kind] + j) for j in range(n))
            done[kind] += n
            last = kind
        return out

    def switches(self, epoch: int = 0, start_mode: str = COLD) -> int:
        """Kind changes in the epoch, counting one at its start when it begins in the other mode."""
        kinds = [start_mode] + [k for k, _ in self.epoch(epoch)]
        return sum(a != b for a, b in zip(kinds, kinds[1:]))


def _prepared(collection: TieredEmbeddingCollection | None, pin: bool, batch: Batch) -> Batch:
    sparse = batch.sparse if collection is None else collection.hot_ids(batch.sparse, pin=pin)
    dense, labels = batch.dense, batch.labels
    if pin and torch.cuda.is_available():
        dense, labels = dense.pin_memory(), labels.pin_memory()
    return Batch(dense, sparse, labels)


def _within(rows: np.ndarray, span: tuple[int, int] | None) -> np.ndarray:
    """The sorted row ids in [a, b)."""
    rows = np.asarray(rows)
    if span is None:
        return np.asarray(rows, dtype=np.int64)
    lo, hi = np.searchsorted(rows, [span[0], span[1]])
    return np.asarray(rows[lo:hi], dtype=np.int64)


class FAEBatches:
    """All-hot and all-cold batches of a hot/cold partition's input pools, in a schedule's order."""

    COLD_STREAM, HOT_STREAM = 0, 1

    def __init__(
        self,
        dataset: Dataset,
        hotcold: HotCold | None = None,
        *,
        hot_inputs: np.ndarray | None = None,
        cold_inputs: np.ndarray | None = None,
        rows: tuple[int, int] | None = None,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        prefetch: int = 4,
    ):
        """The pools come from `hotcold` or from `hot_inputs` / `cold_inputs` (sorted dataset row
        ids); `rows` keeps only the inputs in [a, b) (the trainer's training rows: a partition of
        the whole split also holds the validation tail)."""
        if hotcold is not None:
            hot_inputs, cold_inputs = hotcold.hot_inputs, hotcold.cold_inputs
        if hot_inputs is None or cold_inputs is None:
            raise ValueError("give a HotCold partition or both hot_inputs and cold_inputs")
        common = {"shuffle": shuffle, "seed": seed, "drop_last": drop_last, "prefetch": prefetch}
        self.hot = IndexBatchLoader(dataset, _within(hot_inputs, rows), batch_size, stream=self.HOT_STREAM, **common)
        self.cold = IndexBatchLoader(dataset, _within(cold_inputs, rows), batch_size, stream=self.COLD_STREAM, **common)

    def prepare_for(self, collection: TieredEmbeddingCollection | None, pin: bool = False) -> None:
        """Build each hot batch's hot-table ids (`collection.hot_ids`) on the loader thread, off the
        training step (None: leave the ids raw, each collection remaps its own), and with `pin` put
        the batches in page-locked memory for asynchronous copies. The batches' contents are
        unchanged otherwise; hot batches with hot ids then run in hot mode only."""
        self.hot.transform = partial(_prepared, collection, pin) if collection is not None or pin else None
        self.cold.transform = partial(_prepared, None, pin) if pin else None

    @property
    def hot_input_fraction(self) -> float:
        total = self.hot.num_rows + self.cold.num_rows
        return self.hot.num_rows / total if total else 0.0

    def schedule(self, switch_period: int | None = None, seed: int | None = None) -> FAESchedule:
        return FAESchedule(len(self.hot), len(self.cold), switch_period, seed)

    def epoch(self, epoch: int, schedule: FAESchedule, start: int = 0) -> Iterator[tuple[str, Batch]]:
        """(kind, batch) in the schedule's order of `epoch`, from position `start` on (a resumed run
        sees exactly the batches it would have seen)."""
        if (schedule.hot_batches, schedule.cold_batches) != (len(self.hot), len(self.cold)):
            raise ValueError(
                f"the schedule is for {schedule.hot_batches} hot and {schedule.cold_batches} cold batches, "
                f"the pools make {len(self.hot)} and {len(self.cold)}"
            )
        if not 0 <= start <= len(schedule):
            raise ValueError(f"start {start} is outside 0..{len(schedule)}")
        return self._iterate(epoch, schedule.epoch(epoch)[start:])

    def _iterate(self, epoch: int, order: list[tuple[str, int]]) -> Iterator[tuple[str, Batch]]:
        first = {HOT: len(self.hot), COLD: len(self.cold)}
        for kind, i in order:
            first[kind] = min(first[kind], i)
        iterators = {HOT: self.hot.epoch(epoch, first[HOT]), COLD: self.cold.epoch(epoch, first[COLD])}
        try:
            for kind, _ in order:  # each pool's batches come in ascending index order
                yield kind, next(iterators[kind])
        finally:
            for it in iterators.values():
                close = getattr(it, "close", None)
                if close is not None:
                    close()


def _scheduled(
    batches: FAEBatches | Mapping[str, Sequence[Batch]], schedule: FAESchedule, epoch: int
) -> Iterator[tuple[str, Batch]]:
    if isinstance(batches, FAEBatches):
        return batches.epoch(epoch, schedule)
    return ((kind, batches[kind][i]) for kind, i in schedule.epoch(epoch))


def fae_train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    collection: TieredEmbeddingCollection,
    schedule: FAESchedule,
    batches: FAEBatches | Mapping[str, Sequence[Batch]],
    lr_fn: Callable[[int], float],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    epoch: int = 0,
    start_step: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """One epoch of FAE training: for each scheduled batch, switch the collection to its kind (the
    switch copies the hot rows), forward, backward, dense step, sparse step with lr_fn(step); at the
    end, sync the hot rows into the full tables (the reference code does so before every test).

    `batches`: an FAEBatches, or {"hot": [...], "cold": [...]} indexed by the schedule. Dense
    features and labels go to `device` (default: the collection's output device); the sparse
    features stay where the loader made them (the collection routes them to the tier)."""
    device = torch.device(device) if device is not None else collection.output_device
    before = (collection.switches, collection.syncs, collection.bytes_synced)
    losses, kinds = [], {HOT: 0, COLD: 0}
    model.train()
    step = TrainStep(model, optimizer, device, loss=loss_fn)
    n = start_step
    for kind, batch in _scheduled(batches, schedule, epoch):
        collection.set_mode(kind)
        losses.append(step(batch, lr_fn(n)))
        kinds[kind] += 1
        n += 1
    collection.sync()
    return {
        "steps": n - start_step,
        "hot_steps": kinds[HOT],
        "cold_steps": kinds[COLD],
        "loss": float(torch.stack(losses).mean()) if losses else None,
        "switches": collection.switches - before[0],
        "syncs": collection.syncs - before[1],
        "bytes_synced": collection.bytes_synced - before[2],
    }
