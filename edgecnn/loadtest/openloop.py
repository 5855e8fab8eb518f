"""Open loop: Poisson arrivals at a fixed rate, whatever the server's speed.

Latency runs from each request's SCHEDULED send time, so a client that falls behind (or a
server that stalls) shows up in the latencies instead of silently lowering the load
(no coordinated omission).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from time import perf_counter

from .calls import Call, Recorder, send


async def open_loop(
    call: Call,
    payloads: Sequence[bytes],
    rate: float,
    start: float,
    recorder: Recorder,
    measure_end: float | None,
    max_requests: int | None,
    timeout_s: float,
    metadata: Sequence[tuple[str, str]],
    seed: int,
) -> int:
    """Send until `measure_end` or `max_requests` measured arrivals; returns how many
    arrivals were scheduled in the measured window."""
    if rate <= 0:
        raise ValueError(f"rate {rate}: expected a positive number of requests per second")
    rng = random.Random(seed)
    in_flight: set[asyncio.Task] = set()
    scheduled = 0
    k = 0

    async def one(at: float, payload: bytes) -> None:
        recorder.record(at, await send(call, payload, timeout_s, metadata))

    at = start
    while True:
        at += rng.expovariate(rate)
        if measure_end is not None and at >= measure_end:
            break
        measured = at >= recorder.measure_start
        if max_requests is not None and measured and scheduled >= max_requests:
            break
        scheduled += measured
        delay = at - perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(at, payloads[k % len(payloads)]))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        k += 1
    if in_flight:
        await asyncio.gather(*in_flight)
    return scheduled
