"""HttpEdgeClient (edgecnn/client/http_client.py) against a real server's HTTP/REST front end,
compared with the gRPC EdgeClient on the same server."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from edgecnn.client import ClientError, EdgeClient
from edgecnn.client.client import open_client
from edgecnn.client.http_client import HttpEdgeClient, is_http_url, parse_url
from tests.onnx_models import normalized, png_bytes, reference_logits, sample_images
from tests.servers import MODEL, TOKEN, serving


@pytest.fixture(scope="module")
def served(served_repository):
    with serving(served_repository.dir, http_port=0, auth_token=TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def clients(served):
    with HttpEdgeClient(f"http://127.0.0.1:{served.http_port}", MODEL, token=TOKEN, timeout=10) as over_http:
        with EdgeClient(served.address, MODEL, token=TOKEN, timeout=10) as over_grpc:
            yield over_http, over_grpc


def test_infer_equals_grpc(clients, served_repository):
    over_http, over_grpc = clients
    x = normalized(sample_images(5))
    logits = over_http.infer(x)
    np.testing.assert_allclose(logits, over_grpc.infer(x), rtol=0, atol=1e-6)
    np.testing.assert_allclose(logits, reference_logits(served_repository.onnx, x), rtol=1e-5, atol=1e-6)
    assert over_http.infer(x[0]).shape == (1, 10)


def test_classify_png_and_tensor_equals_grpc(clients):
    over_http, over_grpc = clients
    images = sample_images(4)
    mixed = [png_bytes(images[0]), normalized(images[1:2])[0], png_bytes(images[2]), normalized(images[3:4])[0]]
    got, expected = over_http.classify(mixed, top_k=3), over_grpc.classify(mixed, top_k=3)
    assert [[(p.label, p.index) for p in r] for r in got] == [[(p.label, p.index) for p in r] for r in expected]
    np.testing.assert_allclose([p.score for r in got for p in r], [p.score for r in expected for p in r], atol=1e-5)
    assert over_http.max_batch_size() == over_grpc.max_batch_size()


def test_errors_carry_the_grpc_code(served):
    url = f"http://127.0.0.1:{served.http_port}"
    with HttpEdgeClient(url, "no-such-model", token=TOKEN) as missing, pytest.raises(ClientError) as info:
        missing.infer(np.zeros((1, 1, 28, 28), np.float32))
    assert info.value.code == grpc.StatusCode.NOT_FOUND and info.value.http_status == 404
    with HttpEdgeClient(url, MODEL) as anonymous, pytest.raises(ClientError) as info:
        anonymous.infer(np.zeros((1, 1, 28, 28), np.float32))
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED and "missing authorization" in info.value.details
    with HttpEdgeClient(url, MODEL, token=TOKEN) as client:
        assert client.health() == "SERVING" and client.health("") == "SERVING"
        assert client.health("no-such-model") == "SERVICE_UNKNOWN"
        with pytest.raises(ClientError) as info:
            client.classify([b"not an image"])
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "cannot decode" in info.value.details


def test_unreachable_server_is_unavailable():
    from tests.servers import unused_address

    with HttpEdgeClient(f"http://{unused_address()}", MODEL, timeout=2) as client, pytest.raises(ClientError) as info:
        client.infer(np.zeros((1, 1, 28, 28), np.float32))
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_scheme_picks_the_protocol(served):
    assert is_http_url("http://127.0.0.1:8000") and is_http_url("https://h:1") and not is_http_url("127.0.0.1:8001")
    assert parse_url("http://h") == ("http", "h", 80) and parse_url("https://h") == ("https", "h", 443)
    for bad in ("http://", "http://h:x", "http://h:1/v2", "ftp://h:1"):
        with pytest.raises(ValueError):
            parse_url(bad)
    with open_client(f"http://127.0.0.1:{served.http_port}", MODEL, token=TOKEN) as client:
        assert isinstance(client, HttpEdgeClient)
    with open_client(served.address, MODEL, token=TOKEN) as client:
        assert isinstance(client, EdgeClient)
