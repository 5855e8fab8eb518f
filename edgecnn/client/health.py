"""gRPC health checks (grpc.health.v1) against an edgecnn server.

The server reports service "" for itself and one service per loaded model name; this is what
Docker's HEALTHCHECK and Kubernetes' gRPC probes ask too.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = "SERVING"
DEFAULT_TIMEOUT_S = 5.0


class HealthCheckError(RuntimeError):
    """The server could not be asked: unreachable, timed out, refused the credentials."""


def parse_server(server: str) -> str:
    """Check that `server` is HOST:PORT (IPv6 as [::1]:PORT) and return it unchanged."""
    host, sep, port = server.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"server {server!r}: expected HOST:PORT, e.g. 127.0.0.1:8001")
    return server


def read_token(path: Path | str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"auth token file {path}: cannot read it ({exc.strerror})") from None
    if not token:
        raise ValueError(f"auth token file {path}: empty (expected one bearer token)")
    return token


def open_channel(server: str, tls_ca: Path | str | None = None) -> grpc.Channel:
    """A plaintext channel, or a TLS one that trusts the PEM certificate(s) in `tls_ca`."""
    target = parse_server(server)
    if tls_ca is None:
        return grpc.insecure_channel(target)
    try:
        roots = Path(tls_ca).read_bytes()
    except OSError as exc:
        raise ValueError(f"TLS CA file {tls_ca}: cannot read it ({exc.strerror})") from None
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots))


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def check_health(
    server: str,
    service: str = "",
    timeout: float = DEFAULT_TIMEOUT_S,
    tls_ca: Path | str | None = None,
    auth_token: str | None = None,
) -> str:
    """The status name the server reports for `service` ("" = the whole server).

    One of SERVING, NOT_SERVING, UNKNOWN, or SERVICE_UNKNOWN when the server does not know
    the service (gRPC NOT_FOUND). Raises HealthCheckError when no answer came back.
    """
    if timeout <= 0:
        raise ValueError(f"timeout {timeout}: expected a positive number of seconds")
    with open_channel(server, tls_ca) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=timeout,
                metadata=auth_metadata(auth_token),
            )
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise HealthCheckError(f"{code.name}: {exc.details()}") from None
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
