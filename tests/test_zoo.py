"""The zoo as a whole: every preset builds from the same context and trains through the one trainer
loop; table grouping; `recstack models` sizes and classes against the published configurations."""

from __future__ import annotations

import json

import pytest
import torch

from recstack.analyze.zoo_report import characterize
from recstack.cli import main
from recstack.config import Config
from recstack.data.store import Dataset, SparseFeature
from recstack.data.synth import generate, get_preset
from recstack.models.base import DataLayout, ModelContext
from recstack.models.zoo import PRESETS, ZOO, apply_preset, build_model, describe
from recstack.train.trainer import Trainer


def test_tables_group_features_by_table_once_each():
    layout = DataLayout([], ["label"], [
        SparseFeature("user", 10),
        SparseFeature("item", 50),
        SparseFeature("hist_item", 50, None, table="item", sequence=True),
        SparseFeature("cate", 7),
        SparseFeature("hist_cate", 7, None, table="cate", sequence=True),
    ])
    ctx = ModelContext(Config().model, layout)
    tables = {t.name: t for t in ctx.tables(4)}
    assert list(tables) == ["user", "item", "cate"]
    assert tables["item"].feature_names == ["item"] and tables["item"].sequence_names == ["hist_item"]
    assert tables["user"].feature_names == ["user"] and tables["user"].sequence_names == []
    assert [t.name for t in ctx.tables(4, sequences=False)] == ["user", "item", "cate"]
    assert all(not t.sequence_names for t in ctx.tables(4, sequences=False))
    assert layout.target_of("hist_cate") == "cate"
    collection = ctx.embeddings(ctx.tables(4))
    assert collection.feature_names == ["user", "item", "cate"]
    assert collection.sequence_names == ["hist_item", "hist_cate"]


def _config(preset: str, **model) -> Config:
    config = Config()
    apply_preset(config, preset)
    for key, value in model.items():
        setattr(config.model, key, value)
    return config


@pytest.mark.parametrize("preset", ZOO)
def test_every_preset_trains_through_the_one_trainer(preset, tmp_path):
    """Tiny tables, a few hundred rows: the loss of the trainer's own loop falls, and the test metrics
    come out for every task."""
    config = _config(preset)
    config.train.batch_size, config.train.max_steps, config.train.log_every = 64, 60, 20
    config.train.lr, config.train.threads = 3e-3, 1
    config.data.shuffle = False
    scale = 2000 / max(get_preset(config.data.synth_preset).rows)  # the largest table gets 2000 rows
    generate(config.data.synth_preset, 4096, tmp_path / "data", scale=scale, test_fraction=0.25, seed=1)
    dataset = Dataset(tmp_path / "data")
    torch.manual_seed(0)
    model = build_model(config, dataset.schema)
    trainer = Trainer(config, dataset, model, run_dir=tmp_path / "run")
    trainer.fit()
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "metrics.jsonl") if '"train"' in line]
    assert losses[-1] < losses[0], losses
    test = trainer.final_metrics()["test"]
    assert 0.0 <= test["auc"] <= 1.0
    if len(dataset.schema.label_names) > 1:
        assert set(test["tasks"]) == set(dataset.schema.label_names)


def test_published_sizes_and_classes():
    """DeepRecSys (ANCHORS.md 1.1): RMC1 and RMC2 4.10 GB of fp32 tables, RMC3 2.56 GB; RMC1/2 are
    embedding-dominated and RMC3 MLP-dominated (Gupta et al. HPCA 2020)."""
    reports = {p: characterize(p) for p in ("rmc1", "rmc2", "rmc3")}
    assert reports["rmc1"]["embedding_bytes"] == 8 * 4_000_000 * 32 * 4
    assert reports["rmc2"]["embedding_bytes"] == 32 * 500_000 * 64 * 4
    assert reports["rmc3"]["embedding_bytes"] == 10 * 2_000_000 * 32 * 4
    assert reports["rmc1"]["embedding_bytes_per_sample"] == 8 * 80 * 32 * 4
    assert reports["rmc2"]["embedding_bytes_per_sample"] == 32 * 120 * 64 * 4
    assert reports["rmc1"]["class"] == reports["rmc2"]["class"] == "embedding-dominated"
    assert reports["rmc3"]["class"] == "mlp-dominated"
    # cat interaction: FLOPs are the two MLPs' 2 x fan_in x fan_out
    rmc1 = 2 * (128 * 64 + 64 * 32 + 288 * 256 + 256 * 64 + 64 * 1)
    assert reports["rmc1"]["flops_per_sample"] == pytest.approx(rmc1, rel=0.02)


def test_counted_flops_match_an_analytic_dlrm_count():
    config = _config("criteo-kaggle")
    model_report = characterize("criteo-kaggle")
    from recstack.analyze.zoo_report import _layouts, sample_batch
    from recstack.models.zoo import builder

    _, synth, _, small = _layouts("criteo-kaggle")
    model = builder("dlrm")(ModelContext(config.model, small))
    batch = sample_batch(synth, small)
    # the counter sees the full 27 x 27 Gram matrix the bmm computes, the analytic count only the 351 pairs kept
    gram = 2 * 27 * 27 * 16
    expected = model.bottom.flops_per_sample() + model.top.flops_per_sample() + gram
    assert model.measured_flops_per_sample(batch) == expected
    assert model_report["flops_per_sample"] == expected
    assert model.flops_by_family(batch)["interaction"] == gram
    assert describe(model, batch)["embedding_bytes_per_sample"] == 26 * 16 * 4


def test_models_command_report(tmp_path):
    assert main(["models", "rmc1", "criteo-kaggle", "--report", str(tmp_path / "m.json"), "--quiet"]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert [m["name"] for m in report["models"]] == ["rmc1", "criteo-kaggle"]
    for m in report["models"]:
        assert {"name", "params", "embedding_bytes", "flops_per_sample", "embedding_bytes_per_sample", "class"} <= set(m)
    assert main(["models", "no-such-model"]) == 2
    assert set(ZOO) <= set(PRESETS)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["rmc1", "rmc2", "rmc3", "ncf", "wnd", "mtwnd", "din", "dien", "dcn-v2", "deepfm"])
def test_published_size_presets_train_on_a_24_gib_machine(preset, tmp_path):
    """Every DeepRecSys preset at its production size (up to 4.1 GB of fp32 tables) builds and takes
    training steps on synthetic data, within the memory of a 24 GiB machine."""
    import resource
    import subprocess
    import sys

    report = tmp_path / "r.json"
    code = (
        "import resource, sys; from recstack.cli import main; rc = main(sys.argv[1:]); "
        "print('peak_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "train", "--model.preset", preset, "--data.synth_rows", "8192",
         "--train.max_steps", "8", "--train.batch_size", "256", "--report", str(report), "--quiet"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    del resource
    peak_gib = int(proc.stdout.split("peak_kib")[-1]) / 2**20
    result = json.loads(report.read_text())
    assert result["model"]["embedding_bytes"] >= 0.08e9  # NCF's 86 MB is the smallest
    assert result["throughput"]["steps"] == 8
    assert peak_gib < 20, f"{preset} peaked at {peak_gib:.1f} GiB"


def test_build_model_refuses_what_cannot_fit_before_allocating(monkeypatch, tmp_path):
    """The model is sized on the meta device first: the floor counts exactly the tables, their
    optimizer state and the dense parameters the real build allocates, and a model above the memory
    available is refused with one line instead of an allocator traceback or the OOM killer."""
    from recstack import memory
    from recstack.memory import CapacityError
    from recstack.models.zoo import training_bytes

    config = _config("tiny")
    config.train.sparse_optimizer = "rowwise_adagrad"
    generate(config.data.synth_preset, 256, tmp_path / "data", seed=1)
    schema = Dataset(tmp_path / "data").schema
    model = build_model(config, schema)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    dense = sum(p.numel() * p.element_size() for p in model.parameters())
    assert any("optimizer_state" in name for name, _ in model.named_buffers())
    assert training_bytes(model) == buffers + 4 * dense
    monkeypatch.setattr(memory, "available_memory", lambda: training_bytes(model) - 1)
    with pytest.raises(CapacityError, match=r"model dlrm \(preset tiny, scale 1\) needs .* of memory, but .* is "
                                            r"available \(lower --model.scale"):
        build_model(config, schema)
    monkeypatch.setattr(memory, "available_memory", lambda: training_bytes(model))
    build_model(config, schema)
