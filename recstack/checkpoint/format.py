"""Checkpoints: everything needed to resume training exactly, or to score raw input.

A checkpoint holds the model and optimizer state, the trainer's position (epoch, batch, step), the
RNG state, the resolved config, and the dataset schema with its categorical vocabularies, so a raw
Criteo line can be mapped to ids by the checkpoint alone.

Writes are atomic: the file is written under a temporary name, fsynced, then renamed; a crash while
writing leaves a `.tmp` file that is never read, and the previous checkpoint stays the latest.
Files load with `weights_only=True` (tensors and plain containers only, no pickled code).
"""

from __future__ import annotations

import math
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recstack.errors import CheckpointError

FORMAT = "recstack-checkpoint"
VERSION = 2
"""2: each embedding table's rows and optimizer state under its own keys (`...tables.<name>.weight`),
whatever collection wrote them; 1 stored a collection's fused buffer, which loads as its tables."""
_NAME = re.compile(r"^ckpt-(\d{10})(\.pt)?$")
"""A checkpoint: a file (one process) or a directory (sharded over ranks)."""
BEST = "best.pt"
META, TABLES = "meta.pt", "tables"
"""A sharded checkpoint's directory: the meta file (a checkpoint file without the tables) and the
tables' shards (recstack.checkpoint.sharded)."""
PARTS: dict[str, type] = {
    "config": dict, "schema": dict, "model": dict, "trainer": dict, "vocab": dict, "dense_optimizer": dict,
    "rng": torch.Tensor,
}
"""What each part of a checkpoint must be; a reader names the parts it needs (`load(require=...)`)."""
SCORING = ("config", "schema", "model", "trainer")
"""What scoring, evaluation and serving read."""
RESUMING = (*SCORING, "dense_optimizer", "rng")
"""What `train --resume` reads."""
_ZIP_MAGIC = b"PK\x03\x04"


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:010d}.pt"


def vocab_to_tensors(vocab: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """uint64 vocabularies as int64 tensors of the same bits (torch.save stores them natively)."""
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.uint64).view(np.int64)) for k, v in vocab.items()}


def vocab_from_tensors(vocab: Any, path: str | Path = "checkpoint") -> dict[str, np.ndarray]:
    """The uint64 vocabularies back; `path` names the checkpoint when one is not what was saved."""
    if not isinstance(vocab, dict) or not all(
        isinstance(v, torch.Tensor) and v.dtype == torch.int64 and v.dim() == 1 for v in vocab.values()
    ):
        raise CheckpointError(f"checkpoint {path}: 'vocab' is not a map of feature -> int64 vector "
                              "(the file is damaged or foreign)")
    return {k: v.cpu().numpy().view(np.uint64) for k, v in vocab.items()}


def rebuild_model(payload: dict[str, Any]) -> tuple[Any, Any, torch.nn.Module]:
    """(config, dataset schema, untrained model) as recorded in a loaded checkpoint, its tables placed
    for inference (a training-only kind such as FAE's tiers becomes the kind that serves it); a config
    or schema this recstack cannot use is the checkpoint's fault, and the error names it."""
    from recstack.config import from_dict
    from recstack.data.store import Schema
    from recstack.errors import RecstackError
    from recstack.models.zoo import build_model

    path = payload["path"]
    try:
        config = from_dict(payload["config"])
    except (RecstackError, TypeError, ValueError, AttributeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} holds a config this recstack cannot use: {_message(exc)}") from None
    try:
        schema = Schema.from_json(payload["schema"])
    except (RecstackError, TypeError, ValueError, AttributeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} holds a damaged dataset schema: {_message(exc)}") from None
    try:
        model = build_model(config, schema, inference=True)
    except (RecstackError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: its model cannot be built from its config: "
                              f"{_message(exc)}") from None
    return config, schema, model


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
    fsync_directory(path.parent)
    return path


def fsync_directory(directory: Path) -> None:
    """Make a rename inside `directory` durable."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str | Path, map_location: str | torch.device = "cpu", require: tuple[str, ...] = ()) -> dict[str, Any]:
    """The payload of a checkpoint file (or of a directory's latest). `require`: the parts the caller
    reads (see PARTS); a file without one of them, or with one of another type, is refused here."""
    path = resolve(path)
    if path.is_dir():  # a sharded checkpoint: its meta file (a checkpoint file), and where its tables are
        payload = load(path / META, map_location, require)
        payload.update(path=str(path), tables_dir=str(path / TABLES))
        return payload
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): not a checkpoint, or its copy did not finish")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a damaged or foreign file: say which, without a traceback
        raise CheckpointError(f"cannot read checkpoint {path}: {_unreadable(path, exc)}") from None
    _verify_checksums(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        kind = f"a {type(payload).__name__}" if not isinstance(payload, dict) else f"a dict without format {FORMAT!r}"
        raise CheckpointError(f"{path} is not a recstack checkpoint (it holds {kind})")
    version = payload.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path} was written by a newer recstack (format version {version!r}; "
                              f"this one reads {VERSION})")
    return _checked(payload, path, require)


def _checked(payload: dict[str, Any], path: Path, require: tuple[str, ...]) -> dict[str, Any]:
    missing = [k for k in require if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(map(repr, missing))}: it is incomplete, "
                              "or was not written by `recstack train`")
    for key in require:
        if not isinstance(payload[key], PARTS[key]):
            raise CheckpointError(f"checkpoint {path}: {key!r} is a {type(payload[key]).__name__}, "
                                  f"expected a {PARTS[key].__name__} (the file is damaged or foreign)")
    payload["path"] = str(path)
    return payload


def _verify_checksums(path: Path) -> None:
    """torch.save records a CRC-32 of every member of its zip archive and torch.load never checks
    them: a flipped bit in the weights would load, and score, silently. Checking reads the file once
    more (about half the time torch.load takes) at load, never during training."""
    if not zipfile.is_zipfile(path):  # torch's legacy format carries no checksums
        return
    with zipfile.ZipFile(path) as archive:
        damaged = archive.testzip()
    if damaged is not None:
        raise CheckpointError(f"checkpoint {path} is damaged: its part {damaged} fails its CRC check "
                              "(a bit flipped on disk or in a copy)")


def _unreadable(path: Path, exc: Exception) -> str:
    """Why torch could not read the file, in words: torch's own messages run over many lines."""
    with open(path, "rb") as fh:
        head = fh.read(len(_ZIP_MAGIC))
    if head != _ZIP_MAGIC:
        return "it is not a file torch.save wrote (no zip archive)"
    if not zipfile.is_zipfile(path):
        return "it is truncated or damaged (the zip archive has no end: was its copy or write cut short?)"
    _verify_checksums(path)
    if isinstance(exc, pickle.UnpicklingError):  # weights_only refused a pickled class
        return "it holds Python objects other than tensors and plain containers (not a recstack checkpoint)"
    return f"it is damaged ({_first_line(exc)})"


def _message(exc: BaseException) -> str:
    """A RecstackError's own message, or the type and first line of anything else."""
    from recstack.errors import RecstackError

    return str(exc) if isinstance(exc, RecstackError) else _first_line(exc)


def _first_line(exc: BaseException) -> str:
    """The exception's type and the first non-empty line of its message (torch's run over many)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def load_state(module: Any, state: Any, path: str | Path, what: str = "model") -> None:
    """module.load_state_dict(state), refused with one line when the state does not fit the module
    (other shapes or keys, or values that are not tensors)."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"checkpoint {path}: its {what} state does not fit the {what} "
                              f"({_first_line(exc)})") from None


def require_finite(state: dict[str, Any], path: str | Path) -> None:
    """Refuse model weights with NaN or inf (a diverged run's): they would score every input NaN.
    A float64 sum of float32 weights is finite exactly when every weight is: one pass, no copy."""
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.numel():
            if not math.isfinite(float(tensor.sum(dtype=torch.float64))):
                raise CheckpointError(f"checkpoint {path}: its model weight {name!r} holds NaN or inf "
                                      "(the training that wrote it diverged)")


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Completed periodic checkpoints, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir()
             if (m := _NAME.match(p.name)) and (p.is_file() or (p / META).is_file())]
    return [p for _, p in sorted(found)]


def latest(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a directory meaning its latest checkpoint."""
    path = Path(path)
    if path.is_dir() and (path / META).is_file():  # one sharded checkpoint
        return path
    if path.is_dir():
        newest = latest(path)
        if newest is None:
            raise CheckpointError(f"checkpoint directory {path} holds no checkpoint (ckpt-*.pt)")
        return newest
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file (give a checkpoint file or its directory)")
    return path


def prune(directory: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` periodic checkpoints (never best.pt)."""
    if keep <= 0:
        return
    for old in list_checkpoints(directory)[:-keep]:
        if old.is_dir():
            import shutil

            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
