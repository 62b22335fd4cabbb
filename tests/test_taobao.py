"""The Taobao UserBehavior converter: targets are each user's next click, histories strictly earlier
and capped, negatives other items of the catalogue with their own categories, each user's last target
in test, rejects counted; and the same checks over the real sample against a plain reading."""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict

import pytest

from recstack.cli import main
from recstack.data.store import FIRST_VOCAB_ID, Dataset
from recstack.data.taobao import prepare_taobao
from tests.conftest import shared_data

LINES = [
    "1,10,100,pv,5",
    "1,11,101,pv,3",
    "1,12,100,buy,4",  # not a click
    "1,10,100,pv,9",
    "1,13,102,pv,7",
    "2,14,103,pv,2",
    "2,11,101,pv,2",  # same time as the line before: file order decides
    "3,15,104,pv,1",  # a single click: no target
    "4,16,105,click,1",  # unknown behaviour
    "4,16,105",  # a field short
]


def decoded(ds: Dataset) -> list[dict]:
    """Rows with raw item ids and categories, via the vocabularies."""
    items, cates = ds.vocab("target_item"), ds.vocab("target_cate")
    out = []
    for r in range(len(ds)):
        a, b = ds.offsets["hist_item"][r : r + 2]
        out.append({
            "item": int(items[ds.values["target_item"][r, 0] - FIRST_VOCAB_ID]),
            "cate": int(cates[ds.values["target_cate"][r, 0] - FIRST_VOCAB_ID]),
            "hist": items[ds.values["hist_item"][a:b] - FIRST_VOCAB_ID].tolist(),
            "hist_cate": cates[ds.values["hist_cate"][a:b] - FIRST_VOCAB_ID].tolist(),
            "label": int(ds.labels[r, 0]),
        })
    return out


def test_targets_are_next_clicks_with_earlier_history(tmp_path):
    raw = tmp_path / "ub.csv"
    raw.write_text("\n".join(LINES) + "\n")
    report = prepare_taobao(raw, tmp_path / "out", max_history=2, negatives=2, show_progress=False)
    assert report["rows_read"] == 10 and report["rows_rejected"] == 2
    assert report["rows_read"] == report["rows_kept"] + report["rows_rejected"]
    assert {k: v for k, v in report["rejects_by_reason"].items() if v} == {"unknown_behavior": 1, "malformed_line": 1}
    assert report["behaviors"] == {"pv": 7, "buy": 1, "cart": 0, "fav": 0}
    assert report["targets"] == {"train": 2, "test": 2}

    ds = Dataset(tmp_path / "out")
    rows = decoded(ds)
    assert ds.schema.splits == {"train": [0, 6], "test": [6, 12]}
    positives = [(r["item"], r["hist"]) for r in rows if r["label"] == 1]
    # user 1 clicks 11 (t3), 10 (t5), 13 (t7), 10 (t9); user 2 clicks 14 then 11 (both t2, file order)
    assert positives == [(10, [11]), (13, [11, 10]),  # train, by target time
                         (10, [10, 13]), (11, [14])]  # test: each user's last target, history capped at 2
    category = {10: 100, 11: 101, 13: 102, 14: 103, 15: 104}
    catalogue = set(category)
    for k in range(0, len(rows), 3):  # a positive, then its two negatives
        positive, negatives = rows[k], rows[k + 1 : k + 3]
        assert positive["label"] == 1 and [n["label"] for n in negatives] == [0, 0]
        for r in (positive, *negatives):
            assert r["cate"] == category[r["item"]] and r["hist_cate"] == [category[i] for i in r["hist"]]
        for n in negatives:
            assert n["item"] != positive["item"] and n["item"] in catalogue and n["hist"] == positive["hist"]


def test_real_sample_against_a_plain_reading(tmp_path):
    source = shared_data("taobao", "user_behavior_sample.csv")
    report = prepare_taobao(source, tmp_path / "out", max_history=50, show_progress=False)
    assert report["rows_rejected"] == 0
    clicks = defaultdict(list)
    for position, (user, item, _, behavior, time) in enumerate(csv.reader(open(source))):
        if behavior == "pv":
            clicks[user].append((int(time), position, int(item)))
    expected_train, expected_test = [], []
    for sequence in clicks.values():
        items = [item for _, _, item in sorted(sequence)]
        for t in range(1, len(items)):
            sample = (items[t], tuple(items[max(0, t - 50) : t]))
            (expected_test if t == len(items) - 1 else expected_train).append(sample)
    ds = Dataset(tmp_path / "out")
    rows = decoded(ds)
    split = ds.schema.splits["train"][1]
    positives = [(r["item"], tuple(r["hist"])) for r in rows if r["label"] == 1]
    train = [(r["item"], tuple(r["hist"])) for r in rows[:split] if r["label"] == 1]
    assert sorted(train) == sorted(expected_train)
    assert sorted(positives[len(train):]) == sorted(expected_test)
    assert len(expected_test) == sum(len(s) >= 2 for s in clicks.values())
    labels = ds.labels[:, 0]
    assert labels[0::2].tolist() == [1] * (len(ds) // 2) and labels[1::2].tolist() == [0] * (len(ds) // 2)
    target = ds.values["target_item"][:, 0]
    assert (target[0::2] != target[1::2]).all(), "a negative is never its positive"
    assert all(rows[k]["hist"] == rows[k + 1]["hist"] for k in range(0, len(rows), 2))


@pytest.mark.parametrize("lines, why", [
    ([], "no usable rows in .*the file is empty"),
    (["a,b,c", "xx", "1,2,3,pv"], "no usable rows in .*none of its 3 line.* 3 malformed_line"),
    (["1,10,100,cart,1", "2,11,100,buy,2"], "no clicks"),
    (["1,10,100,pv,1", "1,11,100,pv,2", "2,11,100,pv,2", "2,12,100,pv,3"],
     r"no training samples .*at least 3 clicks \(the most here: 2\)"),
])
def test_input_without_training_samples_is_one_data_error(tmp_path, capsys, lines, why):
    raw = tmp_path / "ub.csv"
    raw.write_text("".join(f"{line}\n" for line in lines))
    report_path = tmp_path / "report.json"
    assert main(["data", "prepare", "taobao", "--input", str(raw), "--out", str(tmp_path / "out"),
                 "--report", str(report_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert re.search(why, err[0]), err[0]
    report = json.loads(report_path.read_text())
    assert report["rows_read"] == len(lines) == report["rows_kept"] + report["rows_rejected"]
    assert not (tmp_path / "out" / "schema.json").exists()


@pytest.mark.parametrize("option, value, message", [
    ("--seed", "-1", "argument --seed: expected a seed in [0, 4294967295], got -1"),
    ("--negatives", "0", "argument --negatives: expected a positive integer, got 0"),
    ("--max-history", "-2", "argument --max-history: expected a positive integer"),
    ("--user-min-count", "1.5", "argument --user-min-count: expected a positive integer, got '1.5'"),
    ("--negatives", "1000000000",
     "4 click targets x (1 + --negatives 1000000000) = 4,000,000,004 rows, over the limit"),
])
def test_options_out_of_range_are_refused(tmp_path, capsys, option, value, message):
    raw = tmp_path / "ub.csv"
    raw.write_text("\n".join(LINES) + "\n")
    try:
        code = main(["data", "prepare", "taobao", "--input", str(raw), "--out", str(tmp_path / "out"), "--quiet",
                     option, value])
    except SystemExit as exc:  # refused by argparse
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and "error" in err[-1]
    assert not (tmp_path / "out").exists()


def test_a_history_cap_beyond_every_sequence_is_no_cap(tmp_path):
    raw = tmp_path / "ub.csv"
    raw.write_text("\n".join(LINES) + "\n")
    uncapped = prepare_taobao(raw, tmp_path / "a", max_history=10**30, seed=1, show_progress=False)
    capped = prepare_taobao(raw, tmp_path / "b", max_history=50, seed=1, show_progress=False)
    assert uncapped["rows_written"] == capped["rows_written"]
    assert decoded(Dataset(tmp_path / "a")) == decoded(Dataset(tmp_path / "b"))


def test_the_server_maps_raw_ids_as_the_file_wrote_them(tmp_path):
    """Raw user, item and category ids of the file, histories included (they read the target's table
    and so its vocabulary), become the ids prepare wrote: not hashes of their text, nor the OOV id."""
    from recstack.serve.api import RankRequest, RequestEncoder, RequestError

    raw = tmp_path / "ub.csv"
    raw.write_text("\n".join(LINES) + "\n")
    prepare_taobao(raw, tmp_path / "out", max_history=2, negatives=2, show_progress=False)
    ds = Dataset(tmp_path / "out")
    encoder = RequestEncoder(ds.schema, {name: ds.vocab(name) for name in ds.schema.vocab})
    row = decoded(ds)[3]
    a, b = ds.offsets["hist_item"][3:5]
    body = {"shared": {"user": 1, "hist_item": [str(i) for i in row["hist"]], "hist_cate": row["hist_cate"]},
            "candidates": {"target_item": [row["item"], "999"], "target_cate": [str(row["cate"]), None]}}
    sparse = encoder.encode(RankRequest(**body)).sparse.to_dict()
    # shared: the history repeats for each of the two candidates
    assert sparse["hist_item"][0].tolist() == ds.values["hist_item"][a:b].tolist() * 2
    assert sparse["hist_cate"][0].tolist() == ds.values["hist_cate"][a:b].tolist() * 2
    assert sparse["target_item"][0].tolist() == [int(ds.values["target_item"][3, 0]), 0]  # unseen: OOV
    assert sparse["target_cate"][0].tolist() == [int(ds.values["target_cate"][3, 0]), 1]  # null: missing
    assert sparse["user"][0].tolist() == [int(ds.values["user"][3, 0])] * 2
    with pytest.raises(RequestError, match="not an id of the source file"):
        encoder.encode(RankRequest(**{**body, "shared": {**body["shared"], "user": "u1"}}))
