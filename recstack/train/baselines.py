"""Baselines judged in the same run as the main model: `recstack train ... --baseline SPEC` (repeatable).

A SPEC is either

- `popularity` or `popularity:FEATURE`: no training; a row's score is how often its item (FEATURE, by
  default the pooled feature that a behaviour sequence shares its table with: the candidate item)
  occurs among the positives of the training rows (validation rows excluded); or
- one or more `KEY=VALUE` config overrides, separated by spaces (`model.sequence_pooling=sum`): the
  same config with those keys changed, trained on the same data and splits with the same seed.

Each baseline's metrics land in the report under `baselines`, next to the main model's. Nothing here
knows any model: a variant is a config, and the trainer is the one every model uses.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from recstack.config import Config, set_key, validate
from recstack.data.store import Dataset
from recstack.errors import ConfigError
from recstack.progress import console, say
from recstack.scoring.metrics import auc

POPULARITY = "popularity"


@dataclass
class Baseline:
    spec: str
    """As given on the command line; the report's key."""
    overrides: dict[str, str] = field(default_factory=dict)
    popularity_feature: str | None = None
    """For a popularity baseline: the item feature ("" until `parse_baselines` resolves it); None otherwise."""

    @property
    def is_popularity(self) -> bool:
        return self.popularity_feature is not None


def parse_baseline(spec: str) -> Baseline:
    text = spec.strip()
    if text == POPULARITY or text.startswith(POPULARITY + ":"):
        return Baseline(spec, popularity_feature=text.partition(":")[2])
    overrides = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if not sep or not key:
            raise ConfigError(f"--baseline {spec!r}: expected `popularity[:FEATURE]` or KEY=VALUE overrides "
                              "separated by spaces, e.g. model.sequence_pooling=sum")
        overrides[key.removeprefix("--")] = value
    if not overrides:
        raise ConfigError("--baseline needs a value: popularity[:FEATURE] or KEY=VALUE overrides")
    return Baseline(spec, overrides)


def variant_config(config: Config, overrides: dict[str, str]) -> Config:
    variant = copy.deepcopy(config)
    for key, value in overrides.items():
        set_key(variant, key, value)
    validate(variant)
    return variant


def parse_baselines(specs: list[str], config: Config, dataset: Dataset) -> list[Baseline]:
    """Parsed and checked against the config and the data before the main model trains, so a typo
    fails at once."""
    baselines = [parse_baseline(s) for s in specs]
    for b in baselines:
        if b.is_popularity:
            b.popularity_feature = item_feature(dataset, b.popularity_feature or "")
        elif config.fae.budget:
            raise ConfigError("--baseline KEY=VALUE variants train without FAE tiers; drop fae.budget to compare")
        else:
            variant_config(config, b.overrides)
    return baselines


def item_feature(dataset: Dataset, requested: str) -> str:
    """The feature a popularity baseline counts: the one asked for, or the candidate item of a
    behaviour sequence; it must hold one id per row."""
    schema = dataset.schema
    if requested:
        name = requested
    else:
        tables = [f.table_name for f in schema.sparse if f.sequence]
        name = next((f.name for t in tables for f in schema.sparse if not f.sequence and f.table_name == t), "")
        if not name:
            raise ConfigError("--baseline popularity: the data has no behaviour sequence to find the item by; "
                              "name the item feature: --baseline popularity:FEATURE")
    if name not in schema.sparse_names:
        raise ConfigError(f"--baseline popularity:{name}: no such sparse feature (the data has {', '.join(schema.sparse_names)})")
    if schema.feature(name).length != 1:
        raise ConfigError(f"--baseline popularity:{name}: the feature must hold exactly one id per row")
    return name


def popularity_scores(dataset: Dataset, feature: str, train_rows: tuple[int, int], rows: tuple[int, int]) -> np.ndarray:
    """For rows [a, b): the count of each row's id among the positives (first task) of train_rows."""
    a, b = train_rows
    positive = np.asarray(dataset.labels[a:b, 0]) == 1
    counts = np.bincount(_checked_ids(dataset, feature, a, b)[positive],
                         minlength=dataset.schema.feature(feature).num_embeddings)
    return counts[_checked_ids(dataset, feature, *rows)].astype(np.float64)


def _checked_ids(dataset: Dataset, feature: str, start: int, stop: int, chunk: int = 1 << 20) -> np.ndarray:
    """The ids of rows [start, stop) of a one-id feature, range-checked chunk by chunk as the loader
    checks every batch: a damaged id is a DataError naming the file and row, never a numpy error
    (a negative id) or a silently grown count table (an id past the table)."""
    s = dataset.schema.feature(feature)
    ids = np.asarray(dataset.values[feature].reshape(-1)[start:stop])
    for a in range(0, ids.size, chunk):
        part = ids[a : a + chunk]
        if int(part.min()) < 0 or int(part.max()) >= s.num_embeddings:
            raise dataset.id_error(s, part, None, range(start + a, start + a + part.size))
    return ids


def popularity_metrics(dataset: Dataset, feature: str, train_rows: tuple[int, int],
                       splits: dict[str, tuple[int, int] | None]) -> dict[str, dict[str, Any]]:
    """AUC of the popularity scores per split (counts are no probabilities: no log loss)."""
    out = {}
    for name, rows in splits.items():
        if rows is not None:
            labels = np.asarray(dataset.labels[rows[0]:rows[1], 0])
            out[name] = {"auc": auc(labels, popularity_scores(dataset, feature, train_rows, rows)),
                         "count": int(labels.size)}
    return out


def train_variant(config: Config, dataset: Dataset) -> dict[str, Any]:
    """Train one config variant as `recstack train` would (same seed), without report or checkpoints."""
    from recstack.models.zoo import build_model
    from recstack.train.trainer import Trainer

    torch.manual_seed(config.seed)
    trainer = Trainer(config, dataset, build_model(config, dataset.schema))
    trainer.fit()
    state = trainer.state
    return {
        "metrics_by_split": trainer.final_metrics(),
        "training": {"steps": state.step, "best_step": state.best_step if state.best_step >= 0 else None,
                     "best_val_auc": state.best_auc if state.best_step >= 0 else None,
                     "stopped_early": state.stopped_early, "train_seconds": state.train_seconds},
    }


def run_baselines(baselines: list[Baseline], config: Config, dataset: Dataset, trainer) -> dict[str, dict[str, Any]]:
    """Every baseline on the main run's data and splits (`trainer`: the main model's Trainer)."""
    results: dict[str, dict[str, Any]] = {}
    splits = {"val": trainer.val_rows, "test": trainer.test_rows}
    for b in baselines:
        if b.is_popularity:
            feature = b.popularity_feature
            say(f"baseline {b.spec}: counting {feature} among the training positives")
            result: dict[str, Any] = {"kind": POPULARITY, "feature": feature,
                                      "metrics_by_split": popularity_metrics(dataset, feature, trainer.train_rows, splits)}
        else:
            say(f"baseline {b.spec}: training the variant")
            result = {"kind": "variant", "overrides": b.overrides,
                      **train_variant(variant_config(config, b.overrides), dataset)}
        by_split = result["metrics_by_split"]
        result["metrics"] = by_split.get("test") or by_split.get("val") or {}
        results[b.spec] = result
    return results


def print_baselines(report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="baselines (same data, splits and seed)", show_header=True, header_style="bold")
    table.add_column("model")
    table.add_column("val AUC", justify="right")
    table.add_column("test AUC", justify="right")
    rows = [(f"{report['config']['model']['name']} (main)", report["metrics_by_split"])]
    rows += [(name, b["metrics_by_split"]) for name, b in report["baselines"].items()]
    for name, by_split in rows:
        cells = [f"{by_split[s]['auc']:.4f}" if s in by_split else "" for s in ("val", "test")]
        table.add_row(name, *cells)
    console.print(table)
