"""A server as a child process, ready once it prints its ready line: `edgecnn serve` (tests,
the benchmark) or any other command that announces itself on stdout (the benchmark's floor).

    with ServeProcess([sys.executable, "-m", "edgecnn.cli", "serve", "--repository", repo, "--port", "0"]) as served:
        served.address  # 127.0.0.1:PORT
"""

from __future__ import annotations

import queue
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from edgecnn.server.cmd_serve import READY_LINE

DEFAULT_READY_TIMEOUT_S = 120.0
_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", ""}


class ChildProcess:
    """Starts `argv` and waits until a stdout line matches `ready`; stdout keeps being read (into
    .output) so the child never blocks on a full pipe. stderr joins stdout unless redirected."""

    def __init__(
        self,
        argv: list[str],
        ready: re.Pattern[str] | str,
        timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        stderr: int | IO[str] = subprocess.STDOUT,
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env=None if env is None else dict(env), cwd=cwd
        )
        threading.Thread(target=self._pump, daemon=True, name="child-stdout").start()
        self.match = self._wait_ready(re.compile(ready), timeout_s)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def _wait_ready(self, ready: re.Pattern[str], timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:  # stdout closed: the child exited
                break
            if found := ready.search(line):
                return found
        self.kill()
        raise RuntimeError(f"{shlex.join(self.argv)} did not print its ready line ({ready.pattern!r}):\n{''.join(self.output)}")

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (what docker stop and the kubelet send), then SIGKILL after `timeout_s`; the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class ServeProcess(ChildProcess):
    """`edgecnn serve` (or a wrapper of it) as a child process; its ports from the ready line."""

    def __init__(self, argv: list[str], **kwargs) -> None:
        super().__init__(argv, READY_LINE, **kwargs)
        host, port, metrics, http = self.match.groups()
        self.port = int(port)
        self.host = '127.0.0.1' if host in _WILDCARD_HOSTS else host
        self.address = f"{self.host}:{self.port}"
        self.metrics_port = int(metrics) if metrics else None
        self._http_port = int(http) if http else None

    @property
    def http_port(self) -> int | None:
        """The HTTP/REST port (None: served with --no-http or --http-port -1)."""
        return self._http_port

    @property
    def http_url(self) -> str:
        assert self._http_port is not None, "this server has no HTTP front end"
        return f"http://{self.host}:{self._http_port}"
