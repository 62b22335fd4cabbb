"""prepare_table: CSV / TSV / Parquet tables described by a YAML schema."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from recstack.data.store import FIRST_VOCAB_ID, MISSING_ID, OOV_ID, SCHEMA_FILE, Dataset
from recstack.data.table import (
    TABLE_REJECT_REASONS,
    encode_table_rows,
    hash_keys,
    held_out_rows,
    iter_table_chunks,
    load_table_spec,
    prepare_table,
)
from recstack.errors import ConfigError, DataError

SCHEMA = {"label": "click", "dense": ["price", "age"], "categorical": ["user id", "city"]}

CSV = """click,price,age,user id,city
1,3.5,20,u1,paris
0,-2,,u2,
1,abc,30,u1,rome
0,1,2,u3
,1,2,u1,x
1,,40,u1,paris
0,7,1,"u,4",paris
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def prepare(path, schema, out, **kw):
    kw.setdefault("show_progress", False)
    return prepare_table(path, schema, out, **kw)


def test_csv_with_header(tmp_path):
    src = write(tmp_path, "t.csv", CSV)
    report = prepare(src, SCHEMA, tmp_path / "ds")
    assert report["rows_read"] == 7 == report["rows_kept"] + report["rows_rejected"]
    assert report["rows_kept"] == 4
    assert report["rejects_by_reason"] == {
        "wrong_field_count": 1, "bad_label": 1, "non_numeric_dense": 1, "missing_column": 0, "malformed_row": 0,
        "truncated_gzip": 0,
    }  # fmt: skip
    assert report["reject_examples"]["non_numeric_dense"] == [
        {"file": str(src), "line": 4, "reason": "non_numeric_dense"}
    ]
    ds = Dataset(tmp_path / "ds")
    assert ds.schema.dense_names == ["price", "age"] and ds.schema.label_names == ["click"]
    assert ds.schema.sparse_names == ["user_id", "city"]  # file-safe feature names
    np.testing.assert_allclose(
        ds.dense[:], np.log1p([[3.5, 20], [0, 0], [0, 40], [7, 1]]).astype(np.float32), rtol=1e-6
    )
    assert ds.labels[:, 0].tolist() == [1, 0, 1, 0]
    users = ds.values["user_id"][:, 0].tolist()
    assert users[0] == users[2] and len(set(users)) == 3  # u1, u2, "u,4"
    cities = ds.values["city"][:, 0].tolist()
    assert cities[1] == MISSING_ID and cities[0] == cities[2] == cities[3]
    keys, _ = hash_keys(["paris"])
    assert ds.vocab("city").tolist() == sorted(keys.tolist())
    assert ds.schema.info["table_schema"]["categorical"] == ["user id", "city"]


def test_schema_from_yaml_file_and_min_count(tmp_path):
    src = write(tmp_path, "t.csv", CSV)
    schema = write(tmp_path, "schema.yaml", yaml.safe_dump({**SCHEMA, "vocab_min_count": 2, "dense_transform": "none"}))
    report = prepare(src, schema, tmp_path / "ds")
    ds = Dataset(tmp_path / "ds")
    assert ds.values["user_id"][:, 0].tolist() == [FIRST_VOCAB_ID, OOV_ID, FIRST_VOCAB_ID, OOV_ID]
    assert report["num_embeddings"] == {"user_id": 3, "city": 3}
    assert ds.dense[:, 0].tolist() == [3.5, -2.0, 0.0, 7.0]  # as is


def test_tsv_without_header(tmp_path):
    src = write(tmp_path, "t.tsv", '1\t5\ta\n0\t\t"b\n1\t2\n1\t3\ta\n')  # a quote is data in TSV
    schema = {"header": False, "label": 0, "dense": [1], "categorical": [2]}
    report = prepare(src, schema, tmp_path / "ds")
    assert report["rows_kept"] == 3 and report["rejects_by_reason"]["wrong_field_count"] == 1
    ds = Dataset(tmp_path / "ds")
    assert ds.schema.sparse_names == ["col2"] and ds.schema.dense_names == ["col1"]
    ids = ds.values["col2"][:, 0].tolist()
    assert ids[0] == ids[2] != ids[1]
    assert ds.vocab("col2").tolist() == sorted(hash_keys(["a", '"b'])[0].tolist())


def test_multi_task_labels_and_split(tmp_path):
    rows = "".join(f"{i % 2},{(i // 2) % 2},{i},k{i % 3}\n" for i in range(20))
    src = write(tmp_path, "t.csv", "click,buy,x,item\n" + rows)
    report = prepare(
        src, {"labels": ["click", "buy"], "dense": ["x"], "categorical": ["item"]}, tmp_path / "ds", split_tail=0.25
    )
    assert report["splits"] == {"train": [0, 15], "test": [15, 20]}
    ds = Dataset(tmp_path / "ds")
    assert ds.schema.label_names == ["click", "buy"] and ds.labels.shape == (20, 2)
    assert ds.labels[:4].tolist() == [[0, 0], [1, 0], [0, 1], [1, 1]]


def test_vocabulary_from_train_rows_only(tmp_path):
    rows = "".join(f"1,1,{'old' if i < 8 else 'new'}\n" for i in range(10))
    src = write(tmp_path, "t.csv", "y,x,c\n" + rows)
    prepare(src, {"label": "y", "dense": ["x"], "categorical": ["c"]}, tmp_path / "ds", split_tail=0.2)
    ds = Dataset(tmp_path / "ds")
    assert ds.values["c"][:, 0].tolist() == [FIRST_VOCAB_ID] * 8 + [OOV_ID] * 2


@pytest.mark.parametrize("columns", [{"dense": ["price"]}, {"categorical": ["city"]}])
def test_only_dense_or_only_categorical(tmp_path, columns):
    src = write(tmp_path, "t.csv", CSV)
    report = prepare(src, {"label": "click", **columns}, tmp_path / "ds")
    ds = Dataset(tmp_path / "ds")
    assert len(ds) == report["rows_kept"] > 0
    assert ds.dense.shape[1] == len(columns.get("dense", [])) and len(ds.schema.sparse) == len(
        columns.get("categorical", [])
    )


def test_hash_mode(tmp_path):
    src = write(tmp_path, "t.csv", CSV)
    report = prepare(src, {**SCHEMA, "hash_buckets": 64}, tmp_path / "ds")
    ds = Dataset(tmp_path / "ds")
    assert report["num_embeddings"] == {"user_id": 64, "city": 64} and report["mode"] == "hash"
    assert ds.schema.vocab == {}
    ids = ds.values["city"][:, 0]
    assert ids.max() < 64 and ids[1] == MISSING_ID


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "click": [1, 0, None, 1],
            "price": [1.5, None, 2.0, 3.0],
            "user": [10, 11, 10, None],
            "city": ["a", "b", "a", "a"],
        }
    )
    src = tmp_path / "t.parquet"
    pq.write_table(table, src, row_group_size=2)
    report = prepare(src, {"label": "click", "dense": ["price"], "categorical": ["user", "city"]}, tmp_path / "ds")
    assert report["rows_read"] == 4 and report["rows_kept"] == 3
    assert report["reject_examples"]["bad_label"] == [{"file": str(src), "line": 3, "reason": "bad_label"}]
    ds = Dataset(tmp_path / "ds")
    assert ds.values["user"][:, 0].tolist()[2] == MISSING_ID
    # an integer key hashes like its decimal text, so CSV and Parquet copies of a table agree
    assert ds.vocab("user").tolist() == sorted(hash_keys(["10", "11"])[0].tolist())


def test_parquet_without_pyarrow(tmp_path, monkeypatch):
    src = tmp_path / "t.parquet"
    src.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match="pyarrow"):
        prepare(src, {"label": "y", "dense": ["x"]}, tmp_path / "ds")


def test_strict(tmp_path):
    src = write(tmp_path, "t.csv", CSV)
    with pytest.raises(DataError) as info:
        prepare(src, SCHEMA, tmp_path / "ds", strict=True)
    assert f"{src}, line 4: rejected (non_numeric_dense)" in str(info.value)
    assert not (tmp_path / "ds").exists()


def test_malformed_csv_row(tmp_path):
    src = write(tmp_path, "t.csv", 'y,x\n1,2\n1,"3"x\n0,4\n')
    report = prepare(src, {"label": "y", "dense": ["x"]}, tmp_path / "ds")
    assert report["rows_read"] == 3 and report["rejects_by_reason"]["malformed_row"] == 1


def test_schema_errors(tmp_path):
    src = write(tmp_path, "t.csv", CSV)
    with pytest.raises(DataError, match="has no column 'nope'"):
        prepare(src, {"label": "click", "dense": ["nope"]}, tmp_path / "ds")
    with pytest.raises(ConfigError, match="unknown key"):
        prepare(src, {**SCHEMA, "categoricals": ["city"]}, tmp_path / "ds")
    with pytest.raises(ConfigError, match="no `label`"):
        prepare(src, {"dense": ["price"]}, tmp_path / "ds")
    with pytest.raises(ConfigError, match="indices"):
        prepare(src, {"header": False, "label": "click", "dense": ["price"]}, tmp_path / "ds")
    with pytest.raises(ConfigError, match="format"):
        prepare(write(tmp_path, "t.dat", CSV), SCHEMA, tmp_path / "ds")
    with pytest.raises(ConfigError, match="does not exist"):
        prepare(src, tmp_path / "missing.yaml", tmp_path / "ds")
    with pytest.raises(DataError, match="out of range"):
        prepare(src, {"header": False, "label": 0, "dense": [9]}, tmp_path / "ds")
    with pytest.raises(DataError, match="no usable rows"):
        prepare(write(tmp_path, "h.csv", "click,price,age,user id,city\n"), SCHEMA, tmp_path / "ds")
    # one column as two features would give two model inputs of one name (the server could not take it)
    with pytest.raises(ConfigError, match="age listed both as dense and as categorical"):
        prepare(src, {**SCHEMA, "categorical": ["city", "age"]}, tmp_path / "ds")
    assert not (tmp_path / "ds" / SCHEMA_FILE).exists()


@pytest.mark.parametrize("key, value, accepts", [
    ("hash_buckets", 1e30, r"integer in \[3, 2147483647\]"),
    ("hash_buckets", 10**30, r"integer in \[3, 2147483647\]"),
    ("hash_buckets", 3.7, r"integer in \[3, 2147483647\]"),
    ("hash_buckets", "1e30", r"integer in \[3, 2147483647\]"),
    ("hash_buckets", True, r"integer in \[3, 2147483647\]"),
    ("hash_buckets", 2, r"integer in \[3, 2147483647\]"),
    ("vocab_min_count", 2.5, "integer >= 1"),
    ("vocab_min_count", [1], "integer >= 1"),
    ("vocab_min_count", 0, "integer >= 1"),
    ("header", "no", "true or false"),
    ("header", 1, "true or false"),
    ("format", 5, "one of csv, tsv, parquet"),
    ("format", "xls", "one of csv, tsv, parquet"),
    ("delimiter", 5, "one character"),
    ("delimiter", "\n", "one character other than a quote or a line break"),
    ("delimiter", ";;", "one character"),
    ("dense_transform", "sqrt", "log1p or none"),
    ("dense_transform", None, "log1p or none"),
    ("dense", {"a": 1}, "must list column names"),
    ("dense", ["price", "price"], "names price more than once"),
    ("categorical", ["price", 3], "must list column names, got 3"),
    ("label", "price", "label column.*also listed as features"),
])
def test_schema_values_of_the_wrong_type_name_the_key(tmp_path, key, value, accepts):
    src = write(tmp_path, "t.csv", CSV)
    with pytest.raises(ConfigError, match=accepts) as caught:
        load_table_spec({**SCHEMA, key: value}, src)
    assert str(caught.value).startswith("table schema: ") and key in str(caught.value)
    # the valid neighbours still load
    spec = load_table_spec({**SCHEMA, "hash_buckets": 2**31 - 1, "header": True, "format": "CSV", "delimiter": ";",
                            "dense_transform": "None", "vocab_min_count": 3}, src)
    assert (spec.hash_buckets, spec.format, spec.delimiter, spec.dense_transform) == (2**31 - 1, "csv", ";", "none")


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe\x00binary", "is not UTF-8 text .byte 0xff at offset 0."),
    (b"label: click\ndense: [price]\n# caf\xe9\n", "is not UTF-8 text .byte 0xe9 at offset 33."),
    (b"- label\n- dense\n", "expected a mapping .*got a list"),
    (b"label: [click\n", "is not valid YAML"),
    (b"label: click\ndense: [price]\nhash_buckets: 1e30\n", "`hash_buckets` must be an integer .* got '1e30'"),
])
def test_schema_file_that_is_not_a_yaml_mapping(tmp_path, capsys, content, message):
    src = write(tmp_path, "t.csv", CSV)
    schema = tmp_path / "s.yaml"
    schema.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_table_spec(schema, src)
    from recstack.cli import main

    assert main(["data", "prepare", "table", "--input", str(src), "--schema", str(schema),
                 "--out", str(tmp_path / "ds"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(schema) in err[0]


def test_encode_rows_through_saved_vocab(tmp_path):
    src = write(tmp_path, "t.csv", CSV)
    prepare(src, SCHEMA, tmp_path / "ds")
    ds = Dataset(tmp_path / "ds")
    spec = load_table_spec(SCHEMA, src)
    vocabs = {name: ds.vocab(name) for name in spec.feature_names}
    records = [
        {"price": "3.5", "age": 20, "user id": "u1", "city": "paris"},
        {"price": "x", "age": 1, "user id": "u1", "city": "paris"},
        {"price": 1, "user id": "u1", "city": "paris"},
        {"price": 1, "age": None, "user id": "never seen", "city": ""},
    ]
    encoded = encode_table_rows(records, spec, vocabs=vocabs)
    assert encoded.kept.tolist() == [0, 3] and encoded.rejected.tolist() == [1, 2]
    assert encoded.reasons == ["non_numeric_dense", "missing_column"]
    np.testing.assert_array_equal(encoded.dense[0], ds.dense[0])
    assert encoded.ids["user_id"].tolist() == [ds.values["user_id"][0, 0], OOV_ID]
    assert encoded.ids["city"].tolist() == [ds.values["city"][0, 0], MISSING_ID]
    hashed = encode_table_rows(records, spec, hash_buckets=10)
    assert hashed.ids["city"].max() < 10


def test_iter_table_chunks_accounting(tmp_path):
    rows = "".join(f"{i % 2},{i if i % 5 else 'bad'},c{i % 7}\n" for i in range(1000))
    src = write(tmp_path, "t.csv", "y,x,c\n" + rows + "1,2\n")
    spec = load_table_spec({"label": "y", "dense": ["x"], "categorical": ["c"]}, src)
    chunks = list(iter_table_chunks(src, spec, batch_rows=128))
    kept = sum(len(c.lines) for c in chunks)
    rejected = sum(len(c.reject_lines) for c in chunks)
    assert kept + rejected == 1001 and rejected == 201
    lines = np.concatenate([c.lines for c in chunks])
    assert lines[:3].tolist() == [3, 4, 5] and np.all(np.diff(lines) > 0)  # line 2 holds "0,bad,c0"


def test_reason_names_are_stable():
    assert TABLE_REJECT_REASONS == (
        "wrong_field_count",
        "bad_label",
        "non_numeric_dense",
        "missing_column",
        "malformed_row",
        "truncated_gzip",
    )


def test_labels_other_than_0_and_1_are_rejected(tmp_path):
    src = write(tmp_path, "l.csv", "click,price,age,user id,city\n1,1,1,a,b\n2,1,1,a,b\n-1,1,1,a,b\n0.5,1,1,a,b\n0,1,1,a,b\n")
    report = prepare(src, SCHEMA, tmp_path / "ds")
    assert report["rows_kept"] == 2 and report["rejects_by_reason"]["bad_label"] == 3
    assert [e["line"] for e in report["reject_examples"]["bad_label"]] == [3, 4, 5]


def gzip_table(tmp_path, rows: int, damage) -> tuple[Path, str]:
    """A gzip CSV of `rows` numbered rows, damaged by `damage(compressed bytes) -> bytes`."""
    text = "click,price,age,user id,city\n" + "".join(f"{i % 2},{i},{i % 9},u{i % 13},c{i % 5}\n" for i in range(rows))
    path = tmp_path / "t.csv.gz"
    path.write_bytes(damage(gzip.compress(text.encode())))
    return path, text


@pytest.mark.parametrize("damage", [
    lambda z: z[: len(z) * 2 // 3],  # truncated
    lambda z: z[: len(z) // 2] + bytes(b ^ 0xFF for b in z[len(z) // 2 : len(z) // 2 + 64]) + z[len(z) // 2 + 64 :],
], ids=["truncated", "corrupt"])
def test_damaged_gzip_keeps_the_lines_before_the_damage(tmp_path, damage):
    path, text = gzip_table(tmp_path, 20_000, damage)
    report = prepare(path, SCHEMA, tmp_path / "ds")
    (note,) = report["notes"]
    assert "gzip stream ends early" in note and str(path) in note
    assert report["rows_read"] == report["rows_kept"] + report["rows_rejected"]
    assert report["rejects_by_reason"]["truncated_gzip"] <= 1 and 0 < report["rows_kept"] < 20_000
    ds = Dataset(tmp_path / "ds")
    prices = np.expm1(np.asarray(ds.dense[:, 0], np.float64)).round()
    # the rows before the damage, in order (corrupt deflate data may decode to garbage for a while before
    # zlib notices: those lines are rejected or kept like any other text, as by the Criteo reader)
    assert prices[:5000].tolist() == list(range(5000))
    assert ds.schema.info["rejects"]["notes"] == report["notes"]
    with pytest.raises(DataError, match="rejected|gzip stream ends early"):
        prepare(path, SCHEMA, tmp_path / "strict", strict=True)


def test_truncated_gzip_keeps_every_complete_line_and_rejects_the_partial_one(tmp_path):
    path, _ = gzip_table(tmp_path, 5000, lambda z: z[: len(z) * 2 // 3])
    report = prepare(path, SCHEMA, tmp_path / "ds")
    kept = report["rows_kept"]
    assert report["rows_read"] == kept + 1 and report["rejects_by_reason"]["truncated_gzip"] == 1
    assert report["reject_examples"]["truncated_gzip"][0]["line"] == kept + 2  # the line after the header and rows
    prices = np.expm1(np.asarray(Dataset(tmp_path / "ds").dense[:, 0], np.float64)).round()
    assert prices.tolist() == list(range(kept))


@pytest.mark.parametrize("content", [b"\x1f\x8b" + b"not really gzip" * 10, gzip.compress(b"a,b\n" * 1000)[:15]])
def test_gzip_broken_before_its_first_line_says_so(tmp_path, content):
    path = tmp_path / "t.csv.gz"
    path.write_bytes(content)
    with pytest.raises(DataError, match="gzip stream ends early, before its first line: .*; nothing could be read"):
        prepare(path, SCHEMA, tmp_path / "ds")


# --- random and keyed splits; preparing over an existing dataset ----------------------------------


def _rows_table(tmp_path: Path, n: int = 400) -> Path:
    rows = "".join(f"{i % 2},{i},u{i % 37},day{i % 7}\n" for i in range(n))
    return write(tmp_path, "r.csv", "click,x,user,day\n" + rows)


def test_seeded_random_split(tmp_path):
    src = _rows_table(tmp_path)
    schema = {"label": "click", "dense": ["x"], "categorical": ["user"], "dense_transform": "none"}
    report = prepare(src, schema, tmp_path / "a", split_random=0.2, seed=0)
    ds = Dataset(tmp_path / "a")
    (a, b), (c, d) = ds.split("train"), ds.split("test")
    assert a == 0 and b == c and d == 400 and 50 < d - c < 110  # about 20% of the rows
    x = ds.dense[:, 0].astype(int)
    assert sorted(x.tolist()) == list(range(400))  # every row once
    test = set(x[c:d].tolist())
    assert test != set(range(320, 400))  # not the tail
    assert list(x[:b]) == sorted(x[:b]) and list(x[c:d]) == sorted(x[c:d])  # each split keeps the file's order
    assert ds.schema.info["split"] == {"kind": "random", "fraction": 0.2, "seed": 0, "key": None}
    assert report["splits"] == {"train": [0, b], "test": [c, d]}
    # the same seed gives the same split, another seed another one
    prepare(src, schema, tmp_path / "b", split_random=0.2, seed=0)
    prepare(src, schema, tmp_path / "c", split_random=0.2, seed=1)
    same, other = Dataset(tmp_path / "b"), Dataset(tmp_path / "c")
    assert set(same.dense[slice(*same.split("test")), 0].astype(int).tolist()) == test
    assert set(other.dense[slice(*other.split("test")), 0].astype(int).tolist()) != test


def test_split_by_key_keeps_each_key_on_one_side(tmp_path):
    src = _rows_table(tmp_path)
    # the key need not be a feature: `day` is read only to split by
    schema = {"label": "click", "dense": ["x"], "categorical": ["user"], "dense_transform": "none"}
    prepare(src, schema, tmp_path / "ds", split_random=0.3, split_key="day", seed=0)
    ds = Dataset(tmp_path / "ds")
    assert ds.schema.sparse_names == ["user"] and ds.schema.info["split"]["key"] == "day"
    x = ds.dense[:, 0].astype(int)
    test_days = {i % 7 for i in x[slice(*ds.split("test"))].tolist()}
    train_days = {i % 7 for i in x[slice(*ds.split("train"))].tolist()}
    assert test_days and train_days and not test_days & train_days and test_days | train_days == set(range(7))


def test_split_options_are_checked(tmp_path):
    src = _rows_table(tmp_path)
    schema = {"label": "click", "dense": ["x"], "categorical": ["user"]}
    with pytest.raises(DataError, match="not both"):
        prepare(src, schema, tmp_path / "ds", split_random=0.2, split_tail=0.2)
    with pytest.raises(DataError, match="--split-key needs --split-random"):
        prepare(src, schema, tmp_path / "ds", split_key="day")
    with pytest.raises(DataError, match="has no column 'nope'"):
        prepare(src, schema, tmp_path / "ds", split_random=0.2, split_key="nope")
    with pytest.raises(DataError, match="leaves no test rows"):
        prepare(write(tmp_path, "one.csv", "click,x,user,day\n1,1,u,d\n0,2,u,d\n"), schema, tmp_path / "ds",
                split_random=0.01, split_key="day")


def test_cli_random_split_and_refusing_to_overwrite(tmp_path, capsys):
    from recstack.cli import main

    src = _rows_table(tmp_path)
    schema = write(tmp_path, "s.yaml", yaml.safe_dump({"label": "click", "dense": ["x"], "categorical": ["user"]}))
    argv = ["data", "prepare", "table", "--input", str(src), "--schema", str(schema), "--out", str(tmp_path / "ds"),
            "--split-random", "0.2", "--split-key", "user", "--seed", "3", "--quiet"]
    assert main(argv) == 0
    assert Dataset(tmp_path / "ds").schema.info["split"] == {"kind": "random", "fraction": 0.2, "seed": 3, "key": "user"}
    capsys.readouterr()
    assert main(argv) == 2  # a second run into the same directory is refused, not silently overwritten
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a dataset; give --overwrite" in err[0]
    assert main([*argv, "--overwrite"]) == 0


def test_a_model_of_a_table_scores_new_raw_files_of_its_schema(tmp_path, capsys):
    """evaluate --input and predict --input read any file of the table schema through the
    checkpoint's vocabularies: the held-out rows given as a raw file score exactly as prepared."""
    import json

    from recstack.cli import main

    rng = np.random.default_rng(0)
    n = 1200
    site, price = rng.integers(0, 30, n), rng.integers(0, 100, n)
    click = (rng.random(n) < np.where(site < 12, 0.7, 0.15)).astype(int)
    quoted = '"a,b"'  # a quoted field with the delimiter in it
    lines = [f"{c},{p if i % 9 else ''},s{s},{quoted if i % 5 == 0 else f'd{i % 4}'}"
             for i, (c, p, s) in enumerate(zip(click, price, site))]
    src = write(tmp_path, "t.csv", "click,price,site,device\n" + "\n".join(lines) + "\n")
    schema = write(tmp_path, "s.yaml", yaml.safe_dump({"label": "click", "dense": ["price"],
                                                      "categorical": ["site", "device"]}))
    data, ckpt = tmp_path / "ds", tmp_path / "ckpt"
    assert main(["data", "prepare", "table", "--input", str(src), "--schema", str(schema), "--out", str(data),
                 "--split-random", "0.25", "--quiet"]) == 0
    assert main(["train", "--data", str(data), "--checkpoint-dir", str(ckpt), "--model.preset", "tiny",
                 "--train.batch_size", "128", "--train.epochs", "1", "--quiet"]) == 0
    on_data = tmp_path / "on_data.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--report", str(on_data), "--quiet"]) == 0
    m = json.loads(on_data.read_text())["metrics"]

    # the test split's rows as a new raw file (in the dataset's order), plus one row that is rejected
    ds = Dataset(data)
    a, b = ds.split("test")
    held_out = held_out_rows(SimpleNamespace(lines=np.arange(n) + 2, split_keys=None), 0.25, 0)  # line i + 2: row i
    test_lines = [line for line, t in zip(lines, held_out) if t]
    assert len(test_lines) == b - a
    raw = write(tmp_path, "new.csv", "click,price,site,device\n" + "\n".join(test_lines) + "\nx,1,s1,d1\n")
    on_raw = tmp_path / "on_raw.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--input", str(raw), "--report", str(on_raw), "--quiet"]) == 0
    r = json.loads(on_raw.read_text())
    assert r["metrics"]["count"] == m["count"] == b - a and r["rows_rejected"] == 1
    assert r["metrics"]["auc"] == pytest.approx(m["auc"], abs=1e-6)
    assert r["metrics"]["logloss"] == pytest.approx(m["logloss"], abs=1e-5)

    # predict: one line per record, the label column optional, the rejected record as nan
    unlabeled = write(tmp_path, "u.csv", "site,device,price\ns1,d1,5\ns99,,\n")
    out = tmp_path / "scores.txt"
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(unlabeled), "--output", str(out), "--quiet"]) == 0
    scores = out.read_text().split()
    assert len(scores) == 2 and all(0 < float(v) < 1 for v in scores)
    out2 = tmp_path / "scores2.txt"
    assert main(["predict", "--checkpoint", str(ckpt), "--input", str(raw), "--output", str(out2), "--quiet"]) == 0
    predicted = out2.read_text().split()
    assert len(predicted) == b - a + 1 and predicted[-1] != "nan"  # predict does not judge the label

