"""Number checks shared by the command lines (train, loadtest) and the load test plan. NaN fails every
comparison, so `x <= 0` alone would let it (and infinity) through."""

from __future__ import annotations

import math
from collections.abc import Callable

POSITIVE_SECONDS = "a positive number of seconds"
NON_NEGATIVE_SECONDS = "a number of seconds >= 0"
POSITIVE_RATE = "a positive number of requests per second"


def is_positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def is_non_negative(value: float) -> bool:
    return math.isfinite(value) and value >= 0


def require(ok: Callable[[float], bool], name: str, value: float, expected: str) -> None:
    if not ok(value):
        raise ValueError(f"{name} {value}: expected {expected}")
