"""A running edgecnn server for the client and load-test tests (imported, not a conftest).

One fixed-seed LeNet-5 (Fashion-MNIST labels and normalization) exported with the server
tests' helpers, served in-process on a free loopback port.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest_server import export, write_checkpoint

MODEL = "lenet5"
TOKEN = "client-test-token"


@dataclass(frozen=True)
class Repository:
    dir: Path
    onnx: Path


def make_repository(root: Path) -> Repository:
    run = write_checkpoint(root / "run", seed=0)
    onnx = export(run, root / "repo", MODEL, 1, max_queue_delay_us=0, max_batch_size=8)
    return Repository(root / "repo", onnx)


@contextmanager
def running_server(repository: Path, **settings_overrides: Any) -> Iterator[str]:
    """The HOST:PORT of a server on 127.0.0.1 serving `repository` until the block ends;
    keyword arguments override Settings fields (auth_token, tls_cert, ...)."""
    from edgecnn.server import ServerThread, Settings

    settings = Settings(repository=repository, host="127.0.0.1", port=0, metrics_port=None, device="cpu", **settings_overrides)
    with ServerThread(settings) as server:
        yield server.address
