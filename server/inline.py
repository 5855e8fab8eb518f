"""When a batch runs on the event loop thread instead of an executor (worker) thread.

Handing an ONNX Runtime call to a worker thread and waking the event loop with its result costs
a round trip through the executor: 100-200 us on a small VM, more than LeNet-5's whole forward
pass. Running inline skips it but blocks the loop (and every other request) for the batch's
compute time. So a batch runs inline when its estimated time (rows x the model's warm batch-1
time, measured at load) is within the budget and either

- costs no more than the hand-off itself (measured at start-up), so even a busy loop gains, or
- nothing else is in flight on the server, so blocking the loop delays no one.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from time import perf_counter

HANDOFF_RUNS = 21


@dataclass(frozen=True)
class InlinePolicy:
    handoff_s: float  # median round trip of a no-op through the executor
    max_s: float  # the longest a batch may block the loop; 0: never inline
    in_flight: Callable[[], int]  # RPCs being handled now, server-wide

    def runs_inline(self, estimate_s: float, requests: int, running: int) -> bool:
        """estimate_s: the batch's expected compute time; requests: RPCs it answers;
        running: this model's batches now on worker threads."""
        if not estimate_s <= self.max_s:  # also false for an unknown (NaN) estimate
            return False
        return estimate_s <= self.handoff_s or (running == 0 and self.in_flight() <= requests)


NEVER = InlinePolicy(handoff_s=0.0, max_s=0.0, in_flight=lambda: 0)


async def measure_handoff(executor: Executor, runs: int = HANDOFF_RUNS) -> float:
    """Median seconds from submitting a no-op to the executor to the loop resuming with it."""
    loop = asyncio.get_running_loop()
    times = []
    for _ in range(runs):
        start = perf_counter()
        await loop.run_in_executor(executor, int)
        times.append(perf_counter() - start)
    return statistics.median(times)
