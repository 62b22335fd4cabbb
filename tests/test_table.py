"""prepare_table: CSV / TSV / Parquet tables described by a YAML schema."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from recstack.data.store import FIRST_VOCAB_ID, MISSING_ID, OOV_ID, SCHEMA_FILE, Dataset
from recstack.data.table import (
    TABLE_REJECT_REASONS,
    encode_table_rows,
    hash_keys,
    iter_table_chunks,
    load_table_spec,
    prepare_table,
)
from recstack.errors import DataError

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
    with pytest.raises(DataError, match="unknown key"):
        prepare(src, {**SCHEMA, "categoricals": ["city"]}, tmp_path / "ds")
    with pytest.raises(DataError, match="no `label`"):
        prepare(src, {"dense": ["price"]}, tmp_path / "ds")
    with pytest.raises(DataError, match="indices"):
        prepare(src, {"header": False, "label": "click", "dense": ["price"]}, tmp_path / "ds")
    with pytest.raises(DataError, match="format"):
        prepare(write(tmp_path, "t.dat", CSV), SCHEMA, tmp_path / "ds")
    with pytest.raises(DataError, match="does not exist"):
        prepare(src, tmp_path / "missing.yaml", tmp_path / "ds")
    with pytest.raises(DataError, match="out of range"):
        prepare(src, {"header": False, "label": 0, "dense": [9]}, tmp_path / "ds")
    with pytest.raises(DataError, match="no usable rows"):
        prepare(write(tmp_path, "h.csv", "click,price,age,user id,city\n"), SCHEMA, tmp_path / "ds")
    assert not (tmp_path / "ds" / SCHEMA_FILE).exists()


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
    )


def test_labels_other_than_0_and_1_are_rejected(tmp_path):
    src = write(tmp_path, "l.csv", "click,price,age,user id,city\n1,1,1,a,b\n2,1,1,a,b\n-1,1,1,a,b\n0.5,1,1,a,b\n0,1,1,a,b\n")
    report = prepare(src, SCHEMA, tmp_path / "ds")
    assert report["rows_kept"] == 2 and report["rejects_by_reason"]["bad_label"] == 3
    assert [e["line"] for e in report["reject_examples"]["bad_label"]] == [3, 4, 5]
