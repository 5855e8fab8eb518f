"""Fixtures of the server tests: a repository of torch-free LeNet-5 models (tests/onnx_models.py)
served in-process on a free loopback port, and synthetic images with Fashion-MNIST's labels."""

from __future__ import annotations

import grpc
import pytest
from edgecnn.protos import classifier_pb2_grpc, inference_pb2_grpc
from edgecnn.server import ServerThread, Settings

from tests.onnx_models import FASHION_CLASSES, normalized, sample_images, write_version
from tests.server.grpc_helpers import BATCHED_DELAY_US


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> dict:
    """lenet5 versions 1 and 2 (other weights; no dynamic batching, max batch 8) and
    lenet5-batched (version 1's weights, dynamic batching up to 64 rows)."""
    repo_dir = tmp_path_factory.mktemp("server") / "repo"
    v1 = write_version(repo_dir, "lenet5", 1, seed=0, max_batch_size=8, max_queue_delay_us=0)
    v2 = write_version(repo_dir, "lenet5", 2, seed=1, max_batch_size=8, max_queue_delay_us=0)
    batched = write_version(repo_dir, "lenet5-batched", 1, seed=0, max_batch_size=64, max_queue_delay_us=BATCHED_DELAY_US)
    return {"dir": repo_dir, "v1": v1, "v2": v2, "batched": batched}


@pytest.fixture(scope="module")
def samples() -> dict:
    images = sample_images(32)
    return {"images": images, "x": normalized(images), "classes": FASHION_CLASSES}


@pytest.fixture(scope="module")
def server(repository):
    settings = Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=0, device="cpu")
    with ServerThread(settings) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def infer_stub(channel):
    return inference_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def classifier_stub(channel):
    return classifier_pb2_grpc.ClassifierStub(channel)
