"""The Batcher alone, with a fake model (as MLServer's SlowModel): merging, the inline budget and
its yielding, cancellation and the queue bound; no ONNX Runtime, no server."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from edgecnn.server.batching import Batcher
from edgecnn.server.compute_threads import ComputeThreads
from edgecnn.server.errors import QueueFull, Unavailable
from edgecnn.server.serving_config import ModelServing

ROW = (1, 2, 2)


class Counted:
    """A metric child that only counts what it is told."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.level = 0

    def observe(self, value: float) -> None:
        self.values.append(value)

    def inc(self, n: int = 1) -> None:
        self.level += n

    def dec(self, n: int = 1) -> None:
        self.level -= n


class FakeMetrics:
    def __init__(self) -> None:
        self.queue_wait, self.inference, self.batch_size, self.queue_depth = Counted(), Counted(), Counted(), Counted()


class SlowModel:
    """Each row's logits are [sum of the row, row count of its batch]; a call takes seconds_per_row
    per row, and waits for `gate` first when one is set."""

    name, version = "slow", 1

    def __init__(self, serving: ModelServing, seconds_per_row: float = 0.0, batch1_s: float = 1e-4) -> None:
        self.serving = serving
        self.seconds_per_row = seconds_per_row
        self.batch1_s = batch1_s
        self.gate: threading.Event | None = None
        self.calls: list[tuple[int, str]] = []  # (rows, thread name)
        self.max_batch_size = serving.max_batch_size

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.gate is not None:
            assert self.gate.wait(10)
        self.calls.append((len(x), threading.current_thread().name))
        if self.seconds_per_row:
            end = time.perf_counter() + self.seconds_per_row * len(x)
            while time.perf_counter() < end:  # busy: a sleep would release the loop thread's core alike
                pass
        sums = x.reshape(len(x), -1).sum(axis=1)
        return np.stack([sums, np.full(len(x), len(x), np.float32)], axis=1)


def serving(**fields) -> ModelServing:
    values = dict(max_batch_size=64, max_queue_delay_us=500, batch_buckets=False, compute_slots=1, inline_max_s=0.0, inline_idle_max_s=0.0, max_queue=256)
    return ModelServing(**{**values, **fields})


def rows(n: int, value: float) -> np.ndarray:
    return np.full((n, *ROW), value, np.float32)


@pytest.fixture
def threads():
    pool = ComputeThreads(2, name="worker")
    yield pool
    pool.shutdown(wait=True)  # no call of this test still computing in the next one


def make(model: SlowModel, threads: ComputeThreads) -> tuple[Batcher, FakeMetrics]:
    metrics = FakeMetrics()
    return Batcher(model, threads, metrics), metrics  # type: ignore[arg-type]


async def take_both_places(batcher: Batcher) -> list[asyncio.Future]:
    """Two held requests, one at a time (two in one tick would be queued together)."""
    held = []
    for i in range(2):
        held.append(asyncio.ensure_future(batcher.infer(rows(1, 0))))
        await wait_for(lambda: batcher._running == i + 1, f"place {i + 1} taken")
    return held


async def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


def test_requests_of_one_tick_share_the_free_places_and_get_their_own_rows(threads):
    model = SlowModel(serving(compute_slots=1))  # two batches in flight

    async def main():
        batcher, metrics = make(model, threads)
        outs = await asyncio.gather(*(batcher.infer(rows(1 + i % 2, i)) for i in range(10)))
        return outs, metrics

    outs, metrics = asyncio.run(main())
    assert sorted(n for n, _ in model.calls) == [7, 8]  # 15 rows over the two free places
    for i, out in enumerate(outs):
        n = 1 + i % 2
        np.testing.assert_array_equal(out.logits[:, 0], np.full(n, i * 4.0 * 1))  # each request its own rows back
    assert sum(metrics.batch_size.values) == 15 and metrics.queue_depth.level == 0


def test_requests_arriving_while_every_place_is_taken_merge_into_the_next_batches(threads):
    model = SlowModel(serving(compute_slots=1))
    model.gate = threading.Event()

    async def main():
        batcher, _ = make(model, threads)
        first = [asyncio.ensure_future(batcher.infer(rows(1, 0))) for _ in range(2)]
        await wait_for(lambda: batcher._running == 2, "both places taken")
        later = [asyncio.ensure_future(batcher.infer(rows(1, 1))) for _ in range(12)]
        await asyncio.sleep(0.01)
        model.gate.set()
        await asyncio.gather(*first, *later)

    asyncio.run(main())
    sizes = sorted(n for n, _ in model.calls)
    # The two held batches of one row each, then the 12 that queued behind them in at most two
    # batches (one place frees first and takes them all, or both free together and split them).
    assert sizes[:2] == [1, 1] and sum(sizes) == 14 and len(sizes) <= 4, sizes


def test_lone_request_runs_inline_on_the_loop_within_the_budget(threads):
    model = SlowModel(serving(inline_max_s=1e-3), batch1_s=1e-4)

    async def main():
        batcher, metrics = make(model, threads)
        await batcher.infer(rows(1, 1))  # 1e-4 s estimated: inline
        await batcher.infer(rows(20, 1))  # 2e-3 s estimated: over the budget, a worker thread
        return metrics

    metrics = asyncio.run(main())
    loop_thread = threading.current_thread().name
    assert [(n, name == loop_thread) for n, name in model.calls] == [(1, True), (20, False)]
    assert metrics.queue_wait.values[0] == 0.0


def test_a_call_within_the_idle_budget_only_runs_inline_if_still_alone_after_a_loop_turn(threads):
    """A call over the inline budget but within the idle one runs on the loop while it is the only
    call open; a call that arrives in the loop turn it gives first (as the HTTP front end takes its
    requests, on the loop) sends it to a worker thread instead."""
    model = SlowModel(serving(inline_max_s=1e-4, inline_idle_max_s=1e-2), batch1_s=1e-3)
    open_calls = [1]  # the call itself

    def another_arrives() -> None:
        open_calls[0] += 1

    async def main():
        batcher = Batcher(model, threads, FakeMetrics(), lambda: open_calls[0])  # type: ignore[arg-type]
        await batcher.infer(rows(1, 1))  # alone
        asyncio.get_running_loop().call_soon(another_arrives)  # its request was waiting to be read
        await batcher.infer(rows(1, 1))
        open_calls[0] = 1
        await batcher.infer(rows(1, 1))  # alone again

    asyncio.run(main())
    loop_thread = threading.current_thread().name
    assert [name == loop_thread for _, name in model.calls] == [True, False, True]


def test_queued_inline_batches_yield_to_the_event_loop_between_them(threads):
    """After a worker-thread batch, hundreds of queued requests run inline in batches that fit
    the budget, one per loop callback: other work (health checks, socket reads) runs between."""
    model = SlowModel(serving(inline_max_s=1e-3), seconds_per_row=2e-4, batch1_s=2e-4)
    model.gate = threading.Event()
    events: list[str] = []

    async def main():
        batcher, _ = make(model, threads)
        real_compute = batcher._timed_compute

        def recorded(x):
            if threading.current_thread() is threading.main_thread():
                events.append("batch")
            return real_compute(x)

        batcher._timed_compute = recorded
        batcher.max_in_flight = 1  # the requests below wait until the worker batch is done
        big = asyncio.ensure_future(batcher.infer(rows(10, 0)))  # over the budget: on a worker, held
        await wait_for(lambda: batcher._running == 1, "the worker batch")
        queued = [asyncio.ensure_future(batcher.infer(rows(1, 1))) for _ in range(200)]
        await asyncio.sleep(0.01)
        model.gate.set()
        model.gate = None

        async def heartbeat():
            while not all(q.done() for q in queued):
                events.append("tick")
                await asyncio.sleep(0)

        await asyncio.gather(big, *queued, heartbeat())

    asyncio.run(main())
    batches = events.count("batch")
    assert batches >= 200 // 5, events  # 5 rows fit the 1 ms budget
    back_to_back = sum(1 for a, b in zip(events, events[1:]) if a == b == "batch")
    assert back_to_back == 0, f"{back_to_back} inline batches ran without yielding to the loop"


def test_a_cancelled_request_leaves_the_queue_and_frees_its_place(threads):
    model = SlowModel(serving(compute_slots=1, max_queue=1))
    model.gate = threading.Event()

    async def main():
        batcher, metrics = make(model, threads)
        held = await take_both_places(batcher)
        waiting = asyncio.ensure_future(batcher.infer(rows(1, 1)))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="queue full"):
            await batcher.infer(rows(1, 2))
        waiting.cancel()
        await asyncio.sleep(0)
        assert not batcher._pending and metrics.queue_depth.level == 0
        queued = asyncio.ensure_future(batcher.infer(rows(1, 3)))  # the place is free again
        await asyncio.sleep(0.01)
        model.gate.set()
        out = await queued
        await asyncio.gather(*held)
        return out

    out = asyncio.run(main())
    assert out.logits[0, 0] == 12.0
    assert sum(n for n, _ in model.calls) == 3  # the cancelled request never ran


def test_batching_off_runs_each_request_alone_and_bounds_the_calls_waiting(threads):
    model = SlowModel(serving(max_queue_delay_us=0, compute_slots=2, max_queue=3))
    model.gate = threading.Event()

    async def main():
        batcher, _ = make(model, threads)
        calls = [asyncio.ensure_future(batcher.infer(rows(1, i))) for i in range(3)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await batcher.infer(rows(1, 9))
        model.gate.set()
        return await asyncio.gather(*calls)

    outs = asyncio.run(main())
    assert [n for n, _ in model.calls] == [1, 1, 1] and [o.logits[0, 0] for o in outs] == [0.0, 4.0, 8.0]


def test_stop_fails_what_is_still_queued_at_the_deadline_with_unavailable(threads):
    model = SlowModel(serving(compute_slots=1))
    model.gate = threading.Event()

    async def main():
        batcher, _ = make(model, threads)
        held = [asyncio.ensure_future(batcher.infer(rows(1, 0))) for _ in range(2)]
        await wait_for(lambda: batcher._running == 2, "both places taken")
        queued = asyncio.ensure_future(batcher.infer(rows(1, 1)))
        await asyncio.sleep(0.01)
        await batcher.stop(time.monotonic() + 0.05)
        with pytest.raises(Unavailable, match="shutting down"):
            await queued
        model.gate.set()
        await asyncio.gather(*held)

    asyncio.run(main())
