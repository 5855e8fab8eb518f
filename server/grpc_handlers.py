"""The wrapper every gRPC handler runs in: the protocol-neutral request scope (UNAVAILABLE
while loading or draining, in-flight count, per-request metrics; server/request_scope.py), and
ServingError -> gRPC status with its message."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from .dataplane import Call, DataPlane
from .errors import ServingError, internal_error
from .request_scope import GRPC, RequestScope

Request = TypeVar("Request")
Response = TypeVar("Response")

Handler = Callable[[Any, Request, grpc.aio.ServicerContext, Call], Awaitable[Response]]


def take_call(plane: DataPlane, context: grpc.aio.ServicerContext) -> None:
    """The call is received; once grpc has sent its status it is answered (the drain waits for that)."""
    if plane.call_received():
        context.add_done_callback(plane.call_answered)


def rpc(api: str) -> Callable[[Handler], Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]]]:
    """Decorate a servicer method ``(self, request, context, call, *args)`` (args: what its caller
    passes after the context); self.plane is the DataPlane."""

    def decorate(method: Handler):
        @functools.wraps(method)
        async def handler(self, request, context: grpc.aio.ServicerContext, *args: Any):
            plane = self.plane
            take_call(plane, context)
            try:
                with RequestScope(plane, GRPC, api, context.time_remaining) as call:
                    return await method(self, request, context, call, *args)
            except ServingError as exc:
                await context.abort(exc.code, exc.message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # logged and counted by the scope
                error = internal_error(api, exc)
                await context.abort(error.code, error.message)

        return handler

    return decorate
