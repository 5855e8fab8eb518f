"""The inline-or-worker-thread decision (server/inline.py) and the hand-off measurement."""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor

import pytest

from edgecnn.server.inline import NEVER, InlinePolicy, measure_handoff

US = 1e-6


def policy(in_flight: int, handoff_us: float = 150, max_us: float = 1000) -> InlinePolicy:
    return InlinePolicy(handoff_s=handoff_us * US, max_s=max_us * US, in_flight=lambda: in_flight)


@pytest.mark.parametrize(
    ("estimate_us", "requests", "running", "in_flight", "inline"),
    [
        (60, 1, 0, 1, True),  # cheaper than the hand-off, idle server
        (60, 1, 2, 40, True),  # cheaper than the hand-off: inline even on a busy server
        (400, 1, 0, 1, True),  # dearer than the hand-off but nothing else in flight
        (400, 3, 0, 3, True),  # a batch answering every request in flight
        (400, 1, 0, 2, False),  # another request waits for the loop
        (400, 1, 1, 1, False),  # a batch of this model runs on a worker thread
        (1500, 1, 0, 1, False),  # over the budget even when idle
    ],
)
def test_runs_inline(estimate_us, requests, running, in_flight, inline):
    assert policy(in_flight).runs_inline(estimate_us * US, requests, running) is inline


def test_unknown_estimate_and_zero_budget_never_run_inline():
    assert not policy(1).runs_inline(math.nan, 1, 0)
    assert not policy(1, max_us=0).runs_inline(1 * US, 1, 0)
    assert not NEVER.runs_inline(1 * US, 1, 0)


def test_measure_handoff_times_a_round_trip():
    async def measure() -> float:
        with ThreadPoolExecutor(max_workers=2) as executor:
            return await measure_handoff(executor, runs=5)

    seconds = asyncio.run(measure())
    assert 0 < seconds < 1.0
