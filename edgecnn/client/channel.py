"""gRPC channels to an edgecnn server, plaintext or TLS (optionally with a client certificate
for servers started with --tls-client-ca), for the sync client and the asyncio load tester."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

PathLike = Path | str


def parse_server(server: str) -> str:
    """Check that `server` is HOST:PORT (IPv6 as [::1]:PORT) and return it unchanged."""
    host, sep, port = server.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"server {server!r}: expected HOST:PORT, e.g. 127.0.0.1:8001")
    return server


def _read(path: PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot read it ({exc.strerror})") from None


def channel_credentials(
    tls_ca: PathLike | None = None, tls_cert: PathLike | None = None, tls_key: PathLike | None = None
) -> grpc.ChannelCredentials | None:
    """None for plaintext; TLS when a CA to trust (else the system's roots) or a client
    certificate is given. The client certificate needs its key and vice versa."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("a client certificate needs both --tls-cert and --tls-key")
    if tls_ca is None and tls_cert is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls_ca, "TLS CA file") if tls_ca is not None else None,
        private_key=_read(tls_key, "TLS key file") if tls_key is not None else None,
        certificate_chain=_read(tls_cert, "TLS certificate file") if tls_cert is not None else None,
    )


def open_channel(
    server: str, tls_ca: PathLike | None = None, tls_cert: PathLike | None = None, tls_key: PathLike | None = None
) -> grpc.Channel:
    target = parse_server(server)
    credentials = channel_credentials(tls_ca, tls_cert, tls_key)
    return grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(target, credentials)


def open_aio_channel(
    server: str,
    tls_ca: PathLike | None = None,
    tls_cert: PathLike | None = None,
    tls_key: PathLike | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    target = parse_server(server)
    credentials = channel_credentials(tls_ca, tls_cert, tls_key)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """The TLS and token options every command that calls a server takes."""
    parser.add_argument("--tls-ca", default=None, help="PEM file of the CA to trust (enables TLS)")
    parser.add_argument("--tls-cert", default=None, help="PEM client certificate, for servers started with --tls-client-ca")
    parser.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    parser.add_argument("--auth-token-file", default=None, help="file holding a bearer token")

