"""grpc.health.v1 and server reflection, and what a server answers while it loads."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
from edgecnn.protos import inference_pb2, inference_pb2_grpc
from edgecnn.server import ServerThread, Settings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.server.grpc_helpers import (
    TIMEOUT,
    infer_request,
)
from tests.servers import free_port


def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "lenet5", "lenet5-batched"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status
        assert status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as info:
        health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="edgecnn.v1.Classifier"),
    ]
    listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=TIMEOUT))
    names = {s.name for s in listed.list_services_response.service}
    assert {"inference.GRPCInferenceService", "edgecnn.v1.Classifier", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto


def test_not_serving_while_loading(repository, monkeypatch):
    from edgecnn.server import app

    release = threading.Event()
    real_load = app.ModelLoader.load

    def slow_load(*args, **kwargs):
        assert release.wait(TIMEOUT)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(app.ModelLoader, "load", slow_load)
    port = free_port()
    running = ServerThread(Settings(repository=repository["dir"], host="127.0.0.1", port=port, metrics_port=None, device="cpu"))
    starter = threading.Thread(target=running.start)
    starter.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            check = health.Check(health_pb2.HealthCheckRequest(service="lenet5"), timeout=TIMEOUT, wait_for_ready=True)
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(ch)
            assert not stub.ServerReady(inference_pb2.ServerReadyRequest(), timeout=TIMEOUT).ready
            x = np.zeros((1, 1, 28, 28), np.float32)
            for call, request in ((stub.ModelInfer, infer_request("lenet5", x)), (stub.ModelMetadata, inference_pb2.ModelMetadataRequest(name="lenet5"))):
                with pytest.raises(grpc.RpcError) as info:
                    call(request, timeout=TIMEOUT)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "loading models" in info.value.details()
            release.set()
            starter.join(TIMEOUT)
            assert health.Check(health_pb2.HealthCheckRequest(service="lenet5"), timeout=TIMEOUT).status == health_pb2.HealthCheckResponse.SERVING
            assert stub.ServerReady(inference_pb2.ServerReadyRequest(), timeout=TIMEOUT).ready
    finally:
        release.set()
        starter.join(TIMEOUT)
        running.stop()
