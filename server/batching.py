"""Dynamic batching per model version.

Queued requests run as batches: concatenated, one ONNX Runtime call, logits scattered back in
order; a request is never split across batches. `slots` is the number of ONNX Runtime calls
that can compute at once (the worker threads, compute_threads.py; one on a GPU with batching on:
serving_config.py); twice
as many batches may be in flight, so that a worker finishing a batch finds the next one already
queued instead of idling until the event loop gets round to forming it.

The policy is work-conserving: a free place takes its share of what is pending at once (the
pending rows spread evenly over the free places, up to max_batch_size) and never holds a request
back waiting for a fuller batch. Requests that arrive while every place is taken merge into the
next batches, so batches grow with the load by themselves, and while fewer requests wait than
there are places each still gets its own (on a CPU, two rows on one core take about as long as
one row on each of two cores). A positive max_queue_delay_microseconds turns batching on, as in
Triton, but is not waited out: waiting for more rows while a slot is free idles a core (an
earlier batcher that waited served 0.84-0.87x the requests of batching off at concurrency 4 on
the 2-core machine of docs/benchmarks.md).
With batching off (max batch <= 1 or no delay) every request is its own ONNX Runtime call.

A request runs at once on the event loop thread (inline.py) when nothing is pending and none of
the model's batches is on a worker thread; pending requests are then taken in batches that fit
the inline budget, one after another, yielding to the event loop between them (so that health
checks and socket reads are not held up by a long queue of inline batches).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from collections.abc import Callable
from time import monotonic, perf_counter, perf_counter_ns
from typing import NamedTuple

import numpy as np

from .compute_threads import ComputeThreads
from .errors import QueueFull, Unavailable
from .inline import inline_rows, runs_inline, within_budget
from .metrics import ModelMetrics
from .model_version import ModelVersion
from .statistics import VersionStatistics

log = logging.getLogger(__name__)


class Computed(NamedTuple):
    """A request's logits, the ns it waited for its batch and the ns its batch took (statistics.py)."""

    logits: np.ndarray
    queue_ns: int
    infer_ns: int


class _Item:
    __slots__ = ("x", "future", "enqueued", "queue_ns")

    def __init__(self, x: np.ndarray, future: asyncio.Future, enqueued: float) -> None:
        self.x = x
        self.future = future
        self.enqueued = enqueued
        self.queue_ns = 0


class Batcher:
    """Runs a model version's requests; every method but _timed_run and _timed_compute runs on
    the event loop, and so do all writes to `stats` (the worker threads only measure: statistics.py)."""

    def __init__(
        self, mv: ModelVersion, threads: ComputeThreads, metrics: ModelMetrics, calls_open: Callable[[], int] = lambda: 1
    ) -> None:
        """calls_open: how many calls the server has open now (inline.py's idle budget applies at 1)."""
        serving = mv.serving
        self.mv = mv
        self._threads = threads
        self._metrics = metrics
        self.stats = VersionStatistics()  # Triton's ModelStatistics of this version
        self._max_queue = serving.max_queue
        self.inline_max_s = serving.inline_max_s
        self.inline_idle_max_s = serving.inline_idle_max_s
        self._calls_open = calls_open
        self.max_batch = serving.max_batch_size
        self.batching = serving.dynamic_batching
        self.slots = serving.compute_slots
        self.max_in_flight = serving.batches_in_flight
        self._pending: collections.deque[_Item] = collections.deque()
        self._pending_rows = 0
        self._running = 0  # batches on or queued for worker threads
        self._scheduled = False  # a dispatch is queued on the loop (gathers same-tick arrivals)
        # The off path's calls handed to the worker threads, queued or running (its queue bound counts them).
        self._direct: set[asyncio.Future] = set()
        self._stopped = False  # the grace is over: calls cut short answer UNAVAILABLE
        self._queue_full = (
            f"model {mv.name!r} version {mv.version}: queue full ({self._max_queue} requests waiting); retry later"
        )

    @property
    def idle(self) -> bool:
        """Nothing queued or computing."""
        return not (self._pending or self._running or self._direct)

    async def stop(self, deadline: float) -> None:
        """Return when every queued and running batch is done, or at the deadline (time.monotonic)
        failing the requests still queued with UNAVAILABLE, so that their clients can retry elsewhere."""
        self._dispatch()
        while (self._pending or self._running or self._direct) and monotonic() < deadline:
            await asyncio.sleep(0.001)
        left = len(self._pending) + len(self._direct)
        if left:
            log.warning("%s v%d: shutting down with %d requests still queued or running", self.mv.name, self.mv.version, left)
        self._stopped = True
        for call in list(self._direct):
            call.cancel()  # one not yet on a worker thread never runs
        if self._pending:
            dropped = list(self._pending)
            self._pending.clear()
            self._pending_rows = 0
            self._metrics.queue_depth.dec(len(dropped))
            self._fail(dropped, self._shutting_down())

    def _shutting_down(self) -> Unavailable:
        return Unavailable(f"model {self.mv.name!r} is shutting down; retry on another replica")

    def runs_now(self, rows: int, call_counted: bool = True) -> bool:
        """A request of `rows` rows runs at once on the event loop (run_now): nothing to merge it
        with, no worker thread to hand over to, and within an inline budget (inline.py).
        call_counted: the request's call is already among the server's open calls."""
        return not self._pending and runs_inline(
            self._estimate_s(rows), self.inline_max_s, self._running + len(self._direct),
            self.inline_idle_max_s, self._calls_open, 1 if call_counted else 0,
        )  # fmt: skip

    def _estimate_s(self, rows: int) -> float:
        return rows * self.mv.batch1_s

    async def _still_alone(self, rows: int) -> bool:
        """A call within the idle budget only (inline.py) still runs at once after one turn of
        the loop, in which the calls that have already arrived are taken and counted open."""
        await asyncio.sleep(0)
        return self.runs_now(rows)

    def run_now(self, x: np.ndarray) -> Computed:
        """x's logits, computed on the event loop now (where runs_now says so)."""
        self._metrics.queue_wait.observe(0.0)
        out, took = self._timed_compute(x)
        self.stats.executed(len(x), took)
        return Computed(out, 0, took)

    async def infer(self, x: np.ndarray) -> Computed:
        """Logits for x: float32 (N, C, H, W), N within the model's max batch size."""
        rows = len(x)
        if self.runs_now(rows) and (within_budget(self._estimate_s(rows), self.inline_max_s) or await self._still_alone(rows)):
            return self.run_now(x)
        if not self.batching:
            return await self._infer_direct(x)
        if len(self._pending) >= self._max_queue:
            raise QueueFull(self._queue_full)
        loop = asyncio.get_running_loop()
        item = _Item(x, loop.create_future(), perf_counter())
        self._pending.append(item)
        self._pending_rows += len(x)
        self._metrics.queue_depth.inc()
        self._schedule()
        try:
            return await item.future
        except asyncio.CancelledError:  # the client's deadline passed or it went away
            self._forget(item)
            raise

    def _forget(self, item: _Item) -> None:
        """Take a cancelled request out of the queue at once, so it holds no place under max_queue."""
        try:
            self._pending.remove(item)
        except ValueError:  # already taken into a batch
            return
        self._pending_rows -= len(item.x)
        self._metrics.queue_depth.dec()

    async def _infer_direct(self, x: np.ndarray) -> Computed:
        if len(self._direct) >= self._max_queue:
            raise QueueFull(self._queue_full)
        call = self._threads.submit(self._timed_run, x, perf_counter())
        self._direct.add(call)
        try:
            out, waited, took = await call
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._stopped and not (task and task.cancelling()):  # cut short by stop(), not by the client
                raise self._shutting_down() from None
            raise
        finally:
            self._direct.discard(call)
        self.stats.executed(len(x), took)
        return Computed(out, waited, took)

    def _timed_run(self, x: np.ndarray, enqueued: float) -> tuple[np.ndarray, int, int]:
        """On a worker thread: the logits, the ns waited for the thread and the ns computed."""
        waited = perf_counter() - enqueued
        self._metrics.queue_wait.observe(waited)
        out, took = self._timed_compute(x)
        return out, int(waited * 1e9), took

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        """Start batches while requests are pending and fewer than max_in_flight run; after a
        batch that ran inline, yield to the event loop and continue in a later callback."""
        self._scheduled = False
        while self._pending and self._running < self.max_in_flight:
            if self._start_batch():
                if self._pending:
                    self._schedule()
                return

    def _take_batch(self) -> list[_Item]:
        """The oldest pending requests: as many rows as run inline within the budget when no
        batch is on a worker thread, else up to one free place's share of the pending rows."""
        rows_inline = inline_rows(self.mv.batch1_s, self.inline_max_s) if self._running == 0 else 0
        if rows_inline:
            share = min(self.max_batch, rows_inline)
        else:
            share = min(self.max_batch, -(-self._pending_rows // (self.max_in_flight - self._running)))
        batch: list[_Item] = []
        rows = 0
        while self._pending:
            item = self._pending[0]
            n = len(item.x)
            if batch and rows + n > share:
                break
            self._pending.popleft()
            self._pending_rows -= n
            self._metrics.queue_depth.dec()
            if item.future.done():  # cancelled: the client's deadline passed or it went away
                continue
            batch.append(item)
            rows += n
        return batch

    def _start_batch(self) -> bool:
        """Start the next batch; True when it ran inline (on the loop, now)."""
        batch = self._take_batch()
        if not batch:
            return False
        start = perf_counter()
        for item in batch:
            waited = start - item.enqueued
            self._metrics.queue_wait.observe(waited)
            item.queue_ns = int(waited * 1e9)
        try:
            x = batch[0].x if len(batch) == 1 else np.concatenate([item.x for item in batch])
        except MemoryError as exc:
            self._fail_logged(batch, exc)
            return False
        merged = int((perf_counter() - start) * 1e9) if len(batch) > 1 else 0
        if runs_inline(self._estimate_s(len(x)), self.inline_max_s, self._running):
            try:
                out, took = self._timed_compute(x)
            except Exception as exc:
                self._fail_logged(batch, exc)
            else:
                self.stats.executed(len(x), took, merged)
                self._deliver(batch, out, took)
            return True
        try:
            done = self._threads.submit(self._timed_compute, x)
        except RuntimeError as exc:  # the worker threads are shut down
            self._fail(batch, Unavailable(f"model {self.mv.name!r} is shutting down: {exc}"))
            return False
        self._running += 1
        done.add_done_callback(functools.partial(self._finish, batch, merged))
        return False

    def _finish(self, batch: list[_Item], merged: int, done: asyncio.Future) -> None:
        self._running -= 1
        if done.cancelled():
            self._fail(batch, self._shutting_down())
        elif (exc := done.exception()) is not None:
            self._fail_logged(batch, exc)
        else:
            out, took = done.result()
            self.stats.executed(len(out), took, merged)
            self._deliver(batch, out, took)
        self._dispatch()

    @staticmethod
    def _deliver(batch: list[_Item], out: np.ndarray, took: int) -> None:
        offset = 0
        for item in batch:
            n = len(item.x)
            if not item.future.done():
                item.future.set_result(Computed(out[offset : offset + n], item.queue_ns, took))
            offset += n

    def _fail_logged(self, batch: list[_Item], exc: BaseException) -> None:
        log.error("%s v%d: batch of %d requests failed", self.mv.name, self.mv.version, len(batch), exc_info=exc)
        self._fail(batch, exc)

    @staticmethod
    def _fail(batch: list[_Item], exc: BaseException) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(exc)

    def _timed_compute(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """The logits and the ns ONNX Runtime took (on the loop or a worker thread)."""
        start = perf_counter_ns()
        out = self.mv.run(x)
        took = perf_counter_ns() - start
        self._metrics.inference.observe(took / 1e9)
        self._metrics.batch_size.observe(len(x))
        return out, took
