"""Dynamic batching per model version.

Concurrent requests are queued, gathered until the batch holds max_batch_size rows or the
oldest request has waited max_queue_delay, concatenated, run in ONE ONNX Runtime call on an
executor thread, and the logits are scattered back in order. A request is never split across
batches. With batching off (max batch <= 1 or no delay) every request is its own ONNX Runtime
call: the lean path.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from concurrent.futures import Executor
from time import perf_counter

import numpy as np

from .errors import QueueFull
from .metrics import ModelMetrics
from .runtime import ModelVersion

log = logging.getLogger(__name__)


class _Item:
    __slots__ = ("x", "future", "enqueued")

    def __init__(self, x: np.ndarray, future: asyncio.Future, enqueued: float) -> None:
        self.x = x
        self.future = future
        self.enqueued = enqueued


class Batcher:
    def __init__(self, mv: ModelVersion, executor: Executor, metrics: ModelMetrics, max_queue: int) -> None:
        self.mv = mv
        self._executor = executor
        self._metrics = metrics
        self._max_queue = max_queue
        self.max_batch = mv.max_batch_size
        self.delay_s = mv.max_queue_delay_us / 1e6
        self.batching = self.max_batch > 1 and self.delay_s > 0
        self._pending: collections.deque[_Item] = collections.deque()
        self._pending_rows = 0
        self._wakeup = asyncio.Event()
        self._waiting = 0  # requests queued or running, for the off path's queue bound
        self._worker: asyncio.Task | None = None
        self._queue_full = (
            f"model {mv.name!r} version {mv.version}: queue full ({max_queue} requests waiting); retry later"
        )

    def start(self) -> None:
        if self.batching and self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run_batches(), name=f"batcher-{self.mv.name}")

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker."""
        if self._worker is None:
            return
        while self._pending:
            self._wakeup.set()
            await asyncio.sleep(0.001)
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        self._worker = None

    async def infer(self, x: np.ndarray) -> np.ndarray:
        """Logits for x: float32 (N, C, H, W), N within the model's max batch size."""
        if not self.batching:
            return await self._infer_direct(x)
        if len(self._pending) >= self._max_queue:
            raise QueueFull(self._queue_full)
        loop = asyncio.get_running_loop()
        item = _Item(x, loop.create_future(), perf_counter())
        self._pending.append(item)
        self._pending_rows += len(x)
        self._metrics.queue_depth.inc()
        self._wakeup.set()
        return await item.future

    async def _infer_direct(self, x: np.ndarray) -> np.ndarray:
        if self._waiting >= self._max_queue:
            raise QueueFull(self._queue_full)
        self._waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._timed_run, x, perf_counter())
        finally:
            self._waiting -= 1

    def _timed_run(self, x: np.ndarray, enqueued: float) -> np.ndarray:
        self._metrics.queue_wait.observe(perf_counter() - enqueued)
        return self._timed_compute(x)

    async def _gather(self) -> None:
        """Wait until a batch is full or its oldest request has waited the max delay."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.delay_s - (perf_counter() - self._pending[0].enqueued)
        while self._pending_rows < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        rows = 0
        while self._pending:
            item = self._pending[0]
            n = len(item.x)
            if batch and rows + n > self.max_batch:
                break
            self._pending.popleft()
            self._pending_rows -= n
            self._metrics.queue_depth.dec()
            if item.future.done():  # cancelled: the client's deadline passed or it went away
                continue
            batch.append(item)
            rows += n
        return batch

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._gather()
            batch = self._take_batch()
            if not batch:
                continue
            start = perf_counter()
            for item in batch:
                self._metrics.queue_wait.observe(start - item.enqueued)
            x = batch[0].x if len(batch) == 1 else np.concatenate([item.x for item in batch])
            try:
                out = await loop.run_in_executor(self._executor, self._timed_compute, x)
            except Exception as exc:  # noqa: BLE001 - every waiter must hear about it
                log.exception("%s v%d: batch of %d rows failed", self.mv.name, self.mv.version, len(x))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            offset = 0
            for item in batch:
                n = len(item.x)
                if not item.future.done():
                    item.future.set_result(out[offset : offset + n])
                offset += n

    def _timed_compute(self, x: np.ndarray) -> np.ndarray:
        start = perf_counter()
        out = self.mv.run(x)
        self._metrics.inference.observe(perf_counter() - start)
        self._metrics.batch_size.observe(len(x))
        return out
