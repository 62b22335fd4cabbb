"""Typed configuration: a YAML file maps one to one onto these dataclasses, and every
command-line option `--section.key value` overrides one key.

Resolution order: dataclass defaults < model preset < YAML file < command-line overrides.
The fully resolved config is recorded in every report.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from recstack.argtypes import SEED_MAX
from recstack.errors import ConfigError
from recstack.presets import PRESETS
from recstack.yamlfile import read_yaml

INT_MAX = 2**63 - 1
"""Integer keys must fit in int64: torch and numpy take them (a larger one overflows deep inside)."""
THREADS_MAX = 1024
"""Most torch intra-op threads (train.threads): far more than any machine's cores; a value like 100000
makes torch start threads until the process dies. A fixed cap, not one from this machine's core count,
so that a config recorded on a big machine still loads on a small one."""


@dataclass
class DataConfig:
    path: str | None = None
    """A prepared dataset directory (`recstack data prepare`); None synthesizes one."""
    synth_preset: str = "criteo-kaggle"
    """Synthetic preset used when `path` is None."""
    synth_rows: int = 262_144
    synth_test_fraction: float = 0.1
    val_fraction: float = 0.0
    """Fraction of the train split's tail carved out as validation (for early stopping)."""
    train_split: str = "train"
    test_split: str = "test"
    shuffle: bool = True
    drop_last: bool = False
    prefetch: int = 4
    """Batches prepared ahead by the background loader thread."""


@dataclass
class ModelConfig:
    name: str = "dlrm"
    preset: str = "criteo-kaggle"
    embedding_dim: int = 16
    bottom_mlp: list[int] = field(default_factory=lambda: [512, 256, 64, 16])
    """Hidden and output widths; the input width (number of dense features) is prepended."""
    top_mlp: list[int] = field(default_factory=lambda: [512, 256, 1])
    """Widths after the interaction; the interaction width is prepended."""
    interaction: str = "dot"
    """`dot` (pairwise dot products, as DLRM) or `cat` (concatenation)."""
    interaction_self: bool = False
    """Include each feature's dot product with itself."""
    dropout: float = 0.0
    """Dropout before each hidden layer of the top MLP."""
    first_order: bool = False
    """DLRM: add a first-order term to the logit (a learned weight per id and per dense feature, as
    Wide & Deep's wide part and DeepFM's linear term), which the interaction alone lacks."""
    scale: float = 1.0
    """Multiplies every table's row count (ids fold by modulo when a table is smaller than its feature)."""
    # --- the other models of the zoo (each reads the keys that apply to it; see recstack models) ---
    task_mlp: list[int] = field(default_factory=list)
    """Multi-task models: each task's head after the shared top_mlp, ending at 1."""
    task_weights: list[float] = field(default_factory=list)
    """Weight of each task's loss (default: 1 each)."""
    mf_dim: int = 0
    """NCF: width of the GMF (matrix factorization) embeddings (0: embedding_dim)."""
    cross_layers: int = 3
    """DCN-v2: number of cross layers."""
    cross_rank: int = 0
    """DCN-v2: rank of each cross layer's weight (0: full rank)."""
    cross_structure: str = "stacked"
    """DCN-v2: stacked (cross, then deep) or parallel (both on the input, outputs concatenated)."""
    sequence_pooling: str = "attention"
    """DIN/DIEN: how the behaviour history meets the target: attention, or sum / mean pooling (baselines)."""
    attention_mlp: list[int] = field(default_factory=lambda: [80, 40])
    """DIN/DIEN: hidden widths of the attention unit over [history, target, history - target, history * target]."""
    gru_hidden: int = 0
    """DIEN: GRU and AUGRU hidden width (0: the behaviour embedding width)."""
    aux_loss_weight: float = 1.0
    """DIEN: weight of the auxiliary next-behaviour loss."""
    max_sequence_length: int = 100
    """Behaviour sequences keep their last (most recent) this many items."""


@dataclass
class TrainConfig:
    batch_size: int = 1024
    eval_batch_size: int = 16384
    epochs: int = 1
    max_steps: int = 0
    """Stop after this many steps in all (0: run all epochs)."""
    optimizer: str = "adam"
    """Dense (MLP) optimizer: adam, adagrad or sgd."""
    lr: float = 1e-3
    weight_decay: float = 0.0
    sparse_optimizer: str = "rowwise_adagrad"
    """Embedding optimizer, applied only to the rows a batch touched: rowwise_adagrad, adagrad or sgd."""
    sparse_lr: float = 0.05
    embedding_weight_decay: float = 0.0
    """L2 penalty on the embedding rows a batch touched."""
    warmup_steps: int = 0
    decay_start_step: int = 0
    decay_steps: int = 0
    """Polynomial (power 2) decay over this many steps after decay_start_step (0: no decay)."""
    eval_every: int = 0
    """Evaluate on validation (or test when no validation split) every N steps (0: each epoch end)."""
    early_stopping_patience: int = 0
    """Stop after this many evaluations without a better validation AUC, keeping the best (0: off)."""
    checkpoint_every: int = 0
    """Write a checkpoint every N steps (0: only the final one); needs a checkpoint directory."""
    keep_checkpoints: int = 3
    device: str = "cpu"
    """cpu, cuda or auto."""
    threads: int = 0
    """torch intra-op threads (0: all cores)."""
    log_every: int = 50


@dataclass
class FAEConfig:
    """Hot-embedding-aware training (FAE): hot rows in a compact table on the fast device, all-hot
    and all-cold batches interleaved (see recstack.embeddings.tiered, recstack.train.fae)."""

    budget: str = ""
    """Bytes for the hot rows and their optimizer state, e.g. 256MiB ("": FAE off)."""
    sample: str = "0.05"
    """Fraction of the training inputs profiled to rank rows (5% or 0.05)."""
    switch_period: int = 0
    """R: batches of one kind before switching (0: infinity, all cold then all hot per epoch)."""
    hot_device: str = "auto"
    """Where the hot table lives: cuda, cpu or auto (cuda when available)."""


@dataclass
class EmbeddingsConfig:
    """Where the model's tables live (recstack.embeddings.plan): one kind of collection for all of a
    model's collections, unless `collections` gives some of them (by role) another."""

    kind: str = "dense"
    """dense (plain tables where the model computes), tiered (FAE's hot/cold tiers: fae.budget selects
    it), sharded (over the ranks of a job: several ranks select it), fp16, int8, int4 (inference tables:
    half precision, row-wise quantized); docs/ARCHITECTURE.md describes them."""
    collections: list[str] = field(default_factory=list)
    """role=kind for a model's collections by role: main, wide (Wide & Deep, DeepFM), gmf, mlp (NCF)."""
    sharding: str = "auto"
    """On several ranks (kind sharded): auto (the planner's choice per table), or one of data_parallel,
    table_wise, row_wise, column_wise for every table."""
    plan: str = ""
    """A sharding plan file (`recstack plan --report F` writes one) instead of planning at start."""


@dataclass
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fae: FAEConfig = field(default_factory=FAEConfig)
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


LR_MAX = 100.0
"""The largest train.lr and train.sparse_lr accepted (typical rates are 1e-3 to 0.1)."""


def split_int_list(text: str, what: str) -> list[str]:
    """'512,256,64' or DeepRecSys's '512-256-64' into its items. An empty item (a leading '-', ',-',
    '--', a trailing separator) is an error: '-8' must not silently become 8."""
    parts = [p.strip() for p in re.split(r"[,-]", text.strip())]
    if not text.strip() or any(not p for p in parts):
        raise ConfigError(f"{what}: expected non-negative integers separated by ',' or '-', got {text!r}")
    return parts


def parse_int_list(text: str, what: str) -> list[int]:
    """`split_int_list`, each item an integer (the command line's lists of sizes and widths)."""
    try:
        return [int(p) for p in split_int_list(text, what)]
    except ValueError:
        raise ConfigError(f"{what}: expected non-negative integers separated by ',' or '-', got {text!r}") from None


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML or command-line value to the annotated type, or raise ConfigError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key}: cannot read {value!r} as {annotation}")
    if origin is list:
        (item_type,) = args
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("[") and value.endswith("]"):  # YAML's flow list, as the config files write it
                value = value[1:-1]
            value = split_int_list(value, key) if item_type is int else value.split(",")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key}: expected a list, got {value!r}")
        return [_coerce(v, item_type, key) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"config key {key}: expected true or false, got {value!r}")
    if annotation is int:
        return _exact_int(value, key)
    if annotation is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key {key}: expected a number, got {value!r}") from None
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key {key}: expected a string, got {value!r}")
        return str(value)
    return value


def _exact_int(value: Any, key: str) -> int:
    """An integer as written: '4096', '4_096', '1e6' (exactly, through Decimal: a float would turn
    99999999999999999999 into 100000000000000000000)."""
    if isinstance(value, (bool, dict, list)):
        raise ConfigError(f"config key {key}: expected an integer, got {value!r}")
    try:
        number = value if isinstance(value, int) else Decimal(str(value).strip().replace("_", ""))
    except InvalidOperation:
        raise ConfigError(f"config key {key}: expected an integer, got {value!r}") from None
    if isinstance(number, Decimal) and (not number.is_finite() or number != number.to_integral_value()):
        raise ConfigError(f"config key {key}: expected an integer, got {value!r}")
    if abs(number) > INT_MAX:
        raise ConfigError(f"config key {key}: {value!r} is too large (the limit is {INT_MAX:,}, int64)")
    return int(number)


def _section_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def set_key(config: Config, dotted: str, value: Any) -> None:
    """Set `section.key` (or a top-level key such as `seed`) on config, converting the value."""
    parts = dotted.replace("-", "_").split(".")
    target: Any = config
    for i, part in enumerate(parts):
        hints = _section_types(target)
        if part not in hints:
            known = ", ".join(sorted(hints))
            where = ".".join(parts[:i]) or "the top level"
            raise ConfigError(f"unknown config key {dotted!r}: {where} has {known}")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(target, part)):
                raise ConfigError(f"config key {dotted!r} is a section; set one of its keys")
            setattr(target, part, _coerce(value, hints[part], dotted))
        else:
            target = getattr(target, part)
            if not dataclasses.is_dataclass(target):
                raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r} is not a section")


def apply_mapping(config: Config, mapping: dict[str, Any], prefix: str = "") -> None:
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            apply_mapping(config, value, prefix=f"{dotted}.")
        elif _is_section(config, dotted):
            if value is not None:  # `train:` with every key commented out is an empty section
                raise _not_a_mapping(dotted, value)
        else:
            set_key(config, dotted, value)


def _not_a_mapping(section: str, value: Any) -> ConfigError:
    return ConfigError(f"config section {section!r} must be a mapping of its keys ({section}: then indented "
                       f"key: value lines), got {value!r}")


def _is_section(config: Config, dotted: str) -> bool:
    target: Any = config
    for part in dotted.replace("-", "_").split("."):
        if not dataclasses.is_dataclass(target) or part not in _section_types(target):
            return False
        target = getattr(target, part)
    return dataclasses.is_dataclass(target)


def load_yaml(path: str | Path) -> dict[str, Any]:
    loaded = read_yaml(path, "config file")
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        sections = ", ".join(f"{f.name}:" for f in dataclasses.fields(Config))
        raise ConfigError(f"config file {path} must hold a mapping of sections ({sections}), "
                          f"not a {type(loaded).__name__}")
    return loaded


def apply_preset(config: Config, name: str) -> None:
    """Set the keys of the named preset (recstack.presets) and record its name in model.preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    apply_mapping(config, PRESETS[name])
    config.model.preset = name


def resolve(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the model preset, then the YAML file, then overrides."""
    file_mapping = load_yaml(config_file) if config_file else {}
    overrides = dict(overrides or {})
    config = Config()
    apply_preset(config, _preset_name(file_mapping, overrides, config.model.preset))
    apply_mapping(config, file_mapping)
    for key, value in overrides.items():
        set_key(config, key, value)
    validate(config)
    return config


def _preset_name(file_mapping: dict[str, Any], overrides: dict[str, Any], default: str) -> str:
    """model.preset from the overrides, else the file, else the default (a preset's keys come first)."""
    file_model = file_mapping.get("model")
    if file_model is not None and not isinstance(file_model, dict):
        raise _not_a_mapping("model", file_model)
    for preset in (overrides.get("model.preset"), (file_model or {}).get("preset")):
        if preset is not None:
            return _coerce(preset, str, "model.preset")
    return default


def validate(config: Config) -> None:
    t, m, d = config.train, config.model, config.data
    if t.batch_size <= 0 or t.eval_batch_size <= 0:
        raise ConfigError("train.batch_size and train.eval_batch_size must be positive")
    if t.epochs <= 0 and t.max_steps <= 0:
        raise ConfigError("train.epochs must be positive (or set train.max_steps)")
    if not 0.0 <= d.val_fraction < 1.0:
        raise ConfigError("data.val_fraction must be in [0, 1)")
    if m.scale <= 0:
        raise ConfigError("model.scale must be positive")
    if m.interaction not in ("dot", "cat"):
        raise ConfigError(f"model.interaction must be dot or cat, not {m.interaction!r}")
    if t.optimizer not in ("adam", "adagrad", "sgd"):
        raise ConfigError(f"train.optimizer must be adam, adagrad or sgd, not {t.optimizer!r}")
    if t.sparse_optimizer not in ("rowwise_adagrad", "adagrad", "sgd"):
        raise ConfigError(
            f"train.sparse_optimizer must be rowwise_adagrad, adagrad or sgd, not {t.sparse_optimizer!r}"
        )
    for name, value in (("model.bottom_mlp", m.bottom_mlp), ("model.top_mlp", m.top_mlp)):
        if not value or min(value) < 1:
            raise ConfigError(f"{name} needs at least one layer, every width >= 1 (got {value})")
    if m.embedding_dim < 1:
        raise ConfigError("model.embedding_dim must be >= 1")
    for name, value in (("train.lr", t.lr), ("train.sparse_lr", t.sparse_lr), ("model.scale", m.scale)):
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{name} must be a positive finite number, not {value}")
    for name, value in (("train.lr", t.lr), ("train.sparse_lr", t.sparse_lr)):
        if value > LR_MAX:  # such a rate only diverges: refused before any work, not found as NaN after it
            raise ConfigError(f"{name} must be at most {LR_MAX:g}, not {value:g} (typical: 1e-3 to 0.1)")
    for name, value in (("train.weight_decay", t.weight_decay), ("train.embedding_weight_decay", t.embedding_weight_decay)):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{name} must be a finite number >= 0, not {value}")
    for name in ("max_steps", "warmup_steps", "decay_start_step", "decay_steps", "eval_every",
                 "early_stopping_patience", "checkpoint_every", "keep_checkpoints", "threads", "log_every"):
        if getattr(t, name) < 0:
            raise ConfigError(f"train.{name} must be >= 0, not {getattr(t, name)}")
    if t.threads > THREADS_MAX:
        raise ConfigError(f"train.threads must be in [0, {THREADS_MAX}] (0: all cores), not {t.threads}")
    if d.prefetch < 0 or d.synth_rows <= 0 or not 0.0 <= d.synth_test_fraction < 1.0:
        raise ConfigError("data.prefetch must be >= 0, data.synth_rows > 0 and data.synth_test_fraction in [0, 1)")
    if config.fae.budget:
        from recstack.data.hotcold import parse_bytes, parse_fraction
        from recstack.errors import DataError

        try:
            parse_bytes(config.fae.budget)
            parse_fraction(config.fae.sample)
        except (DataError, ValueError) as exc:
            raise ConfigError(f"fae: {exc}") from None
        if config.fae.switch_period < 0 or config.fae.hot_device not in ("cpu", "cuda", "auto"):
            raise ConfigError("fae.switch_period must be >= 0 and fae.hot_device cpu, cuda or auto")
        if config.embeddings.kind == "dense":  # the budget turns FAE on: its tiers hold the tables
            config.embeddings.kind = "tiered"
    if "tiered" in (config.embeddings.kind, *[c.partition("=")[2] for c in config.embeddings.collections]) \
            and not config.fae.budget:
        raise ConfigError("embeddings kind tiered (FAE) needs fae.budget, the bytes of its hot tier (e.g. 256MiB)")
    if config.embeddings.sharding not in ("auto", "data_parallel", "table_wise", "row_wise", "column_wise"):
        raise ConfigError(f"embeddings.sharding must be auto, data_parallel, table_wise, row_wise or column_wise, "
                          f"not {config.embeddings.sharding!r}")
    if not 0 <= config.seed <= SEED_MAX:
        raise ConfigError(f"seed must be in [0, {SEED_MAX}], not {config.seed}")
    if t.device not in ("cpu", "cuda", "auto"):
        raise ConfigError(f"train.device must be cpu, cuda or auto, not {t.device!r}")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError("model.dropout must be in [0, 1)")
    if m.cross_structure not in ("stacked", "parallel"):
        raise ConfigError(f"model.cross_structure must be stacked or parallel, not {m.cross_structure!r}")
    if m.sequence_pooling not in ("attention", "sum", "mean"):
        raise ConfigError(f"model.sequence_pooling must be attention, sum or mean, not {m.sequence_pooling!r}")
    if min([m.cross_layers, m.cross_rank, m.gru_hidden, m.mf_dim, *m.task_mlp, *m.attention_mlp]) < 0 or m.max_sequence_length < 1:
        raise ConfigError("model widths, ranks and layer counts must be >= 0, and model.max_sequence_length >= 1")
    if any(not math.isfinite(w) or w < 0 for w in [*m.task_weights, m.aux_loss_weight]):
        raise ConfigError("model.task_weights and model.aux_loss_weight must be finite numbers >= 0")


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """Turn `--section.key value` / `--section.key=value` tokens into a mapping."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) <= 2:
            raise ConfigError(f"unexpected argument {token!r}; options look like --train.batch_size 4096")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens) or (tokens[i + 1].startswith("--") and not _is_number(tokens[i + 1])):
                raise ConfigError(f"option --{key} needs a value")
            value = tokens[i + 1]
            i += 2
        overrides[key.replace("-", "_")] = value
    return overrides


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def from_dict(mapping: dict[str, Any]) -> Config:
    """Rebuild a resolved config (as recorded in a checkpoint or report); no preset is applied."""
    config = Config()
    apply_mapping(config, mapping)
    validate(config)
    return config
