"""The server's lifecycle: bind, load the repository, serve, drain on shutdown.

In-process use (tests, notebooks)::

    with ServerThread(Settings(repository=..., host="127.0.0.1", port=0, metrics_port=0)) as s:
        channel = grpc.insecure_channel(s.address)

or ``await InferenceServer(settings).start()`` inside a running event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import NoReturn
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from edgecnn import repository as repo

from . import classifier_grpc, kserve_grpc
from .auth import TokenAuthInterceptor
from .compute_threads import ComputeThreads
from .cpus import usable_cpus
from .dataplane import DataPlane
from .device import providers_for
from .errors import StartupError
from .event_loop import loop_factory, loop_name
from .health_reflection import NOT_SERVING, SERVING, Health
from .http_server import HttpFrontEnd, ssl_context
from .metrics import Metrics
from .model_version import ModelLoader
from .repository_manager import RepositoryManager
from .settings import Settings

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SETTLE_S = 0.5  # after the grace: time for the last answers (UNAVAILABLE ones too) to be sent
# A drain keeps serving requests received this soon after it starts: they reached the transport
# before the signal and waited for the event loop (a busy loop leaves calls in grpc's queue; on a
# 2-core machine at load average 8-10, 0.1 s let a few of 64 callers' requests through refused).
INTAKE_S = 0.5
QUIET_S = 0.02  # no request received for this long: grpc's queue of arrived calls is empty
QUIET_MAX_S = 0.5  # the longest an in-process stop waits for that
FLUSH_S = 0.05  # for grpc to write the last answers out before the process ends
WORKER_FLUSH_S = 0.1  # how often a worker adds its buffered metrics to its files (metrics.py)
# How often a single process adds them to its registry when nothing scrapes it: the buffers hold
# at most this long's requests (a scrape flushes them too).
FLUSH_UNSCRAPED_S = 1.0
_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def _grpc_options(worker: bool) -> list[tuple[str, int]]:
    # A port in use is a start-up error, not a silently shared port; the workers of `edgecnn
    # serve --workers N` share theirs on purpose (the supervisor checked it and holds it: workers.py).
    return [*_GRPC_OPTIONS, ("grpc.so_reuseport", 1 if worker else 0)]


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
        self.metrics = Metrics(multiprocess=settings.worker)
        self.plane = DataPlane(self.metrics, max_image_pixels=settings.max_image_pixels, reject_nonfinite=settings.reject_nonfinite)
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.http_port: int | None = None  # the HTTP/REST front end's (None: off)
        self._http: HttpFrontEnd | None = None
        # ONNX Runtime calls that can run at once; each batcher keeps up to this many batches in flight.
        self._workers = max(2, settings.cpus or usable_cpus())
        self._compute = ComputeThreads(self._workers)
        self._repository_reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgecnn-repository")
        self._server: grpc.aio.Server | None = None
        self._health: Health | None = None
        self.manager: RepositoryManager | None = None
        self._metrics_flusher: asyncio.Task | None = None

    @property
    def address(self) -> str:
        host = self.settings.host
        return f"{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{self.port}"

    async def start(self) -> None:
        """Bind (health NOT_SERVING), load every model version, then turn SERVING (a worker of
        --workers N binds last)."""
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
        server = grpc.aio.server(interceptors=interceptors, options=_grpc_options(s.worker))
        self._server = server
        kserve_grpc.add_to_server(self.plane, server)
        classifier_grpc.add_to_server(self.plane, server)
        self._health = Health(server)
        await self._health.set_all(names, NOT_SERVING)
        if not s.worker:
            await self._listen(server)
        if s.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve_http(s.host, s.metrics_port)
            except OSError as exc:
                raise StartupError(f"cannot serve metrics on {s.host}:{s.metrics_port}: {exc}") from None
        self.plane.attach(self._compute)
        self.manager = RepositoryManager(
            self.plane, s.repository, ModelLoader(s, providers, self._workers), self._repository_reads, self.metrics,
            mode=s.model_control_mode, startup_models=s.load_models, exit_on_error=s.exit_on_error,
            strict_readiness=s.strict_readiness, on_change=self._model_changed,
        )  # fmt: skip
        await self.manager.start(s.repository_poll_secs)
        self.plane.mark_ready()
        log.info("execution provider: %s (asked for --device %s)", ", ".join(self.plane.providers()) or "none yet", s.device)
        log.info("event loop: %s", loop_name(asyncio.get_running_loop()))
        await self._health.set_all(self.plane.model_names(), SERVING)
        await self._publish_readiness()
        self._metrics_flusher = asyncio.create_task(self._flush_metrics_periodically(WORKER_FLUSH_S if s.worker else FLUSH_UNSCRAPED_S))
        if s.worker:  # listening once loaded: until then the other workers take every connection
            await self._listen(server)

    async def _flush_metrics_periodically(self, every_s: float) -> None:
        """A worker's metrics reach the supervisor through its files (metrics.py); a single
        process's buffers stay bounded when nothing scrapes them."""
        while True:
            await asyncio.sleep(every_s)
            self.metrics.flush()

    async def _listen(self, server: grpc.aio.Server) -> None:
        """Bind the gRPC port and start it, then the HTTP front end's."""
        s = self.settings
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
        if s.http_port is not None:  # same event loop and data plane; /v2/health/ready says 503 until loaded
            self._http = HttpFrontEnd(self.plane, MAX_MESSAGE_BYTES, s.auth_token)
            tls = ssl_context(s.tls_cert, s.tls_key, s.tls_client_ca) if s.tls_cert and s.tls_key else None
            self.http_port = await self._http.start(s.host, s.http_port, tls, reuse_port=s.worker)

    async def _model_changed(self, name: str, serving: bool) -> None:
        """A model was loaded or unloaded while serving: its health service follows, and so does
        the server's readiness (with strict readiness a model that should serve and does not
        makes the server not ready)."""
        if self._health is not None and self.plane.serving():
            await self._health.servicer.set(name, SERVING if serving else NOT_SERVING)
            await self._publish_readiness()

    async def _publish_readiness(self) -> None:
        """ServerReady's answer on the overall health service ("", what orchestrators probe) and
        in edgecnn_server_ready."""
        ready = self.plane.ready()
        self.metrics.ready.set(1 if ready else 0)
        if self._health is not None:
            await self._health.servicer.set("", SERVING if ready else NOT_SERVING)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain, then close the transport."""
        await self.drain(grace_s)
        await self._close(SETTLE_S)

    async def drain(self, grace_s: float | None = None, until_quiet: bool = True) -> None:
        """NOT_SERVING at once; every request received is answered (with its result when it
        finishes within the grace, else UNAVAILABLE) before this returns; requests arriving
        after the start get UNAVAILABLE. until_quiet: also wait (within the grace) until no
        request has arrived for QUIET_S, since closing the transport cancels the calls still in
        grpc's queue; a process that exits after the drain needs no wait (a closed connection
        is UNAVAILABLE to those clients)."""
        grace = self.settings.grace_s if grace_s is None else grace_s
        deadline = time.monotonic() + grace
        self.plane.start_drain(min(INTAKE_S, grace / 4))
        if self.manager is not None:
            await self.manager.stop()  # no load or unload from the repository poll during the drain
        if self._health is not None:
            await self._health.drain()
        await self._until(lambda: self.plane.refusal() is not None, deadline)
        await self._until(lambda: self.plane.inflight == 0, deadline)
        if self.plane.inflight:
            log.warning("grace period over with %d requests still in flight", self.plane.inflight)
        await self.plane.stop_batchers(deadline)
        # Every request received has its answer sent, and the transport's backlog (calls that
        # arrived while the loop was busy) has been taken and refused: grpc would cancel those.
        settle = max(deadline, time.monotonic()) + SETTLE_S
        await self._until(lambda: self.plane.open_calls == 0, settle)
        if until_quiet:  # bounded: under steady traffic refused clients may never pause
            await self._until(lambda: time.monotonic() - self.plane.last_intake >= QUIET_S, min(settle, time.monotonic() + QUIET_MAX_S))

    async def _until(self, condition: Callable[[], bool], until: float) -> None:
        """Until condition() holds, or the time.monotonic() `until`."""
        while not condition() and time.monotonic() < until:
            await asyncio.sleep(0.005)

    async def _close(self, grace: float = 0.0) -> None:
        if self._metrics_flusher is not None:
            self._metrics_flusher.cancel()
            self._metrics_flusher = None
        self.metrics.flush()
        if self._http is not None:  # after the drain: its answers are sent
            await self._http.stop()
            self._http = None
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        self.metrics.stop_http()
        self._compute.shutdown()
        self._repository_reads.shutdown(wait=False, cancel_futures=True)


async def serve_until_signal(settings: Settings, on_ready: Callable[[InferenceServer], None] | None = None) -> NoReturn:
    """Run until SIGTERM/SIGINT, drain, and end the process with exit code 0.

    The process ends without grpc's shutdown: that cancels the calls still waiting in grpc's
    queue (clients get CANCELLED: did it run?), while the connections closed by the exit give
    those clients UNAVAILABLE (it did not; retry elsewhere)."""
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
    await server.drain(until_quiet=False)
    server.metrics.flush()  # a worker's last requests reach its files
    await asyncio.sleep(FLUSH_S)
    log.info("stopped")
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)


class ServerThread:
    """An InferenceServer on its own event loop in a background thread (for sync callers)."""

    def __init__(self, settings: Settings, start_timeout_s: float = 60.0) -> None:
        self.settings = settings
        self._timeout = start_timeout_s
        self._loop = loop_factory(settings.event_loop)()
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
    def http_port(self) -> int | None:
        return None if self.server is None else self.server.http_port

    @property
    def address(self) -> str:
        assert self.server is not None
        return self.server.address
