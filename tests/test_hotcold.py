"""The stored hot/cold partition (FAE steps 1-3): the budget, the partition properties checked lookup by
lookup, the remap, empty bags, the stored files, the command, and the real Criteo sample."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recstack.cli import main
from recstack.data import hotcold as hc
from recstack.data import synth
from recstack.data.store import Dataset, DatasetWriter, SparseFeature
from recstack.errors import DataError
from tests.conftest import shared_data
from tests.test_skew import python_lookups

ROWS = 3000


@pytest.fixture()
def tiny(tmp_path) -> Dataset:
    synth.generate("tiny", ROWS, tmp_path / "tiny", seed=11, test_fraction=0.2, show_progress=False, workers=1)
    return Dataset(tmp_path / "tiny")


def check_partition(ds: Dataset, parts: hc.HotCold, lookups: list[list[tuple[int, int]]] | None = None) -> None:
    a, b = ds.split(parts.summary["dataset"]["split"])
    hot, cold = np.asarray(parts.hot_inputs), np.asarray(parts.cold_inputs)
    assert hot.dtype == cold.dtype == np.int64
    assert np.all(np.diff(hot) > 0) and np.all(np.diff(cold) > 0)  # sorted, no repeats
    assert np.intersect1d(hot, cold).size == 0
    np.testing.assert_array_equal(np.union1d(hot, cold), np.arange(a, b))
    # the remap: table t's hot rows are global indices hot_offsets[t].., in row order; -1 elsewhere
    offsets = parts.hot_offsets
    assert offsets[0] == 0 and offsets[-1] == parts.num_hot_rows == parts.summary["hot_rows"]
    members = set()
    for t, name in enumerate(parts.table_names):
        rows = parts.hot_rows[name]
        assert rows.dtype == np.int64 and np.all(np.diff(rows) > 0)
        remap = np.asarray(parts.remap[name])
        assert remap.size == ds.schema.sparse[t].num_embeddings
        np.testing.assert_array_equal(remap[rows], np.arange(offsets[t], offsets[t + 1]))
        assert np.all(np.delete(remap, rows) == -1)
        np.testing.assert_array_equal(parts.hot_index(name, rows), np.arange(offsets[t], offsets[t + 1]))
        members.update((t, int(i)) for i in rows)
    # the budget
    s = parts.summary
    assert s["hot_rows"] <= s["capacity_rows"] == s["budget_bytes"] // (s["dim"] * 4 + s["state_bytes_per_row"])
    assert s["hot_bytes"] <= s["budget_bytes"]
    assert s["hot_inputs"] == hot.size and s["cold_inputs"] == cold.size
    assert s["hot_input_fraction"] == pytest.approx(hot.size / (b - a))
    if lookups is None:
        return
    hot_set = set(hot.tolist())
    for r, inp in enumerate(lookups, start=a):
        if r in hot_set:
            assert all(lk in members for lk in inp), r  # every lookup of a hot input is hot
        else:
            assert any(lk not in members for lk in inp), r  # a cold input misses at least once


def test_partition_properties_lookup_by_lookup(tiny):
    summary = hc.build_hot_cold(tiny.path, "8KiB", sample=0.2, dim=16, seed=1, chunk_rows=500)
    parts = hc.load_hot_cold(tiny.path)
    assert parts.summary == summary
    assert 0 < summary["hot_rows"] <= 8192 // 68 and 0 < summary["hot_input_fraction"] < 1
    check_partition(tiny, parts, python_lookups(tiny, "train"))
    # the test split too (another partition replaces the first)
    hc.build_hot_cold(tiny.path, "16KiB", sample=0.5, dim=8, split="test")
    check_partition(tiny, hc.load_hot_cold(tiny.path), python_lookups(tiny, "test"))
    assert not (tiny.path / "hotcold.tmp").exists()


def test_full_sample_is_the_exact_top_k(tiny):
    summary = hc.build_hot_cold(tiny.path, "4KiB", sample=1.0, dim=16, state_bytes_per_row=0)
    assert summary["capacity_rows"] == 64 and summary["hot_rows"] == 64
    assert summary["sampled_recall"] == 1.0 and summary["sampled_inputs"] == summary["inputs"]
    assert summary["hot_input_fraction"] == summary["exact_hot_input_fraction"]
    exact, _ = hc.count_accesses(tiny, "train")
    best = hc.select_hot(exact, 64)
    parts = hc.load_hot_cold(tiny.path)
    for t, name in enumerate(parts.table_names):
        np.testing.assert_array_equal(parts.hot_rows[name], np.flatnonzero(best.mask(t, exact.counts[t])))


def test_empty_bags_are_hot_and_never_seen_rows_are_not(tmp_path):
    # one variable-length table over 5 rows; bags [], [0], [4], [0, 0], [] -> row 0 seen 3 times, row 4 once
    bags = [[], [0], [4], [0, 0], []]
    writer = DatasetWriter(tmp_path / "ds", ["d"], ["y"], [SparseFeature("V", 5, None)])
    flat = np.array([i for bag in bags for i in bag])
    writer.append(np.zeros((5, 1)), np.zeros((5, 1)), {"V": (flat, np.array([len(bag) for bag in bags]))})
    writer.finish()
    hc.build_hot_cold(tmp_path / "ds", 4, sample=1.0, dim=1, state_bytes_per_row=0)  # room for one row: row 0
    parts = hc.load_hot_cold(tmp_path / "ds")
    assert parts.hot_rows["V"].tolist() == [0]
    assert parts.hot_inputs.tolist() == [0, 1, 3, 4] and parts.cold_inputs.tolist() == [2]
    hc.build_hot_cold(tmp_path / "ds", "1KiB", sample=1.0, dim=1, state_bytes_per_row=0)  # room for all 5
    parts = hc.load_hot_cold(tmp_path / "ds")
    assert parts.hot_rows["V"].tolist() == [0, 4]  # rows 1-3 are never seen
    assert parts.summary["hot_input_fraction"] == 1.0 and parts.cold_inputs.size == 0
    check_partition(Dataset(tmp_path / "ds"), parts)


def test_command_report_and_stale_partition(tiny, tmp_path, capsys):
    report_path = tmp_path / "hc.json"
    rc = main(["data", "hotcold", "--data", str(tiny.path), "--budget", "8KiB", "--sample", "10%",
               "--dim", "16", "--report", str(report_path), "--quiet"])  # fmt: skip
    assert rc == 0
    report = json.loads(report_path.read_text())
    assert report["command"] == "data hotcold" and report["config"]["budget"] == "8KiB"
    for key in (
        "budget_bytes",
        "capacity_rows",
        "hot_rows",
        "hot_input_fraction",
        "sample",
        "sampled_recall",
        "hot_inputs",
        "cold_inputs",
        "files",
    ):
        assert key in report, key
    assert report["budget_bytes"] == 8192 and report["sample"] == pytest.approx(0.1)
    parts = hc.load_hot_cold(tiny.path, mmap=False)
    assert isinstance(parts.hot_inputs, np.ndarray) and not isinstance(parts.hot_inputs, np.memmap)
    # a partition made for other rows is refused
    schema_path = tiny.path / "schema.json"
    schema = json.loads(schema_path.read_text())
    schema["splits"]["train"][1] -= 1
    schema_path.write_text(json.dumps(schema))
    with pytest.raises(DataError, match="rerun"):
        hc.load_hot_cold(tiny.path)
    assert main(["data", "hotcold", "--data", str(tiny.path), "--budget", "much", "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("error: cannot read the byte size")


def test_no_partition_is_a_clear_error(tiny):
    with pytest.raises(DataError, match="recstack data hotcold"):
        hc.load_hot_cold(tiny.path)


def test_real_criteo_sample_partition(tmp_path):
    from recstack.data.prepare import prepare_criteo

    src = shared_data("criteo", "train_sample.tsv")
    prepare_criteo([src], tmp_path / "ds", split_tail=0.15, workers=1, show_progress=False)
    ds = Dataset(tmp_path / "ds")
    summary = hc.build_hot_cold(ds.path, "64KiB", sample=0.05, dim=16)
    parts = hc.load_hot_cold(ds.path)
    check_partition(ds, parts)
    # vectorized lookup check over all 26 one-hot columns
    hot_rows = np.asarray(parts.hot_inputs)
    in_hot = np.ones(ds.split("train")[1], dtype=bool)
    for name in parts.table_names:
        ids = np.asarray(ds.values[name][: in_hot.size, 0])
        in_hot &= np.asarray(parts.remap[name])[ids] >= 0
    np.testing.assert_array_equal(np.flatnonzero(in_hot), hot_rows)
    assert 0 < summary["hot_input_fraction"] < summary["exact_hot_input_fraction"] < 1
    assert summary["sampled_access_recall"] > 0.9
