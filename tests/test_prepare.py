"""prepare_criteo: accounting, vocabulary over the train rows, hash mode, splits, strict, workers."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest

from recstack.data.criteo import CAT_NAMES, DENSE_NAMES, REJECT_REASONS, iter_criteo_chunks, parse_chunk
from recstack.data.prepare import DEFAULT_VOCAB_MIN_COUNT, SPILL_DIR, prepare_criteo
from recstack.data.store import FIRST_VOCAB_ID, MISSING_ID, OOV_ID, SCHEMA_FILE, Dataset
from recstack.errors import DataError
from tests.conftest import shared_data

REPORT_KEYS = {
    "rows_read", "rows_kept", "rows_rejected", "rejects_by_reason", "reject_examples", "bytes_read",
    "seconds", "mb_per_s", "out", "splits", "num_embeddings",
}  # fmt: skip


def row(label: int, dense: list[str] | None = None, cats: dict[int, str] | None = None) -> str:
    """A Criteo line: dense defaults to "1"s, categorical column j (0-based) to "" unless given."""
    dense = dense or ["1"] * 13
    cat = [""] * 26
    for j, v in (cats or {}).items():
        cat[j] = v
    return "\t".join([str(label), *dense, *cat]) + "\n"


def random_rows(seed: int, n: int, bad_every: int = 0) -> str:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        if bad_every and i % bad_every == bad_every - 1:
            lines.append(rng.choice(["oops\n", "2" + row(0)[1:], row(1).replace("\t1\t", "\tx\t", 1), "\x00\n"]))
            continue
        dense = [rng.choice(["", str(rng.randint(-2, 1000))]) for _ in range(13)]
        cats = {j: rng.choice(["", f"{rng.randint(0, 30):x}", f"{rng.getrandbits(32):08x}"]) for j in range(26)}
        lines.append(row(rng.randint(0, 1), dense, cats))
    return "".join(lines)


def prepare(inputs, out, **kw):
    kw.setdefault("show_progress", False)
    kw.setdefault("workers", 1)
    return prepare_criteo(inputs if isinstance(inputs, list) else [inputs], out, **kw)


def test_report_accounting_and_rejects(tmp_path):
    src = tmp_path / "in.tsv"
    text = random_rows(0, 500, bad_every=10) + row(1)[:50]  # ends with a truncated line
    src.write_text(text)
    report = prepare(src, tmp_path / "ds")
    assert REPORT_KEYS <= set(report)
    n_lines = text.count("\n") + 1
    assert report["rows_read"] == n_lines == report["rows_kept"] + report["rows_rejected"]
    assert report["rows_rejected"] == 51
    assert set(report["rejects_by_reason"]) == set(REJECT_REASONS)
    assert sum(report["rejects_by_reason"].values()) == report["rows_rejected"]
    assert report["rejects_by_reason"]["truncated_line"] == 1
    for reason, examples in report["reject_examples"].items():
        assert 1 <= len(examples) <= 5
        assert all(e["file"] == str(src) and e["reason"] == reason for e in examples)
        assert [e["line"] for e in examples] == sorted(e["line"] for e in examples)
    lines = text.split("\n")
    first_bad = report["reject_examples"]["wrong_field_count"][0]["line"]
    assert lines[first_bad - 1] == "oops"
    assert report["bytes_read"] == len(text.encode()) and report["mb_per_s"] > 0
    info = Dataset(tmp_path / "ds").schema.info
    assert info["rejects"]["rows_read"] == n_lines and info["mode"] == "vocab"
    assert info["source"]["files"] == [str(src)]


def test_kept_rows_round_trip(tmp_path):
    src = tmp_path / "in.tsv"
    text = random_rows(1, 800, bad_every=7)
    src.write_text(text)
    prepare(src, tmp_path / "ds", vocab_min_count=1)
    ds = Dataset(tmp_path / "ds")
    parsed = parse_chunk(text.encode())
    assert len(ds) == parsed.num_kept
    assert ds.schema.dense_names == DENSE_NAMES and ds.schema.sparse_names == CAT_NAMES
    assert ds.schema.label_names == ["label"]
    np.testing.assert_array_equal(ds.dense, parsed.dense)
    np.testing.assert_array_equal(ds.labels[:, 0], parsed.labels)
    for j, name in enumerate(CAT_NAMES):
        ids = np.asarray(ds.values[name][:, 0])
        vocab = ds.vocab(name)
        assert ds.schema.feature(name).num_embeddings == FIRST_VOCAB_ID + len(vocab)
        np.testing.assert_array_equal(ids == MISSING_ID, parsed.missing[:, j])
        present = ids >= FIRST_VOCAB_ID
        assert present.sum() == (~parsed.missing[:, j]).sum()  # min count 1: every key is in the vocab
        np.testing.assert_array_equal(vocab[ids[present] - FIRST_VOCAB_ID], parsed.cat[present, j])


def test_vocabulary_min_count_oov_and_missing(tmp_path):
    src = tmp_path / "in.tsv"
    rows = [row(1, cats={0: "aa"})] * 5 + [row(0, cats={0: "bb"})] * 2 + [row(0, cats={0: "cc"})] * 3 + [row(1)] * 2
    src.write_text("".join(rows))
    report = prepare(src, tmp_path / "ds", vocab_min_count=3)
    ds = Dataset(tmp_path / "ds")
    assert ds.vocab("C1").tolist() == [0xAA, 0xCC]
    assert report["num_embeddings"]["C1"] == FIRST_VOCAB_ID + 2
    ids = ds.values["C1"][:, 0].tolist()
    assert ids == [2] * 5 + [OOV_ID] * 2 + [3] * 3 + [MISSING_ID] * 2
    assert ds.vocab("C2").size == 0 and report["num_embeddings"]["C2"] == FIRST_VOCAB_ID  # always missing
    assert set(ds.values["C2"][:, 0].tolist()) == {MISSING_ID}


def test_vocabulary_counts_train_rows_only(tmp_path):
    src = tmp_path / "in.tsv"
    # "aa" is frequent only in the tail, "bb" only in the head; "cc" straddles the boundary
    rows = (
        [row(0, cats={0: "bb"})] * 6
        + [row(0, cats={0: "cc"})] * 2
        + [row(0, cats={0: "cc"})] * 2
        + [row(1, cats={0: "aa"})] * 10
    )
    src.write_text("".join(rows))
    report = prepare(src, tmp_path / "ds", vocab_min_count=3, split_tail=0.6)
    assert report["splits"] == {"train": [0, 8], "test": [8, 20]}
    ds = Dataset(tmp_path / "ds")
    assert ds.vocab("C1").tolist() == [0xBB]  # "cc" has only 2 train rows, "aa" none
    ids = ds.values["C1"][:, 0].tolist()
    assert ids[:6] == [FIRST_VOCAB_ID] * 6 and set(ids[6:]) == {OOV_ID}
    assert ds.split("test") == (8, 20)


def test_split_tail_rounding(tmp_path):
    src = tmp_path / "in.tsv"
    src.write_text(random_rows(2, 101))
    report = prepare(src, tmp_path / "ds", split_tail=0.15)
    assert report["splits"] == {"train": [0, 86], "test": [86, 101]}
    assert "test" not in prepare(src, tmp_path / "ds2")["splits"]
    for bad in (1.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(DataError, match=r"--split-tail must be in \[0, 1\), got"):
            prepare(src, tmp_path / "ds3", split_tail=bad)
    with pytest.raises(DataError, match="--split-tail 0.999 leaves no training rows out of 101"):
        prepare(src, tmp_path / "ds3", split_tail=0.999)
    with pytest.raises(DataError, match="--split-tail 0.001 of 101 rows gives no test rows; use at least 0.00990099"):
        prepare(src, tmp_path / "ds3", split_tail=0.001)  # an empty test split, silently, before
    assert not (tmp_path / "ds3").exists()


def test_hash_mode(tmp_path):
    src = tmp_path / "in.tsv"
    text = random_rows(3, 400)
    src.write_text(text)
    report = prepare(src, tmp_path / "ds", hash_buckets=1000)
    ds = Dataset(tmp_path / "ds")
    assert report["mode"] == "hash" and report["hash_buckets"] == 1000
    assert report["num_embeddings"] == {name: 1000 for name in CAT_NAMES}
    assert not (tmp_path / "ds" / "vocab").exists() and ds.schema.vocab == {}
    parsed = parse_chunk(text.encode())
    for j, name in enumerate(CAT_NAMES):
        ids = np.asarray(ds.values[name][:, 0])
        assert ids.min() >= MISSING_ID and ids.max() < 1000
        np.testing.assert_array_equal(ids == MISSING_ID, parsed.missing[:, j])
        for key in np.unique(parsed.cat[~parsed.missing[:, j], j])[:5]:  # one id per key
            assert len(set(ids[(parsed.cat[:, j] == key) & ~parsed.missing[:, j]].tolist())) == 1
    assert ds.schema.info["hash_buckets"] == 1000
    for bad in (2, 2**31, 10**30, 3.7):  # 2**31 rows of a hashed table would not fit one machine at training
        with pytest.raises(DataError, match=r"--hash-buckets must be an integer in \[3, 2147483647\]"):
            prepare(src, tmp_path / "bad", hash_buckets=bad)
    with pytest.raises(DataError, match="--vocab-min-count must be an integer >= 1"):
        prepare(src, tmp_path / "bad", vocab_min_count=0)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_strict_mode_fails_on_first_reject(tmp_path, workers):
    src = tmp_path / "in.tsv"
    src.write_text(random_rows(8, 2000) + "2" + row(0)[1:] + "garbage\n" + random_rows(9, 2000))
    out = tmp_path / "ds"
    with pytest.raises(DataError) as info:
        prepare(src, out, strict=True, workers=workers, chunk_bytes=30_000)
    message = str(info.value)
    assert str(src) in message and "line 2001" in message and "bad_label" in message
    assert "\n" not in message
    assert not out.exists()  # nothing that looks like a dataset, no temp files


def test_strict_failure_unpublishes_an_old_dataset(tmp_path):
    src, out = tmp_path / "in.tsv", tmp_path / "ds"
    src.write_text(row(1) * 3)
    prepare(src, out, hash_buckets=100)
    assert (out / SCHEMA_FILE).exists()
    src.write_text(row(1) * 3 + "bad\n")
    with pytest.raises(DataError):
        prepare(src, out, strict=True)
    assert not (out / SCHEMA_FILE).exists() and not (out / SPILL_DIR).exists()
    with pytest.raises(DataError, match="schema.json"):
        Dataset(out)


def test_strict_mode_passes_clean_input(tmp_path):
    src = tmp_path / "in.tsv"
    src.write_text(random_rows(4, 50))
    assert prepare(src, tmp_path / "ds", strict=True)["rows_rejected"] == 0


def test_workers_give_byte_identical_output(tmp_path):
    src = tmp_path / "in.tsv"
    src.write_text(random_rows(5, 3000, bad_every=13))
    for mode in ({}, {"hash_buckets": 997}):
        one = prepare(src, tmp_path / "w1", workers=1, chunk_bytes=20_000, split_tail=0.2, **mode)
        two = prepare(src, tmp_path / "w2", workers=2, chunk_bytes=20_000, split_tail=0.2, **mode)
        varying = ("seconds", "seconds_pass", "mb_per_s", "out")
        assert {k: v for k, v in one.items() if k not in varying} == {k: v for k, v in two.items() if k not in varying}
        files = sorted(p.relative_to(tmp_path / "w1") for p in (tmp_path / "w1").rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(tmp_path / "w2") for p in (tmp_path / "w2").rglob("*") if p.is_file())
        for rel in files:
            assert (tmp_path / "w1" / rel).read_bytes() == (tmp_path / "w2" / rel).read_bytes(), rel


def test_multiple_inputs_in_order_and_gzip(tmp_path):
    a, b = tmp_path / "day0.tsv", tmp_path / "day1.tsv.gz"
    a.write_text(row(0, cats={0: "a"}) * 3)
    b.write_bytes(gzip.compress((row(1, cats={0: "b"}) * 2 + "bad\n").encode()))
    report = prepare([a, b], tmp_path / "ds", vocab_min_count=1)
    assert report["rows_read"] == 6 and report["rows_kept"] == 5
    assert report["reject_examples"]["wrong_field_count"] == [
        {"file": str(b), "line": 3, "reason": "wrong_field_count"}
    ]
    assert report["input_bytes"] == a.stat().st_size + b.stat().st_size
    ds = Dataset(tmp_path / "ds")
    assert ds.labels[:, 0].tolist() == [0, 0, 0, 1, 1]


def test_truncated_gzip_is_counted_and_noted(tmp_path):
    src = tmp_path / "cut.tsv.gz"
    text = random_rows(6, 3000).encode()
    compressed = gzip.compress(text)
    src.write_bytes(compressed[: len(compressed) * 2 // 3])
    report = prepare(src, tmp_path / "ds")
    assert report["rejects_by_reason"]["truncated_gzip"] == 1
    assert report["rows_read"] == report["rows_kept"] + 1
    assert len(report["notes"]) == 1 and "gzip" in report["notes"][0]
    assert Dataset(tmp_path / "ds").schema.info["rejects"]["notes"] == report["notes"]
    with pytest.raises(DataError, match="gzip"):
        prepare(src, tmp_path / "strict", strict=True)


def test_input_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare(tmp_path / "missing.tsv", tmp_path / "ds")
    with pytest.raises(DataError, match="no input files"):
        prepare_criteo([], tmp_path / "ds")
    with pytest.raises(DataError, match="not a regular file"):
        prepare(tmp_path, tmp_path / "ds")
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"no usable rows in .*empty.tsv \(the input holds no rows\)"):
        prepare(empty, tmp_path / "ds")
    not_gzip = tmp_path / "bad.tsv.gz"
    not_gzip.write_bytes(b"\x1f\x8b" + b"not gzip" * 20)
    with pytest.raises(DataError, match="no usable rows .*starts like gzip .bytes 1f 8b. but has no valid gzip header"):
        prepare(not_gzip, tmp_path / "ds")
    for workers in (0, 10**6):  # a million forked parsers would exhaust the machine
        with pytest.raises(DataError, match=r"--workers must be in \[1, \d+\] \(4 per CPU"):
            prepare(empty, tmp_path / "ds", workers=workers)
    junk = tmp_path / "junk.tsv"
    junk.write_text("a\tb\nc\n")
    with pytest.raises(DataError, match="no usable rows.*wrong_field_count"):
        prepare(junk, tmp_path / "ds")
    unlabeled = tmp_path / "test.txt"
    unlabeled.write_text(row(1)[2:] * 3)
    with pytest.raises(DataError, match="no label"):
        prepare(unlabeled, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_unreadable_input(tmp_path):
    import os

    src = tmp_path / "secret.tsv"
    src.write_text(row(1))
    src.chmod(0)
    if os.access(src, os.R_OK):
        pytest.skip("running as a user who can read anything (root)")
    with pytest.raises(DataError, match="not readable"):
        prepare(src, tmp_path / "ds")


def test_temp_files_are_removed(tmp_path):
    src = tmp_path / "in.tsv"
    src.write_text(random_rows(7, 100))
    prepare(src, tmp_path / "ds", workers=2)
    assert not (tmp_path / "ds" / SPILL_DIR).exists()
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == [
        "dense.bin",
        "labels.bin",
        "schema.json",
        "sparse",
        "vocab",
    ]


def test_default_min_count(tmp_path):
    src = tmp_path / "in.tsv"
    src.write_text(
        row(1, cats={0: "a"}) * DEFAULT_VOCAB_MIN_COUNT + row(1, cats={0: "b"}) * (DEFAULT_VOCAB_MIN_COUNT - 1)
    )
    prepare(src, tmp_path / "ds")
    assert Dataset(tmp_path / "ds").vocab("C1").tolist() == [0xA]


def test_real_sample(tmp_path):
    src = shared_data("criteo", "train_sample.tsv")
    report = prepare(src, tmp_path / "ds", split_tail=0.15, workers=2, chunk_bytes=1 << 20)
    assert report["rows_read"] == 12_108 and report["rows_kept"] == 12_108 and report["rows_rejected"] == 0
    assert report["splits"] == {"train": [0, 10_292], "test": [10_292, 12_108]}
    assert report["bytes_read"] == src.stat().st_size
    ds = Dataset(tmp_path / "ds")
    assert 0.2 < float(np.mean(ds.labels)) < 0.26
    json.dumps(report)  # the report is plain JSON
    # the vocabulary saw only train rows: every test-only key is OOV
    chunks = list(iter_criteo_chunks([src]))
    raw = np.concatenate([c.cat for c in chunks])
    train_keys = set(raw[:10_292, 2].tolist())
    test_ids = np.asarray(ds.values["C3"][10_292:, 0])
    unseen = np.array([k not in train_keys for k in raw[10_292:, 2].tolist()])
    assert unseen.any() and set(test_ids[unseen].tolist()) <= {OOV_ID, MISSING_ID}
