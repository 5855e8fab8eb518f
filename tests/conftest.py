from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.datafiles import write_cifar_dataset, write_idx_dataset


@pytest.fixture(scope="session")
def tiny_mnist_dir(tmp_path_factory) -> Path:
    """A small dataset in MNIST's idx.gz format (usable as mnist or fashion-mnist)."""
    return write_idx_dataset(tmp_path_factory.mktemp("tiny-idx"))


@pytest.fixture(scope="session")
def tiny_cifar_dir(tmp_path_factory) -> Path:
    return write_cifar_dataset(tmp_path_factory.mktemp("tiny-cifar"))


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The real Fashion-MNIST where `edgecnn train` finds it: $EDGECNN_DATA, or Debian's
    dataset-fashion-mnist in /usr/share/datasets (`make test` installs it)."""
    from edgecnn.training.datasets import DatasetNotFoundError, locate

    try:
        return locate("fashion-mnist")
    except DatasetNotFoundError:
        why = "Fashion-MNIST not installed (apt-get install dataset-fashion-mnist, or set EDGECNN_DATA)"
        if os.environ.get("EDGECNN_REQUIRE_DATA") == "1":  # CI: a missing dataset must not pass as skips
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def served_repository(tmp_path_factory):
    """A LeNet-5 repository built without torch (one per test module)."""
    from tests.servers import make_repository

    return make_repository(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def served_address(served_repository):
    """HOST:PORT of a real server on that repository, for the module's tests."""
    from tests.servers import running_server

    with running_server(served_repository.dir) as addr:
        yield addr
