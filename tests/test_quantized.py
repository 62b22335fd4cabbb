"""Row-wise int8/int4 tables (recstack/embeddings/quantized.py) and `recstack export`.

The conformance suite (tests/test_collections.py) runs both kinds through the interface; here: the
scheme's own checks (every element within half a quantization step, requantizing is exact, int4's
packing), the bytes against fp32, a dense-trained DLRM served from int8/int4 tables, and the export
artifact that evaluate, predict and serve load like a checkpoint, with its bad input.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from recstack.cli import main
from recstack.data.batch import JaggedFeatures
from recstack.embeddings.base import TableConfig, TableState
from recstack.embeddings.dense import DenseEmbeddingCollection
from recstack.embeddings.quantized import (
    QuantizedEmbeddingCollection,
    dequantize_rows,
    pack,
    quantize_rows,
    unpack,
)
from tests.conftest import shared_data


def awkward_rows(dim: int, seed: int = 0) -> torch.Tensor:
    """Rows of many magnitudes and shapes: symmetric, one-signed, narrow, constant, zero, with outliers."""
    g = torch.Generator().manual_seed(seed)
    magnitude = 10 ** (torch.rand(200, 1, generator=g, dtype=torch.float64) * 5 - 4)  # 1e-4 .. 10
    rows = [(torch.rand(200, dim, generator=g, dtype=torch.float64) - 0.5) * magnitude,
            torch.rand(50, dim, generator=g, dtype=torch.float64) * 0.01 + 0.6,  # one sign, narrow
            -torch.rand(50, dim, generator=g, dtype=torch.float64) - 3.0,
            torch.full((3, dim), 0.1, dtype=torch.float64), torch.zeros(3, dim, dtype=torch.float64),
            torch.full((3, dim), -2.5, dtype=torch.float64)]
    outliers = torch.randn(20, dim, generator=g, dtype=torch.float64) * 0.01
    outliers[:, 0] = 5.0
    return torch.cat(rows + [outliers])


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.float32], ids=["fp16-scale", "fp32-scale"])
@pytest.mark.parametrize("bits,dim", [(8, 16), (8, 5), (4, 16), (4, 64)])
def test_every_element_reads_back_within_half_a_quantization_step(bits, dim, scale_dtype):
    """The spec's check: |dequantize(quantize(x)) - x| <= scale / 2 per element (plus float32
    rounding of code * scale + bias), with a scale no coarser than the row's range needs."""
    x = awkward_rows(dim)
    codes, scale, bias = quantize_rows(x, bits, scale_dtype)
    assert codes.dtype == torch.uint8 and codes.shape == (x.shape[0], dim * bits // 8)
    assert scale.dtype == bias.dtype == scale_dtype
    y = dequantize_rows(codes, scale, bias, bits)
    assert y.dtype == torch.float32
    step = scale.double().unsqueeze(1)
    float32_rounding = 3e-7 * x.abs().amax(1, keepdim=True)
    error = (y.double() - x).abs()
    assert bool((error <= step / 2 + float32_rounding).all()), float((error - step / 2).max())
    levels = (1 << bits) - 1
    needed = (x.amax(1) - x.amin(1)) / levels
    resolution = 2**-9 if scale_dtype == torch.float16 else 2**-22  # bias rounded down, scale rounded, one raise
    subnormal = 2 * 2**-24 if scale_dtype == torch.float16 else 0.0
    assert bool((scale.double() <= needed * (1 + resolution) + 2 * bias.double().abs() * resolution / levels
                 + subnormal + 1e-12).all())
    constant = (x.amax(1) == x.amin(1)) & (x[:, 0].to(scale_dtype).double() == x[:, 0])
    assert constant.sum() >= 6 and torch.equal(y[constant].double(), x[constant])  # zeros and -2.5 are exact


@pytest.mark.parametrize("bits", [8, 4])
def test_requantizing_rows_read_back_gives_the_same_rows(bits):
    """What makes the logical state round-trip (load_table_state(table_state()) changes nothing), also
    for rows of 1e-5..1e-3 whose float16 scales are subnormal and one-signed narrow rows."""
    g = torch.Generator().manual_seed(1)
    x = torch.cat([(torch.rand(4000, 32, generator=g) - 0.5) * 10 ** (torch.rand(4000, 1, generator=g) * 6 - 5),
                   torch.rand(1000, 32, generator=g) * 0.01 + 0.6, awkward_rows(32).float()])
    first = quantize_rows(x, bits)
    again = quantize_rows(dequantize_rows(*first, bits), bits)
    assert torch.equal(dequantize_rows(*again, bits), dequantize_rows(*first, bits))


def test_int4_packs_element_2i_in_the_low_nibble():
    x = torch.arange(16, dtype=torch.float32).unsqueeze(0)  # range 15: codes 0..15, scale 1, bias 0
    codes, scale, bias = quantize_rows(x, 4)
    assert float(scale) == 1.0 and float(bias) == 0.0
    assert codes.tolist() == [[0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]]
    assert torch.equal(unpack(codes, 4), torch.arange(16, dtype=torch.uint8).unsqueeze(0))
    assert torch.equal(pack(unpack(codes, 4), 4), codes)
    assert torch.equal(dequantize_rows(codes, scale, bias, 4), x)


def test_int4_with_an_odd_dimension_is_refused_in_one_line():
    with pytest.raises(ValueError, match="even") as refused:
        QuantizedEmbeddingCollection([TableConfig("t", 10, 7)], bits=4)
    assert "\n" not in str(refused.value) and "7" in str(refused.value)
    QuantizedEmbeddingCollection([TableConfig("t", 10, 7)], bits=8)  # int8 takes any dimension


def test_rows_that_cannot_be_quantized_are_refused_in_one_line():
    collection = QuantizedEmbeddingCollection([TableConfig("t", 2, 4)], bits=8)
    for bad in (torch.tensor([[0.0, float("nan"), 1, 2], [0, 1, 2, 3]]), torch.tensor([[0.0, 1e8, 1, 2], [0, 1, 2, 3]])):
        with pytest.raises(ValueError) as refused:
            collection.load_table_state("t", TableState(bad, torch.zeros(2, 1)))
        assert "\n" not in str(refused.value)


# --- bytes -------------------------------------------------------------------------------------------


def sizes(dim: int, rows: int = 1000) -> tuple[int, int, int]:
    tables = [TableConfig("a", rows, dim), TableConfig("b", rows // 2, dim)]
    return (DenseEmbeddingCollection(tables).embedding_bytes(),
            QuantizedEmbeddingCollection(tables, 8).embedding_bytes(),
            QuantizedEmbeddingCollection(tables, 4).embedding_bytes())


@pytest.mark.parametrize("dim", [32, 64, 128])
def test_tables_are_3_5x_smaller_in_int8_and_6x_in_int4_from_dimension_32(dim):
    fp32, int8, int4 = sizes(dim)
    assert int8 == 1500 * (dim + 4) and int4 == 1500 * (dim // 2 + 4)  # codes, float16 scale and bias
    assert fp32 / int8 >= 3.5 and fp32 / int4 >= 6.0


def test_at_dimension_16_the_scale_and_bias_cost_what_they_cost():
    """4 bytes of scale and bias per row: int8 is 3.2x and int4 5.3x smaller than fp32 at D = 16
    (3.5x needs D >= 28, 6x needs D >= 24)."""
    fp32, int8, int4 = sizes(16)
    assert fp32 / int8 == pytest.approx(64 / 20) and fp32 / int4 == pytest.approx(64 / 12)


def test_memory_bytes_are_the_codes_scales_biases_and_optimizer_state():
    collection = QuantizedEmbeddingCollection([TableConfig("a", 100, 16)], bits=4)
    assert collection.codes.shape == (100, 8) and collection.scale.dtype == torch.float16
    assert collection.memory_bytes() >= collection.embedding_bytes() + collection.optimizer_bytes()
    meta = QuantizedEmbeddingCollection([TableConfig("a", 100, 16)], bits=4, device="meta")
    assert meta.memory_bytes() == collection.memory_bytes()  # sized on "meta" without filling


# --- in a model --------------------------------------------------------------------------------------


def test_codes_keep_their_dtypes_when_the_model_converts_or_shares_memory():
    collection = QuantizedEmbeddingCollection([TableConfig("a", 10, 4), TableConfig("b", 6, 4)], bits=8)
    model = nn.ModuleDict({"embeddings": collection, "mlp": nn.Linear(4, 1)})
    features = JaggedFeatures(["a", "b"], torch.tensor([1, 2, 3, 5]), torch.tensor([1, 2, 0, 1]), 2)
    before = collection(features)
    model.double()
    assert collection(features).dtype == torch.float64 and model["mlp"].weight.dtype == torch.float64
    assert collection.codes.dtype == torch.uint8 and collection.scale.dtype == torch.float16
    model.float()
    torch.testing.assert_close(collection(features), before, rtol=0, atol=0)
    model.share_memory()  # a forking server's children map the same codes
    assert collection.codes.is_shared() and collection.codes.dtype == torch.uint8


@pytest.mark.parametrize("kind,atol", [("int8", 2e-3), ("int4", 3e-2)])
def test_a_dense_trained_dlrm_serves_from_quantized_tables(tmp_path, kind, atol):
    """`embeddings.kind int8|int4`: build_model(inference=True) builds DLRM over quantized tables, a
    dense model's state dict loads into it, and it scores within a small tolerance of the dense model."""
    from recstack.config import Config
    from recstack.data.loader import BatchLoader
    from recstack.data.store import Dataset
    from recstack.data.synth import generate
    from recstack.models.zoo import apply_preset, build_model

    config = Config()
    apply_preset(config, "tiny")
    config.train.sparse_optimizer = "adagrad"
    generate(config.data.synth_preset, 512, tmp_path / "data", seed=1)
    dataset = Dataset(tmp_path / "data")
    batch = next(iter(BatchLoader(dataset, (0, 512), 512, shuffle=False, prefetch=0).epoch(0)))
    torch.manual_seed(0)
    dense = build_model(config, dataset.schema)
    for _ in range(5):
        loss, _ = dense.training_loss(batch)
        loss.backward()
        dense.apply_gradients(0.1)
        dense.zero_grad()

    config.embeddings.kind = kind
    served = build_model(config, dataset.schema, inference=True)
    assert isinstance(served.embeddings, QuantizedEmbeddingCollection) and served.embeddings.kind == kind
    served.load_state_dict(dense.state_dict())
    dense.eval(), served.eval()
    with torch.no_grad():
        want, got = torch.sigmoid(dense(batch)), torch.sigmoid(served(batch))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=atol)
    assert not torch.equal(got, want)  # the rows really are quantized
    assert served.embeddings.embedding_bytes() < dense.embeddings.embedding_bytes() / 2
    for name, value in dense.state_dict().items():  # the training state is kept as loaded
        if name.endswith("optimizer_state"):
            assert torch.equal(served.state_dict()[name], value), name


# --- recstack export -----------------------------------------------------------------------------------


def cli(*args: str) -> int:
    try:
        return main(list(args))
    except SystemExit as exc:
        return int(exc.code)


@pytest.fixture(scope="module")
def criteo_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny DLRM trained for one epoch on the Criteo sample (vocabularies, so raw input scores)."""
    root = tmp_path_factory.mktemp("criteo")
    assert cli("data", "prepare", "criteo", "--input", str(shared_data("criteo", "train_sample.tsv")), "--out",
               str(root / "data"), "--split-tail", "0.15", "--quiet") == 0
    assert cli("train", "--data", str(root / "data"), "--checkpoint-dir", str(root / "ckpt"), "--model.preset", "tiny",
               "--train.batch_size", "512", "--train.epochs", "1", "--quiet") == 0
    return root / "data", root / "ckpt"


def test_export_int8_loads_like_a_checkpoint_in_evaluate_and_predict(criteo_checkpoint, tmp_path):
    from recstack import checkpoint
    from recstack.serve.scoring import ScoringModel

    data, ckpt = criteo_checkpoint
    out, report_path = tmp_path / "int8", tmp_path / "export.json"
    assert cli("export", "--checkpoint", str(ckpt), "--out", str(out), "--quantize", "int8", "--data", str(data),
               "--report", str(report_path), "--quiet") == 0
    report = json.loads(report_path.read_text())
    rows = sum(t.num_embeddings for t in ScoringModel(ckpt).model.embeddings.tables)
    assert report["bytes_before"] == rows * 8 * 4 and report["bytes_after"] == rows * (8 + 4)  # tiny: D = 8
    assert abs(report["metrics"]["auc"] - report["source_metrics"]["auc"]) < 2e-3
    [artifact] = list(out.iterdir())
    assert artifact.name.startswith("ckpt-") and report["artifact"] == str(artifact)

    payload = checkpoint.load(out, require=checkpoint.SCORING)  # the directory resolves to the artifact
    assert payload["config"]["embeddings"]["kind"] == "int8" and "dense_optimizer" not in payload
    _, _, model = checkpoint.rebuild_model(payload)  # what evaluate, predict and serve call
    assert isinstance(model.embeddings, QuantizedEmbeddingCollection) and model.embeddings.bits == 8
    served = ScoringModel(out)
    source = ScoringModel(ckpt)
    for t in source.model.embeddings.tables:  # the artifact's rows are the int8 codes of the checkpoint's
        codes, scale, bias = quantize_rows(source.model.embeddings.table_state(t.name).weight, 8)
        span = served.model.embeddings._span(t.name)
        assert torch.equal(served.model.embeddings.codes[span], codes), t.name
        assert torch.equal(served.model.embeddings.scale[span], scale) and torch.equal(served.model.embeddings.bias[span], bias)

    evaluated = tmp_path / "evaluate.json"
    assert cli("evaluate", "--checkpoint", str(out), "--data", str(data), "--report", str(evaluated), "--quiet") == 0
    assert json.loads(evaluated.read_text())["metrics"]["auc"] == pytest.approx(report["metrics"]["auc"], abs=1e-12)
    raw = shared_data("criteo", "test_unlabeled_sample.tsv")
    assert cli("predict", "--checkpoint", str(out), "--input", str(raw), "--output", str(tmp_path / "q.txt"), "--quiet") == 0
    assert cli("predict", "--checkpoint", str(ckpt), "--input", str(raw), "--output", str(tmp_path / "p.txt"), "--quiet") == 0
    quantized = torch.tensor([float(v) for v in (tmp_path / "q.txt").read_text().split()])
    plain = torch.tensor([float(v) for v in (tmp_path / "p.txt").read_text().split()])
    assert quantized.numel() == plain.numel() == 10000
    torch.testing.assert_close(quantized, plain, rtol=0, atol=5e-3)


@pytest.mark.parametrize("quantize,ratio", [("int4", 4 * 8 / (4 + 4)), ("fp16", 2.0), (None, 1.0)])
def test_export_other_kinds(criteo_checkpoint, tmp_path, quantize, ratio):
    from recstack import checkpoint

    _, ckpt = criteo_checkpoint
    report_path = tmp_path / "r.json"
    args = ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), "--report", str(report_path), "--quiet"]
    assert cli(*args, *(["--quantize", quantize] if quantize else [])) == 0
    report = json.loads(report_path.read_text())
    assert report["bytes_before"] / report["bytes_after"] == pytest.approx(ratio)
    assert "metrics" not in report
    payload = checkpoint.load(tmp_path / "out")
    assert payload["config"]["embeddings"]["kind"] == (quantize or "dense")
    assert payload["config"]["train"]["sparse_optimizer"] == "sgd"  # no sparse optimizer state in the artifact
    assert all(v.shape[1] == 0 for k, v in payload["model"].items() if k.endswith("optimizer_state"))


def odd_dimension_checkpoint(ckpt: Path, path: Path) -> Path:
    """The fixture's checkpoint remade with embedding_dim 7 (untrained)."""
    from recstack import checkpoint
    from recstack.config import from_dict
    from recstack.data.store import Schema
    from recstack.models.zoo import build_model

    payload = checkpoint.load(ckpt)
    config = from_dict(payload["config"])
    config.model.embedding_dim, config.model.bottom_mlp = 7, [16, 7]
    model = build_model(config, Schema.from_json(payload["schema"]))
    keep = {k: payload[k] for k in ("schema", "trainer", "vocab")}
    return checkpoint.save(path, {**keep, "config": config.to_dict(), "model": model.state_dict()})


@pytest.mark.parametrize("bad", ["unsupported quantize", "int4 odd dimension", "not a checkpoint", "missing checkpoint",
                                 "dataset of other features"])
def test_export_refuses_bad_input_in_one_line_and_writes_nothing(criteo_checkpoint, tmp_path, capsys, bad):
    _, ckpt = criteo_checkpoint
    source, quantize, extra = str(ckpt), "int8", []
    if bad == "unsupported quantize":
        quantize = "int2"
    elif bad == "int4 odd dimension":
        source, quantize = str(odd_dimension_checkpoint(ckpt, tmp_path / "odd" / "ckpt-0000000001.pt")), "int4"
    elif bad == "not a checkpoint":
        source = str(tmp_path / "junk.pt")
        Path(source).write_bytes(b"not a checkpoint")
    elif bad == "missing checkpoint":
        source = str(tmp_path / "nothing.pt")
    else:  # evaluated after the artifact is staged: the staging must go too
        assert cli("data", "synth", "--preset", "tiny", "--rows", "200", "--out", str(tmp_path / "synth"), "--quiet") == 0
        extra = ["--data", str(tmp_path / "synth")]
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    code = cli("export", "--checkpoint", source, "--out", str(tmp_path / "out" / "artifact"), "--quantize", quantize,
               "--report", str(tmp_path / "r.json"), *extra)
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    expected = {"unsupported quantize": "--quantize", "int4 odd dimension": "even", "not a checkpoint": "junk.pt",
                "missing checkpoint": "does not exist", "dataset of other features": "other features"}[bad]
    assert expected in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no out, no staging, no report


def test_export_refuses_a_non_empty_out_without_overwrite(criteo_checkpoint, tmp_path, capsys):
    _, ckpt = criteo_checkpoint
    out = tmp_path / "out"
    assert cli("export", "--checkpoint", str(ckpt), "--out", str(out), "--quantize", "int8", "--quiet") == 0
    first = sorted(out.iterdir())
    assert cli("export", "--checkpoint", str(ckpt), "--out", str(out), "--quantize", "int4", "--quiet") != 0
    assert "--overwrite" in capsys.readouterr().err and sorted(out.iterdir()) == first
    assert cli("export", "--checkpoint", str(ckpt), "--out", str(out), "--quantize", "int4", "--overwrite", "--quiet") == 0
    from recstack import checkpoint

    assert checkpoint.load(out)["config"]["embeddings"]["kind"] == "int4"
