"""The asyncio event loop that serves: uvloop where it is installed (as MLServer and uvicorn
choose), else asyncio's own. The loop runs gRPC's and aiohttp's callbacks for every request, so
its own cost per callback is a share of every request's (docs/benchmarks.md measures it)."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

EVENT_LOOPS = ("auto", "asyncio", "uvloop")
T = TypeVar("T")


class EventLoopUnavailable(ValueError):
    pass


def resolve(name: str) -> str:
    """The loop `name` stands for: auto is uvloop when importable, else asyncio.
    EventLoopUnavailable for uvloop where it is not installed, or a name not in EVENT_LOOPS."""
    if name not in EVENT_LOOPS:
        raise EventLoopUnavailable(f"event loop {name!r}: expected one of {', '.join(EVENT_LOOPS)}")
    has_uvloop = importlib.util.find_spec("uvloop") is not None
    if name == "uvloop" and not has_uvloop:
        raise EventLoopUnavailable("--event-loop uvloop: uvloop is not installed (pip install uvloop; it has no Windows build)")
    if name == "auto":
        return "uvloop" if has_uvloop else "asyncio"
    return name


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory of new loops of `name` (resolve's rules)."""
    if resolve(name) == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """uvloop or asyncio: which kind `loop` is."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], name: str) -> T:
    """asyncio.run(main) on a loop of `name`."""
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main)
