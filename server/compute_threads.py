"""The worker threads that run ONNX Runtime calls off the event loop (the batchers' "slots").

loop.run_in_executor costs every call a concurrent.futures.Future (with its own Condition), an
asyncio future chained to it and the callbacks between the two; where every call of a model runs
on a worker thread (MobileNetV2 under load on a CPU, every model on CUDA) that was a measurable
share of the event loop's time per request, and the event loop is what a small model's server
is bound by (docs/benchmarks.md). Here a call is one queue entry and one asyncio future, which
the worker thread settles through loop.call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = None  # what a thread takes from the queue to end


class ComputeThreads:
    """`count` threads, started at the first call, that take calls in the order submitted."""

    def __init__(self, count: int, name: str = "edgecnn-ort") -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        self.count = count
        self._name = name
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._shut_down = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """fn(*args) on a worker thread, as a future of the running loop. Cancelling the future
        before a thread takes the call means the call never runs. RuntimeError after shutdown()."""
        if self._shut_down:
            raise RuntimeError("cannot run new calls after shutdown")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._threads:
            self._start()
        self._calls.put((future, loop, fn, args))
        return future

    def shutdown(self, wait: bool = False) -> None:
        """Take no new calls, cancel the calls no thread has taken yet (from the loop that
        submitted them), and let each thread end after its current call; wait: until they have."""
        self._shut_down = True
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                break
            if call is not _STOP:
                future, loop = call[0], call[1]
                _settle_soon(loop, future.cancel)
        for _ in self._threads:
            self._calls.put(_STOP)
        if wait:
            for thread in self._threads:
                thread.join()

    def _start(self) -> None:
        for i in range(self.count):
            thread = threading.Thread(target=self._work, name=f"{self._name}_{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while (call := self._calls.get()) is not _STOP:
            _run(*call)
            del call  # holds no input or result while idle


def _run(future: asyncio.Future, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], args: tuple) -> None:
    # A plain read of the future's state (under the GIL): a call cancelled just after this runs
    # anyway, and its result is dropped in _resolve.
    if future.cancelled():
        return
    try:
        result = fn(*args)
    except BaseException as exc:  # as ThreadPoolExecutor: the caller sees what fn raised
        _settle_soon(loop, _reject, future, exc)
    else:
        _settle_soon(loop, _resolve, future, result)


def _settle_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop is closed: nobody waits for the answer
        pass


def _resolve(future: asyncio.Future, result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _reject(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
