"""Config resolution: defaults < preset < YAML < command line, typed, with one-line errors."""

from __future__ import annotations

import re

import pytest

from recstack.config import from_dict, parse_overrides, resolve
from recstack.errors import ConfigError
from recstack.train.trainer import lr_factor


def test_precedence_and_types(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model:\n  preset: tiny\n  dropout: 0.1\ntrain:\n  batch_size: 512\n  lr: 0.01\n")
    config = resolve(cfg_file, parse_overrides(["--train.batch_size", "4096", "--model.bottom_mlp=16-8", "--seed", "3"]))
    assert config.model.preset == "tiny" and config.model.embedding_dim == 8  # from the preset
    assert config.model.dropout == 0.1 and config.train.lr == 0.01  # from the file
    assert config.train.batch_size == 4096 and config.seed == 3  # the command line wins
    assert config.model.bottom_mlp == [16, 8]
    assert from_dict(config.to_dict()) == config
    # a list as the config files write it (YAML's flow form) reads the same
    assert resolve(None, parse_overrides(["--model.top_mlp", "[64, 1]"])).model.top_mlp == [64, 1]


@pytest.mark.parametrize(
    "tokens, message",
    [
        (["--train.batch_size", "1.5"], "expected an integer"),
        (["--model.bottom_mlp=16,-8"], "separated by"),  # not silently [16, 8]
        (["--model.bottom_mlp=16,"], "separated by"),
        (["--train.shuffle", "1"], "unknown config key"),
        (["--data.shuffle", "maybe"], "expected true or false"),
        (["--train", "1"], "is a section"),
        (["--train.epochs"], "needs a value"),
        (["stray"], "unexpected argument"),
        (["--model.interaction", "sum"], "dot or cat"),
        (["--data.val_fraction", "1.0"], "val_fraction"),
    ],
)
def test_errors_name_the_key(tokens, message):
    with pytest.raises(ConfigError, match=message):
        resolve(None, parse_overrides(tokens))


def test_bad_yaml_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        resolve(bad)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfe\x00bad", "is not UTF-8 text (byte 0xff at offset 0)"),
        (b"- 1\n- 2\n", "must hold a mapping of sections (seed:, data:, model:, train:, fae:, embeddings:), not a list"),
        (b"42\n", "not a int"),
        (b"a: [\n", "not valid YAML at line 2"),
        (b"seed: " + b"9" * 5000 + b"\n", "holds a value that cannot be read"),
    ],
)
def test_a_config_file_that_is_not_a_yaml_mapping_is_one_config_error(tmp_path, content, message):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve(bad)
    with pytest.raises(ConfigError, match="is a directory"):
        resolve(tmp_path)


def test_an_empty_config_file_or_section_is_the_defaults(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert resolve(empty) == resolve(None)
    commented = tmp_path / "commented.yaml"
    commented.write_text("train:\n#  batch_size: 64\nmodel:\n  preset: tiny\n")
    assert resolve(commented).train.batch_size == resolve(None, {"model.preset": "tiny"}).train.batch_size


@pytest.mark.parametrize("section", ["model", "train", "data", "fae"])
@pytest.mark.parametrize("value", ["[1, 2]", "foo", "3"])
def test_a_section_that_is_not_a_mapping_names_the_section(tmp_path, section, value):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"{section}: {value}\n")
    with pytest.raises(ConfigError, match=f"config section '{section}' must be a mapping of its keys"):
        resolve(bad)


def test_a_preset_that_is_not_a_name_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  preset: [1]\n")
    with pytest.raises(ConfigError, match="model.preset: expected a string"):
        resolve(bad)
    with pytest.raises(ConfigError, match="unknown model preset ''"):
        resolve(None, {"model.preset": ""})


@pytest.mark.parametrize("seed", ["-1", "4294967296", "99999999999999999999"])
def test_seed_out_of_the_generators_range_is_refused(tmp_path, seed):
    with pytest.raises(ConfigError, match=r"seed.*(must be in \[0, 4294967295\]|too large)"):
        resolve(None, parse_overrides(["--seed", seed]))
    in_file = tmp_path / "seed.yaml"
    in_file.write_text(f"seed: {seed}\n")
    with pytest.raises(ConfigError, match="seed"):
        resolve(in_file)
    assert resolve(None, {"seed": "4294967295"}).seed == 4294967295


def test_threads_are_capped():
    with pytest.raises(ConfigError, match=re.escape("train.threads must be in [0, 1024] (0: all cores), not 100000")):
        resolve(None, {"train.threads": "100000"})
    assert resolve(None, {"train.threads": "1024"}).train.threads == 1024


def test_integers_are_read_exactly_and_must_fit_int64():
    # through a float, 99999999999999999999 silently became 100000000000000000000
    with pytest.raises(ConfigError, match="train.max_steps: '99999999999999999999' is too large"):
        resolve(None, {"train.max_steps": "99999999999999999999"})
    with pytest.raises(ConfigError, match="expected an integer"):
        resolve(None, {"train.batch_size": "nan"})
    t = resolve(None, {"train.max_steps": "9007199254740993", "train.batch_size": "1e12",
                       "train.eval_batch_size": "4_096"}).train
    assert (t.max_steps, t.batch_size, t.eval_batch_size) == (9007199254740993, 10**12, 4096)


def test_negative_numbers_are_values_not_options():
    assert parse_overrides(["--train.lr", "-1e-3"]) == {"train.lr": "-1e-3"}


def test_lr_schedule_warmup_then_quadratic_decay():
    config = resolve(None, parse_overrides(["--train.warmup_steps", "10", "--train.decay_start_step", "20",
                                            "--train.decay_steps", "10"]))
    t = config.train
    assert [lr_factor(s, t) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(15, t) == 1.0
    assert lr_factor(20, t) == pytest.approx(1.0)
    assert lr_factor(25, t) == pytest.approx(0.25)
    assert lr_factor(30, t) == pytest.approx(1e-7 / t.lr)  # floor: the reference's minimum lr
