"""BatchLoader: coverage, determinism, resumption, contents, and the prefetch thread's behaviour."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from recstack.data.batch import Batch
from recstack.data.loader import BatchLoader
from recstack.data.store import Dataset, DatasetWriter, SparseFeature

N = 1037  # not a multiple of any batch size used


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """dense[:, 0] is the row id; `fixed` has 2 ids per row; `bag` has row % 4 ids (some empty)."""
    out = tmp_path_factory.mktemp("loader")
    rows = np.arange(N)
    lengths = rows % 4
    sample = np.repeat(rows, lengths)
    position = np.arange(sample.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    writer = DatasetWriter(
        out,
        ["row", "double"],
        ["label"],
        [SparseFeature("fixed", 100, 2), SparseFeature("bag", 50_000, None)],
    )
    writer.append(
        np.stack([rows, 2 * rows], axis=1).astype(np.float32),
        (rows % 2).astype(np.float32),
        {"fixed": np.stack([rows % 100, (rows + 1) % 100], axis=1), "bag": (sample * 10 + position, lengths)},
    )
    writer.finish()
    return Dataset(out)


def _rows(batch: Batch) -> np.ndarray:
    return batch.dense[:, 0].numpy().astype(np.int64)


def _all_rows(batches: list[Batch]) -> np.ndarray:
    return np.concatenate([_rows(b) for b in batches]) if batches else np.zeros(0, np.int64)


def _loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "recstack-loader"]


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("batch_size", [1, 7, 64, N, 2000])
@pytest.mark.parametrize("span", [(0, N), (100, 900)])
def test_every_row_once_per_epoch(
    dataset: Dataset, shuffle: bool, drop_last: bool, batch_size: int, span: tuple[int, int]
) -> None:
    loader = BatchLoader(dataset, span, batch_size, shuffle=shuffle, drop_last=drop_last, seed=1)
    batches = list(loader.epoch(0))
    n = span[1] - span[0]
    assert len(batches) == len(loader)
    rows = _all_rows(batches)
    if drop_last:
        assert all(b.batch_size == batch_size for b in batches)
        assert rows.size == n // batch_size * batch_size
        assert np.unique(rows).size == rows.size
        assert ((rows >= span[0]) & (rows < span[1])).all()
    else:
        assert np.array_equal(np.sort(rows), np.arange(*span))
        assert all(b.batch_size == batch_size for b in batches[:-1])
    if not shuffle:
        assert np.array_equal(rows, np.arange(span[0], span[0] + rows.size))
    for b in batches:  # sorted inside each batch
        assert (np.diff(_rows(b)) > 0).all()


def test_order_depends_only_on_seed_and_epoch(dataset: Dataset) -> None:
    def order(seed: int, epoch: int, prefetch: int = 4) -> np.ndarray:
        return _all_rows(list(BatchLoader(dataset, (0, N), 64, seed=seed, prefetch=prefetch).epoch(epoch)))

    first = order(0, 0)
    assert np.array_equal(first, order(0, 0, prefetch=0))
    assert not np.array_equal(first, order(0, 1))
    assert not np.array_equal(first, order(1, 0))
    perm = np.random.default_rng([0, 0]).permutation(N)
    assert np.array_equal(np.sort(first[:64]), np.sort(perm[:64]))


@pytest.mark.parametrize("shuffle", [True, False])
def test_start_batch_yields_the_tail(dataset: Dataset, shuffle: bool) -> None:
    loader = BatchLoader(dataset, (0, N), 100, shuffle=shuffle, seed=2)
    full = [_rows(b) for b in loader.epoch(3)]
    for k in (0, 1, 5, len(loader) - 1, len(loader)):
        tail = [_rows(b) for b in loader.epoch(3, start_batch=k)]
        assert len(tail) == len(full) - k
        assert all(np.array_equal(a, b) for a, b in zip(tail, full[k:], strict=True))
    with pytest.raises(ValueError):
        loader.epoch(0, start_batch=len(loader) + 1)


def test_start_batch_skips_without_reading(dataset: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    loader = BatchLoader(dataset, (0, N), 100, prefetch=0)
    calls = []
    gather = dataset.gather
    monkeypatch.setattr(dataset, "gather", lambda rows: calls.append(1) or gather(rows))
    assert len(list(loader.epoch(0, start_batch=8))) == len(loader) - 8
    assert len(calls) == len(loader) - 8


def _reference_bags(dataset: Dataset, name: str, rows: np.ndarray) -> tuple[list[int], list[int]]:
    """Pure Python: the bag of every row, one after another."""
    offsets, values = dataset.offsets[name], dataset.values[name]
    flat: list[int] = []
    lengths: list[int] = []
    for r in rows.tolist():
        bag = [int(v) for v in values[offsets[r] : offsets[r + 1]]]
        flat.extend(bag)
        lengths.append(len(bag))
    return flat, lengths


def test_batch_contents_match_reference(dataset: Dataset) -> None:
    loader = BatchLoader(dataset, (10, 1000), 50, seed=4)
    for i, batch in enumerate(loader.epoch(1)):
        rows = np.asarray(loader.batch_rows(loader.order(1), i))
        assert np.array_equal(_rows(batch), rows)
        ref = dataset.gather(rows)
        assert torch.equal(batch.dense, ref.dense) and torch.equal(batch.labels, ref.labels)
        assert torch.equal(batch.sparse.values, ref.sparse.values)
        assert torch.equal(batch.sparse.lengths, ref.sparse.lengths)
        parts = batch.sparse.to_dict()
        fixed_values, fixed_lengths = parts["fixed"]
        assert fixed_values.tolist() == [v for r in rows.tolist() for v in (r % 100, (r + 1) % 100)]
        assert (fixed_lengths == 2).all()
        bag_values, bag_lengths = parts["bag"]
        flat, lengths = _reference_bags(dataset, "bag", rows)
        assert bag_values.tolist() == flat and bag_lengths.tolist() == lengths
        assert flat == [r * 10 + j for r in rows.tolist() for j in range(r % 4)]


def test_variable_length_gather_of_arbitrary_rows(dataset: Dataset) -> None:
    rows = np.random.default_rng(0).choice(N, 300, replace=True)  # unsorted, with repeats
    values, lengths = dataset.gather(rows).sparse.to_dict()["bag"]
    flat, ref_lengths = _reference_bags(dataset, "bag", rows)
    assert values.tolist() == flat and lengths.tolist() == ref_lengths


@pytest.mark.parametrize("prefetch", [0, 1, 4])
def test_exceptions_propagate(dataset: Dataset, monkeypatch: pytest.MonkeyPatch, prefetch: int) -> None:
    gather = dataset.gather
    calls = []

    def failing(rows: object) -> Batch:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return gather(rows)

    monkeypatch.setattr(dataset, "gather", failing)
    seen = 0
    with pytest.raises(RuntimeError, match="disk on fire"):
        for _ in BatchLoader(dataset, (0, N), 64, prefetch=prefetch).epoch(0):
            seen += 1
    assert seen == 2
    assert not _loader_threads()


def test_early_break_leaves_no_thread(dataset: Dataset) -> None:
    loader = BatchLoader(dataset, (0, N), 8, prefetch=2)
    for _ in loader.epoch(0):
        break
    assert not _loader_threads()

    iterator = loader.epoch(1)
    next(iterator)
    time.sleep(0.05)  # let the producer fill the queue and block on it
    assert len(_loader_threads()) == 1
    iterator.close()
    assert not _loader_threads()

    iterator = loader.epoch(2)
    next(iterator)
    del iterator
    gc.collect()
    assert not _loader_threads()

    loader.epoch(3)  # never started: no thread
    assert not _loader_threads()


def test_slow_consumer_and_slow_producer(dataset: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    gather = dataset.gather

    def slow(rows: object) -> Batch:
        time.sleep(0.002)
        return gather(rows)

    monkeypatch.setattr(dataset, "gather", slow)
    loader = BatchLoader(dataset, (0, 200), 16, prefetch=1)
    rows = []
    for batch in loader.epoch(0):
        time.sleep(0.003)
        rows.append(_rows(batch))
    assert np.array_equal(np.sort(np.concatenate(rows)), np.arange(200))
    assert not _loader_threads()


def test_sequential_covers_the_range_in_order(dataset: Dataset) -> None:
    loader = BatchLoader(dataset, (5, 1000), 64, drop_last=True, shuffle=True)
    batches = list(loader.sequential())
    assert np.array_equal(_all_rows(batches), np.arange(5, 1000))
    assert batches[-1].batch_size == (1000 - 5) % 64


def test_empty_range_and_bad_arguments(dataset: Dataset, tmp_path: Path) -> None:
    loader = BatchLoader(dataset, (10, 10), 4)
    assert len(loader) == 0 and list(loader.epoch(0)) == [] and list(loader.sequential()) == []
    assert len(BatchLoader(dataset, (0, 3), 4, drop_last=True)) == 0
    with pytest.raises(ValueError):
        BatchLoader(dataset, (0, N + 1), 4)
    with pytest.raises(ValueError):
        BatchLoader(dataset, (0, N), 0)
