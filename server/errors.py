"""Errors a request can end with, each carrying its gRPC status code."""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """A request failed; ``code`` is the gRPC status the client receives with the message."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class InvalidArgument(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class QueueFull(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(ServingError):
    code = grpc.StatusCode.UNAUTHENTICATED


class TooLarge(ServingError):
    """A request body over the server's limit (gRPC answers RESOURCE_EXHAUSTED for a message too large)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


def internal_error(api: str, exc: BaseException) -> ServingError:
    """An unexpected exception as the INTERNAL error the client receives."""
    return ServingError(f"internal error in {api}: {type(exc).__name__}: {exc}")


class StartupError(RuntimeError):
    """The server cannot start (bad repository, no GPU for --device cuda, port in use, ...)."""
