"""The HTTP/REST front end's refusals: every error is JSON {"error": ...} with its status (400 bad
input, 401 unauthenticated, 404 unknown model/version/path, 405, 413 too large, 429 queue full,
503 loading/draining), and the server keeps serving after each; the bearer token and TLS."""

from __future__ import annotations

import gzip
import json
import ssl
import threading

import numpy as np
import pytest
from edgecnn.server import ServerThread, Settings
from edgecnn.server import app as server_app

from tests.certs import mtls_certs, self_signed_cert
from tests.onnx_models import png_bytes, reference_logits
from tests.server.grpc_helpers import TIMEOUT, held_server, wait_until
from tests.server.http_helpers import HEADER_LENGTH, binary_infer_body, binary_logits, json_infer_body, multipart, request

LIMIT = server_app.MAX_MESSAGE_BYTES
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def both(repository):
    settings = Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, http_port=0, device="cpu")
    with ServerThread(settings) as running:
        yield running


def _x(samples, n: int = 1) -> np.ndarray:
    return samples["x"][:n]


def _infer_body(spec: dict) -> bytes:
    return json.dumps({"inputs": [spec]}).encode()


def _input(**changes) -> dict:
    spec = {"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.0] * 784}
    spec.update(changes)
    return spec


def _binary(head: dict, raw: bytes, header_length: int | None = None) -> tuple[bytes, dict]:
    encoded = json.dumps(head).encode()
    n = len(encoded) if header_length is None else header_length
    return encoded + raw, {HEADER_LENGTH: str(n), "Content-Type": "application/octet-stream"}


RAW = np.zeros((1, 1, 28, 28), dtype="<f4").tobytes()
BINARY_HEAD = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "parameters": {"binary_data_size": len(RAW)}}]}
INFER = "/v2/models/lenet5/infer"

# (id, method, path, body, headers, status, in the message)
CASES = [
    ("unknown-model", "POST", "/v2/models/nope/infer", _infer_body(_input()), JSON, 404, "unknown model 'nope'"),
    ("unknown-version", "POST", "/v2/models/lenet5/versions/7/infer", _infer_body(_input()), JSON, 404, "has no version '7'"),
    ("unknown-model-metadata", "GET", "/v2/models/nope", None, {}, 404, "unknown model"),
    ("unknown-version-metadata", "GET", "/v2/models/lenet5/versions/9", None, {}, 404, "has no version"),
    ("unknown-model-ready", "GET", "/v2/models/nope/ready", None, {}, 404, "unknown model"),
    ("unknown-model-config", "GET", "/v2/models/nope/config", None, {}, 404, "unknown model"),
    ("unknown-path", "GET", "/v3/things", None, {}, 404, "no endpoint GET /v3/things"),
    ("wrong-method", "GET", INFER, None, {}, 405, "expected POST"),
    ("malformed-json", "POST", INFER, b'{"inputs": [', JSON, 400, "malformed JSON"),
    ("json-not-an-object", "POST", INFER, b"[1, 2]", JSON, 400, "expected a JSON object"),
    ("no-inputs", "POST", INFER, b"{}", JSON, 400, "no \"inputs\""),
    ("wrong-shape", "POST", INFER, _infer_body(_input(shape=[1, 3, 28, 28])), JSON, 400, "expected [N, 1, 28, 28]"),
    ("wrong-datatype", "POST", INFER, _infer_body(_input(datatype="INT8")), JSON, 400, "expected 'FP32'"),
    ("wrong-input-name", "POST", INFER, _infer_body(_input(name="x")), JSON, 400, "expected 'input'"),
    ("too-few-values", "POST", INFER, _infer_body(_input(data=[0.0] * 10)), JSON, 400, "data holds 10 values; expected 784"),
    ("ragged-data", "POST", INFER, _infer_body(_input(data=[[0.0], [0.0, 1.0]])), JSON, 400, "equal-length"),
    ("strings-as-data", "POST", INFER, _infer_body(_input(data=["a"] * 784)), JSON, 400, "expected numbers"),
    ("no-data", "POST", INFER, _infer_body({"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28]}), JSON, 400, "neither"),
    ("too-big-a-batch", "POST", INFER, _infer_body(_input(shape=[9, 1, 28, 28], data=[0.0] * 784 * 9)), JSON, 400, "max batch size"),
    ("unknown-output", "POST", INFER, json.dumps({"inputs": [_input()], "outputs": [{"name": "probs"}]}).encode(), JSON, 400, "unknown output 'probs'"),
    ("bad-classification", "POST", INFER,
     json.dumps({"inputs": [_input()], "outputs": [{"name": "logits", "parameters": {"classification": 0}}]}).encode(), JSON, 400,
     "expected a positive integer"),
    ("unknown-output-parameter", "POST", INFER,
     json.dumps({"inputs": [_input()], "outputs": [{"name": "logits", "parameters": {"shared_memory_region": "r"}}]}).encode(), JSON,
     400, "unsupported parameters"),
    ("header-length-past-the-body", "POST", INFER, *_binary(BINARY_HEAD, RAW, header_length=10**6), 400, "Inference-Header-Content-Length"),
    ("header-length-not-a-number", "POST", INFER, _binary(BINARY_HEAD, RAW)[0], {HEADER_LENGTH: "ten"}, 400, "'ten'"),
    ("header-length-too-short", "POST", INFER, *_binary(BINARY_HEAD, RAW, header_length=20), 400, "malformed JSON in the first 20 bytes"),
    ("binary-data-left-over", "POST", INFER, *_binary(BINARY_HEAD, RAW + b"\0" * 8), 400, "add up to"),
    ("binary-data-short", "POST", INFER, *_binary(BINARY_HEAD, RAW[:-4]), 400, "reaches past"),
    ("binary-data-wrong-size", "POST", INFER,
     *_binary({"inputs": [{**BINARY_HEAD["inputs"][0], "parameters": {"binary_data_size": 16}}]}, RAW[:16]), 400, "binary data hold 16 bytes"),
    ("classify-wrong-type", "POST", "/v2/models/lenet5/classify", b"GIF89a", {"Content-Type": "image/gif"}, 400, "expected image/png or image/jpeg"),
    ("classify-corrupt-image", "POST", "/v2/models/lenet5/classify", b"\x89PNG not really", {"Content-Type": "image/png"}, 400, "cannot decode"),
    ("classify-bad-top-k", "POST", "/v2/models/lenet5/classify?top_k=0", b"", {"Content-Type": "image/png"}, 400, "top_k '0'"),
    ("classify-unknown-model", "POST", "/v2/models/nope/classify", b"", {"Content-Type": "image/png"}, 404, "unknown model"),
    ("classify-malformed-multipart", "POST", "/v2/models/lenet5/classify", b"garbage",
     {"Content-Type": "multipart/form-data; boundary=xyz"}, 400, "multipart"),
    ("index-bad-ready", "POST", "/v2/repository/index", b'{"ready": "yes"}', JSON, 400, "expected true or false"),
    ("index-malformed", "POST", "/v2/repository/index", b'{"ready": tru', JSON, 400, "malformed JSON"),
]


def _still_serves(both, samples, repository) -> None:
    body, headers = binary_infer_body(_x(samples))
    reply = request(both.http_port, "POST", "/v2/models/lenet5/versions/1/infer", body, headers)
    assert reply.status == 200, reply.body
    np.testing.assert_allclose(binary_logits(reply), reference_logits(repository["v1"], _x(samples)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refusal_is_json_with_its_status(both, samples, repository, method, path, body, headers, status, message):
    reply = request(both.http_port, method, path, body, headers)
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    error = reply.json()["error"]
    assert message in error, error
    _still_serves(both, samples, repository)


def test_too_many_images_to_classify(both, samples, repository):
    body, headers = multipart([png_bytes(samples["images"][0])] * 9)  # lenet5's max batch size is 8
    reply = request(both.http_port, "POST", "/v2/models/lenet5/classify", body, headers)
    assert reply.status == 400 and "9 images exceed the max batch size" in reply.json()["error"], reply.body
    _still_serves(both, samples, repository)


def test_body_over_the_limit_is_413(both, samples, repository):
    huge = b"\0" * (LIMIT + 1)
    reply = request(both.http_port, "POST", INFER, huge, {HEADER_LENGTH: "2", "Content-Type": "application/octet-stream"})
    assert reply.status == 413 and f"limit of {LIMIT} bytes" in reply.json()["error"], reply.body
    # Small on the wire, over the limit once decompressed.
    bomb = gzip.compress(b"{" + b" " * (LIMIT + 1) + b"}")
    assert len(bomb) < LIMIT // 100
    reply = request(both.http_port, "POST", INFER, bomb, {**JSON, "Content-Encoding": "gzip"})
    assert reply.status == 413 and "exceeds the server's limit" in reply.json()["error"], reply.body
    _still_serves(both, samples, repository)


def test_model_control(both, samples, repository):
    for action in ("load", "unload"):  # model control mode none: refused, as over gRPC
        reply = request(both.http_port, "POST", f"/v2/repository/models/no-such-model/{action}", b"", JSON)
        assert reply.status == 503 and "disabled in model control mode 'none'" in reply.json()["error"], reply.body
    reply = request(both.http_port, "POST", "/v2/repository/models/lenet5/load", b'{"parameters": {"config": 5}}', JSON)
    assert reply.status == 400, reply.body
    _still_serves(both, samples, repository)


def test_queue_full_is_429(repository, samples, monkeypatch):
    with held_server(repository, samples, monkeypatch, max_queue=1, http_port=0) as held:
        port = held.running.http_port
        body, headers = binary_infer_body(_x(samples))
        replies = []

        def send() -> None:
            replies.append(request(port, "POST", "/v2/models/lenet5/versions/1/infer", body, headers))

        senders = [threading.Thread(target=send) for _ in range(3)]
        for sender in senders:
            sender.start()
        wait_until(lambda: len(replies) >= 2, "the requests beyond the queue's one place to be refused")
        held.gate.open.set()
        for sender in senders:
            sender.join(TIMEOUT)
        statuses = sorted(r.status for r in replies)
        assert statuses == [200, 429, 429], [r.body for r in replies]
        assert all("queue full" in r.json()["error"] for r in replies if r.status == 429)
        assert request(port, "POST", "/v2/models/lenet5/versions/1/infer", body, headers).status == 200


def test_loading_and_draining_answer_503(repository, samples, monkeypatch):
    """The HTTP port listens before the models are loaded (health says 503 until they are) and
    refuses new requests with 503 once the drain begins."""
    from edgecnn.server.model_version import ModelLoader

    loading, release = threading.Event(), threading.Event()
    load = ModelLoader.load
    front_ends = []

    def slow_load(*args, **kwargs):  # on a worker thread
        loading.set()
        release.wait(TIMEOUT)
        return load(*args, **kwargs)

    class RecordedFrontEnd(server_app.HttpFrontEnd):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            front_ends.append(self)

    monkeypatch.setattr(ModelLoader, "load", slow_load)
    monkeypatch.setattr(server_app, "HttpFrontEnd", RecordedFrontEnd)
    running = ServerThread(Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, http_port=0, device="cpu"))
    starter = threading.Thread(target=running.start)
    starter.start()
    try:
        assert loading.wait(TIMEOUT), "the models never started loading"
        port = front_ends[0].port
        body, headers = binary_infer_body(_x(samples))
        assert request(port, "GET", "/v2/health/live").status == 200
        ready = request(port, "GET", "/v2/health/ready")
        assert ready.status == 503 and "loading" in ready.json()["error"]
        assert request(port, "GET", "/v2/models/lenet5/ready").status == 503
        refused = request(port, "POST", INFER, body, headers)
        assert refused.status == 503 and "loading models" in refused.json()["error"], refused.body
    finally:
        release.set()
        starter.join(60)
    try:
        assert request(port, "GET", "/v2/health/ready").status == 200
        assert request(port, "POST", INFER, body, headers).status == 200
        running.server.plane.start_drain()
        assert request(port, "GET", "/v2/health/ready").status == 503
        wait_until(lambda: running.server.plane.refusal() is not None, "the drain to refuse new requests")
        refused = request(port, "POST", INFER, body, headers)
        assert refused.status == 503 and "shutting down" in refused.json()["error"], refused.body
        assert request(port, "GET", "/v2/health/live").status == 200
    finally:
        running.stop()


def test_bearer_token_and_tls(repository, samples, tmp_path):
    cert, key = self_signed_cert(tmp_path)
    settings = Settings(
        repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, http_port=0, device="cpu",
        tls_cert=cert, tls_key=key, auth_token="s3cret",
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(cert))
    body, headers = binary_infer_body(_x(samples))
    path = "/v2/models/lenet5/versions/1/infer"
    with ServerThread(settings) as running:
        port = running.http_port
        assert request(port, "GET", "/v2/health/ready", host="localhost", context=context).status == 200  # probes need no token
        for auth, expected in ((None, "missing authorization header"), ("Bearer wrong", "invalid token")):
            sent = {**headers, **({"Authorization": auth} if auth else {})}
            reply = request(port, "POST", path, body, sent, host="localhost", context=context)
            assert reply.status == 401 and expected in reply.json()["error"], reply.body
            assert reply.headers["WWW-Authenticate"] == "Bearer"
        assert request(port, "GET", "/v2", host="localhost", context=context).status == 401
        refused = running.server.metrics.registry.get_sample_value(
            "edgecnn_requests_total", {"model": "", "version": "", "api": "ModelInfer", "code": "UNAUTHENTICATED", "protocol": "http"}
        )
        assert refused == 2
        reply = request(port, "POST", path, body, {**headers, "Authorization": "Bearer s3cret"}, host="localhost", context=context)
        assert reply.status == 200, reply.body
        np.testing.assert_allclose(binary_logits(reply), reference_logits(repository["v1"], _x(samples)), rtol=1e-5, atol=1e-6)
        with pytest.raises(Exception):  # plaintext HTTP to the TLS port
            request(port, "GET", "/v2/health/live")


def test_mutual_tls_requires_a_client_certificate(repository, tmp_path):
    certs = mtls_certs(tmp_path)
    settings = Settings(
        repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, http_port=0, device="cpu",
        tls_cert=certs["server_cert"], tls_key=certs["server_key"], tls_client_ca=certs["ca"],
    )  # fmt: skip
    with ServerThread(settings) as running:
        anonymous = ssl.create_default_context(cafile=str(certs["ca"]))
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            request(running.http_port, "GET", "/v2/health/live", host="localhost", context=anonymous)
        known = ssl.create_default_context(cafile=str(certs["ca"]))
        known.load_cert_chain(certs["client_cert"], certs["client_key"])
        assert request(running.http_port, "GET", "/v2/health/live", host="localhost", context=known).status == 200


def test_json_infer_with_nan_is_answered(both):
    """JSON carries no NaN; Python's NaN literal still parses, and the answer stays valid JSON."""
    body = json_infer_body(np.zeros((1, 1, 28, 28), np.float32)).replace(b"0.0,", b"NaN,", 1)
    reply = request(both.http_port, "POST", "/v2/models/lenet5/versions/1/infer", body, JSON)
    assert reply.status in (200, 400), reply.body
    json.loads(reply.body)
