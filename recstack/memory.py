"""Capacity guards: refuse work whose memory or disk need is known up front and cannot fit, with one
line that says how much it needs and how much there is, instead of an allocator traceback, the
kernel's OOM killer (exit 137) halfway through, or a disk filled to the last byte.

Memory available is the smaller of the kernel's MemAvailable and what the cgroup (container) limit
leaves. Where neither can be read (not Linux), the guards let the work go ahead."""

from __future__ import annotations

import shutil
from pathlib import Path

from recstack.errors import RecstackError


class CapacityError(RecstackError):
    """Work that needs more memory or disk than this machine has."""


def format_bytes(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.3g}{unit}"
    return f"{n}B"


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_headroom(root: str = "/sys/fs/cgroup") -> int | None:
    """The cgroup's limit minus its usage (v2, then v1); None when unlimited or unreadable."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit_text = Path(root, limit_file).read_text().strip()
            if limit_text == "max":
                return None
            limit, usage = int(limit_text), int(Path(root, usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit >= 1 << 60:  # v1 writes "unlimited" as a page-rounded 2**63
            return None
        return max(limit - usage, 0)
    return None


def available_memory() -> int | None:
    """Bytes that a new allocation can still get without swapping or the OOM killer; None if unknown."""
    known = [b for b in (_meminfo_available(), _cgroup_headroom()) if b is not None]
    return min(known) if known else None


def require_memory(nbytes: float, what: str, hint: str | None = None) -> None:
    """Raise CapacityError if `what` needs more than the memory available now."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise CapacityError(f"{what} needs {format_bytes(nbytes)} of memory, but {format_bytes(available)} is "
                            "available", hint)


def require_disk(path: str | Path, nbytes: float, what: str, hint: str | None = None) -> None:
    """Raise CapacityError if `what` would write more than the free space where `path` goes."""
    where = Path(path).resolve()
    while not where.exists() and where != where.parent:  # the output directory may not exist yet
        where = where.parent
    free = shutil.disk_usage(where).free
    if nbytes > free:
        raise CapacityError(f"{what} needs {format_bytes(nbytes)} of disk, but {format_bytes(free)} is free "
                            f"at {where}", hint)
