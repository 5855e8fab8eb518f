"""One request on the wire and the recorder every completion goes to."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from time import perf_counter

import grpc

from .stats import new_histogram, record_seconds

Call = Callable[..., "grpc.aio.UnaryUnaryCall"]


class RequestFailed(Exception):
    """A request of another protocol (HTTP, http_requests.py) failed; `code` names how."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


async def send(call: Call, payload: bytes, timeout_s: float, metadata: Sequence[tuple[str, str]]) -> str | None:
    """None when the call succeeded, else the gRPC status code's name (or the other protocol's code)."""
    try:
        await call(payload, timeout=timeout_s, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    except RequestFailed as exc:
        return exc.code
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a client-side failure is still a failed request
        return f"CLIENT_{type(exc).__name__}"
    return None


def measured_window(start: float, end: float | None, last: float) -> float:
    """Seconds from the measurement's start to its end (--duration), or else to the last event (--requests)."""
    return (end if end is not None else last) - start


class Recorder:
    """Counts completions. Requests started (or scheduled) at or after `measure_start` are
    measured (latency, ok, errors); earlier ones are warm-up. Throughput counts instead every
    success that COMPLETES inside the window [measure_start, measure_end], or up to the last
    measured completion without a `measure_end`: counting by start time would add about one
    latency of idle time at each end of the window."""

    def __init__(self, measure_start: float, measure_end: float | None, progress: Callable[[int, int], None]) -> None:
        self.measure_start = measure_start
        self.measure_end = measure_end
        self.histogram = new_histogram()
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.last_done = measure_start
        self._progress = progress
        self._completed = 0
        self._failed = 0
        self._measured_ok_in_window = 0
        # Few: only the warm-up requests still in flight when measurement starts end here.
        self._warmup_ok_done_after_start: list[float] = []

    def record(self, started: float, code: str | None) -> None:
        done = perf_counter()
        self._completed += 1
        if code is not None:
            self._failed += 1
        self._progress(self._completed, self._failed)
        if started < self.measure_start:
            if code is None and done >= self.measure_start:
                self._warmup_ok_done_after_start.append(done)
            return
        if code is None:
            self.ok += 1
            record_seconds(self.histogram, done - started)
            if self.measure_end is None or done <= self.measure_end:
                self._measured_ok_in_window += 1
        else:
            self.errors[code] += 1
        self.last_done = max(self.last_done, done)

    @property
    def window_s(self) -> float:
        return measured_window(self.measure_start, self.measure_end, self.last_done)

    @property
    def window_ok(self) -> int:
        """Successes completed inside the window, warm-up requests included."""
        end = self.measure_start + self.window_s
        return self._measured_ok_in_window + sum(done <= end for done in self._warmup_ok_done_after_start)
