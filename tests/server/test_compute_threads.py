"""ComputeThreads: what the batchers rely on from the threads that run ONNX Runtime calls."""

from __future__ import annotations

import asyncio
import threading

import pytest

from edgecnn.server.compute_threads import ComputeThreads


def test_calls_run_on_the_worker_threads_and_answer_on_the_loop():
    threads = ComputeThreads(2, name="worker")

    def where(i: int) -> tuple[int, str]:
        return i, threading.current_thread().name

    async def main() -> list[tuple[int, str]]:
        return await asyncio.gather(*(threads.submit(where, i) for i in range(20)))

    try:
        answers = asyncio.run(main())
    finally:
        threads.shutdown()
    assert [i for i, _ in answers] == list(range(20))
    assert {name for _, name in answers} <= {"worker_0", "worker_1"}


def test_an_exception_reaches_the_caller():
    threads = ComputeThreads(1)

    def broken() -> None:
        raise RuntimeError("ORT broke")

    async def main() -> None:
        await threads.submit(broken)

    try:
        with pytest.raises(RuntimeError, match="ORT broke"):
            asyncio.run(main())
    finally:
        threads.shutdown()


def test_a_call_cancelled_before_a_thread_takes_it_never_runs():
    threads = ComputeThreads(1)
    release = threading.Event()
    ran: list[str] = []

    def hold() -> None:
        release.wait(5)
        ran.append("held")

    async def main() -> None:
        held = threads.submit(hold)
        waiting = threads.submit(ran.append, "cancelled")
        after = threads.submit(ran.append, "after")
        waiting.cancel()
        release.set()
        await held
        await after
        assert waiting.cancelled()

    try:
        asyncio.run(main())
    finally:
        threads.shutdown()
    assert ran == ["held", "after"]


def test_shutdown_cancels_the_calls_not_taken_and_refuses_new_ones():
    threads = ComputeThreads(1)
    release = threading.Event()

    async def main() -> None:
        running = threads.submit(release.wait, 5)
        queued = threads.submit(lambda: pytest.fail("a queued call ran after shutdown"))
        await asyncio.sleep(0.05)  # the thread has taken the first call
        threads.shutdown()
        release.set()
        assert await running is True  # the call under way ends and answers
        with pytest.raises(asyncio.CancelledError):
            await queued
        with pytest.raises(RuntimeError, match="after shutdown"):
            threads.submit(print)

    asyncio.run(main())
    threads.shutdown(wait=True)  # every thread has ended


def test_at_least_one_thread():
    with pytest.raises(ValueError, match="at least 1"):
        ComputeThreads(0)
