"""Checkpoints: everything needed to resume training exactly, or to score raw input.

A checkpoint holds the model and optimizer state, the trainer's position (epoch, batch, step), the
RNG state, the resolved config, and the dataset schema with its categorical vocabularies, so a raw
Criteo line can be mapped to ids by the checkpoint alone.

Writes are atomic: the file is written under a temporary name, fsynced, then renamed; a crash while
writing leaves a `.tmp` file that is never read, and the previous checkpoint stays the latest.
Files load with `weights_only=True` (tensors and plain containers only, no pickled code).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recstack.errors import CheckpointError

FORMAT = "recstack-checkpoint"
VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{10})\.pt$")
BEST = "best.pt"


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:010d}.pt"


def vocab_to_tensors(vocab: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """uint64 vocabularies as int64 tensors of the same bits (torch.save stores them natively)."""
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.uint64).view(np.int64)) for k, v in vocab.items()}


def vocab_from_tensors(vocab: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy().view(np.uint64) for k, v in vocab.items()}


def save(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = resolve(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a damaged or foreign file: say which, without a traceback
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a recstack checkpoint")
    if int(payload.get("version", 0)) > VERSION:
        raise CheckpointError(f"{path} was written by a newer recstack (format {payload['version']})")
    payload["path"] = str(path)
    return payload


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Completed periodic checkpoints, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a directory meaning its latest checkpoint."""
    path = Path(path)
    if path.is_dir():
        newest = latest(path)
        if newest is None:
            raise CheckpointError(f"checkpoint directory {path} holds no checkpoint (ckpt-*.pt)")
        return newest
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def prune(directory: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` periodic checkpoints (never best.pt)."""
    if keep <= 0:
        return
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
