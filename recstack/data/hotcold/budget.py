"""The sizes the hot/cold commands take: a memory budget in bytes ("256MiB"), a sample fraction, and the
rows a budget holds (an fp32 row plus its optimizer state)."""

from __future__ import annotations

import re

import numpy as np

from recstack.errors import DataError

FP32_BYTES = 4

# ---------------------------------------------------------------------------------------------
# Arguments: byte sizes and fractions
# ---------------------------------------------------------------------------------------------

_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
    "t": 1 << 40, "tib": 1 << 40, "tb": 10**12,
}  # fmt: skip
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int) -> int:
    """'256MiB' -> 268435456, '1GB' -> 10**9, '1.5GiB', '4096', 4096. KiB/MiB/GiB/TiB (and bare
    K/M/G/T) are powers of 1024, KB/MB/GB/TB powers of 1000."""
    if isinstance(text, (int, np.integer)):
        if text < 0:
            raise DataError(f"a byte size must be >= 0, got {text}")
        return int(text)
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise DataError(f"cannot read the byte size {text!r} (write e.g. 4096, 1MiB, 256MiB, 1GB)")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_fraction(text: str | float) -> float:
    """'5%' -> 0.05, '0.05' -> 0.05; must lie in (0, 1]."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise DataError(f"cannot read the fraction {text!r} (write e.g. 5% or 0.05)") from None
    if not 0 < value <= 1:
        hint = " (write 5% for five percent)" if value > 1 and not raw.endswith("%") else ""
        raise DataError(f"a sample fraction must be in (0, 1], got {text!r}{hint}")
    return value


def row_bytes(dim: int, state_bytes_per_row: int = 4) -> int:
    """Bytes one hot row costs: fp32 weights plus optimizer state."""
    if dim < 1 or state_bytes_per_row < 0:
        raise DataError(f"need dim >= 1 and state bytes per row >= 0 (got {dim}, {state_bytes_per_row})")
    return dim * FP32_BYTES + state_bytes_per_row


def capacity_rows(budget_bytes: int, dim: int, state_bytes_per_row: int = 4) -> int:
    """K: how many hot rows fit the budget."""
    return int(budget_bytes) // row_bytes(dim, state_bytes_per_row)
