"""The inline-or-worker-thread decision (server/inline.py)."""

from __future__ import annotations

import math

import pytest
from edgecnn.server.inline import inline_rows, runs_inline

US = 1e-6


@pytest.mark.parametrize(
    ("estimate_us", "max_us", "running", "inline"),
    [
        (60, 1000, 0, True),  # LeNet-5: far within the budget
        (1000, 1000, 0, True),  # exactly the budget
        (3800, 1000, 0, False),  # MobileNetV2: over the budget
        (60, 1000, 1, False),  # a batch of the model is on a worker thread: stay behind it
        (60, 0, 0, False),  # a zero budget turns inline runs off
        (math.nan, 1000, 0, False),  # no warm-up time known
    ],
)
def test_runs_inline(estimate_us, max_us, running, inline):
    assert runs_inline(estimate_us * US, max_us * US, running) is inline


@pytest.mark.parametrize(
    ("estimate_us", "calls_open", "inline"),
    [
        (600, 1, True),  # MobileNetV2 alone in the server: the loop has nothing else to do
        (600, 2, False),  # another call open: the worker thread lets the loop serve it meanwhile
        (2500, 1, False),  # over the idle budget too
        (60, 5, True),  # within the first budget, whatever the load
    ],
)
def test_the_idle_budget_applies_to_a_call_alone(estimate_us, calls_open, inline):
    assert runs_inline(estimate_us * US, 400 * US, 0, 2000 * US, lambda: calls_open) is inline
    assert not runs_inline(estimate_us * US, 400 * US, 1, 2000 * US, lambda: calls_open), "a batch on a worker thread first"


def test_inline_rows():
    assert inline_rows(60 * US, 1000 * US) == 16
    assert inline_rows(3800 * US, 1000 * US) == 0
    assert inline_rows(math.nan, 1000 * US) == 0
