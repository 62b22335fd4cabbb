"""Config resolution: defaults < preset < YAML < command line, typed, with one-line errors."""

from __future__ import annotations

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
