"""Open loop: Poisson arrivals at a fixed rate, whatever the server's speed.

Latency runs from each request's SCHEDULED send time, so a client that falls behind (or a
server that stalls) shows up in the latencies instead of silently lowering the load
(no coordinated omission).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from collections.abc import Sequence
from time import perf_counter

from .calls import Call, Recorder, send


@dataclass(frozen=True)
class OpenLoopCounts:
    scheduled: int  # arrivals scheduled in the measured window
    sent_on_time: int  # of those, sent before the window closed (a lagging client sends fewer)
    window_s: float  # the measured window: up to the duration's end or the last arrival


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
) -> OpenLoopCounts:
    """Send until `measure_end` or `max_requests` measured arrivals."""
    if rate <= 0:
        raise ValueError(f"rate {rate}: expected a positive number of requests per second")
    rng = random.Random(seed)
    in_flight: set[asyncio.Task] = set()
    scheduled = sent_on_time = 0
    last_arrival = recorder.measure_start
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
        delay = at - perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if measured:
            scheduled += 1
            last_arrival = at
            sent_on_time += measure_end is None or perf_counter() < measure_end
        task = asyncio.create_task(one(at, payloads[k % len(payloads)]))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        k += 1
    if in_flight:
        await asyncio.gather(*in_flight)
    window_s = (measure_end if measure_end is not None else last_arrival) - recorder.measure_start
    return OpenLoopCounts(scheduled, sent_on_time, window_s)
