"""One client process's share of a step, and the pool of spawned processes that run the
shares side by side (--processes P) so a single Python process does not cap the load."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing as mp
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from time import perf_counter
from typing import Any

from .grpc_requests import Call, Recorder
from .closed import closed_loop
from .openloop import open_loop
from .stats import WorkerResult
from .workload import Target

CONNECT_TIMEOUT_S = 10.0
READY = "ready"
SPAWN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class WorkerSpec:
    target: Target
    payloads: list[bytes]
    mode: str  # "closed" | "open"
    concurrency: int  # this process's workers (closed loop)
    rate: float  # this process's arrivals per second (open loop)
    warmup_s: float
    duration_s: float | None
    requests: int | None  # this process's measured requests
    start_at: float  # wall-clock (time.time()) moment all processes begin together
    seed: int


class Slots:
    """Progress counters, two per process (completed, failed); shared memory across processes."""

    def __init__(self, processes: int, context: Any = None) -> None:
        self.values = (context or mp).Array("q", 2 * processes, lock=False)

    def setter(self, index: int):
        values = self.values

        def set_progress(completed: int, failed: int) -> None:
            values[2 * index] = completed
            values[2 * index + 1] = failed

        return set_progress

    def reset(self) -> None:
        for i in range(len(self.values)):
            self.values[i] = 0

    def totals(self) -> tuple[int, int]:
        return sum(self.values[0::2]), sum(self.values[1::2])


async def _run(spec: WorkerSpec, slots: Slots, index: int) -> WorkerResult:
    target = spec.target
    if target.protocol == "http":
        from .http_requests import http_call

        async with http_call(target) as call:
            await asyncio.sleep(max(0.0, spec.start_at - time.time()))
            return await measure(spec, call, slots.setter(index))
    async with contextlib.AsyncExitStack() as stack:
        own = target.connections > 1
        channels = [await stack.enter_async_context(target.aio_channel(own_connection=own)) for _ in range(target.connections)]
        try:
            await asyncio.wait_for(asyncio.gather(*(channel.channel_ready() for channel in channels)), CONNECT_TIMEOUT_S)
        except TimeoutError:
            pass  # every request will fail and be counted with its status code
        calls = [channel.unary_unary(target.method) for channel in channels]  # bytes in, bytes out: no protobuf work here
        call = calls[0] if len(calls) == 1 else in_turn(calls)
        await asyncio.sleep(max(0.0, spec.start_at - time.time()))
        return await measure(spec, call, slots.setter(index))


def in_turn(calls: list[Call]) -> Call:
    """One call that sends each request through the next of `calls` (one per connection)."""
    turn = itertools.cycle(calls)

    def call(payload: bytes, **kwargs: Any) -> Any:
        return next(turn)(payload, **kwargs)

    return call


async def measure(spec: WorkerSpec, call: Call, progress: Callable[[int, int], None]) -> WorkerResult:
    """Run this process's share of a step through `call`, starting now."""
    target = spec.target
    cpu0, start = time.process_time(), perf_counter()
    measure_end = start + spec.warmup_s + spec.duration_s if spec.duration_s is not None else None
    recorder = Recorder(start + spec.warmup_s, measure_end, progress)
    counts = None
    if spec.mode == "closed":
        await closed_loop(call, spec.payloads, spec.concurrency, recorder, spec.requests, target.timeout_s, target.metadata)
    else:
        counts = await open_loop(
            call, spec.payloads, spec.rate, start, recorder, spec.requests, target.timeout_s, target.metadata, spec.seed
        )
    cpu_s, wall_s = time.process_time() - cpu0, perf_counter() - start
    return WorkerResult(
        histogram=recorder.histogram.encode(),
        ok=recorder.ok,
        errors=dict(recorder.errors),
        window_s=recorder.window_s,
        window_ok=recorder.window_ok,
        cpu_s=cpu_s,
        wall_s=wall_s,
        scheduled=counts.scheduled if counts else 0,
        arrival_window_s=counts.window_s if counts else 0.0,
        sent=counts.sent if counts else 0,
        send_window_s=counts.send_window_s if counts else 0.0,
        max_send_lag_s=counts.max_send_lag_s if counts else 0.0,
    )


def run_worker(spec: WorkerSpec, slots: Slots, index: int) -> WorkerResult:
    return asyncio.run(_run(spec, slots, index))


def _serve(conn: Connection, slots: Slots, index: int) -> None:
    """A pool process: run each spec that arrives, answer with its result (None stops it)."""
    conn.send(READY)
    try:
        while (spec := conn.recv()) is not None:
            try:
                conn.send(run_worker(spec, slots, index))
            except Exception:  # noqa: BLE001 - the parent reports it
                conn.send(traceback.format_exc())
    except KeyboardInterrupt:
        pass  # Ctrl-C reaches the whole process group; the parent reports it


class WorkerPool:
    """P spawned processes, started once and reused for every step."""

    def __init__(self, processes: int) -> None:
        context = mp.get_context("spawn")  # fork would copy gRPC's threads and state
        self.slots = Slots(processes, context)
        self._conns: list[Connection] = []
        self._procs = []
        for index in range(processes):
            parent, child = context.Pipe()
            proc = context.Process(target=_serve, args=(child, self.slots, index), daemon=True, name=f"loadtest-{index}")
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        for index, conn in enumerate(self._conns):  # imported and listening: steps start on time
            try:
                started = conn.poll(SPAWN_TIMEOUT_S) and conn.recv() == READY
            except EOFError:
                started = False
            if not started:
                self.close()
                raise RuntimeError(f"load test process {index} did not start within {SPAWN_TIMEOUT_S:g} s")

    @property
    def size(self) -> int:
        return len(self._conns)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self, specs: list[WorkerSpec]) -> None:
        if len(specs) > len(self._conns):
            raise ValueError(f"{len(specs)} shares for {len(self._conns)} processes")
        self.slots.reset()
        self._pending = list(range(len(specs)))
        self._results: dict[int, WorkerResult] = {}
        for index, spec in enumerate(specs):
            self._conns[index].send(spec)

    def poll(self, timeout_s: float) -> list[WorkerResult] | None:
        """The step's results once every process answered; None while some still run."""
        ready = wait([self._conns[i] for i in self._pending], timeout_s)
        for conn in ready:
            index = self._conns.index(conn)
            try:
                answer = conn.recv()
            except EOFError:
                raise RuntimeError(f"load test process {index} died (exit code {self._procs[index].exitcode})") from None
            if isinstance(answer, str):
                raise RuntimeError(f"load test process {index} failed:\n{answer}")
            self._results[index] = answer
            self._pending.remove(index)
        return None if self._pending else [self._results[i] for i in sorted(self._results)]

    def close(self) -> None:
        for conn, proc in zip(self._conns, self._procs):
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
            conn.close()
