"""TLS, mutual TLS and the bearer token."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tritonclient_grpc
from edgecnn.protos import inference_pb2, inference_pb2_grpc
from edgecnn.server import ServerThread, Settings
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.certs import mtls_certs, self_signed_cert
from tests.onnx_models import PARAMS_LENET5, reference_logits
from tests.server.grpc_helpers import (
    TIMEOUT,
    infer_request,
    logits_of,
)


def test_tls_and_token(repository, samples, tmp_path):
    cert, key = self_signed_cert(tmp_path)
    settings = Settings(
        repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cpu",
        tls_cert=cert, tls_key=key, auth_token="s3cret",
    )
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with ServerThread(settings) as running, grpc.secure_channel(f"localhost:{running.port}", credentials) as ch:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(ch)
        request = infer_request("lenet5", samples["x"][:1])
        for metadata, expected in ((None, "missing authorization"), ((("authorization", "Bearer wrong"),), "invalid token")):
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, metadata=metadata, timeout=TIMEOUT)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and expected in info.value.details()
        refused = running.server.metrics.registry.get_sample_value(
            "edgecnn_requests_total", {"model": "", "version": "", "api": "ModelInfer", "code": "UNAUTHENTICATED", "protocol": "grpc"}
        )
        assert refused == 2
        response = stub.ModelInfer(request, metadata=(("authorization", "Bearer s3cret"),), timeout=TIMEOUT)
        np.testing.assert_allclose(logits_of(response), reference_logits(repository["v2"], samples["x"][:1]), rtol=1e-5, atol=1e-6)
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no token
        client = tritonclient_grpc.InferenceServerClient(url=f"localhost:{running.port}", ssl=True, root_certificates=str(cert))
        assert client.is_server_ready(headers={"authorization": "Bearer s3cret"})
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as plain, pytest.raises(grpc.RpcError):
            inference_pb2_grpc.GRPCInferenceServiceStub(plain).ServerLive(inference_pb2.ServerLiveRequest(), timeout=1)


def test_mtls_requires_a_client_certificate(repository, tmp_path):
    from edgecnn.client import ClientError, EdgeClient

    certs = mtls_certs(tmp_path)
    settings = Settings(
        repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cpu",
        tls_cert=certs["server_cert"], tls_key=certs["server_key"], tls_client_ca=certs["ca"],
    )  # fmt: skip
    with ServerThread(settings) as running:
        address = f"127.0.0.1:{running.port}"
        with EdgeClient(address, "lenet5", tls_ca=certs["ca"], timeout=5) as anonymous, pytest.raises(ClientError) as info:
            anonymous.model_info()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails: no certificate
        client = EdgeClient(address, "lenet5", tls_ca=certs["ca"], tls_cert=certs["client_cert"], tls_key=certs["client_key"], timeout=TIMEOUT)
        with client:
            assert client.model_info().parameters == PARAMS_LENET5
            assert client.health() == "SERVING"
            x = np.zeros((1, 1, 28, 28), np.float32)
            np.testing.assert_allclose(client.infer(x), reference_logits(repository["v2"], x), rtol=1e-5, atol=1e-6)
        # The command-line clients take the same client certificate.
        from edgecnn.cli import main

        ca, cert, key = (str(certs[k]) for k in ("ca", "client_cert", "client_key"))
        assert main(["health", "--server", address, "--tls-ca", ca, "--tls-cert", cert, "--tls-key", key]) == 0
        assert main(["health", "--server", address, "--tls-ca", ca, "--timeout", "2"]) == 1
        out = tmp_path / "loadtest.json"
        assert main(["loadtest", "--server", address, "--model", "lenet5", "--tls-ca", ca, "--tls-cert", cert, "--tls-key", key,
                     "--concurrency", "1", "--requests", "5", "--warmup", "0", "--quiet", "--out", str(out)]) == 0  # fmt: skip
        assert json.loads(out.read_text())["config"]["client_certificate"] is True
    with pytest.raises(ValueError, match="needs both --tls-cert and --tls-key"):
        EdgeClient(address, "lenet5", tls_ca=certs["ca"], tls_cert=certs["client_cert"])
