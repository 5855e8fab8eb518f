"""What every front end (gRPC, HTTP) does around one counted request, protocol-neutral: refuse it
while the server loads or drains (Unavailable, raised before the request is counted in flight,
so a drain never waits for requests it refuses), count it in flight, and observe its request
metrics (the outcome's gRPC status name as the code for both protocols, and the protocol).

A front end wraps its handler in a RequestScope and turns what escapes it into its own status:

    with RequestScope(plane, GRPC, "ModelInfer") as call:
        return await handle(request, call)   # the data plane labels `call` with the model
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from time import perf_counter
from types import TracebackType

from .dataplane import Call, DataPlane
from .errors import ServingError, Unavailable

log = logging.getLogger(__name__)

GRPC = "grpc"
HTTP = "http"


class RequestScope:
    """A context manager (a class, not a generator: it wraps every request). `time_remaining`:
    the seconds left before the call's deadline (None: no deadline), read when a request is
    cancelled under the block: one whose deadline passed counts DEADLINE_EXCEEDED, else
    CANCELLED. Exceptions propagate unchanged once counted; an unexpected one is logged with its
    traceback and counted INTERNAL."""

    __slots__ = ("_api", "_call", "_plane", "_protocol", "_start", "_time_remaining")

    def __init__(
        self, plane: DataPlane, protocol: str, api: str, time_remaining: Callable[[], float | None] | None = None
    ) -> None:
        self._plane = plane
        self._protocol = protocol
        self._api = api
        self._time_remaining = time_remaining

    def __enter__(self) -> Call:
        plane = self._plane
        self._start = perf_counter()
        refusal = plane.refusal()
        if refusal is not None:
            plane.metrics.observe_request("", "", self._api, Unavailable.code.name, perf_counter() - self._start, protocol=self._protocol)
            raise Unavailable(refusal)
        self._call = call = Call()
        plane.request_started()
        return call

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        call = self._call
        if exc is None:
            code = "OK"
        elif isinstance(exc, ServingError):
            code = exc.code.name
        elif isinstance(exc, asyncio.CancelledError):
            remaining = self._time_remaining() if self._time_remaining is not None else None
            code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
        elif isinstance(exc, Exception):
            code = "INTERNAL"
            log.error("%s (%s) failed", self._api, self._protocol, exc_info=exc)
        else:
            code = "OK"  # KeyboardInterrupt, SystemExit: not the request's outcome
        try:
            # Counted before the front end sends the status: a client that sees it sees it counted.
            self._plane.metrics.observe_request(call.model, call.version, self._api, code, perf_counter() - self._start, protocol=self._protocol)
        finally:
            self._plane.request_finished(call)
