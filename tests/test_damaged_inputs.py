"""Damaged or foreign checkpoints and prepared datasets: every reader answers with one line that names
the file and the damage (CheckpointError / DataError, exit 2), never a traceback, a crash inside torch
or numpy, or a silently wrong result. Each case sits beside a valid neighbour that still works."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from recstack import checkpoint, cli
from recstack.data.hotcold import build_hot_cold, count_accesses, load_hot_cold
from recstack.data.store import SCHEMA_FILE, Dataset, DatasetWriter, SparseFeature
from recstack.errors import CheckpointError, DataError
from recstack.serve.scoring import ScoringModel

N = 96
SIZES = {"a": 10, "b": 20, "c": 30}


def write_dataset(out: Path) -> Path:
    """A small clean dataset: fixed features a (1 id) and b (2 ids), bag feature c (0-3 ids), a vocabulary
    for a, and train / test splits."""
    rng = np.random.default_rng(0)
    lengths = np.arange(N) % 4
    writer = DatasetWriter(out, ["x", "y"], ["label"],
                           [SparseFeature("a", SIZES["a"]), SparseFeature("b", SIZES["b"], 2),
                            SparseFeature("c", SIZES["c"], None)])
    writer.append(rng.normal(size=(N, 2)).astype(np.float32), (np.arange(N) % 3 == 0).astype(np.float32), {
        "a": rng.integers(0, SIZES["a"], N), "b": rng.integers(0, SIZES["b"], (N, 2)),
        "c": (rng.integers(0, SIZES["c"], int(lengths.sum())), lengths),
    })
    writer.write_vocab("a", np.arange(100, 100 + SIZES["a"] - 2, dtype=np.uint64))
    writer.finish(splits={"train": [0, 80], "test": [80, N]})
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("clean") / "data")


@pytest.fixture
def copy(clean: Path, tmp_path: Path):
    """copy(): a private copy of the clean dataset to damage."""
    def make() -> Path:
        out = tmp_path / "damaged"
        shutil.copytree(clean, out)
        return out
    return make


def run(*argv: str, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = cli.main([*argv, "--quiet"])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"


# --- checkpoints ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(clean: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of a checkpoint `recstack train` wrote on the clean dataset."""
    out = tmp_path_factory.mktemp("trained")
    assert cli.main(["train", "--data", str(clean), "--checkpoint-dir", str(out / "ckpt"), "--quiet",
                     "--report", str(out / "report.json"), "--model.preset", "tiny", "--train.epochs", "1",
                     "--train.batch_size", "32", "--train.threads", "1"]) == 0
    return out / "ckpt"


def _payload(trained: Path) -> dict:
    payload = torch.load(checkpoint.latest(trained), weights_only=True)
    payload.pop("path", None)
    return payload


def _flip_a_weight_byte(raw: bytes) -> bytes:
    """The archive with one byte of its largest tensor inverted, headers intact: torch.load reads it."""
    import io
    import struct
    import zipfile

    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda info: info.file_size)
    name_len, extra_len = struct.unpack("<HH", raw[member.header_offset + 26 : member.header_offset + 30])
    at = member.header_offset + 30 + name_len + extra_len + member.file_size // 2
    return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :]


def damaged_checkpoints(trained: Path, where: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, words its error must hold)."""
    good = checkpoint.latest(trained)
    raw = good.read_bytes()
    where.mkdir(parents=True, exist_ok=True)
    cases: dict[str, tuple[Path, str]] = {}

    def put(name: str, data: bytes | object, words: str) -> None:
        path = where / f"{name}.pt"
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            torch.save(data, path)
        cases[name] = (path, words)

    put("empty", b"", "is empty")
    put("bit_flipped", _flip_a_weight_byte(raw), "fails its CRC check")
    put("truncated", raw[: len(raw) // 2], "truncated")
    put("garbage", b"\x00\x01 not a checkpoint at all", "not a file torch.save wrote")
    put("foreign_dict", {"a": 1}, "not a recstack checkpoint")
    put("foreign_list", [1, 2], "not a recstack checkpoint")
    put("foreign_tensor", torch.ones(3), "not a recstack checkpoint")
    put("python_objects", {"m": torch.nn.Linear(2, 2)}, "Python objects")
    payload = _payload(trained)
    put("no_model", {k: v for k, v in payload.items() if k != "model"}, "lacks 'model'")
    put("model_not_a_dict", {**payload, "model": torch.ones(2)}, "'model' is a Tensor")
    put("unknown_model", {**payload, "config": {"model": {"name": "nope"}}}, "unknown model 'nope'")
    put("damaged_schema", {**payload, "schema": {**payload["schema"], "num_rows": "many"}}, "num_rows")
    put("other_shapes", {**payload, "model": {k: v[:1] if v.dim() else v for k, v in payload["model"].items()}},
        "does not fit")
    put("nan_weights", {**payload, "model": {k: v.float() * float("nan") if v.is_floating_point() else v
                                             for k, v in payload["model"].items()}}, "NaN or inf")
    put("bad_vocab", {**payload, "vocab": {"a": "text"}}, "'vocab'")
    empty_dir = where / "dir_with_empty_latest"
    empty_dir.mkdir()
    (empty_dir / checkpoint.checkpoint_name(7)).write_bytes(b"")
    cases["dir_with_empty_latest"] = (empty_dir, "is empty")
    no_ckpt_dir = where / "dir_without_checkpoint"
    no_ckpt_dir.mkdir()
    cases["dir_without_checkpoint"] = (no_ckpt_dir, "holds no checkpoint")
    return cases


@pytest.fixture(scope="module")
def bad_checkpoints(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    return damaged_checkpoints(trained, tmp_path_factory.mktemp("bad_checkpoints"))


CHECKPOINT_CASES = ["empty", "bit_flipped", "truncated", "garbage", "foreign_dict", "foreign_list", "foreign_tensor",
                    "python_objects", "no_model", "model_not_a_dict", "unknown_model", "damaged_schema", "other_shapes",
                    "nan_weights", "bad_vocab", "dir_with_empty_latest", "dir_without_checkpoint"]


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_scoring_refuses_a_damaged_checkpoint_naming_it(bad_checkpoints, case):
    """ScoringModel is what evaluate, predict and serve (InferenceEngine.from_checkpoint) load through."""
    path, words = bad_checkpoints[case]
    with pytest.raises(CheckpointError) as info:
        ScoringModel(path)
    message = str(info.value)
    assert words in message and str(path) in message and "\n" not in message, message


@pytest.mark.parametrize("case", ["empty", "truncated", "no_model", "unknown_model", "dir_with_empty_latest"])
def test_evaluate_and_predict_give_one_line(bad_checkpoints, clean, tmp_path, capsys, case):
    path, words = bad_checkpoints[case]
    code, err = run("evaluate", "--checkpoint", str(path), "--data", str(clean), capsys=capsys)
    assert_one_line_error(code, err, words, str(path))
    raw = tmp_path / "in.tsv"
    raw.write_text("0\t1" + "\t" * 38 + "\n")
    code, err = run("predict", "--checkpoint", str(path), "--input", str(raw), "--output", str(tmp_path / "o"),
                    capsys=capsys)
    assert_one_line_error(code, err, words, str(path))


def test_the_valid_checkpoint_still_evaluates(trained, clean, capsys):
    code, err = run("evaluate", "--checkpoint", str(trained), "--data", str(clean), capsys=capsys)
    assert code == 0, err
    assert ScoringModel(trained).step > 0


@pytest.mark.parametrize("case", ["empty", "truncated", "foreign_dict", "no_model", "python_objects"])
def test_resume_refuses_a_damaged_latest_checkpoint(bad_checkpoints, clean, tmp_path, capsys, case):
    path, words = bad_checkpoints[case]
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    shutil.copy(path, ckpt_dir / checkpoint.checkpoint_name(3))
    code, err = run("train", "--data", str(clean), "--checkpoint-dir", str(ckpt_dir), "--resume", "--model.preset",
                    "tiny", "--train.epochs", "1", "--train.batch_size", "32", "--report", str(tmp_path / "r.json"),
                    capsys=capsys)
    assert_one_line_error(code, err, words, checkpoint.checkpoint_name(3))


def test_resume_refuses_a_checkpoint_without_its_optimizer(trained, tmp_path):
    payload = _payload(trained)
    del payload["dense_optimizer"]
    torch.save(payload, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="lacks 'dense_optimizer'"):
        checkpoint.load(tmp_path / "c.pt", require=checkpoint.RESUMING)
    assert checkpoint.load(checkpoint.latest(trained), require=checkpoint.RESUMING)["model"]


def test_checkpoint_dir_that_is_a_file_is_refused_before_training(clean, tmp_path, capsys):
    afile = tmp_path / "ckpt"
    afile.write_text("not a directory")
    code, err = run("train", "--data", str(clean), "--checkpoint-dir", str(afile), "--model.preset", "tiny",
                    "--train.epochs", "1", "--report", str(tmp_path / "r.json"), capsys=capsys)
    assert_one_line_error(code, err, "--checkpoint-dir", "is a file")
    assert not (tmp_path / "r.json").exists()  # refused before any training


# --- datasets: schema.json --------------------------------------------------------------------------


def edit_schema(path: Path, change) -> None:
    raw = json.loads((path / SCHEMA_FILE).read_text())
    result = change(raw)
    text = result if isinstance(result, str) else json.dumps(raw if result is None else result)
    (path / SCHEMA_FILE).write_text(text)


def _feature(raw: dict, **fields) -> None:
    raw["sparse"][0].update(fields)


SCHEMA_CASES = {
    "a_list": (lambda raw: [1, 2], "not an object"),
    "not_json": (lambda raw: "{garbage", "not JSON"),
    "num_rows_text": (lambda raw: raw.update(num_rows="abc"), "num_rows is 'abc'"),
    "num_rows_negative": (lambda raw: raw.update(num_rows=-5), "num_rows is -5"),
    "num_rows_missing": (lambda raw: raw.pop("num_rows") and None, "'num_rows' is missing"),
    "dense_names_text": (lambda raw: raw.update(dense_names="x,y"), "dense_names"),
    "label_names_text": (lambda raw: raw.update(label_names="label"), "label_names is 'label'"),
    "no_rows_table": (lambda raw: _feature(raw, num_embeddings=0), "num_embeddings is 0"),
    "table_size_missing": (lambda raw: raw["sparse"][0].pop("num_embeddings") and None, "'num_embeddings' is missing"),
    "dtype_complex": (lambda raw: _feature(raw, dtype="complex128"), "dtype is 'complex128'"),
    "length_zero": (lambda raw: _feature(raw, length=0), "length is 0"),
    "unknown_field": (lambda raw: _feature(raw, colour="red"), "unknown fields ['colour']"),
    "name_with_slash": (lambda raw: _feature(raw, name="../../a"), "name"),
    "feature_twice": (lambda raw: raw["sparse"].append(raw["sparse"][0]), "listed twice"),
    "split_past_end": (lambda raw: raw["splits"].update(train=[0, 99999]), "split 'train'"),
    "split_backwards": (lambda raw: raw["splits"].update(test=[5, 2]), "split 'test'"),
    "split_text": (lambda raw: raw["splits"].update(test="all"), "split 'test'"),
    "vocab_outside": (lambda raw: raw["vocab"].update(a="../../etc/passwd"), "vocab entry 'a'"),
    "vocab_other_feature": (lambda raw: raw["vocab"].update(zz="vocab/a.npy"), "vocab entry 'zz'"),
    "duplicate_key": (lambda raw: json.dumps(raw).replace("{", '{"num_rows": 5, ', 1), "'num_rows' appears twice"),
}


@pytest.mark.parametrize("case", list(SCHEMA_CASES))
def test_damaged_schema_is_one_data_error_naming_the_field(copy, case):
    change, words = SCHEMA_CASES[case]
    data = copy()
    edit_schema(data, change)
    with pytest.raises(DataError) as info:
        Dataset(data)
    message = str(info.value)
    assert words in message and str(data / SCHEMA_FILE) in message and "\n" not in message, message


def test_damaged_schema_through_the_commands(copy, tmp_path, capsys):
    data = copy()
    edit_schema(data, lambda raw: raw["splits"].update(train=[0, 99999]))
    for argv in (["train", "--data", str(data), "--model.preset", "tiny", "--report", str(tmp_path / "r.json")],
                 ["analyze", "skew", "--data", str(data), "--budgets", "1KiB"],
                 ["data", "hotcold", "--data", str(data), "--budget", "1KiB"]):
        code, err = run(*argv, capsys=capsys)
        assert_one_line_error(code, err, "split 'train'", str(data / SCHEMA_FILE))


def test_the_clean_schema_still_opens(clean):
    ds = Dataset(clean)
    assert len(ds) == N and ds.schema.sparse_names == ["a", "b", "c"] and ds.schema.splits["test"] == [80, N]


# --- datasets: files -------------------------------------------------------------------------------


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


FILE_CASES = {
    "dense_truncated": (lambda d: _truncate(d / "dense.bin", 100), "dense.bin has 100 bytes, shorter"),
    "labels_longer": (lambda d: (d / "labels.bin").write_bytes((d / "labels.bin").read_bytes() + b"\0" * 8),
                      "labels.bin has"),
    "values_missing": (lambda d: (d / "sparse" / "b.values.bin").unlink(), "missing sparse/b.values.bin"),
    "offsets_not_from_zero": (lambda d: (d / "sparse" / "c.offsets.bin").write_bytes(
        np.r_[3, np.fromfile(d / "sparse" / "c.offsets.bin", np.int64)[1:]].astype(np.int64).tobytes()),
        "c.offsets.bin runs from 3"),
    "vocab_garbage": (lambda d: (d / "vocab" / "a.npy").write_bytes(b"garbage\n"), "vocab/a.npy is not a whole .npy"),
    "vocab_truncated": (lambda d: _truncate(d / "vocab" / "a.npy", 130), "vocab/a.npy is not a whole .npy"),
    "vocab_floats": (lambda d: np.save(d / "vocab" / "a.npy", np.ones(3)), "a vocabulary is a 1-d uint64 array"),
    "vocab_missing": (lambda d: (d / "vocab" / "a.npy").unlink(), "missing vocab/a.npy"),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_damaged_file_is_refused_at_open_naming_it(copy, case):
    damage, words = FILE_CASES[case]
    data = copy()
    damage(data)
    with pytest.raises(DataError) as info:
        Dataset(data)
    assert words in str(info.value) and str(data) in str(info.value), str(info.value)


def test_unsorted_vocabulary_is_refused_when_read(copy):
    data = copy()
    np.save(data / "vocab" / "a.npy", np.array([5, 3, 9], dtype=np.uint64))
    ds = Dataset(data)  # the header is whole: only reading the values tells
    with pytest.raises(DataError, match="vocab/a.npy is not sorted"):
        ds.vocab("a")


def test_a_file_or_a_missing_path_given_as_the_dataset(tmp_path):
    afile = tmp_path / "data.bin"
    afile.write_bytes(b"x")
    with pytest.raises(DataError, match="is a file, not a dataset directory"):
        Dataset(afile)
    with pytest.raises(DataError, match="does not exist"):
        Dataset(tmp_path / "nowhere")


# --- datasets: values, checked per batch where the batch is already in memory ------------------------


def _poke(path: Path, dtype, index: int, value) -> None:
    array = np.fromfile(path, dtype)
    array.reshape(-1)[index] = value
    array.tofile(path)


VALUE_CASES = {
    # name: (damage, words, row of the damage)
    "id_too_large": (lambda d: _poke(d / "sparse" / "a.values.bin", np.int32, 5, 999_999), "id 999999 at row 5", 5),
    "id_negative": (lambda d: _poke(d / "sparse" / "b.values.bin", np.int32, 2 * 7 + 1, -3), "id -3 at row 7", 7),
    "bag_id_too_large": (lambda d: _poke(d / "sparse" / "c.values.bin", np.int32, 0, SIZES["c"]),
                         f"id {SIZES['c']} at row 1", 1),
    "dense_nan": (lambda d: _poke(d / "dense.bin", np.float32, 2 * 9 + 1, np.nan), "nan at row 9 (feature 'y')", 9),
    "dense_inf": (lambda d: _poke(d / "dense.bin", np.float32, 0, np.inf), "inf at row 0", 0),
    "label_seven": (lambda d: _poke(d / "labels.bin", np.float32, 4, 7), "7.0 at row 4", 4),
    "label_nan": (lambda d: _poke(d / "labels.bin", np.float32, 3, np.nan), "nan at row 3", 3),
    "offsets_fall": (lambda d: _poke(d / "sparse" / "c.offsets.bin", np.int64, 10, 10_000), "c.offsets.bin is damaged",
                     9),
}


@pytest.mark.parametrize("case", list(VALUE_CASES))
def test_damaged_values_fail_the_batch_that_reads_them(copy, case):
    damage, words, row = VALUE_CASES[case]
    data = copy()
    damage(data)
    ds = Dataset(data)  # opening reads no values
    for rows in (slice(0, 16), np.array([row, 40, 41])):  # the loader reads both ways
        with pytest.raises(DataError) as info:
            ds.gather(rows)
        assert words in str(info.value) and str(data) in str(info.value), str(info.value)
    ds.gather(slice(48, 80))  # rows without damage still read


def test_out_of_range_id_never_reaches_torch_in_training(copy, tmp_path, capsys):
    data = copy()
    VALUE_CASES["id_too_large"][0](data)
    code, err = run("train", "--data", str(data), "--model.preset", "tiny", "--train.epochs", "1",
                    "--report", str(tmp_path / "r.json"), capsys=capsys)
    assert_one_line_error(code, err, "sparse/a.values.bin", "id 999999 at row 5", "[0, 10)")


@pytest.mark.parametrize("row, value", [(5, 999999), (3, -4)])  # row 3 is a positive: counted; row 5 only scored
def test_the_popularity_baseline_range_checks_ids_like_the_loader(copy, row, value):
    from recstack.train.baselines import popularity_scores

    data = copy()
    _poke(data / "sparse" / "a.values.bin", np.int32, row, value)
    with pytest.raises(DataError, match=rf"sparse/a.values.bin holds id {value} at row {row}, outside \[0, 10\)"):
        popularity_scores(Dataset(data), "a", (0, 80), (0, 80))
    assert popularity_scores(Dataset(data), "a", (40, 80), (40, 80)).shape == (40,)  # rows without damage


def test_bad_labels_stop_evaluate_with_the_file_named(copy, trained, capsys):
    data = copy()
    _poke(data / "labels.bin", np.float32, 85, 7)  # a test-split row
    code, err = run("evaluate", "--checkpoint", str(trained), "--data", str(data), capsys=capsys)
    assert_one_line_error(code, err, "labels.bin holds 7.0 at row 85", "labels must be 0 or 1")


def test_profiling_names_the_file_and_row_of_a_bad_id(copy):
    data = copy()
    VALUE_CASES["bag_id_too_large"][0](data)
    with pytest.raises(DataError, match=r"sparse/c.values.bin holds id 30 at row 1, outside \[0, 30\)"):
        count_accesses(Dataset(data), "train")


def test_ids_at_both_ends_of_a_table_are_valid(copy):
    data = copy()
    _poke(data / "sparse" / "a.values.bin", np.int32, 0, 0)
    _poke(data / "sparse" / "a.values.bin", np.int32, 1, SIZES["a"] - 1)
    batch = Dataset(data).gather(slice(0, 2))
    assert batch.sparse.values[:2].tolist() == [0, SIZES["a"] - 1]


# --- the stored hot/cold partition ------------------------------------------------------------------


def _summary(change):
    def damage(folder: Path) -> None:
        raw = json.loads((folder / "summary.json").read_text())
        (folder / "summary.json").write_text(json.dumps(change(raw)))
    return damage


HOTCOLD_CASES = {
    "summary_list": (_summary(lambda raw: [1]), "not a hot/cold summary"),
    "no_files": (_summary(lambda raw: {k: v for k, v in raw.items() if k != "files"}), "'files'"),
    "remap_garbage": (lambda f: (f / "tables" / "a.remap.npy").write_bytes(b"garbage"), "a.remap.npy is not a whole"),
    "hot_rows_outside": (lambda f: np.save(f / "tables" / "a.hot_rows.npy", np.array([0, 99], np.int64)),
                         "hot rows of a"),
    "inputs_outside": (lambda f: np.save(f / "hot_inputs.npy", np.load(f / "hot_inputs.npy") + 10_000), "share out"),
    "inputs_floats": (lambda f: np.save(f / "cold_inputs.npy", np.ones(3)), "not a 1-d integer array"),
    "cold_missing": (lambda f: (f / "cold_inputs.npy").unlink(), "cold_inputs.npy is missing"),
}


@pytest.mark.parametrize("case", list(HOTCOLD_CASES))
def test_damaged_hot_cold_partition_is_a_data_error(copy, case):
    """A DataError makes `train --fae.budget` build the partition afresh instead of failing inside torch."""
    damage, words = HOTCOLD_CASES[case]
    data = copy()
    build_hot_cold(data, "1KiB", sample=1.0)
    load_hot_cold(data)  # the valid neighbour
    damage(data / "hotcold")
    with pytest.raises(DataError) as info:
        load_hot_cold(data)
    assert words in str(info.value), str(info.value)


def test_diverged_training_is_one_line_not_a_metrics_traceback(clean, tmp_path, capsys, monkeypatch):
    import recstack.config

    monkeypatch.setattr(recstack.config, "LR_MAX", math.inf)  # the bound refuses 1e30 before training (below)
    code, err = run("train", "--data", str(clean), "--model.preset", "tiny", "--train.epochs", "1",
                    "--train.lr", "1e30", "--train.sparse_lr", "1e30", "--report", str(tmp_path / "r.json"),
                    capsys=capsys)
    assert_one_line_error(code, err, "predicts NaN", "train.lr")


def test_a_learning_rate_that_can_only_diverge_is_refused_before_training(clean, tmp_path, capsys):
    for key in ("--train.lr", "--train.sparse_lr"):
        code, err = run("train", "--data", str(clean), "--model.preset", "tiny", key, "1e30",
                        "--report", str(tmp_path / "r.json"), capsys=capsys)
        assert_one_line_error(code, err, f"{key[2:]} must be at most 100, not 1e+30")
