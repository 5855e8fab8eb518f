"""`edgecnn serve --workers N`: N serving processes on the same gRPC and HTTP ports, each with its
own copy of the models, under one supervisor (this process) that checks and holds the ports,
restarts a worker that dies, drains them all on SIGTERM and serves one /metrics for all.

Ports. The supervisor binds each port as `--workers 1` does (SO_REUSEADDR, no SO_REUSEPORT), so
a port that anyone listens on fails the start (exit 2) with the same message; port 0 is resolved
here, once, and the workers get the concrete port. It then turns SO_REUSEPORT on (and
SO_REUSEADDR off) on that socket and keeps it bound, never listening, until it ends: the workers
bind the same address with SO_REUSEPORT (grpc.so_reuseport, aiohttp's reuse_port), and the
kernel spreads new connections over their listening sockets. A bind without SO_REUSEPORT fails
on the held socket whether a worker listens or not (while all of them restart, too), so a
second `edgecnn serve`, with any --workers, fails its own check. The limit is Linux's rule for
SO_REUSEPORT: a process of the same effective user that sets SO_REUSEPORT itself may still join
the port (another user's may not); run the server as its own user to rule that out.

The kernel balances connections, not requests: a client connection stays on the worker that
accepted it, so one connection gets one worker (as with --workers 1), and N workers need at least
N connections (gRPC clients open one per channel).

Workers. Each is `python -m edgecnn.server.workers`, given its Settings on stdin (the bearer
token never shows in argv or the environment); it loads its models, then listens (until then
the others take every connection), then says so on stdout. The supervisor prints the ready line
once every worker has. A worker ends with the supervisor (PR_SET_PDEATHSIG: SIGTERM, a drain).
A worker that dies is logged and started again (at once; after repeated quick deaths with a
back-off up to MAX_BACKOFF_S). On SIGTERM or SIGINT the supervisor forwards SIGTERM to every
worker, which drains as a single server does (app.serve_until_signal), waits for their exit
codes within the grace plus STOP_MARGIN_S (then kills those left), and exits 0 when every
worker that served exited 0.

Threads: --threads 0 gives each worker's sessions usable_cpus() // N intra-op threads (at least
1), and each worker's ONNX Runtime calls that share of the CPUs, so that threads x workers never
exceed the usable CPUs. --model-control-mode explicit needs --workers 1: a load or unload
request would reach only the worker its connection landed on (poll mode works: every worker
polls the repository).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.exposition import start_http_server
from prometheus_client.multiprocess import mark_process_dead

from . import event_loop
from .app import serve_until_signal
from .cpus import usable_cpus
from .errors import StartupError
from .settings import Settings
from .worker_metrics import supervisor_registry

log = logging.getLogger(__name__)

WORKER_READY = "edgecnn worker ready"  # a worker's stdout line once it listens
STOP_MARGIN_S = 10.0  # beyond the grace, for a worker's drain to end and the process to exit
QUICK_EXIT_S = 10.0  # a worker that dies sooner after its start counts toward the back-off
MAX_BACKOFF_S = 30.0
_WILDCARDS = ("", "0.0.0.0", "::", "[::]")
_PR_SET_PDEATHSIG = 1


def worker_count(text: str) -> int:
    """--workers: a number >= 1, or auto (the usable CPUs, a container's limit included)."""
    if text == "auto":
        return usable_cpus()
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"--workers must be a number or auto, got {text!r}") from None
    if n < 1:
        raise ValueError(f"--workers must be >= 1, got {n}")
    return n


def worker_settings(settings: Settings, workers: int, port: int, http_port: int | None) -> Settings:
    """A worker's settings: the held ports, no /metrics of its own, its share of the CPUs."""
    share = max(1, usable_cpus() // workers)
    return dataclasses.replace(
        settings, port=port, http_port=http_port, metrics_port=None, worker=True, cpus=share,
        threads=settings.threads or share,
    )  # fmt: skip


# --- the ports ---


def hold_port(host: str, port: int, what: str) -> socket.socket:
    """Bind host:port as a single server would (a port in use: StartupError), then keep it for
    the workers (see the module's docstring); the socket, bound and not listening."""
    if host in _WILDCARDS:  # gRPC binds [::] dual-stack for a wildcard host; fall back to IPv4
        candidates = [(socket.AF_INET6, ("::", port)), (socket.AF_INET, ("0.0.0.0", port))]
    else:
        try:
            family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except socket.gaierror as exc:
            raise StartupError(f"cannot listen {what}on {host}:{port}: {exc}") from None
        candidates = [(family, address)]
    error: OSError | None = None
    for family, address in candidates:
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:  # no IPv6 here
            error = exc
            continue
        try:
            if family == socket.AF_INET6 and address[0] == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC and aiohttp: TIME_WAIT is no conflict
            sock.bind(address)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
            if exc.errno == errno.EADDRINUSE:
                break
    reason = error.strerror if error is not None and error.strerror else str(error)
    raise StartupError(f"cannot listen {what}on {host}:{port}: {reason}")


# --- a worker process ---


@dataclass(frozen=True)
class WorkerSpec:
    settings: Settings
    index: int
    supervisor_pid: int
    log_level: str


def worker_main() -> int:
    """`python -m edgecnn.server.workers`: one worker, its WorkerSpec pickled on stdin."""
    spec: WorkerSpec = pickle.load(sys.stdin.buffer)
    sys.stdin.close()
    _end_with_parent(spec.supervisor_pid)
    logging.basicConfig(
        level=spec.log_level,
        format=f"%(asctime)s %(levelname)s worker {spec.index} (pid {os.getpid()}) %(name)s: %(message)s",
    )

    def ready(server) -> None:
        print(f"{WORKER_READY} pid {os.getpid()}", flush=True)

    try:
        event_loop.run(serve_until_signal(spec.settings, on_ready=ready), spec.settings.event_loop)
    except (StartupError, ValueError, OSError) as exc:
        print(f"edgecnn serve: worker {spec.index}: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


def _end_with_parent(parent_pid: int) -> None:
    """SIGTERM (a drain) when the supervisor ends, however it ends (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # it ended before the line above
        sys.exit(0)


# --- the supervisor ---


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process
    started: float
    ready: asyncio.Future
    output: asyncio.Task | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None


def _exit_status(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    def __init__(self, settings: Settings, workers: int, log_level: str, metrics_dir: str, stop_requested: asyncio.Event) -> None:
        self.settings = settings  # the workers' (worker_settings)
        self.count = workers
        self._log_level = log_level
        self._env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
        self._metrics_dir = metrics_dir
        self._slots: list[_Worker | None] = [None] * workers
        self._watchers: list[asyncio.Task] = []
        self.stop_requested = stop_requested
        self._stopping = False

    def pids(self) -> list[int]:
        return [w.pid for w in self._slots if w is not None and w.alive]

    async def _spawn(self, index: int) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgecnn.server.workers",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=self._env,
        )  # fmt: skip
        worker = _Worker(index, proc, time.monotonic(), asyncio.get_running_loop().create_future())
        self._slots[index] = worker  # before any other await: stop() sees every worker started
        worker.output = asyncio.create_task(self._read(worker))
        log.info("worker %d started (pid %d)", index, proc.pid)
        assert proc.stdin is not None
        proc.stdin.write(pickle.dumps(WorkerSpec(self.settings, index, os.getpid(), self._log_level)))
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        proc.stdin.close()
        return worker

    async def _read(self, worker: _Worker) -> None:
        """The worker's stdout: its ready line, and anything else passed on."""
        assert worker.proc.stdout is not None
        async for line in worker.proc.stdout:
            text = line.decode(errors="replace")
            if text.startswith(WORKER_READY) and not worker.ready.done():
                worker.ready.set_result(None)
                log.info("worker %d ready (pid %d)", worker.index, worker.pid)
            else:
                sys.stdout.write(text)
                sys.stdout.flush()

    async def _ended(self, worker: _Worker) -> int:
        code = await worker.proc.wait()
        if worker.output is not None:
            await asyncio.shield(worker.output)  # a cancelled wait leaves the reading alone
        mark_process_dead(worker.pid, self._metrics_dir)  # its gauges go; its counts stay
        return code

    async def start(self) -> bool:
        """Start every worker and wait until each is ready: True; False when a stop was asked
        first. A worker that exits before it is ready fails the start (StartupError)."""
        workers = [await self._spawn(i) for i in range(self.count)]
        ended = {asyncio.ensure_future(self._ended(w)): w for w in workers}
        stop = asyncio.ensure_future(self.stop_requested.wait())
        waiting = {*(asyncio.ensure_future(asyncio.shield(w.ready)) for w in workers), *ended, stop}
        try:
            while not all(w.ready.done() for w in workers):
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    return False
                for task in done & set(ended):
                    w = ended[task]
                    raise StartupError(f"worker {w.index} (pid {w.pid}) {_exit_status(task.result())} before it was ready")
            return True
        finally:
            for task in waiting:
                task.cancel()
            for task in ended:
                task.cancel()

    def supervise(self) -> None:
        """From now on a worker that ends is replaced."""
        self._watchers = [asyncio.create_task(self._watch(i)) for i in range(self.count)]

    async def _watch(self, index: int) -> None:
        quick_deaths = 0
        while True:
            worker = self._slots[index]
            assert worker is not None
            code = await self._ended(worker)
            if self._stopping:
                return
            quick_deaths = quick_deaths + 1 if time.monotonic() - worker.started < QUICK_EXIT_S else 0
            delay = 0.0 if quick_deaths <= 1 else min(MAX_BACKOFF_S, 2.0 ** (quick_deaths - 2))
            log.error("worker %d (pid %d) %s; starting another%s", index, worker.pid, _exit_status(code), f" in {delay:.0f} s" if delay else "")
            if delay:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop_requested.wait(), delay)
            if self._stopping or self.stop_requested.is_set():
                return
            await self._spawn(index)

    async def stop(self) -> int:
        """SIGTERM every worker (each drains), wait for them within the grace plus STOP_MARGIN_S,
        kill those left; 0 when every worker that was serving then exited 0."""
        self._stopping = True
        for task in self._watchers:
            task.cancel()  # none starts a worker from now on (one being created is killed)
        await asyncio.gather(*self._watchers, return_exceptions=True)
        workers = [w for w in self._slots if w is not None and w.alive]  # a dead one's end is logged already
        for w in workers:
            w.proc.send_signal(signal.SIGTERM)
        deadline = self.settings.grace_s + STOP_MARGIN_S
        waits = [asyncio.ensure_future(w.proc.wait()) for w in workers]
        _, late = await asyncio.wait(waits, timeout=deadline)
        status = 0
        for w in workers:
            if w.alive:
                log.error("worker %d (pid %d) still running %.0f s after SIGTERM; killing it", w.index, w.pid, deadline)
                w.proc.kill()
                status = 1
        for w in workers:
            code = await w.proc.wait()
            if w.output is not None:
                await w.output
            mark_process_dead(w.pid, self._metrics_dir)
            if code != 0 and w.ready.done():
                log.error("worker %d (pid %d) %s", w.index, w.pid, _exit_status(code))
                status = 1
            else:
                log.info("worker %d (pid %d) %s", w.index, w.pid, _exit_status(code))
        for task in late:
            task.cancel()
        return status


async def serve_workers(
    settings: Settings, workers: int, log_level: str,
    on_ready: Callable[[str, int, int | None, int | None], None] | None = None,
) -> int:  # fmt: skip
    """The supervisor: hold the ports, start `workers` workers, announce (host, gRPC port,
    metrics port, HTTP port) once all are ready, supervise them until SIGTERM/SIGINT, drain
    them; the exit code."""
    if settings.model_control_mode == "explicit":
        raise StartupError(
            "--model-control-mode explicit needs --workers 1: a load or unload request would reach only "
            "the worker its connection landed on (poll mode works with workers)"
        )
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    held: list[socket.socket] = []
    metrics_dir = tempfile.mkdtemp(prefix="edgecnn-metrics-")
    metrics_http = None
    try:
        held.append(hold_port(settings.host, settings.port, ""))
        port = held[0].getsockname()[1]
        http_port = None
        if settings.http_port is not None:
            held.append(hold_port(settings.host, settings.http_port, "for HTTP "))
            http_port = held[1].getsockname()[1]
        supervisor = Supervisor(worker_settings(settings, workers, port, http_port), workers, log_level, metrics_dir, stop_requested)
        metrics_port = None
        if settings.metrics_port is not None:
            try:
                metrics_http, _ = start_http_server(
                    settings.metrics_port, addr=settings.host, registry=supervisor_registry(metrics_dir, supervisor.pids)
                )
            except OSError as exc:
                raise StartupError(f"cannot serve metrics on {settings.host}:{settings.metrics_port}: {exc}") from None
            metrics_port = int(metrics_http.server_port)
        s = supervisor.settings
        log.info("starting %d workers on %s:%d (%d intra-op threads and %d CPUs each)", workers, s.host, port, s.threads, s.cpus)
        try:
            started = await supervisor.start()
        except BaseException:
            await supervisor.stop()
            raise
        if started:
            if on_ready is not None:
                on_ready(settings.host, port, metrics_port, http_port)
            supervisor.supervise()
            await supervisor.stop_requested.wait()
        log.info("signal received: draining %d workers (grace %.1f s)", workers, settings.grace_s)
        code = await supervisor.stop()
        log.info("stopped")
        return code
    finally:
        for sock in held:
            sock.close()
        if metrics_http is not None:
            metrics_http.shutdown()
            metrics_http.server_close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    from edgecnn.server.workers import worker_main as main  # the module's one copy (and its WorkerSpec)

    sys.exit(main())
