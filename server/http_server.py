"""The HTTP/REST front end's listener: aiohttp on the server's own event loop (the one grpc.aio
runs on), plaintext or TLS with the gRPC port's certificate (and client CA), started before the
models load (health answers 503 until they have) and stopped at the end of the drain."""

from __future__ import annotations

import ssl
from pathlib import Path

from aiohttp import web

from .dataplane import DataPlane
from .errors import StartupError
from .kserve_http import make_app

# Connections still open when the listener stops (the drain has already waited for the
# requests in flight) get this long before they are closed.
SHUTDOWN_TIMEOUT_S = 1.0


def ssl_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
        if client_ca is not None:
            context.load_verify_locations(cafile=str(client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"cannot use the TLS files for HTTP: {exc}") from None
    return context


class HttpFrontEnd:
    def __init__(self, plane: DataPlane, max_body_bytes: int, token: str | None = None) -> None:
        self._runner = web.AppRunner(
            make_app(plane, max_body_bytes, token), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        self.port: int | None = None

    async def start(self, host: str, port: int, context: ssl.SSLContext | None = None, reuse_port: bool = False) -> int:
        """Listen on host:port (0: any free port); the bound port. reuse_port: share it with the
        other workers of `edgecnn serve --workers N` (SO_REUSEPORT)."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, host or None, port, ssl_context=context, reuse_port=reuse_port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise StartupError(f"cannot listen for HTTP on {host}:{port}: {exc.strerror or exc}") from None
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        await self._runner.cleanup()
