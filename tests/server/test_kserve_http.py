"""The Open Inference Protocol over HTTP/REST (server/kserve_http.py) on a real server, with
tritonclient.http as an independent client and raw http.client requests (what curl sends):
health, metadata, config, infer (binary and JSON), classification, images straight in, and
HTTP and gRPC requests sharing one data plane and its batches."""

from __future__ import annotations

import gzip
import json
import threading
import zlib

import grpc
import numpy as np
import pytest
import tritonclient.http as tritonclient_http
from edgecnn.protos import classifier_pb2, inference_pb2_grpc
from edgecnn.server import ServerThread, Settings

from tests.onnx_models import png_bytes, reference_logits
from tests.server.grpc_helpers import BATCHED_DELAY_US, TIMEOUT, Gate, infer_request, logits_of, sample, scrape, wait_until
from tests.server.http_helpers import (
    HEADER_LENGTH,
    binary_infer_body,
    binary_logits,
    json_infer_body,
    json_logits,
    multipart,
    request,
)


@pytest.fixture(scope="module")
def both(repository):
    """One server with both front ends: gRPC on .port, HTTP on .http_port."""
    settings = Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=0, http_port=0, device="cpu")
    with ServerThread(settings) as running:
        yield running


@pytest.fixture(scope="module")
def stub(both):
    with grpc.insecure_channel(both.address) as channel:
        yield inference_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture()
def triton(both):
    client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{both.http_port}", network_timeout=TIMEOUT)
    yield client
    client.close()


def test_tritonclient_http_live_ready_metadata_config(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("lenet5") and triton.is_model_ready("lenet5", "2")
    assert not triton.is_model_ready("no-such-model") and not triton.is_model_ready("lenet5", "9")
    server = triton.get_server_metadata()
    assert server["name"] == "edgecnn"
    assert {"binary_tensor_data", "classification", "model_configuration"} <= set(server["extensions"])
    meta = triton.get_model_metadata("lenet5")
    assert meta["versions"] == ["1", "2"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert triton.get_model_metadata("lenet5", "1")["name"] == "lenet5"
    config = triton.get_model_config("lenet5-batched")
    assert config["max_batch_size"] == 64  # 64-bit integers as numbers, as Triton writes them
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == BATCHED_DELAY_US
    assert config["input"][0]["dims"] == [1, 28, 28]
    index = triton.get_model_repository_index()
    assert {(m["name"], m["version"], m["state"]) for m in index} == {
        ("lenet5", "1", "READY"), ("lenet5", "2", "READY"), ("lenet5-batched", "1", "READY")
    }  # fmt: skip


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_infer_equals_grpc(triton, stub, repository, samples, binary):
    x = samples["x"][:3]
    tensor = tritonclient_http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    wanted = tritonclient_http.InferRequestedOutput("logits", binary_data=binary)
    result = triton.infer("lenet5", [tensor], model_version="2", outputs=[wanted], request_id="r1")
    logits = result.as_numpy("logits")
    assert result.get_response()["id"] == "r1" and result.get_response()["model_version"] == "2"
    over_grpc = logits_of(stub.ModelInfer(infer_request("lenet5", x, version="2"), timeout=TIMEOUT))
    np.testing.assert_allclose(logits, over_grpc, rtol=0, atol=1e-6)
    np.testing.assert_allclose(logits, reference_logits(repository["v2"], x), rtol=1e-5, atol=1e-6)
    # No outputs named: tritonclient asks for binary_data_output, the latest version answers.
    latest = triton.infer("lenet5", [tensor]).as_numpy("logits")
    np.testing.assert_allclose(latest, over_grpc, rtol=0, atol=1e-6)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_http_classification_extension(triton, samples, repository, binary):
    x = samples["x"][:4]
    tensor = tritonclient_http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    wanted = tritonclient_http.InferRequestedOutput("logits", binary_data=binary, class_count=3)
    top = triton.infer("lenet5", [tensor], model_version="1", outputs=[wanted]).as_numpy("logits")
    assert top.shape == (4, 3)
    expected = reference_logits(repository["v1"], x)
    for row, logits in zip(top, expected):
        parsed = [(e.decode() if isinstance(e, bytes) else e).split(":", 2) for e in row]
        assert [int(index) for _, index, _ in parsed] == list(np.argsort(-logits)[:3])
        assert [label for _, _, label in parsed] == [samples["classes"][int(i)] for _, i, _ in parsed]
        np.testing.assert_allclose([float(v) for v, _, _ in parsed], np.sort(logits)[::-1][:3], atol=1e-5)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request_bodies(triton, both, samples, repository, algorithm):
    x = samples["x"][:2]
    tensor = tritonclient_http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = triton.infer("lenet5", [tensor], model_version="1", request_compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy("logits"), reference_logits(repository["v1"], x), rtol=1e-5, atol=1e-6)
    # And a compressed JSON body, as curl --data-binary @body.json.gz -H 'Content-Encoding: gzip' sends it.
    body = json_infer_body(x)
    packed = gzip.compress(body) if algorithm == "gzip" else zlib.compress(body)
    reply = request(both.http_port, "POST", "/v2/models/lenet5/versions/1/infer", packed,
                    {"Content-Type": "application/json", "Content-Encoding": algorithm})  # fmt: skip
    assert reply.status == 200, reply.body
    np.testing.assert_allclose(json_logits(reply), reference_logits(repository["v1"], x), rtol=1e-5, atol=1e-6)


def test_raw_json_infer_flat_and_nested(both, samples, repository):
    x = samples["x"][:2]
    expected = reference_logits(repository["v1"], x)
    for nested in (False, True):
        reply = request(both.http_port, "POST", "/v2/models/lenet5/versions/1/infer", json_infer_body(x, nested=nested),
                        {"Content-Type": "application/json"})  # fmt: skip
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/json"), reply.body
        assert reply.json()["id"] == "t" and HEADER_LENGTH not in reply.headers
        np.testing.assert_allclose(json_logits(reply), expected, rtol=1e-5, atol=1e-6)


def test_raw_binary_infer(both, samples, repository):
    x = samples["x"][:5]
    body, headers = binary_infer_body(x)
    reply = request(both.http_port, "POST", "/v2/models/lenet5/versions/1/infer", body, headers)
    assert reply.status == 200 and reply.headers["Content-Type"] == "application/octet-stream", reply.body
    np.testing.assert_allclose(binary_logits(reply), reference_logits(repository["v1"], x), rtol=1e-5, atol=1e-6)
    # Binary in, JSON out.
    body, headers = binary_infer_body(x, binary_output=False)
    reply = request(both.http_port, "POST", "/v2/models/lenet5/versions/1/infer", body, headers)
    np.testing.assert_allclose(json_logits(reply), reference_logits(repository["v1"], x), rtol=1e-5, atol=1e-6)


def _grpc_classify(both, images: list[bytes], top_k: int):
    from edgecnn.protos import classifier_pb2_grpc

    with grpc.insecure_channel(both.address) as channel:
        request_ = classifier_pb2.ClassifyRequest(model="lenet5", top_k=top_k, images=[classifier_pb2.Image(encoded=i) for i in images])
        response = classifier_pb2_grpc.ClassifierStub(channel).Classify(request_, timeout=TIMEOUT)
    return [[(p.label, p.index, p.score) for p in r.predictions] for r in response.results]


def _as_tuples(results: list) -> list:
    return [[(p["label"], p["index"], p["score"]) for p in predictions] for predictions in results]


def test_classify_one_image(both, samples):
    png = png_bytes(samples["images"][0])
    reply = request(both.http_port, "POST", "/v2/models/lenet5/classify?top_k=3", png, {"Content-Type": "image/png"})
    assert reply.status == 200, reply.body
    answer = reply.json()
    assert (answer["model"], answer["version"]) == ("lenet5", "2")
    assert len(answer["results"]) == 1 and len(answer["results"][0]) == 3
    got, expected = _as_tuples(answer["results"]), _grpc_classify(both, [png], 3)
    assert [[(label, index) for label, index, _ in r] for r in got] == [[(label, index) for label, index, _ in r] for r in expected]
    np.testing.assert_allclose([s for r in got for *_, s in r], [s for r in expected for *_, s in r], atol=1e-6)
    # A JPEG, a version named in the path, and the default top_k of 1.
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(samples["images"][1][0], mode="L").save(buffer, format="JPEG", quality=95)
    reply = request(both.http_port, "POST", "/v2/models/lenet5/versions/1/classify", buffer.getvalue(), {"Content-Type": "image/jpeg"})
    assert reply.status == 200 and reply.json()["version"] == "1" and len(reply.json()["results"][0]) == 1, reply.body


def test_classify_multipart_images(both, samples):
    pngs = [png_bytes(image) for image in samples["images"][:4]]
    body, headers = multipart(pngs)
    reply = request(both.http_port, "POST", "/v2/models/lenet5/classify?top_k=2", body, headers)
    assert reply.status == 200, reply.body
    got, expected = _as_tuples(reply.json()["results"]), _grpc_classify(both, pngs, 2)
    assert len(got) == 4
    assert [[(label, index) for label, index, _ in r] for r in got] == [[(label, index) for label, index, _ in r] for r in expected]
    np.testing.assert_allclose([s for r in got for *_, s in r], [s for r in expected for *_, s in r], atol=1e-6)


def test_http_requests_are_counted_with_their_protocol(both, samples):
    before = scrape(both)
    body, headers = binary_infer_body(samples["x"][:1])
    for _ in range(2):
        assert request(both.http_port, "POST", "/v2/models/lenet5/versions/1/infer", body, headers).status == 200
    assert request(both.http_port, "POST", "/v2/models/nope/infer", body, headers).status == 404
    after = scrape(both)
    ok = {"model": "lenet5", "version": "1", "api": "ModelInfer", "code": "OK", "protocol": "http"}
    missing = {"model": "", "version": "", "api": "ModelInfer", "code": "NOT_FOUND", "protocol": "http"}
    assert sample(after, "edgecnn_requests_total", **ok) - sample(before, "edgecnn_requests_total", **ok) == 2
    assert sample(after, "edgecnn_requests_total", **missing) - sample(before, "edgecnn_requests_total", **missing) == 1
    e2e = {"model": "lenet5", "version": "1", "api": "ModelInfer", "protocol": "http"}
    assert sample(after, "edgecnn_request_duration_seconds_count", **e2e) - sample(before, "edgecnn_request_duration_seconds_count", **e2e) == 2
    assert sample(after, "edgecnn_inflight_requests") == 0


def test_grpc_and_http_requests_share_batches(both, stub, samples, repository, monkeypatch):
    """Queued behind held batches, requests of both protocols are merged into the same ONNX
    Runtime calls: one data plane, one batcher per model version."""
    batcher = both.server.plane.batcher("lenet5-batched", 1)
    gate = Gate(batcher, monkeypatch)
    monkeypatch.setattr(batcher, "max_in_flight", 2)
    batches: list[np.ndarray] = []
    held_run = batcher.mv.run

    def recording_run(x: np.ndarray) -> np.ndarray:
        batches.append(np.array(x))
        return held_run(x)

    monkeypatch.setattr(batcher.mv, "run", recording_run)
    plane = both.server.plane
    before = scrape(both)
    x = samples["x"]
    grpc_rows, http_rows = [2, 3, 4], [5, 6, 7]
    http_results: dict[int, np.ndarray] = {}

    def over_http(i: int) -> None:
        body, headers = binary_infer_body(x[i : i + 1])
        reply = request(both.http_port, "POST", "/v2/models/lenet5-batched/infer", body, headers)
        assert reply.status == 200, reply.body
        http_results[i] = binary_logits(reply)

    threads = [threading.Thread(target=over_http, args=(i,)) for i in http_rows]
    try:
        blockers = [stub.ModelInfer.future(infer_request("lenet5-batched", x[i : i + 1]), timeout=TIMEOUT) for i in (0, 1)]
        wait_until(lambda: plane.inflight == 2 and gate.held >= 1, "both places taken by held batches")
        futures = {i: stub.ModelInfer.future(infer_request("lenet5-batched", x[i : i + 1]), timeout=TIMEOUT) for i in grpc_rows}
        for thread in threads:
            thread.start()
        wait_until(lambda: plane.inflight == 8, "every request in the server")
    finally:
        gate.open.set()
    for thread in threads:
        thread.join(TIMEOUT)
    expected = reference_logits(repository["batched"], x[:8])
    for i, future in {**futures, 0: blockers[0], 1: blockers[1]}.items():
        np.testing.assert_allclose(logits_of(future.result()), expected[i : i + 1], rtol=1e-5, atol=1e-6)
    for i in http_rows:
        np.testing.assert_allclose(http_results[i], expected[i : i + 1], rtol=1e-5, atol=1e-6)

    def rows_of(batch: np.ndarray) -> set[int]:
        return {i for i in range(8) for row in batch if np.array_equal(row, x[i])}

    mixed = [rows_of(b) for b in batches if rows_of(b) & set(grpc_rows) and rows_of(b) & set(http_rows)]
    assert mixed, f"no batch held rows of both protocols: {[sorted(rows_of(b)) for b in batches]}"
    after = scrape(both)
    labels = {"model": "lenet5-batched", "version": "1"}
    calls = sample(after, "edgecnn_batch_size_count", **labels) - sample(before, "edgecnn_batch_size_count", **labels)
    assert sample(after, "edgecnn_batch_size_sum", **labels) - sample(before, "edgecnn_batch_size_sum", **labels) == 8
    assert calls < 8 and calls == len(batches)
    assert sample(after, "edgecnn_batch_size_bucket", le="2.0", **labels) - sample(before, "edgecnn_batch_size_bucket", le="2.0", **labels) < calls


def test_http_off_by_default_in_settings(repository):
    settings = Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cpu")
    with ServerThread(settings) as running:
        assert running.http_port is None and running.port


def test_server_metadata_and_health_as_curl_sees_them(both):
    assert request(both.http_port, "GET", "/v2/health/live").json() == {"live": True}
    assert request(both.http_port, "GET", "/v2/health/ready").json() == {"ready": True}
    reply = request(both.http_port, "GET", "/v2/models/lenet5/versions/2/ready")
    assert (reply.status, reply.json()) == (200, {"name": "lenet5", "ready": True})
    assert json.loads(request(both.http_port, "GET", "/v2").body)["version"]
