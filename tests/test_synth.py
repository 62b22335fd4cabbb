"""Synthetic data: format, determinism, skew, and the true label model."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score

from recstack.data import synth
from recstack.data.store import Dataset
from recstack.errors import DataError

ROWS = 20_000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    out = tmp_path_factory.mktemp("tiny")
    synth.generate("tiny", ROWS, out, seed=3, test_fraction=0.25, show_progress=False)
    return Dataset(out)


def _digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*.bin"))}


def _bags(ds: Dataset, name: str, rows: slice) -> tuple[np.ndarray, np.ndarray]:
    batch = ds.gather(rows)
    values, lengths = batch.sparse.to_dict()[name]
    return values.numpy(), lengths.numpy()


def test_presets() -> None:
    kaggle = synth.get_preset("criteo-kaggle")
    assert kaggle.num_dense == 13 and kaggle.rows == synth.CRITEO_KAGGLE_ROWS
    terabyte = synth.get_preset("criteo-terabyte")
    assert max(terabyte.rows) == 10_000_000 and terabyte.rows[1] == 36746
    multihot = synth.get_preset("criteo-multihot")
    assert [t.pooling.length for t in multihot.tables] == synth.DLRM_V2_MULTI_HOT
    assert multihot.rows == terabyte.rows
    for preset in synth.PRESETS.values():
        assert all(0.85 <= s <= 1.35 for s in preset.zipf)
    # skew differs per table and grows with table size
    assert len(set(kaggle.zipf)) > 20
    assert np.corrcoef(np.log(kaggle.rows), kaggle.zipf)[0, 1] > 0.8
    with pytest.raises(DataError, match="unknown synthetic preset"):
        synth.get_preset("nope")


def test_preset_round_trips_through_dict() -> None:
    preset = synth.get_preset("tiny")
    assert synth.SynthPreset.from_dict(preset.to_dict()) == preset


def test_scale_shrinks_tables() -> None:
    model = synth.synth_model("criteo-kaggle", seed=0, scale=0.01)
    expected = [max(min(r, synth.MIN_SCALED_ROWS), round(r * 0.01)) for r in synth.CRITEO_KAGGLE_ROWS]
    assert [t.rows for t in model.tables] == expected


def test_schema_shapes_and_dtypes(tiny: Dataset) -> None:
    schema = tiny.schema
    preset = synth.get_preset("tiny")
    assert schema.num_rows == ROWS and len(schema.dense_names) == preset.num_dense
    assert schema.label_names == ["label"]
    assert schema.splits == {"train": [0, 15_000], "test": [15_000, ROWS]}
    for feature, spec in zip(schema.sparse, preset.tables, strict=True):
        assert feature.num_embeddings == spec.rows and feature.length == spec.pooling.length
    assert tiny.dense.dtype == np.float32 and tiny.labels.dtype == np.float32
    assert np.isfinite(tiny.dense).all() and (np.asarray(tiny.dense) >= 0).all()
    assert (np.asarray(tiny.dense) == 0).mean() > 0.05  # count features: many zeros, heavy tail
    assert set(np.unique(tiny.labels)) == {0.0, 1.0}
    info = schema.info
    assert info["generator"] == synth.GENERATOR and info["preset"] == "tiny" and info["seed"] == 3
    assert info["zipf"] == {f"C{i + 1}": s for i, s in enumerate(preset.zipf)}


def test_ids_in_range_and_bag_lengths_follow_preset(tiny: Dataset) -> None:
    for feature, spec in zip(tiny.schema.sparse, synth.get_preset("tiny").tables, strict=True):
        values, lengths = _bags(tiny, feature.name, slice(0, ROWS))
        assert values.min() >= 0 and values.max() < feature.num_embeddings
        pooling = spec.pooling
        assert lengths.min() >= pooling.low and lengths.max() <= pooling.high
        if pooling.kind == "fixed":
            assert (lengths == pooling.low).all()
        else:
            assert lengths.min() == 0  # tiny has empty bags
            assert abs(lengths.mean() - pooling.mean_length) < 0.1
        assert values.size == lengths.sum()


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    kwargs = {"seed": 5, "show_progress": False}
    synth.generate("tiny", 20_000, tmp_path / "a", **kwargs)
    synth.generate("tiny", 20_000, tmp_path / "b", chunk_rows=8192, workers=1, **kwargs)
    synth.generate("tiny", 20_000, tmp_path / "c", seed=6, show_progress=False)
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert a == b  # chunking and threads do not change the data
    assert all(a[k] != c[k] for k in a)


def test_longer_run_extends_shorter(tmp_path: Path) -> None:
    synth.generate("tiny", 10_000, tmp_path / "short", show_progress=False)
    synth.generate("tiny", 30_000, tmp_path / "long", show_progress=False)
    short, long = Dataset(tmp_path / "short"), Dataset(tmp_path / "long")
    assert np.array_equal(short.dense, long.dense[:10_000])
    assert np.array_equal(short.values["C4"], long.values["C4"][: short.values["C4"].size])


def test_skew_is_real_and_hot_rows_are_scattered(tmp_path: Path) -> None:
    synth.generate("criteo-kaggle", 40_000, tmp_path, scale=0.01, show_progress=False)
    ds = Dataset(tmp_path)
    feature = ds.schema.feature("C3")  # ~101k rows at this scale
    counts = np.bincount(np.asarray(ds.values["C3"]).reshape(-1), minlength=feature.num_embeddings)
    top = np.sort(counts)[::-1]
    assert top[: feature.num_embeddings // 100].sum() / counts.sum() > 0.5
    hottest = np.argsort(counts)[::-1][:100]
    assert np.median(hottest) > feature.num_embeddings / 10  # not the lowest ids
    assert not (hottest < feature.num_embeddings // 100).all()


def test_zipf_ranks_match_power_law() -> None:
    u = np.random.default_rng(0).random(2_000_000)
    n = 1000
    for s in (0.9, 1.0, 1.3):
        ranks = synth.zipf_ranks(u.copy(), n, s)
        assert ranks.min() >= 0 and ranks.max() < n
        edges = np.arange(1, n + 2, dtype=np.float64)  # rank k covers [k+1, k+2)
        cdf = np.log(edges) / math.log(n + 1) if s == 1.0 else (edges ** (1 - s) - 1) / ((n + 1) ** (1 - s) - 1)
        expected = np.diff(cdf)
        observed = np.bincount(ranks, minlength=n) / u.size
        assert np.abs(observed[:10] - expected[:10]).max() < 3e-3
        assert abs(observed[:100].sum() - expected[:100].sum()) < 3e-3
    # exponent 1 is the continuous limit of the general formula
    near = synth.zipf_ranks(u.copy(), n, 1.0 + 1e-7)
    exact = synth.zipf_ranks(u.copy(), n, 1.0)
    assert (near != exact).mean() < 1e-4


def test_scatter_is_a_bijection() -> None:
    for table in synth.synth_model("criteo-kaggle", scale=0.001).tables:
        rows = table.scatter(np.arange(table.rows, dtype=np.int64))
        assert np.array_equal(np.sort(rows), np.arange(table.rows))


def test_base_rate(tiny: Dataset) -> None:
    assert 0.2 <= float(np.mean(tiny.labels)) <= 0.3


def test_true_metrics_match_sklearn(tiny: Dataset) -> None:
    a, b = tiny.split("test")
    batch = tiny.gather(slice(a, b))
    p = synth.true_probabilities("tiny", 3, 1.0, batch)
    y = batch.labels.numpy()
    info = tiny.schema.info
    assert info["true_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-4)
    assert info["true_logloss"] == pytest.approx(log_loss(y, p), rel=1e-6)
    assert 0.7 < info["true_auc"] < 0.95


def test_true_probabilities_accepts_arrays(tiny: Dataset) -> None:
    batch = tiny.gather(np.arange(0, 500, 3))
    sparse = {name: (v.numpy(), n.numpy()) for name, (v, n) in batch.sparse.to_dict().items()}
    sparse["C1"] = sparse["C1"][0]  # a fixed-size table as an [n] array
    sparse["C3"] = sparse["C3"][0].reshape(-1, 3)  # and as an [n, L] array
    from_arrays = synth.true_probabilities("tiny", 3, 1.0, (batch.dense.numpy(), sparse))
    assert np.array_equal(from_arrays, synth.true_probabilities("tiny", 3, 1.0, batch))
    model = synth.synth_model_from_info(tiny.schema.info)
    assert model is synth.synth_model("tiny", 3, 1.0)


def _design_matrix(ds: Dataset, rows: slice) -> sp.csr_matrix:
    """Dense features plus per-table id counts (bags as bags of words)."""
    batch = ds.gather(rows)
    n = batch.batch_size
    blocks = [sp.csr_matrix(batch.dense.numpy())]
    for feature in ds.schema.sparse:
        values, lengths = (x.numpy() for x in batch.sparse.to_dict()[feature.name])
        sample = np.repeat(np.arange(n), lengths)
        blocks.append(sp.csr_matrix((np.ones(values.size), (sample, values)), shape=(n, feature.num_embeddings)))
    return sp.hstack(blocks).tocsr()


def test_logistic_regression_is_bounded_by_true_auc(tiny: Dataset) -> None:
    (a, b), (c, d) = tiny.split("train"), tiny.split("test")
    model = LogisticRegression(C=0.5, max_iter=2000).fit(_design_matrix(tiny, slice(a, b)), tiny.labels[a:b, 0])
    auc = roc_auc_score(tiny.labels[c:d, 0], model.predict_proba(_design_matrix(tiny, slice(c, d)))[:, 1])
    assert 0.65 < auc <= tiny.schema.info["true_auc"] + 0.01  # learnable, and never beats the truth


def test_multi_task(tmp_path: Path) -> None:
    preset = synth.with_tasks("tiny", 2)
    schema = synth.generate(preset, 12_000, tmp_path, show_progress=False)
    ds = Dataset(tmp_path)
    assert schema.label_names == ["label_0", "label_1"] and ds.labels.shape == (12_000, 2)
    assert set(schema.info["true_auc"]) == {"label_0", "label_1"}
    batch = ds.gather(slice(*ds.split("test")))
    p = synth.true_probabilities(preset, 0, 1.0, batch)
    assert p.shape == (batch.batch_size, 2)
    assert np.corrcoef(p[:, 0], p[:, 1])[0, 1] < 0.9  # each task has its own weights
    for k, name in enumerate(schema.label_names):
        assert schema.info["true_auc"][name] == pytest.approx(roc_auc_score(batch.labels[:, k], p[:, k]), abs=1e-4)
    assert synth.SynthPreset.from_dict(schema.info["preset_spec"]) == preset


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        synth.generate("tiny", 100, tmp_path, test_fraction=1.5, show_progress=False)
    with pytest.raises(DataError):
        synth.Pooling("fixed", 0, 0)
    with pytest.raises(DataError):
        synth.Pooling.uniform(3, 2)


@pytest.mark.parametrize("fraction, message", [
    (0.9999, "leaves no train rows out of 100; use at most 0.99"),
    (0.995, "leaves no train rows"),
    (0.001, "gives no test rows; use at least 0.01, or 0 for no test split"),
    (1.0, r"must be in \[0, 1\)"),
    (-0.1, r"must be in \[0, 1\)"),
    (float("nan"), r"must be in \[0, 1\)"),
])
def test_a_test_fraction_that_empties_a_split_is_refused(tmp_path: Path, fraction: float, message: str) -> None:
    with pytest.raises(DataError, match=message):
        synth.generate("tiny", 100, tmp_path / "out", test_fraction=fraction, show_progress=False)
    assert not (tmp_path / "out").exists()  # refused before any work


def test_split_edges_that_still_leave_rows(tmp_path: Path) -> None:
    assert synth.first_test_row(100, 0.99) == 1 and synth.first_test_row(100, 0.01) == 99
    assert synth.first_test_row(100, 0.0) == 100  # no test split asked for: `bench train` uses it


def test_cli_names_the_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recstack.cli import main

    for args, message in ((["--test-fraction", "0.9999"], "leaves no train rows"),
                          (["--test-fraction", "nan"], "--test-fraction must be in [0, 1), got nan"),
                          (["--seed", "-1"], "seed")):
        try:
            code = main(["data", "synth", "--preset", "tiny", "--rows", "100", "--out", str(tmp_path / "o"), "--quiet",
                         *args])
        except SystemExit as exc:  # refused by argparse (its usage line comes first)
            code = exc.code
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and "error" in err[-1] and message in err[-1], err


def test_rows_that_cannot_fit_the_disk_are_refused_before_any_work(tmp_path: Path) -> None:
    from recstack.memory import CapacityError

    with pytest.raises(CapacityError, match=r"writing 10,000,000,000,000 rows of preset tiny needs 655TiB of disk, but .* "
                                            r"free at .*\(generate fewer rows"):
        synth.generate("tiny", 10**13, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()
    synth.generate("tiny", 1000, tmp_path / "out", show_progress=False, workers=1)
    size = sum(p.stat().st_size for p in (tmp_path / "out").rglob("*.bin"))
    assert size == pytest.approx(1000 * synth.row_bytes(synth.get_preset("tiny")), rel=0.05)  # the estimate holds
