"""The server's lifecycle: bind, load the repository, serve, drain on shutdown.

In-process use (tests, notebooks)::

    with ServerThread(Settings(repository=..., host="127.0.0.1", port=0, metrics_port=0)) as s:
        channel = grpc.insecure_channel(s.address)

or ``await InferenceServer(settings).start()`` inside a running event loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from edgecnn import repository as repo

from . import classifier_grpc, kserve_grpc
from .auth import TokenAuthInterceptor
from .cpus import usable_cpus
from .dataplane import DataPlane
from .device import providers_for
from .errors import StartupError
from .health_reflection import NOT_SERVING, SERVING, Health
from .metrics import Metrics
from .model_version import ModelLoader
from .registry import load_registry
from .settings import Settings

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SETTLE_S = 0.1  # after the grace: time for failed requests to send their status
_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),  # a port in use is a start-up error, not a silently shared port
]


def _model_names(repository: Path) -> list[str]:
    try:
        return sorted({entry.name for entry in repo.list_models(repository)})
    except repo.RepositoryError as exc:
        raise StartupError(str(exc)) from None


def _credentials(settings: Settings) -> grpc.ServerCredentials:
    try:
        key = Path(settings.tls_key).read_bytes()  # type: ignore[arg-type]
        cert = Path(settings.tls_cert).read_bytes()  # type: ignore[arg-type]
        ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    except OSError as exc:
        raise StartupError(f"cannot read a TLS file: {exc}") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


class InferenceServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.plane = DataPlane(self.metrics, max_image_pixels=settings.max_image_pixels)
        self.port: int | None = None
        self.metrics_port: int | None = None
        # ONNX Runtime calls that can run at once; each batcher keeps up to this many batches in flight.
        self._workers = max(2, usable_cpus())
        self._executor = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="edgecnn-ort")
        self._server: grpc.aio.Server | None = None
        self._health: Health | None = None

    @property
    def address(self) -> str:
        host = self.settings.host
        return f"{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{self.port}"

    async def start(self) -> None:
        """Bind (health NOT_SERVING), load every model version, then turn SERVING."""
        try:
            await self._start()
        except BaseException:
            await self._close()
            raise

    async def _start(self) -> None:
        s = self.settings
        providers = providers_for(s.device)
        names = _model_names(s.repository)
        interceptors = [TokenAuthInterceptor(s.auth_token, self.metrics)] if s.auth_token else []
        server = grpc.aio.server(interceptors=interceptors, options=_GRPC_OPTIONS)
        self._server = server
        kserve_grpc.add_to_server(self.plane, server)
        classifier_grpc.add_to_server(self.plane, server)
        self._health = Health(server)
        await self._health.set_all(names, NOT_SERVING)
        address = f"{s.host}:{s.port}"
        try:
            if s.tls_cert:
                self.port = server.add_secure_port(address, _credentials(s))
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {address}: {exc}") from None
        if not self.port:
            raise StartupError(f"cannot listen on {address} (in use?)")
        await server.start()
        if s.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve_http(s.host, s.metrics_port)
            except OSError as exc:
                raise StartupError(f"cannot serve metrics on {s.host}:{s.metrics_port}: {exc}") from None
        loader = ModelLoader(s, providers, self._workers)
        load = functools.partial(load_registry, s.repository, loader)
        registry = await asyncio.get_running_loop().run_in_executor(self._executor, load)
        self.plane.serve(registry, self._executor)
        log.info("execution provider: %s (asked for --device %s)", ", ".join(self.plane.providers()), s.device)
        await self._health.set_all(names, SERVING)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: NOT_SERVING, refuse new requests, let in-flight ones finish within the grace."""
        grace = self.settings.grace_s if grace_s is None else grace_s
        deadline = time.monotonic() + grace
        self.plane.start_drain()
        if self._health is not None:
            await self._health.drain()
        await self._wait_for_inflight(deadline)
        if self.plane.inflight:
            log.warning("grace period over with %d requests still in flight", self.plane.inflight)
        await self.plane.stop_batchers(deadline)
        # The requests a batcher just failed answer UNAVAILABLE before their streams are closed.
        await self._wait_for_inflight(max(deadline, time.monotonic() + SETTLE_S))
        await self._close(max(0.0, deadline - time.monotonic()))

    async def _wait_for_inflight(self, until: float) -> None:
        """Until no request is in flight, or the time.monotonic() `until`."""
        while self.plane.inflight > 0 and time.monotonic() < until:
            await asyncio.sleep(0.005)

    async def _close(self, grace: float = 0.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        self.metrics.stop_http()
        self._executor.shutdown(wait=False, cancel_futures=True)


async def serve_until_signal(settings: Settings, on_ready: Callable[[InferenceServer], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT, then drain; the exit code (0)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = InferenceServer(settings)
    await server.start()
    if on_ready is not None:
        on_ready(server)
    await stop.wait()
    log.info("signal received: draining (grace %.1f s)", settings.grace_s)
    await server.stop()
    log.info("stopped")
    return 0


class ServerThread:
    """An InferenceServer on its own event loop in a background thread (for sync callers)."""

    def __init__(self, settings: Settings, start_timeout_s: float = 60.0) -> None:
        self.settings = settings
        self._timeout = start_timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="edgecnn-server", daemon=True)
        self.server: InferenceServer | None = None

    def _call(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _create_and_start(self) -> InferenceServer:
        server = InferenceServer(self.settings)
        await server.start()
        return server

    def start(self) -> ServerThread:
        self._thread.start()
        try:
            self.server = self._call(self._create_and_start(), self._timeout)
        except BaseException:
            self._shutdown_loop()
            raise
        return self

    def stop(self, grace_s: float = 1.0) -> None:
        if self.server is not None:
            self._call(self.server.stop(grace_s), grace_s + 30)
            self.server = None
        self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None
        return self.server.port

    @property
    def metrics_port(self) -> int | None:
        return None if self.server is None else self.server.metrics_port

    @property
    def address(self) -> str:
        assert self.server is not None
        return self.server.address
