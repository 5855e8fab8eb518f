"""Open loop: Poisson arrivals at a fixed rate, whatever the server's speed.

Latency runs from each request's SCHEDULED send time, so a client that falls behind (or a
server that stalls) shows up in the latencies instead of silently lowering the load
(no coordinated omission). The real send times are counted too: a client that cannot keep
up shows a send rate below the asked rate.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from time import perf_counter

from edgecnn.number_args import POSITIVE_RATE, is_positive, require

from .grpc_requests import Call, Recorder, measured_window, send


@dataclass(frozen=True)
class OpenLoopCounts:
    scheduled: int  # arrivals scheduled in the measured window
    window_s: float  # the measured window: up to the duration's end or the last arrival
    sent: int  # measured arrivals really handed to gRPC inside the send window
    send_window_s: float  # up to the duration's end, or the last real send with --requests
    max_send_lag_s: float  # the longest a measured request left after its scheduled time


class _Sends:
    """Real send times of the measured arrivals."""

    def __init__(self, measure_start: float, measure_end: float | None) -> None:
        self.measure_start, self.measure_end = measure_start, measure_end
        self.count = 0
        self.last = measure_start
        self.max_lag = 0.0

    def sent(self, scheduled_at: float) -> None:
        now = perf_counter()
        if scheduled_at < self.measure_start:
            return
        self.max_lag = max(self.max_lag, now - scheduled_at)
        if self.measure_end is None or now < self.measure_end:
            self.count += 1
            self.last = max(self.last, now)

    @property
    def window_s(self) -> float:
        return measured_window(self.measure_start, self.measure_end, self.last)


async def open_loop(
    call: Call,
    payloads: Sequence[bytes],
    rate: float,
    start: float,
    recorder: Recorder,
    max_requests: int | None,
    timeout_s: float,
    metadata: Sequence[tuple[str, str]],
    seed: int,
) -> OpenLoopCounts:
    """Send until recorder.measure_end or `max_requests` measured arrivals."""
    require(is_positive, "rate", rate, POSITIVE_RATE)
    measure_end = recorder.measure_end
    rng = random.Random(seed)
    in_flight: set[asyncio.Task] = set()
    sends = _Sends(recorder.measure_start, measure_end)
    scheduled = 0
    last_arrival = recorder.measure_start
    k = 0

    async def one(at: float, payload: bytes) -> None:
        sends.sent(at)  # the task runs now: the request goes to gRPC now, however late
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
        task = asyncio.create_task(one(at, payloads[k % len(payloads)]))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        k += 1
    if in_flight:
        await asyncio.gather(*in_flight)
    window_s = measured_window(recorder.measure_start, measure_end, last_arrival)
    return OpenLoopCounts(scheduled, window_s, sends.count, sends.window_s, sends.max_lag)
