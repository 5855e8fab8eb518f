"""gRPC health checks (grpc.health.v1) against an edgecnn server.

The server reports service "" for itself and one service per loaded model name; this is what
Docker's HEALTHCHECK and Kubernetes' gRPC probes ask too.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgecnn.auth_token import auth_metadata

from .channel import PathLike, open_channel

SERVING = "SERVING"
DEFAULT_TIMEOUT_S = 5.0


class HealthCheckError(RuntimeError):
    """The server could not be asked: unreachable, timed out, refused the credentials."""


def health_status(channel: grpc.Channel, service: str, timeout: float, metadata: Sequence[tuple[str, str]] = ()) -> str:
    """The status name the server reports for `service` ("" = the whole server) over `channel`.

    One of SERVING, NOT_SERVING, UNKNOWN, or SERVICE_UNKNOWN when the server does not know
    the service (gRPC NOT_FOUND). Raises HealthCheckError when no answer came back.
    """
    if timeout <= 0:
        raise ValueError(f"timeout {timeout}: expected a positive number of seconds")
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout, metadata=tuple(metadata))
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.NOT_FOUND:
            return "SERVICE_UNKNOWN"
        raise HealthCheckError(f"{code.name}: {exc.details()}") from None
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def check_health(
    server: str,
    service: str = "",
    timeout: float = DEFAULT_TIMEOUT_S,
    tls_ca: PathLike | None = None,
    auth_token: str | None = None,
    tls_cert: PathLike | None = None,
    tls_key: PathLike | None = None,
) -> str:
    """health_status over a channel opened for this one check."""
    if timeout <= 0:
        raise ValueError(f"timeout {timeout}: expected a positive number of seconds")
    with open_channel(server, tls_ca, tls_cert, tls_key) as channel:
        return health_status(channel, service, timeout, auth_metadata(auth_token))
