"""Closed loop: N workers, each sending its next request as soon as the previous one returns."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from time import perf_counter

from .grpc_requests import Call, Recorder, send


async def closed_loop(
    call: Call,
    payloads: Sequence[bytes],
    concurrency: int,
    recorder: Recorder,
    max_requests: int | None,
    timeout_s: float,
    metadata: Sequence[tuple[str, str]],
) -> None:
    """Run until recorder.measure_end (perf_counter time) or until `max_requests` measured
    requests have been sent; requests sent before recorder.measure_start are warm-up."""
    measure_end = recorder.measure_end
    issued = 0

    async def worker(first: int) -> None:
        nonlocal issued
        k = first
        while True:
            now = perf_counter()
            if measure_end is not None and now >= measure_end:
                return
            if max_requests is not None and now >= recorder.measure_start:
                if issued >= max_requests:
                    return
                issued += 1
            code = await send(call, payloads[k % len(payloads)], timeout_s, metadata)
            recorder.record(now, code)
            k += 1

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
