"""The wrapper every RPC handler runs in: UNAVAILABLE while loading or draining, in-flight
gauge, per-request metrics, and ServingError -> gRPC status with its message."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any, TypeVar

import grpc

from .errors import ServingError, Unavailable
from .state import ServerState

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")

DRAINING = "server is shutting down and takes no new requests; retry on another replica"
LOADING = "server is loading models and takes no requests yet; retry when it reports SERVING"


class Call:
    """Per-request labels a handler fills in once it knows the model."""

    __slots__ = ("model", "version")

    def __init__(self) -> None:
        self.model = ""
        self.version = ""

    def label(self, model: str, version: str) -> None:
        self.model = model
        self.version = version


Handler = Callable[[Any, Request, grpc.aio.ServicerContext, Call], Awaitable[Response]]


def rpc(api: str) -> Callable[[Handler], Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]]]:
    """Decorate a servicer method ``(self, request, context, call)``; self.state is a ServerState."""

    def decorate(method: Handler):
        @functools.wraps(method)
        async def handler(self, request, context: grpc.aio.ServicerContext):
            state: ServerState = self.state
            metrics = state.metrics
            start = perf_counter()
            if not state.serving:
                # Refused before being counted in flight: a drain must not wait for requests it refuses.
                metrics.observe_request("", "", api, Unavailable.code.name, perf_counter() - start)
                await context.abort(Unavailable.code, DRAINING if state.draining else LOADING)
            metrics.inflight.inc()
            state.inflight += 1
            call = Call()
            code = "OK"
            try:
                return await method(self, request, context, call)
            except ServingError as exc:
                code = exc.code.name
                await context.abort(exc.code, exc.message)
            except asyncio.CancelledError:
                remaining = context.time_remaining()
                code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
                raise
            except Exception as exc:
                code = "INTERNAL"
                log.exception("%s failed", api)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {api}: {type(exc).__name__}: {exc}")
            finally:
                metrics.inflight.dec()
                state.inflight -= 1
                metrics.observe_request(call.model, call.version, api, code, perf_counter() - start)

        return handler

    return decorate
