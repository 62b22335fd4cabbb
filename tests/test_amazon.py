"""The DIN-format Amazon converter: the vectorized line parser against hand-made edge cases, a small
directory with every kind of reject (accounting that adds up, test rows doubled with the right labels,
categories joined, sequence offsets), the real sample against a plain csv reading, and the CLI."""

from __future__ import annotations

import ast
import csv
import json

import numpy as np
import pytest

from recstack.cli import main
from recstack.data.amazon import (
    AMAZON_REJECT_REASONS,
    LINE_REJECT_REASONS,
    iter_line_chunks,
    parse_file,
    parse_lines,
    prepare_amazon,
    word_code,
)
from recstack.data.store import OOV_ID, Dataset
from recstack.errors import DataError
from tests.conftest import shared_data


def test_parse_lines_follows_the_template():
    data = (b'1,"[2, 3]",4,1\r\n'  # quoted list, CRLF
            b"5,[],7,0\n"  # empty list
            b"\n"
            b"8,[9],x,1\n"  # a word where a number belongs
            b"8,[9],10\n"  # a field short
            b"-1,[2],3,1\n"  # '-' is no allowed character
            b"12345678901234567890,[1],2,1\n"
            b"8,[9,],10,1\n"  # a trailing comma in the list
            b"1,[2],3,1")  # no final newline
    p = parse_lines(data, "D,[L],D,D")
    assert p.fields.tolist() == [[1, 4, 1], [5, 7, 0], [1, 3, 1]]
    assert p.list_values.tolist() == [2, 3, 2] and p.list_lengths.tolist() == [2, 0, 1]
    assert p.lines.tolist() == [1, 2, 9]
    assert p.reject_lines.tolist() == [3, 4, 5, 6, 7, 8]
    assert [LINE_REJECT_REASONS[c] for c in p.reject_codes] == [
        "empty_line", "malformed_line", "malformed_line", "bad_character", "number_too_long", "malformed_line"]
    assert p.num_lines == 9
    words = parse_lines(b"1,pv,3\n2,cart,4\n", "D,W,D")
    assert words.fields[:, 1].tolist() == [word_code("pv"), word_code("cart")]
    pairs = parse_lines(b'3,"[4, 5]","(6, 7)"\n', "D,[L],(D,D)")
    assert pairs.fields.tolist() == [[3, 6, 7]] and pairs.list_values.tolist() == [4, 5]


CATEGORIES = [3, 1, 4, 1, 5, 0]  # item i -> category
TRAIN = [
    '7,"[0, 1, 2]",3,1',
    "7,[4],5,0",
    "8,[],2,1",
    "9,[1],99,1",  # unknown target item
    '9,"[1, 77]",2,0',  # unknown history item
    "9,[1],2,2",  # bad label
    "user,hist,item,label",  # a header
]
TEST = [
    '7,"[0, 5]","(1, 2)"',
    '10,[3],"(4, 0)"',
    '11,[3],"(4, 100)"',  # unknown negative
]


def write_din_dir(root, train=TRAIN, test=TEST, categories=CATEGORIES):
    root.mkdir()
    (root / "train_set_mini.csv").write_text("\n".join(train) + "\n")
    (root / "test_set_mini.csv").write_text("\n".join(test) + "\n")
    (root / "cate_list.csv").write_text("\n".join(map(str, categories)) + "\n")
    return root


def test_small_directory_converts_with_every_reject_counted(tmp_path):
    report = prepare_amazon(write_din_dir(tmp_path / "raw"), tmp_path / "out", show_progress=False)
    assert report["rows_read"] == 10 and report["rows_kept"] == 5 and report["rows_rejected"] == 5
    assert report["rows_read"] == report["rows_kept"] + report["rows_rejected"]
    assert set(report["rejects_by_reason"]) == set(AMAZON_REJECT_REASONS)
    assert {k: v for k, v in report["rejects_by_reason"].items() if v} == {
        "unknown_item": 3, "bad_label": 1, "malformed_line": 1}
    assert [e["line"] for e in report["reject_examples"]["unknown_item"]] == [4, 5, 3]

    ds = Dataset(tmp_path / "out")
    assert ds.schema.splits == {"train": [0, 3], "test": [3, 7]}
    # each test line is two rows: its positive (label 1), then its negative (label 0), same history
    assert ds.labels[:, 0].tolist() == [1, 0, 1, 1, 0, 1, 0]
    target = ds.values["target_item"][:, 0]
    assert target.tolist() == [3, 5, 2, 1, 2, 4, 0]
    cates = np.array(CATEGORIES)
    assert ds.values["target_cate"][:, 0].tolist() == cates[target].tolist()
    # sequences: offsets from the history lengths, values oldest first, categories joined per position
    assert np.diff(ds.offsets["hist_item"]).tolist() == [3, 1, 0, 2, 2, 1, 1]
    assert ds.offsets["hist_cate"].tolist() == ds.offsets["hist_item"].tolist()
    assert ds.values["hist_item"].tolist() == [0, 1, 2, 4, 0, 5, 0, 5, 3, 3]
    assert ds.values["hist_cate"].tolist() == cates[ds.values["hist_item"]].tolist()
    # users: a vocabulary over the train split; user 7 has two train rows, the others share OOV
    assert ds.vocab("user").tolist() == [7]
    assert ds.values["user"][:, 0].tolist() == [2, 2, OOV_ID, 2, 2, OOV_ID, OOV_ID]
    hist = ds.schema.feature("hist_item")
    assert hist.sequence and hist.table == "target_item" and ds.schema.feature("hist_cate").table == "target_cate"
    assert ds.schema.info["rows_rejected"] == 5


def test_strict_stops_at_the_first_bad_line(tmp_path):
    with pytest.raises(DataError, match="line 4: rejected .unknown_item."):
        prepare_amazon(write_din_dir(tmp_path / "raw"), tmp_path / "out", strict=True, show_progress=False)


def test_a_bad_category_line_stops_the_run(tmp_path):
    raw = write_din_dir(tmp_path / "raw", categories=["3", "x", "4"])
    with pytest.raises(DataError, match="cate_list.csv, line 2: malformed_line"):
        prepare_amazon(raw, tmp_path / "out", show_progress=False)


def test_a_category_id_beyond_int32_stops_the_run(tmp_path):
    raw = write_din_dir(tmp_path / "raw", categories=[3, 2**31 - 2, 2**31 - 1, 4])
    with pytest.raises(DataError, match=r"cate_list.csv, line 3: category id 2147483647 is over 2147483646"):
        prepare_amazon(raw, tmp_path / "out", show_progress=False)  # was stored wrapped around as int32


def test_real_sample_matches_a_plain_csv_reading(tmp_path):
    source = shared_data("amazon-electronics-din")
    report = prepare_amazon(source, tmp_path / "out", user_min_count=1, show_progress=False)
    assert report["rows_rejected"] == 0 and report["rows_written"] == 20_000
    cates = np.loadtxt(source / "cate_list.csv", dtype=np.int64)
    rows = []
    for user, hist, target, label in csv.reader(open(source / "train_set_mini.csv")):
        rows.append((int(user), ast.literal_eval(hist), int(target), int(label)))
    for user, hist, pair in csv.reader(open(source / "test_set_mini.csv")):
        positive, negative = ast.literal_eval(pair)
        rows += [(int(user), ast.literal_eval(hist), positive, 1), (int(user), ast.literal_eval(hist), negative, 0)]
    ds = Dataset(tmp_path / "out")
    assert ds.schema.splits == {"train": [0, 10_000], "test": [10_000, 20_000]}
    np.testing.assert_array_equal(ds.labels[:, 0], [r[3] for r in rows])
    np.testing.assert_array_equal(ds.values["target_item"][:, 0], [r[2] for r in rows])
    np.testing.assert_array_equal(ds.values["target_cate"][:, 0], cates[[r[2] for r in rows]])
    np.testing.assert_array_equal(np.diff(ds.offsets["hist_item"]), [len(r[1]) for r in rows])
    flat = [i for r in rows for i in r[1]]
    np.testing.assert_array_equal(ds.values["hist_item"], flat)
    np.testing.assert_array_equal(ds.values["hist_cate"], cates[flat])
    vocab = ds.vocab("user")
    np.testing.assert_array_equal(vocab[ds.values["user"][:10_000, 0] - 2], [r[0] for r in rows[:10_000]])


def test_cli_writes_the_report_and_fails_in_one_line(tmp_path, capsys):
    raw = write_din_dir(tmp_path / "raw")
    report_path = tmp_path / "report.json"
    assert main(["data", "prepare", "amazon", "--input", str(raw), "--out", str(tmp_path / "out"),
                 "--report", str(report_path), "--quiet"]) == 0
    report = json.loads(report_path.read_text())
    assert report["command"] == "data prepare amazon" and report["rows_rejected"] == 5
    assert main(["data", "prepare", "amazon", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a directory" in err[0]


def test_parse_lines_keeps_the_template_width_when_no_line_fits():
    for data in (b"", b"garbage\n", b"\n\n"):
        p = parse_lines(data, "D,[L],D,D")
        assert p.fields.shape == (0, 3) and p.list_lengths.size == 0
    assert parse_lines(b"x\n", "D,D,D,W,D").fields.shape == (0, 5)


@pytest.mark.parametrize("which", ["train", "test"])
@pytest.mark.parametrize("lines, why", [([], "the file is empty"), (["garbage", "1,2"], "none of its 2 line")])
def test_a_file_without_usable_rows_is_one_data_error(tmp_path, capsys, which, lines, why):
    files = {"train": TRAIN, "test": TEST, which: lines}
    raw = write_din_dir(tmp_path / "raw", train=files["train"], test=files["test"])
    (raw / f"{which}_set_mini.csv").write_text("".join(f"{line}\n" for line in lines))
    report_path = tmp_path / "report.json"
    assert main(["data", "prepare", "amazon", "--input", str(raw), "--out", str(tmp_path / "out"),
                 "--report", str(report_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no usable rows in {raw / f'{which}_set_mini.csv'}" in err[0] and why in err[0]
    report = json.loads(report_path.read_text())
    assert report["rows_read"] == report["rows_kept"] + report["rows_rejected"]
    assert report["rejects_by_reason"]["malformed_line"] >= (2 if lines else 0)
    assert not (tmp_path / "out" / "schema.json").exists()


def test_an_overlong_line_is_cut_and_rejected_with_memory_bounded(tmp_path):
    path = tmp_path / "lines.csv"
    long_line = b"1,[" + b"2," * 5000 + b"3],4,1"  # 10 kB: over a 1 kB limit
    path.write_bytes(b"1,[2],3,1\n" + long_line + b"\n5,[6],7,0\n" + b"x" * 5000)  # the last: no newline at all
    p = parse_file(path, "D,[L],D,D", chunk_bytes=700, max_line_bytes=1000)
    assert p.lines.tolist() == [1, 3] and p.fields.tolist() == [[1, 3, 1], [5, 7, 0]]
    assert p.reject_lines.tolist() == [2, 4]
    assert [LINE_REJECT_REASONS[c] for c in p.reject_codes] == ["line_too_long", "line_too_long"]
    assert parse_file(path, "D,[L],D,D", chunk_bytes=700).lines.tolist() == [1, 2, 3]  # under the default limit
    chunks = list(iter_line_chunks(path, chunk_bytes=700, max_line_bytes=1000))
    assert max(len(data) for data, _ in chunks) <= 700 + 1001  # a chunk and the head of a line, never more
    assert [first for _, first in chunks] == sorted(first for _, first in chunks)

