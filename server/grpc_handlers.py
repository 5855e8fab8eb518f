"""The wrapper every gRPC handler runs in: UNAVAILABLE while loading or draining, in-flight
count, per-request metrics, and ServingError -> gRPC status with its message."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any, TypeVar

import grpc

from .dataplane import Call, DataPlane
from .errors import ServingError, Unavailable

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")

Handler = Callable[[Any, Request, grpc.aio.ServicerContext, Call], Awaitable[Response]]


def rpc(api: str) -> Callable[[Handler], Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]]]:
    """Decorate a servicer method ``(self, request, context, call)``; self.plane is the DataPlane."""

    def decorate(method: Handler):
        @functools.wraps(method)
        async def handler(self, request, context: grpc.aio.ServicerContext):
            plane: DataPlane = self.plane
            metrics = plane.metrics
            start = perf_counter()
            refusal = plane.refusal()
            if refusal is not None:
                # Refused before being counted in flight: a drain must not wait for requests it refuses.
                metrics.observe_request("", "", api, Unavailable.code.name, perf_counter() - start)
                await context.abort(Unavailable.code, refusal)
            call = Call()
            code = "OK"
            with plane.in_flight():
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
                    metrics.observe_request(call.model, call.version, api, code, perf_counter() - start)

        return handler

    return decorate
