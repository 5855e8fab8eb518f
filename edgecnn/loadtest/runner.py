"""A load test: steps (one per concurrency, or one open-loop rate), each split over the client
processes, with a progress line per second on stderr."""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from edgecnn.number_args import NON_NEGATIVE_SECONDS, POSITIVE_RATE, POSITIVE_SECONDS, is_non_negative, is_positive, require

from .stats import StepResult, WorkerResult, step_label
from .worker import Slots, WorkerPool, WorkerSpec, run_worker
from .workload import Target

START_SLACK_S = 0.3  # time for every process to receive its share before the common start


@dataclass(frozen=True)
class Plan:
    target: Target
    payloads: list[bytes]
    batch_size: int
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    rate: float | None = None  # set: one open-loop step at this many requests per second
    duration_s: float | None = 5.0
    requests: int | None = None  # set: each step ends after this many measured requests
    warmup_s: float = 1.0
    processes: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.duration_s is None) == (self.requests is None):
            raise ValueError("give exactly one of a duration or a request count per step")
        if self.duration_s is not None:
            require(is_positive, "duration", self.duration_s, POSITIVE_SECONDS)
        if self.requests is not None and self.requests < 1:
            raise ValueError(f"requests {self.requests}: expected >= 1")
        require(is_non_negative, "warmup", self.warmup_s, NON_NEGATIVE_SECONDS)
        if self.processes < 1:
            raise ValueError(f"processes {self.processes}: expected >= 1")
        if self.rate is not None:
            require(is_positive, "rate", self.rate, POSITIVE_RATE)
        if self.rate is None and (not self.concurrency or min(self.concurrency) < 1):
            raise ValueError(f"concurrency {list(self.concurrency)}: expected positive worker counts")
        if self.rate is None and self.requests is not None and self.requests < max(self.concurrency):
            raise ValueError(
                f"--requests {self.requests} is below the concurrency {max(self.concurrency)}: "
                "some workers would send nothing; ask for at least one request per worker"
            )

    @property
    def mode(self) -> str:
        return "closed" if self.rate is None else "open"

    def steps(self) -> list[tuple[int | None, float | None]]:
        return [(None, self.rate)] if self.rate is not None else [(c, None) for c in self.concurrency]


def split_in_proportion(total: int, weights: list[int]) -> list[int]:
    """`total` spread over positive `weights` in proportion: each its whole share, the rest one
    by one to the largest remainders (the first of equal ones)."""
    whole = sum(weights)
    parts = [total * w // whole for w in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: total * weights[i] % whole, reverse=True)
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


def split(total: int, parts: int) -> list[int]:
    """`total` spread over `parts` as evenly as possible, zeros dropped."""
    return [s for s in split_in_proportion(total, [1] * parts) if s > 0]


def shares(plan: Plan, concurrency: int | None, start_at: float) -> list[WorkerSpec]:
    """Each process's part of one step: closed loop, its workers and the measured requests in
    proportion to them; open loop, an even part of the requests and of the rate. A process
    left without work is left out."""
    if plan.mode == "closed":
        assert concurrency is not None
        workers = split(concurrency, plan.processes)
        requests = split_in_proportion(plan.requests, workers) if plan.requests is not None else [None] * len(workers)
        rates = [0.0] * len(workers)
    else:
        assert plan.rate is not None
        requests = split(plan.requests, plan.processes) if plan.requests is not None else [None] * plan.processes
        workers = [0] * len(requests)
        rates = [plan.rate / len(requests)] * len(requests)
    return [
        WorkerSpec(
            target=plan.target, payloads=plan.payloads, mode=plan.mode, concurrency=workers[i], rate=rates[i],
            warmup_s=plan.warmup_s, duration_s=plan.duration_s, requests=requests[i], start_at=start_at,
            seed=plan.seed + i,
        )  # fmt: skip
        for i in range(len(requests))
    ]


class Progress:
    """Prints one line per second while a step runs."""

    def __init__(self, slots: Slots, label: str, warmup_s: float, out: TextIO | None) -> None:
        self._slots, self._label, self._warmup_s, self._out = slots, label, warmup_s, out
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Progress:
        if self._out is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        start = time.monotonic()
        before = 0
        while not self._stop.wait(1.0):
            done, failed = self._slots.totals()
            t = time.monotonic() - start
            phase = " (warm-up)" if t <= self._warmup_s + START_SLACK_S else ""
            print(f"  {self._label}: {t:5.1f}s  {done} done, {done - before} in the last second, {failed} failed{phase}", file=self._out, flush=True)
            before = done


@dataclass
class PlanRun:
    steps: list[StepResult]  # the finished steps
    stopped_by: BaseException | None = None  # Ctrl-C or a failed client process, which ended it early

    @property
    def stop_reason(self) -> str | None:
        if self.stopped_by is None:
            return None
        if isinstance(self.stopped_by, KeyboardInterrupt):
            return "interrupted (Ctrl-C)"
        if isinstance(self.stopped_by, RuntimeError) and str(self.stopped_by):  # a failed client process, its traceback inside
            return str(self.stopped_by)
        return "".join(traceback.format_exception(self.stopped_by))  # unexpected: keep where it came from


def run_plan(
    plan: Plan,
    progress: TextIO | None = sys.stderr,
    on_step: Callable[[StepResult], None] | None = None,
    pool: WorkerPool | None = None,
) -> PlanRun:
    """Every step of the plan in turn. Ctrl-C or a failed client process stops it: the steps
    finished by then are returned with what stopped it. `pool`: client processes to run the
    steps in and leave running (a caller alternating short plans between servers), instead of
    the plan's own."""
    if pool is not None and pool.size < plan.processes:
        raise ValueError(f"a plan for {plan.processes} client processes given a pool of {pool.size}")
    run = PlanRun([])
    own_pool = pool is None
    try:
        if pool is None and plan.processes > 1:
            pool = WorkerPool(plan.processes)
        slots = pool.slots if pool else Slots(1)
        for concurrency, rate in plan.steps():
            specs = shares(plan, concurrency, time.time() + (START_SLACK_S if pool else 0.0))
            with Progress(slots, step_label(concurrency, rate), plan.warmup_s, progress):
                workers = _run_step(specs, slots, pool)
            step = StepResult(plan.mode, concurrency, rate, plan.batch_size, workers)
            run.steps.append(step)
            if on_step:
                on_step(step)
    except (KeyboardInterrupt, Exception) as exc:  # the pool reports a failed process as RuntimeError
        run.stopped_by = exc
    finally:
        if pool and own_pool:
            pool.close()
    return run


def _run_step(specs: list[WorkerSpec], slots: Slots, pool: WorkerPool | None) -> list[WorkerResult]:
    if pool is None:
        slots.reset()
        return [run_worker(specs[0], slots, 0)]
    pool.start(specs)
    while (results := pool.poll(0.5)) is None:
        pass
    return results

