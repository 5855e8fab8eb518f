"""One request on the wire and the recorder every completion goes to."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from time import perf_counter

import grpc

from .stats import new_histogram, record_seconds

Call = Callable[..., "grpc.aio.UnaryUnaryCall"]


async def send(call: Call, payload: bytes, timeout_s: float, metadata: Sequence[tuple[str, str]]) -> str | None:
    """None when the call succeeded, else the gRPC status code's name."""
    try:
        await call(payload, timeout=timeout_s, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a client-side failure is still a failed request
        return f"CLIENT_{type(exc).__name__}"
    return None


class Recorder:
    """Counts completions; only requests started (or scheduled) at or after
    `measure_start` are measured, earlier ones are warm-up."""

    def __init__(self, measure_start: float, progress: Callable[[int, int], None]) -> None:
        self.measure_start = measure_start
        self.histogram = new_histogram()
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.last_done = measure_start
        self._progress = progress
        self._completed = 0
        self._failed = 0

    def record(self, started: float, code: str | None) -> None:
        done = perf_counter()
        self._completed += 1
        if code is not None:
            self._failed += 1
        self._progress(self._completed, self._failed)
        if started < self.measure_start:
            return
        if code is None:
            self.ok += 1
            record_seconds(self.histogram, done - started)
        else:
            self.errors[code] += 1
        self.last_done = max(self.last_done, done)

    @property
    def elapsed_s(self) -> float:
        return self.last_done - self.measure_start
