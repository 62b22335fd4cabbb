"""Machine-readable reports: every command can write one JSON file with what it measured, the
resolved config, library versions and the git commit, so benchmarks and checks read figures
instead of parsing prints."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from recstack.errors import ConfigError


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, Any]:
    import torch

    import recstack

    return {
        "recstack": recstack.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "git_commit": _git_commit(),
    }


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def new_report(command: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    report: dict[str, Any] = {
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions(),
        "machine": machine(),
    }
    if config is not None:
        report["config"] = config
    return report


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def check_output_path(path: str | Path | None, option: str = "--report", example: str = "report.json") -> None:
    """Refuse an output file (`option`) that could not be written, before the work whose figures it
    would hold: a directory, or a folder that cannot be made or written to."""
    if not path:
        return
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory; name a file (e.g. {path / example})")
    folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: cannot write under {folder} ("
                          f"{'not a directory' if not folder.is_dir() else 'no permission'})")


def write_report(path: str | Path | None, report: dict[str, Any]) -> None:
    """Write atomically (a reader never sees half a report); a write that fails leaves nothing behind."""
    if not path:
        return
    check_output_path(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(report, indent=2, default=_default) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
