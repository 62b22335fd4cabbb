"""The dataset a training config names: a prepared one (data.path), or synthetic data generated once
and cached by its parameters."""

from __future__ import annotations

import os
from pathlib import Path

from recstack.config import Config
from recstack.data.store import SCHEMA_FILE, Dataset
from recstack.progress import is_quiet, say


def cache_dir() -> Path:
    base = os.environ.get("RECSTACK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "recstack"
    )
    return Path(base)


def synthetic_dataset(config: Config) -> Path:
    """The synthetic dataset this config asks for, generated once and cached by its parameters."""
    from recstack.data.synth import generate

    d = config.data
    key = f"{d.synth_preset}-rows{d.synth_rows}-scale{config.model.scale:g}-test{d.synth_test_fraction:g}-seed{config.seed}"
    path = cache_dir() / "synth" / key
    if not (path / SCHEMA_FILE).is_file():
        say(f"generating synthetic data: preset {d.synth_preset}, {d.synth_rows:,} rows, scale {config.model.scale:g} -> {path}")
        generate(
            d.synth_preset,
            d.synth_rows,
            path,
            seed=config.seed,
            scale=config.model.scale,
            test_fraction=d.synth_test_fraction,
            show_progress=not is_quiet(),
        )
    return path


def open_dataset(config: Config) -> Dataset:
    if config.data.path:
        return Dataset(config.data.path)
    return Dataset(synthetic_dataset(config))
