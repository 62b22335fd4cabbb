"""The sharding planner (recstack.embeddings.planner) and `recstack plan`: the byte formulas on
hand-worked cases, memory limits, the fits-nowhere refusal, plan round trips, the command's report."""

from __future__ import annotations

import json

import pytest

from recstack.cli import main
from recstack.data.store import Dataset
from recstack.data.synth import generate
from recstack.embeddings.base import SparseOptimizerConfig, TableConfig
from recstack.embeddings.planner import Machine, plan_tables, predict, storage_per_rank
from recstack.embeddings.sharding import (
    COLUMN_WISE,
    DATA_PARALLEL,
    ROW_WISE,
    TABLE_WISE,
    ShardingPlan,
    TableSharding,
)
from recstack.errors import ConfigError
from recstack.memory import format_bytes

ADAGRAD = SparseOptimizerConfig("rowwise_adagrad")
B, W, D = 8, 2, 4  # the hand-worked cases: a global batch of 8 on 2 ranks, 4-wide tables


def _plan(table: TableConfig, sharding: str, owner: int = 0) -> ShardingPlan:
    ranks = (owner,) if sharding == TABLE_WISE else tuple(range(W))
    return ShardingPlan(W, {table.name: TableSharding(sharding, ranks)})


def _predict(table: TableConfig, sharding: str, pooling=None, seqs=None, **kw):
    return predict(_plan(table, sharding), [table], pooling or {}, B, ADAGRAD, sequence_lengths=seqs or {}, **kw)


# --- the byte formulas, worked by hand (W = 2, B = 8, B_r = 4, D = 4, L = 2 ids a bag) ---------------


def test_table_wise_bytes_by_hand():
    p = _predict(TableConfig("t", 10, D), TABLE_WISE, {"t": 2.0})
    # counts 2*1*16; ids 8*1/2*2*8; lengths 8*1/2*4; output 8*1/2*4*4; gradient the same
    assert p.all_to_all_by_kind == {"input_counts": 32, "input_ids": 64, "input_lengths": 16, "input_weights": 0,
                                    "output": 64, "output_grad": 64}
    assert p.all_to_all_bytes_per_step == 240
    # the owner sends outputs (and its counts); rank 1 its ids, lengths, output gradients and counts
    assert p.per_rank_all_to_all_bytes == [64 + 16, 64 + 16 + 64 + 16]
    # 10 rows x (4 + 1 row-wise Adagrad float) x 4 bytes, all on the owner (plus nothing reserved)
    assert p.per_rank_bytes == [200, 0]
    assert p.per_rank_lookup_bytes == [8 * 2 * D * 4, 0]
    assert p.all_gather_bytes_per_step == 0


def test_row_wise_bytes_by_hand():
    p = _predict(TableConfig("t", 11, D), ROW_WISE, {"t": 2.0})
    # ids 8*2*1/2*8; lengths 1*8*4 (every shard gets every bag); output 1*8*4*4; gradient the same
    assert p.all_to_all_by_kind == {"input_counts": 32, "input_ids": 64, "input_lengths": 32, "input_weights": 0,
                                    "output": 128, "output_grad": 128}
    assert p.all_to_all_bytes_per_step == 384
    assert p.per_rank_bytes == [6 * 20, 5 * 20]  # torch.chunk's rows: 6 and 5
    mean = _predict(TableConfig("t", 11, D, pooling="mean"), ROW_WISE, {"t": 2.0})
    assert mean.all_to_all_by_kind["input_weights"] == 8 * 2 * 4 // 2  # per-id weights of the ids sent away
    assert mean.all_to_all_bytes_per_step == 384 + 32


def test_column_wise_bytes_by_hand():
    p = _predict(TableConfig("t", 10, D), COLUMN_WISE, {"t": 2.0})
    # ids 1*8*2*8 (every rank gets every id); lengths 1*8*4; output 1/2*8*4*4; gradient the same
    assert p.all_to_all_by_kind == {"input_counts": 32, "input_ids": 128, "input_lengths": 32, "input_weights": 0,
                                    "output": 64, "output_grad": 64}
    assert p.all_to_all_bytes_per_step == 320
    assert p.per_rank_bytes == [10 * (2 + 1) * 4] * 2  # half the columns and a row-wise Adagrad float each
    assert p.all_reduce_bytes_per_step == W * 8 * 2 * 4  # the squared-gradient sums of the touched rows


def test_data_parallel_bytes_by_hand():
    p = _predict(TableConfig("t", 10, D), DATA_PARALLEL, {"t": 2.0})
    assert p.all_to_all_bytes_per_step == 0
    assert p.per_rank_bytes == [200, 200]
    # each rank sends each other 8 + U (8 + 4*4) bytes, U = B_r * L = 8 ids: 2 ranks * 1 peer * 200
    assert p.all_gather_bytes_per_step == 2 * 1 * (8 + 8 * (8 + D * 4))


def test_sequence_bytes_by_hand():
    seq = TableConfig("t", 10, D, sequence_names=["h"])  # S = 3 kept ids a sample, no pooled feature
    tw = _predict(seq, TABLE_WISE, seqs={"h": 3.0})
    # one exchange (sequences only): counts 32; ids 8*1/2*3*8; lengths 8*1/2*3*4; output and gradient 8*1/2*3*4*4
    assert tw.all_to_all_by_kind == {"input_counts": 32, "input_ids": 96, "input_lengths": 48, "input_weights": 0,
                                     "output": 192, "output_grad": 192}
    rw = _predict(seq, ROW_WISE, seqs={"h": 3.0})
    # ids 8*3*1/2*8; lengths 1*8*3*4; output and gradient 8*3*1/2*4*4 (one vector per id, from its owner)
    assert rw.all_to_all_by_kind == {"input_counts": 32, "input_ids": 96, "input_lengths": 96, "input_weights": 0,
                                     "output": 192, "output_grad": 192}
    cw = _predict(seq, COLUMN_WISE, seqs={"h": 3.0})
    # ids 1*8*3*8; lengths 1*8*3*4; output and gradient 1/2*8*3*4*4
    assert cw.all_to_all_by_kind == {"input_counts": 32, "input_ids": 192, "input_lengths": 96, "input_weights": 0,
                                     "output": 192, "output_grad": 192}
    both = _predict(TableConfig("t", 10, D, feature_names=["t"], sequence_names=["h"]), TABLE_WISE,
                    {"t": 2.0}, {"h": 3.0})
    assert both.all_to_all_by_kind["input_counts"] == 2 * 32  # a pooled and a sequence exchange
    assert both.all_to_all_bytes_per_step == 240 + 560


def test_weighted_batches_send_weights_for_every_pooled_block():
    plain = _predict(TableConfig("t", 10, D), TABLE_WISE, {"t": 2.0})
    weighted = _predict(TableConfig("t", 10, D), TABLE_WISE, {"t": 2.0}, weighted_batch=True)
    assert weighted.all_to_all_by_kind["input_weights"] == 32  # the 8 ids sent to the owner x 4 bytes
    assert weighted.all_to_all_bytes_per_step == plain.all_to_all_bytes_per_step + 32


def test_one_rank_sends_nothing():
    p = predict(ShardingPlan(1, {"t": TableSharding(TABLE_WISE, (0,))}), [TableConfig("t", 10, D)], {"t": 2.0}, B)
    assert p.all_to_all_bytes_per_step == 0 and p.per_rank_bytes == [200]


# --- the search ----------------------------------------------------------------------------------------


def _model_tables() -> tuple[list[TableConfig], dict[str, float]]:
    tables = [TableConfig("big", 40_000, 8), TableConfig("mid", 5_000, 8), TableConfig("small", 300, 8),
              TableConfig("bag", 2_000, 8, pooling="mean")]
    return tables, {"big": 1.0, "mid": 2.0, "small": 1.0, "bag": 4.0}


SLOW_LINKS = Machine(intra_node_bytes_per_s=1e6, inter_node_bytes_per_s=1e6)
"""Exchanges so dear that the unconstrained plan keeps whole tables on ranks."""


def _check_plan(plan: ShardingPlan, prediction, tables, limit=None) -> None:
    plan.check(tables)
    held = sum(storage_per_rank(t, plan.of(t.name), plan.world_size, ADAGRAD) for t in tables)
    assert prediction.per_rank_bytes == [int(x) for x in held]
    if limit is not None:
        assert max(prediction.per_rank_bytes) <= limit


@pytest.mark.parametrize("world_size", [2, 4])
def test_plans_never_exceed_the_memory_limit(world_size):
    tables, pooling = _model_tables()
    full = {t.name: t.num_embeddings * (t.embedding_dim + 1) * 4 for t in tables}
    total = sum(full.values())
    fitted = 0
    for limit in [None, total, total // 2, full["big"] + 1000, full["big"] // world_size + full["mid"],
                  total // world_size + 20_000, total // world_size + 2_000]:
        try:
            plan, p = plan_tables(tables, pooling, 512, world_size, ADAGRAD, limit, SLOW_LINKS)
        except ConfigError as exc:
            assert limit is not None and "fits on no rank" in str(exc)
            continue
        fitted += 1
        _check_plan(plan, p, tables, limit)
    assert fitted >= 5


def test_a_tight_limit_forces_row_wise_for_the_largest_table():
    tables, pooling = _model_tables()
    plan, _ = plan_tables(tables, pooling, 512, 2, ADAGRAD, None, SLOW_LINKS, dp_max_bytes=0)
    assert plan.of("big").sharding != ROW_WISE  # unconstrained, with dear links: whole, or split by columns
    # a row-wise half of big (20,000 x (8 + 1) x 4) and a share of the others fit; the whole table does not,
    # nor a column-wise half (40,000 x (4 + 1) x 4: each half keeps every row's row-wise Adagrad float)
    limit = 20_000 * 9 * 4 + 150_000
    plan, p = plan_tables(tables, pooling, 512, 2, ADAGRAD, limit, SLOW_LINKS, dp_max_bytes=0)
    assert plan.of("big").sharding == ROW_WISE
    _check_plan(plan, p, tables, limit)


def test_a_model_that_fits_nowhere_is_one_line_naming_the_table_and_the_shortfall():
    tables, pooling = _model_tables()
    limit = 100_000
    with pytest.raises(ConfigError) as caught:
        plan_tables(tables, pooling, 512, 2, ADAGRAD, limit)
    message = str(caught.value)
    assert "\n" not in message and "table big " in message
    smallest = 20_000 * (8 + 1) * 4  # row-wise: 20,000 rows a rank (a column-wise half is 40,000 x (4 + 1) x 4)
    assert f"{format_bytes(smallest - limit)} short" in message


def test_dense_layers_are_reserved_on_every_rank():
    tables, pooling = _model_tables()
    plan, p = plan_tables(tables, pooling, 512, 2, ADAGRAD, None, reserved_bytes=1000)
    assert p.reserved_bytes == 1000
    held = sum(storage_per_rank(t, plan.of(t.name), 2, ADAGRAD) for t in tables)
    assert p.per_rank_bytes == [int(x) + 1000 for x in held]


def test_data_parallel_only_for_small_tables():
    tables, pooling = _model_tables()
    fast = Machine(intra_node_bytes_per_s=1e15, inter_node_bytes_per_s=1e15, latency_s=0.0)
    for limit in (0, 2000, 1 << 20):
        plan, _ = plan_tables(tables, pooling, 512, 2, ADAGRAD, None, fast, dp_max_bytes=limit)
        for t in tables:
            if plan.of(t.name).sharding == DATA_PARALLEL:
                assert t.num_embeddings * 9 * 4 <= limit


def test_the_plan_round_trips_and_passes_check():
    tables, pooling = _model_tables()
    for world_size in (1, 2, 4):
        plan, p = plan_tables(tables, pooling, 512, world_size, ADAGRAD)
        again = ShardingPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
        assert again == plan
        again.check(tables)
        assert [t.name for t in p.tables] == [t.name for t in tables]
        assert {t.name: (t.sharding, tuple(t.ranks)) for t in p.tables} == {
            n: (s.sharding, s.ranks) for n, s in plan.tables.items()}
        # the prediction of a given plan is the planner's own
        assert predict(again, tables, pooling, 512, ADAGRAD).all_to_all_bytes_per_step == p.all_to_all_bytes_per_step


def test_tables_sharing_a_name_across_collections_get_one_sharding():
    deep = [TableConfig("C1", 1000, 8), TableConfig("C2", 500, 8)]
    wide = [TableConfig("C1", 1000, 1), TableConfig("C2", 500, 1)]
    plan, p = plan_tables([deep, wide], {"C1": 1.0, "C2": 1.0}, 64, 2, ADAGRAD, None, SLOW_LINKS, dp_max_bytes=0)
    assert set(plan.tables) == {"C1", "C2"}
    assert all(s.sharding != COLUMN_WISE for s in plan.tables.values())  # the wide tables' width 1 does not split
    one = predict(ShardingPlan(2, {"C1": TableSharding(ROW_WISE, (0, 1)), "C2": TableSharding(ROW_WISE, (0, 1))}),
                  [deep, wide], {"C1": 1.0, "C2": 1.0}, 64, ADAGRAD)
    assert one.all_to_all_by_kind["input_counts"] == 2 * 32  # one exchange per collection


# --- the command ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Dataset:
    path = tmp_path_factory.mktemp("plan") / "tiny"
    generate("tiny", 2048, path, seed=0, show_progress=False, workers=1)
    return Dataset(path)


def test_pooling_factors_are_measured_from_the_data(tiny):
    from recstack.train.plan_command import measure_pooling

    pooled, kept = measure_pooling(tiny, max_sequence_length=2, sample_rows=512)
    assert pooled["C1"] == 1.0 and pooled["C3"] == 3.0  # fixed bags of 1 and 3
    assert 1.0 < pooled["C4"] < 3.0  # uniform 0..4
    assert kept["C3"] == 2.0 and kept["C1"] == 1.0  # capped at the sequence length


def test_plan_command_report(tiny, tmp_path, capsys):
    report = tmp_path / "plan.json"
    code = main(["plan", "--model.preset", "tiny", "--world-size", "2", "--data", str(tiny.path), "--report",
                 str(report), "--dp-max-bytes", "1KiB", "--batch-size", "256"])
    assert code == 0
    out = capsys.readouterr().out
    assert "sharding plan" in out and "C2" in out
    r = json.loads(report.read_text())
    assert r["world_size"] == 2
    assert [t["name"] for t in r["tables"]] == ["C1", "C2", "C3", "C4", "C5"]
    assert all({"name", "sharding", "ranks"} <= set(t) for t in r["tables"])
    assert len(r["per_rank_bytes"]) == 2
    assert isinstance(r["predicted"]["all_to_all_bytes_per_step"], int)
    assert r["predicted"]["all_to_all_bytes_per_step"] > 0  # 1 KiB replicas at most: some tables are exchanged
    assert r["config"]["model"]["preset"] == "tiny"
    ShardingPlan.from_dict(r).check([TableConfig(t["name"], 1, 8) for t in r["tables"]])


def test_plan_command_memory_limit_and_refusal(tiny, tmp_path, capsys):
    report = tmp_path / "plan.json"
    args = ["plan", "--model.preset", "tiny", "--world-size", "2", "--data", str(tiny.path), "--quiet"]
    assert main([*args, "--memory-per-rank", "200KiB", "--report", str(report)]) == 0
    assert max(json.loads(report.read_text())["per_rank_bytes"]) <= 200 * 1024
    capsys.readouterr()
    assert main([*args, "--memory-per-rank", "12KiB"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: table ") and "\n" not in err and "short" in err


def test_plan_for_is_what_the_trainer_calls(tiny):
    from recstack.config import resolve
    from recstack.train.plan_command import plan_for

    config = resolve(None, {"model.preset": "tiny", "data.path": str(tiny.path)})
    plan, prediction = plan_for(config, tiny, 2, memory_per_rank=1 << 20)
    assert plan.world_size == 2 and set(plan.tables) == {"C1", "C2", "C3", "C4", "C5"}
    assert max(prediction.per_rank_bytes) <= 1 << 20
    assert prediction.batch_size == config.train.batch_size


def test_at_scale_table_is_labelled_as_modelled():
    from recstack.train.plan_command import at_scale

    text, rows = at_scale(gpus=(8,))
    assert text.startswith("Modelled, not measured")
    assert "| 8 | 1 |" in text
    assert rows[0]["all_to_all_bytes_per_step"] > 0 and rows[0]["step_ms"] > 0
