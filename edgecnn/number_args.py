"""Number checks and the argparse types built on them, shared by every command line (train,
export, verify, serve, loadtest, the bench) and the load test plan. NaN fails every comparison,
so `x <= 0` alone would let it (and infinity) through."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

POSITIVE_SECONDS = "a positive number of seconds"
NON_NEGATIVE_SECONDS = "a number of seconds >= 0"
POSITIVE_RATE = "a positive number of requests per second"
POSITIVE_NUMBER = "a positive number"
NON_NEGATIVE_NUMBER = "a number >= 0"


def is_positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def is_non_negative(value: float) -> bool:
    return math.isfinite(value) and value >= 0


def require(ok: Callable[[float], bool], name: str, value: float, expected: str) -> None:
    if not ok(value):
        raise ValueError(f"{name} {value}: expected {expected}")


def float_arg(ok: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """An argparse type: a float that passes `ok` (argparse then exits 2 naming the flag)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
        return value

    return parse


positive_float = float_arg(is_positive, POSITIVE_NUMBER)
non_negative_float = float_arg(is_non_negative, NON_NEGATIVE_NUMBER)


def int_at_least(minimum: int, meaning: str = "") -> Callable[[str], int]:
    """An argparse type: an integer >= minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}{meaning}, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}{meaning}, not {value}")
        return value

    return parse


def positive_ints(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated positive integers, e.g. a concurrency sweep 1,4,16,64."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 1,4,16,64") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers")
    return values


def true_or_false(text: str) -> bool:
    """An argparse type: Triton's boolean flag values (true/false, also 1/0, yes/no, on/off)."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r}: expected true or false")
