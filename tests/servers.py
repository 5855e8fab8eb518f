"""Running edgecnn servers for the tests (imported, not a conftest).

One fixed-seed LeNet-5 (Fashion-MNIST labels and normalization) built without torch
(tests/onnx_models.py), served in-process on a free loopback port; `edgecnn serve` as a child
process; free loopback ports.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.onnx_models import MODEL, write_version

TOKEN = "client-test-token"


def free_port() -> int:
    """A loopback port nobody listens on now (for tests that need to know it before binding)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unused_address() -> str:
    return f"127.0.0.1:{free_port()}"


def edgecnn_exe() -> str:
    """This environment's `edgecnn` console script."""
    exe = Path(sys.executable).parent / "edgecnn"
    assert exe.is_file(), f"no edgecnn console script next to {sys.executable}"
    return str(exe)


def serve_argv(repository: Path, *extra: str, program: list[str] | None = None) -> list[str]:
    """`edgecnn serve` (or `program serve`) on loopback and free ports; later flags in `extra` win."""
    return [*(program or [edgecnn_exe()]), "serve", "--repository", str(repository), "--host", "127.0.0.1", "--port", "0",
            "--metrics-port", "0", "--http-port", "0", "--device", "cpu", *extra]  # fmt: skip


@dataclass(frozen=True)
class Repository:
    dir: Path
    onnx: Path


def make_repository(root: Path) -> Repository:
    onnx = write_version(root / "repo", MODEL, 1, seed=0, max_batch_size=8, max_queue_delay_us=0)
    return Repository(root / "repo", onnx)


@contextmanager
def serving(repository: Path, **settings_overrides: Any) -> Iterator[Any]:
    """A ServerThread on 127.0.0.1 serving `repository` until the block ends (free ports, no
    metrics); keyword arguments override Settings fields (auth_token, tls_cert, http_port, ...)."""
    from edgecnn.server import ServerThread, Settings

    settings = Settings(repository=repository, host="127.0.0.1", port=0, metrics_port=None, device="cpu", **settings_overrides)
    with ServerThread(settings) as server:
        yield server


@contextmanager
def running_server(repository: Path, **settings_overrides: Any) -> Iterator[str]:
    """The HOST:PORT of a server (`serving`) until the block ends."""
    with serving(repository, **settings_overrides) as server:
        yield server.address
