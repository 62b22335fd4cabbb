"""Argument types for the command line: a value out of range is refused by argparse with one line
that names the option and what it accepts, before any work starts (never a traceback later)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

SEED_MAX = 2**32 - 1  # the range every generator used here accepts (numpy's legacy seeding is the narrowest)


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def int_in(low: int | None = None, high: int | None = None, what: str = "an integer") -> Callable[[str], int]:
    """An integer in [low, high] (either bound may be open-ended)."""

    def parse(text: str) -> int:
        value = _int(text, what)
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    parse.__name__ = what  # argparse names the type in its "invalid <type> value" fallback
    return parse


positive_int = int_in(1, what="a positive integer")
nonnegative_int = int_in(0, what="an integer >= 0")
seed = int_in(0, SEED_MAX, what=f"a seed in [0, {SEED_MAX}]")
port = int_in(0, 65535, what="a port in [0, 65535]")


def float_in(low: float | None = None, high: float | None = None, *, low_open: bool = False,
             what: str = "a number") -> Callable[[str], float]:
    """A finite float in [low, high] (or (low, high] with low_open): NaN and infinities are refused."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        below = low is not None and (value <= low if low_open else value < low)
        if not math.isfinite(value) or below or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what
    return parse


finite_float = float_in(what="a finite number")
positive_float = float_in(0.0, low_open=True, what="a finite number > 0")
nonnegative_float = float_in(0.0, what="a finite number >= 0")
