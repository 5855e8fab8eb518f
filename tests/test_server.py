"""The gRPC inference server against a real repository on a free loopback port."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tritonclient_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest_server import (
    FASHION,
    PARAMS_LENET5,
    copy_model,
    export,
    fashion_test_split,
    mtls_certs,
    png_bytes,
    reference_logits,
    self_signed_cert,
    write_checkpoint,
)
from tests.servers import free_port
from edgecnn import repository as repo
from edgecnn.protos import classifier_pb2, classifier_pb2_grpc, inference_pb2, inference_pb2_grpc
from edgecnn.server import ServerThread, Settings, StartupError
from edgecnn.server.device import CPU, CUDA, gpu_present, with_options
from edgecnn.server.runtime import load_version
from edgecnn.server.settings import DEFAULT_MAX_IMAGE_PIXELS
from edgecnn.server.shapes import bucket_sizes
from edgecnn.training.datasets import DATASETS

MARGIN = 1e-3  # logits closer than this may swap places between two float paths
BATCHED_DELAY_US = 100_000  # long enough that concurrent requests always meet in one batch
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def repository(tmp_path_factory, fashion_mnist_dir) -> dict:
    root = tmp_path_factory.mktemp("server")
    repo_dir = root / "repo"
    run_a = write_checkpoint(root / "run-a", seed=0)
    run_b = write_checkpoint(root / "run-b", seed=1)
    v1 = export(run_a, repo_dir, "lenet5", 1, max_queue_delay_us=0, max_batch_size=8)
    batched = copy_model(repo_dir, "lenet5", "lenet5-batched", max_queue_delay_us=BATCHED_DELAY_US, max_batch_size=64)
    v2 = export(run_b, repo_dir, "lenet5", 2, max_queue_delay_us=0, max_batch_size=8)
    return {"dir": repo_dir, "v1": v1, "v2": v2, "batched": batched / "1" / "model.onnx"}


@pytest.fixture(scope="module")
def fashion(fashion_mnist_dir) -> dict:
    split = fashion_test_split()
    return {"images": split.images[:32], "x": np.ascontiguousarray(split.normalized()[:32], dtype=np.float32), "classes": split.classes}


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


def infer_request(model: str, x: np.ndarray, version: str = "") -> inference_pb2.ModelInferRequest:
    request = inference_pb2.ModelInferRequest(model_name=model, model_version=version, id="t")
    request.inputs.add(name="input", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f4").tobytes())
    return request


def logits_of(response: inference_pb2.ModelInferResponse) -> np.ndarray:
    out = response.outputs[0]
    assert (out.name, out.datatype) == ("logits", "FP32")
    return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(tuple(out.shape))


def scrape(server) -> dict:
    """{(name, labels as sorted tuple): value} of every sample."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=TIMEOUT) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class Gate:
    """Holds a batcher's ONNX Runtime calls until .open is set; .held counts the calls held.
    Its batches run on worker threads (never inline: a held call must not block the event loop)."""

    def __init__(self, batcher, monkeypatch) -> None:
        self.open = threading.Event()
        self.held = 0
        lock = threading.Lock()
        run = batcher.mv.run

        def held_run(x: np.ndarray) -> np.ndarray:
            with lock:
                self.held += 1
            self.open.wait(TIMEOUT)
            return run(x)

        monkeypatch.setattr(batcher.mv, "run", held_run)
        monkeypatch.setattr(batcher, "inline_max_s", 0.0)


# --- Open Inference Protocol through tritonclient -------------------------------------------


def test_tritonclient_live_ready_metadata(server, repository):
    client = tritonclient_grpc.InferenceServerClient(url=server.address)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("lenet5") and client.is_model_ready("lenet5", "2")
    assert not client.is_model_ready("no-such-model")
    assert client.get_server_metadata().name == "edgecnn"
    meta = client.get_model_metadata("lenet5")
    assert list(meta.versions) == ["1", "2"] and meta.platform == "onnxruntime_onnx"
    assert (meta.inputs[0].name, meta.inputs[0].datatype, list(meta.inputs[0].shape)) == ("input", "FP32", [-1, 1, 28, 28])
    assert (meta.outputs[0].name, list(meta.outputs[0].shape)) == ("logits", [-1, 10])
    config = client.get_model_config("lenet5-batched").config
    assert config.max_batch_size == 64
    assert config.dynamic_batching.max_queue_delay_microseconds == BATCHED_DELAY_US
    index = client.get_model_repository_index()
    assert {(m.name, m.version, m.state) for m in index.models} == {
        ("lenet5", "1", "READY"), ("lenet5", "2", "READY"), ("lenet5-batched", "1", "READY")
    }


def test_tritonclient_classification_extension(server, repository, fashion):
    """InferRequestedOutput(class_count=K): per image the K highest logits as Triton's
    "value:index:label" BYTES strings, highest first."""
    x = fashion["x"][:4]
    client = tritonclient_grpc.InferenceServerClient(url=server.address)
    assert "classification" in client.get_server_metadata().extensions
    tensor = tritonclient_grpc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    wanted = tritonclient_grpc.InferRequestedOutput("logits", class_count=3)
    result = client.infer("lenet5", [tensor], model_version="1", outputs=[wanted])
    top = result.as_numpy("logits")
    assert top.shape == (4, 3)
    expected = reference_logits(repository["v1"], x)
    for row, logits in zip(top, expected):
        parsed = [element.decode().split(":", 2) for element in row]
        assert [int(index) for _, index, _ in parsed] == list(np.argsort(-logits)[:3])
        assert [label for _, _, label in parsed] == [fashion["classes"][int(index)] for _, index, _ in parsed]
        np.testing.assert_allclose([float(value) for value, _, _ in parsed], np.sort(logits)[::-1][:3], atol=1e-5)
    # As Triton: more classes than the model has gives them all.
    everything = client.infer("lenet5", [tensor], model_version="1", outputs=[tritonclient_grpc.InferRequestedOutput("logits", class_count=50)])
    assert everything.as_numpy("logits").shape == (4, 10)


def test_classification_of_a_model_without_labels_is_value_and_index():
    from edgecnn.server.tensors import _classification_bytes

    logits = np.array([[0.5, 2.0, -1.0]], np.float32)
    encoded = _classification_bytes(logits, 2, None)
    first = struct.unpack("<I", encoded[:4])[0]
    assert encoded[4 : 4 + first] == b"2.000000:1" and encoded.endswith(b"0.500000:0")
    assert b"2.000000:1:b" in _classification_bytes(logits, 1, ["a", "b", "c"])


def test_model_config_shows_dynamic_batching_only_when_on(server):
    client = tritonclient_grpc.InferenceServerClient(url=server.address)
    assert client.get_model_config("lenet5-batched").config.HasField("dynamic_batching")
    unbatched = client.get_model_config("lenet5").config  # max_queue_delay_us 0: every request its own run
    assert unbatched.max_batch_size == 8 and not unbatched.HasField("dynamic_batching")


@pytest.mark.parametrize("version, key", [("", "v2"), ("1", "v1"), ("2", "v2")])
def test_tritonclient_infer_equals_onnxruntime(server, repository, fashion, version, key):
    x = fashion["x"][:5]
    client = tritonclient_grpc.InferenceServerClient(url=server.address)
    tensor = tritonclient_grpc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("lenet5", [tensor], model_version=version, outputs=[tritonclient_grpc.InferRequestedOutput("logits")])
    np.testing.assert_allclose(result.as_numpy("logits"), reference_logits(repository[key], x), rtol=1e-5, atol=1e-6)
    assert result.get_response().model_version == key[1]


def test_typed_contents_equal_raw_contents(infer_stub, fashion):
    x = fashion["x"][:3]
    typed = inference_pb2.ModelInferRequest(model_name="lenet5")
    tensor = typed.inputs.add(name="input", datatype="FP32", shape=x.shape)
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    raw = infer_stub.ModelInfer(infer_request("lenet5", x), timeout=TIMEOUT)
    np.testing.assert_array_equal(logits_of(infer_stub.ModelInfer(typed, timeout=TIMEOUT)), logits_of(raw))
    assert raw.id == "t" and raw.model_name == "lenet5"


# --- Classifier ------------------------------------------------------------------------------


def test_classify_png_fashion_mnist_matches_onnxruntime(classifier_stub, repository, fashion):
    images = fashion["images"][:8]
    request = classifier_pb2.ClassifyRequest(model="lenet5", version=1, top_k=3)
    for image in images:
        request.images.add(encoded=png_bytes(image))
    response = classifier_stub.Classify(request, timeout=TIMEOUT)
    reference = reference_logits(repository["v1"], fashion["x"][:8])
    assert (response.model, response.version) == ("lenet5", 1)
    assert len(response.results) == 8
    # Untrained weights: two classes can be within float noise of each other; the top-1 is only
    # compared where the reference's top-2 margin is clear (most images).
    margins = np.diff(np.sort(reference, axis=1)[:, -2:], axis=1)[:, 0]
    assert (margins > MARGIN).sum() >= len(images) // 2, margins
    for result, logits, margin in zip(response.results, reference, margins):
        top = result.predictions
        assert len(top) == 3
        if margin > MARGIN:
            assert top[0].index == int(np.argmax(logits))
        assert top[0].label == fashion["classes"][top[0].index]
        scores = [p.score for p in top]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert top[0].score == pytest.approx(float(expected.max()), rel=1e-4)


def test_classify_tensor_images_equal_png_images(classifier_stub, fashion):
    png = classifier_pb2.ClassifyRequest(model="lenet5", top_k=10)
    tensors = classifier_pb2.ClassifyRequest(model="lenet5", top_k=10)
    for image, x in zip(fashion["images"][:4], fashion["x"][:4]):
        png.images.add(encoded=png_bytes(image))
        tensors.images.add(tensor=classifier_pb2.FloatTensor(shape=x.shape, data=x.astype("<f4").tobytes()))
    a = classifier_stub.Classify(png, timeout=TIMEOUT)
    b = classifier_stub.Classify(tensors, timeout=TIMEOUT)
    for ra, rb in zip(a.results, b.results):
        assert [p.index for p in ra.predictions] == [p.index for p in rb.predictions]
        np.testing.assert_allclose([p.score for p in ra.predictions], [p.score for p in rb.predictions], rtol=1e-5)


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def jpeg_of(image_chw: np.ndarray) -> bytes:
    return encode(Image.fromarray(image_chw[0], mode="L"), "JPEG")


def rgb_png_of(image_chw: np.ndarray) -> bytes:
    """Three different channels: only the ITU-R 601-2 luma of convert("L") gives the reference."""
    grey = image_chw[0]
    return encode(Image.fromarray(np.stack([grey, 255 - grey, grey.T], axis=-1), mode="RGB"), "PNG")


def png_56x56_of(image_chw: np.ndarray) -> bytes:
    return encode(Image.fromarray(image_chw[0], mode="L").resize((56, 56), Image.Resampling.BICUBIC), "PNG")


def reference_input(data: bytes) -> np.ndarray:
    """Classify's preprocessing done here with Pillow + numpy: decode, greyscale, bilinear resize
    to 28x28, scale to [0, 1], normalize with Fashion-MNIST's mean/std (the model's)."""
    info = DATASETS[FASHION]
    with Image.open(io.BytesIO(data)) as image:
        grey = image.convert("L").resize((28, 28), Image.Resampling.BILINEAR)
        pixels = np.asarray(grey, dtype=np.float32) / 255.0
    return ((pixels - np.float32(info.mean[0])) / np.float32(info.std[0]))[None].astype(np.float32)


@pytest.mark.parametrize("encoder", [jpeg_of, rgb_png_of, png_56x56_of], ids=["jpeg", "rgb-png", "png-56x56"])
def test_classify_decodes_jpeg_rgb_and_other_sizes_like_pillow(classifier_stub, repository, fashion, encoder):
    encoded = [encoder(image) for image in fashion["images"][:8]]
    request = classifier_pb2.ClassifyRequest(model="lenet5", version=1, top_k=10)
    for data in encoded:
        request.images.add(encoded=data)
    response = classifier_stub.Classify(request, timeout=TIMEOUT)
    assert (response.model, response.version, len(response.results)) == ("lenet5", 1, len(encoded))
    reference = reference_logits(repository["v1"], np.stack([reference_input(data) for data in encoded]))
    margins = np.diff(np.sort(reference, axis=1)[:, -2:], axis=1)[:, 0]
    for result, logits, margin in zip(response.results, reference, margins):
        scores = np.zeros(len(fashion["classes"]))
        for p in result.predictions:
            assert p.label == fashion["classes"][p.index]
            scores[p.index] = p.score
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-4)
        # the scores fix the logits up to a constant: compare those too, far tighter than 1e-4
        np.testing.assert_allclose(np.log(scores) - np.log(scores).mean(), logits - logits.mean(), rtol=0, atol=1e-4)
        if margin > MARGIN:
            assert result.predictions[0].index == int(np.argmax(logits))


def test_model_info(classifier_stub, repository, fashion):
    info = classifier_stub.ModelInfo(classifier_pb2.ModelInfoRequest(model="lenet5"), timeout=TIMEOUT)
    assert (info.model, info.version, list(info.available_versions)) == ("lenet5", 2, [1, 2])
    assert info.parameters == PARAMS_LENET5 and info.architecture == "lenet5"
    assert info.onnx_bytes == repository["v2"].stat().st_size
    assert info.opset >= 7 and info.quantization == "none"
    assert info.execution_provider == "CPUExecutionProvider"
    assert list(info.input_shape) == [1, 28, 28] and list(info.labels) == list(fashion["classes"])
    assert info.max_batch_size == 8 and info.dataset == "fashion-mnist"
    assert info.verification.present and info.verification.passed
    assert info.verification.summary.startswith("passed (") and "top-1 agreement" in info.verification.summary
    assert json.loads(info.verification.details_json)["passed"] is True


# --- errors ----------------------------------------------------------------------------------


def _bad_requests(x: np.ndarray) -> list[tuple[str, inference_pb2.ModelInferRequest, grpc.StatusCode, str]]:
    cases = [
        ("unknown model", infer_request("nope", x), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        ("unknown version", infer_request("lenet5", x, version="9"), grpc.StatusCode.NOT_FOUND, "expected one of: 1, 2"),
        ("wrong shape", infer_request("lenet5", x.reshape(1, 1, 784, 1)), grpc.StatusCode.INVALID_ARGUMENT, "expected [N, 1, 28, 28]"),
        ("batch too big", infer_request("lenet5", np.zeros((9, 1, 28, 28), np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "max batch size"),
    ]
    wrong_dtype = infer_request("lenet5", x)
    wrong_dtype.inputs[0].datatype = "FP64"
    cases.append(("wrong dtype", wrong_dtype, grpc.StatusCode.INVALID_ARGUMENT, "expected 'FP32'"))
    short = infer_request("lenet5", x)
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    cases.append(("short bytes", short, grpc.StatusCode.INVALID_ARGUMENT, "expected 3136"))
    typed = inference_pb2.ModelInferRequest(model_name="lenet5")
    typed.inputs.add(name="input", datatype="FP32", shape=x.shape).contents.fp32_contents.extend([0.0] * 10)
    cases.append(("typed count", typed, grpc.StatusCode.INVALID_ARGUMENT, "expected 784"))
    nan = x.copy()
    nan[0, 0, 3, 3] = np.nan
    cases.append(("nan", infer_request("lenet5", nan), grpc.StatusCode.INVALID_ARGUMENT, "expected finite"))
    wrong_name = infer_request("lenet5", x)
    wrong_name.inputs[0].name = "pixels"
    cases.append(("input name", wrong_name, grpc.StatusCode.INVALID_ARGUMENT, "expected 'input'"))
    both = infer_request("lenet5", x)
    both.inputs[0].contents.fp32_contents.extend(x.ravel().tolist())
    cases.append(("raw and typed", both, grpc.StatusCode.INVALID_ARGUMENT, "both raw_input_contents and contents"))
    for count in (0, -3):
        top = infer_request("lenet5", x)
        top.outputs.add(name="logits").parameters["classification"].int64_param = count
        cases.append((f"class_count {count}", top, grpc.StatusCode.INVALID_ARGUMENT, "must be a positive int64"))
    unknown = infer_request("lenet5", x)
    unknown.outputs.add(name="logits").parameters["binary_data"].bool_param = True
    cases.append(("output parameter", unknown, grpc.StatusCode.INVALID_ARGUMENT, "unsupported parameters ['binary_data']"))
    return cases


def test_infer_errors_name_what_was_expected(infer_stub, fashion):
    x = fashion["x"][:1]
    for label, request, code, expected in _bad_requests(x):
        with pytest.raises(grpc.RpcError) as info:
            infer_stub.ModelInfer(request, timeout=TIMEOUT)
        assert info.value.code() == code, label
        assert expected in info.value.details(), (label, info.value.details())
        assert infer_stub.ModelInfer(infer_request("lenet5", x), timeout=TIMEOUT).outputs, f"not serving after {label}"


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height grey pixels, with one tiny IDAT: a few dozen
    bytes that would need width*height bytes once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1))) + chunk(b"IEND", b"")


def gif_bytes(image_chw: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image_chw[0], mode="L").save(buffer, format="GIF")
    return buffer.getvalue()


def broken_png(image_chw: np.ndarray) -> bytes:
    """A PNG whose image data continues in a chunk of a corrupt type: Pillow raises SyntaxError
    while decoding it (not OSError), after the header read fine."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = image_chw.shape[1:]
    pixels = zlib.compress(b"".join(b"\x00" + row.tobytes() for row in image_chw[0]))
    half = len(pixels) // 2
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels[:half]) + chunk(b"ID\x01T", pixels[half:]) + chunk(b"IEND", b"")


def test_classify_errors(classifier_stub, fashion):
    def images(*items) -> list:
        return [classifier_pb2.Image(**item) for item in items]

    png = png_bytes(fashion["images"][0])
    cases = [
        (images({"encoded": b"not an image"}), "expected PNG or JPEG"),
        (images({"encoded": gif_bytes(fashion["images"][0])}), "expected PNG or JPEG"),
        (images({"encoded": broken_png(fashion["images"][0])}), "broken PNG file"),
        (images({"encoded": huge_png(13_000, 13_000)}), f"13000x13000 pixels exceed the server's limit of {DEFAULT_MAX_IMAGE_PIXELS}"),
        ([], "expected at least one"),
        (images({"tensor": classifier_pb2.FloatTensor(shape=[3, 28, 28], data=bytes(3 * 784 * 4))}), "expected [1, 28, 28]"),
        (images({"tensor": classifier_pb2.FloatTensor(shape=[1, 28, 28], data=np.full(784, np.inf, "<f4").tobytes())}), "expected finite"),
        (images({"encoded": png}) * 9, "max batch size"),
    ]
    valid = classifier_pb2.ClassifyRequest(model="lenet5", images=images({"encoded": png}))
    for bad_images, expected in cases:
        with pytest.raises(grpc.RpcError) as info:
            classifier_stub.Classify(classifier_pb2.ClassifyRequest(model="lenet5", images=bad_images), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, expected
        assert expected in info.value.details(), (expected, info.value.details())
        assert len(classifier_stub.Classify(valid, timeout=TIMEOUT).results) == 1, f"not serving after {expected!r}"
    with pytest.raises(grpc.RpcError) as info:
        classifier_stub.ModelInfo(classifier_pb2.ModelInfoRequest(model="lenet5", version=7), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "expected one of: 1, 2" in info.value.details()
    assert len(classifier_stub.Classify(valid, timeout=TIMEOUT).results) == 1


def test_deadline_is_honoured(server, infer_stub, fashion, monkeypatch):
    batcher = server.server.state.batchers[("lenet5-batched", 1)]
    gate = Gate(batcher, monkeypatch)
    before = scrape(server)
    try:
        blockers = [
            infer_stub.ModelInfer.future(infer_request("lenet5-batched", fashion["x"][:1]), timeout=TIMEOUT)
            for _ in range(batcher.max_in_flight)
        ]
        wait_until(lambda: gate.held == batcher.slots, "every compute slot to hold a batch")
        wait_until(lambda: server.server.state.inflight >= batcher.max_in_flight, "every blocker in the server")
        # As many batches as may be in flight are, so this request waits in the queue: its deadline passes first.
        with pytest.raises(grpc.RpcError) as info:
            infer_stub.ModelInfer(infer_request("lenet5-batched", fashion["x"][1:3]), timeout=BATCHED_DELAY_US / 1e6 / 5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        expired = {"model": "lenet5-batched", "version": "1", "api": "ModelInfer", "code": "DEADLINE_EXCEEDED"}
        seen = sample(before, "edgecnn_requests_total", **expired)
        wait_until(lambda: sample(scrape(server), "edgecnn_requests_total", **expired) > seen, "the server to see the deadline pass")
    finally:
        gate.open.set()
    assert all(blocker.result().outputs for blocker in blockers)
    after = scrape(server)
    labels = {"model": "lenet5-batched", "version": "1"}
    # The expired request was dropped from the queue, never computed.
    assert sample(after, "edgecnn_batch_size_sum", **labels) - sample(before, "edgecnn_batch_size_sum", **labels) == batcher.max_in_flight
    assert sample(after, "edgecnn_queue_depth", **labels) == 0
    assert infer_stub.ModelInfer(infer_request("lenet5-batched", fashion["x"][:1]), timeout=TIMEOUT).outputs


# --- batching and metrics --------------------------------------------------------------------


def test_concurrent_requests_are_batched_with_unchanged_results(server, infer_stub, repository, fashion, monkeypatch):
    batcher = server.server.state.batchers[("lenet5-batched", 1)]
    gate = Gate(batcher, monkeypatch)
    # Two batches in flight: with two per worker thread (32 on the 16-CPU GPU machine) each request had a batch of its own.
    monkeypatch.setattr(batcher, "max_in_flight", 2)
    before = scrape(server)
    xs = [fashion["x"][i : i + 1 + i % 3] for i in range(12)]
    try:
        futures = [infer_stub.ModelInfer.future(infer_request("lenet5-batched", x), timeout=TIMEOUT) for x in xs]
        # Hold the first batch until every request has arrived: those that came while it ran must share batches.
        wait_until(lambda: sample(scrape(server), "edgecnn_inflight_requests") >= len(xs), "all requests in the server")
    finally:
        gate.open.set()
    results = [logits_of(f.result()) for f in futures]
    for x, got in zip(xs, results):
        np.testing.assert_allclose(got, reference_logits(repository["batched"], x), rtol=1e-5, atol=1e-6)
    after = scrape(server)
    labels = {"model": "lenet5-batched", "version": "1"}

    def delta(name: str, **extra) -> float:
        return sample(after, name, **labels, **extra) - sample(before, name, **labels, **extra)

    calls = delta("edgecnn_batch_size_count")
    assert delta("edgecnn_batch_size_sum") == sum(len(x) for x in xs)
    assert calls < len(xs), f"{len(xs)} concurrent requests took {calls} ONNX Runtime calls: not batched"
    assert delta("edgecnn_batch_size_bucket", le="4.0") < calls, "no batch of more than 4 rows"


def test_lone_request_is_not_delayed(server, infer_stub, fashion):
    """With no other batch running, waiting for company cannot help: a request runs at once."""
    labels = {"model": "lenet5-batched", "version": "1"}
    before = scrape(server)
    for i in range(5):
        infer_stub.ModelInfer(infer_request("lenet5-batched", fashion["x"][i : i + 1]), timeout=TIMEOUT)
    after = scrape(server)
    waits = sample(after, "edgecnn_queue_wait_seconds_sum", **labels) - sample(before, "edgecnn_queue_wait_seconds_sum", **labels)
    assert sample(after, "edgecnn_batch_size_count", **labels) - sample(before, "edgecnn_batch_size_count", **labels) == 5
    # The old batcher held each one for the full delay (5 x 100 ms); together they now wait less than one delay.
    assert waits < BATCHED_DELAY_US / 1e6, f"5 lone requests waited {waits:.3f} s in the queue"


def _threads_that_ran(batcher, monkeypatch) -> list[str]:
    names: list[str] = []
    run = batcher.mv.run

    def recording_run(x: np.ndarray) -> np.ndarray:
        names.append(threading.current_thread().name)
        return run(x)

    monkeypatch.setattr(batcher.mv, "run", recording_run)
    return names


@pytest.mark.parametrize("model", ["lenet5", "lenet5-batched"])
def test_small_model_runs_inline_on_the_event_loop(server, infer_stub, fashion, monkeypatch, model):
    """LeNet-5's forward pass costs less than handing it to a worker thread: the loop runs it."""
    batcher = server.server.state.batchers[(model, 1)]
    assert 0 < batcher.mv.batch1_s < 0.1, "the warm-up measured the batch-1 time"
    names = _threads_that_ran(batcher, monkeypatch)
    for i in range(3):
        response = infer_stub.ModelInfer(infer_request(model, fashion["x"][i : i + 1], version="1"), timeout=TIMEOUT)
        assert logits_of(response).shape == (1, 10)
    assert names == ["edgecnn-server"] * 3, names


def test_inline_off_runs_on_worker_threads(repository, fashion, monkeypatch):
    settings = Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cpu", inline_max_us=0)
    with ServerThread(settings) as running, grpc.insecure_channel(running.address) as ch:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(ch)
        for model in ("lenet5", "lenet5-batched"):
            names = _threads_that_ran(running.server.state.batchers[(model, 1)], monkeypatch)
            x = fashion["x"][:2]
            np.testing.assert_allclose(
                logits_of(stub.ModelInfer(infer_request(model, x, version="1"), timeout=TIMEOUT)),
                reference_logits(repository["v1"] if model == "lenet5" else repository["batched"], x), rtol=1e-5, atol=1e-6,
            )
            assert len(names) == 1 and names[0].startswith("edgecnn-ort"), names


def test_metrics_scrape(server, infer_stub, fashion):
    before = scrape(server)
    for _ in range(3):
        infer_stub.ModelInfer(infer_request("lenet5", fashion["x"][:2], version="1"), timeout=TIMEOUT)
    not_found = {"model": "", "version": "", "api": "ModelInfer", "code": "NOT_FOUND"}
    with pytest.raises(grpc.RpcError):
        infer_stub.ModelInfer(infer_request("no-such-model", fashion["x"][:1]), timeout=TIMEOUT)
    # The server counts a request once its answer is sent: the client may read it first.
    wait_until(lambda: sample(scrape(server), "edgecnn_requests_total", **not_found) > sample(before, "edgecnn_requests_total", **not_found), "the NOT_FOUND count")
    after = scrape(server)
    assert sample(after, "edgecnn_model_parameters", model="lenet5", version="1") == PARAMS_LENET5
    assert sample(after, "edgecnn_model_onnx_bytes", model="lenet5", version="1") > 0
    info = {dict(k[1]).get("version"): dict(k[1]) for k in after if k[0] == "edgecnn_model_info" and dict(k[1]).get("model") == "lenet5"}
    assert info["1"]["provider"] == "CPUExecutionProvider" and int(info["1"]["opset"]) >= 7
    ok = {"model": "lenet5", "version": "1", "api": "ModelInfer", "code": "OK"}
    assert sample(after, "edgecnn_requests_total", **ok) - sample(before, "edgecnn_requests_total", **ok) == 3
    e2e = {"model": "lenet5", "version": "1", "api": "ModelInfer"}
    assert sample(after, "edgecnn_request_duration_seconds_count", **e2e) - sample(before, "edgecnn_request_duration_seconds_count", **e2e) == 3
    mv = {"model": "lenet5", "version": "1"}
    for name in ("edgecnn_queue_wait_seconds_count", "edgecnn_inference_duration_seconds_count", "edgecnn_batch_size_count"):
        assert sample(after, name, **mv) - sample(before, name, **mv) == 3, name
    assert sample(after, "edgecnn_batch_size_sum", **mv) - sample(before, "edgecnn_batch_size_sum", **mv) == 6
    assert sample(after, "edgecnn_inflight_requests") == 0
    assert sample(after, "edgecnn_server_ready") == 1
    assert sample(after, "edgecnn_requests_total", **not_found) - sample(before, "edgecnn_requests_total", **not_found) == 1


# --- health and reflection -------------------------------------------------------------------


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


# --- separate servers: loading, queue bound, TLS + token, start-up errors ---------------------


def test_not_serving_while_loading(repository, monkeypatch):
    from edgecnn.server import app

    release = threading.Event()
    real_load = app.load_registry

    def slow_load(*args, **kwargs):
        assert release.wait(TIMEOUT)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(app, "load_registry", slow_load)
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


@dataclass
class HeldServer:
    running: ServerThread
    stub: inference_pb2_grpc.GRPCInferenceServiceStub
    request: inference_pb2.ModelInferRequest
    batcher: object
    gate: Gate
    blockers: list


@contextmanager
def held_server(repository, fashion, monkeypatch, **overrides):
    """A server whose lenet5 v1 batcher (dynamic batching on) has every in-flight place taken by
    a held batch, so the next request waits in the queue; the gate opens when the block ends."""
    fields = {"max_queue_delay_us": 300_000, "max_batch_size": 64, **overrides}
    settings = Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cpu", **fields)
    with ServerThread(settings) as running, grpc.insecure_channel(running.address) as ch:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(ch)
        request = infer_request("lenet5", fashion["x"][:1], version="1")
        batcher = running.server.state.batchers[("lenet5", 1)]
        gate = Gate(batcher, monkeypatch)
        try:
            blockers = []
            for i in range(batcher.max_in_flight):  # one at a time: two in one event-loop tick would merge
                blockers.append(stub.ModelInfer.future(request, timeout=TIMEOUT))
                wait_until(lambda: running.server.state.inflight == i + 1, f"blocker {i + 1} in the server")
            wait_until(lambda: gate.held == batcher.slots, "every compute slot to hold a batch")
            yield HeldServer(running, stub, request, batcher, gate, blockers)
        finally:
            gate.open.set()


def test_queue_full_is_resource_exhausted(repository, fashion, monkeypatch):
    with held_server(repository, fashion, monkeypatch, max_queue=1) as held:
        # The next request waits in the queue and fills it.
        futures = [held.stub.ModelInfer.future(held.request, timeout=TIMEOUT) for _ in range(3)]
        wait_until(lambda: any(f.done() for f in futures), "a request to be refused")
        held.gate.open.set()
        futures += held.blockers
        codes = [grpc.StatusCode.OK if f.exception() is None else f.exception().code() for f in futures]
        assert grpc.StatusCode.OK in codes and grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
        assert all("queue full" in f.exception().details() for f in futures if f.exception() is not None)
        assert held.stub.ModelInfer(held.request, timeout=TIMEOUT).outputs


def test_expired_requests_leave_the_queue_at_once(repository, fashion, monkeypatch):
    """A queued request whose deadline passes gives its place back before any batch frees one:
    with max_queue 1, the next request is queued, not refused."""
    with held_server(repository, fashion, monkeypatch, max_queue=1) as held:
        with pytest.raises(grpc.RpcError) as info:
            held.stub.ModelInfer(held.request, timeout=0.2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: not held.batcher._pending, "the expired request to leave the queue")
        queued = held.stub.ModelInfer.future(held.request, timeout=TIMEOUT)
        wait_until(lambda: len(held.batcher._pending) == 1 or queued.done(), "the next request to be queued")
        held.gate.open.set()
        assert queued.result().outputs and all(b.result().outputs for b in held.blockers)


@pytest.mark.parametrize("delay_us", [300_000, 0], ids=["batching-on", "batching-off"])
def test_shutdown_fails_queued_requests_when_the_grace_ends(repository, fashion, monkeypatch, delay_us):
    """Requests still queued when the grace period ends get UNAVAILABLE (retry elsewhere) and
    the stop returns, instead of waiting for the whole queue past the grace; with batching off
    they wait in the worker threads' queue."""
    with held_server(repository, fashion, monkeypatch, max_queue_delay_us=delay_us) as held:
        assert held.batcher.batching == (delay_us > 0)
        queued = []
        for i in range(5):
            queued.append(held.stub.ModelInfer.future(held.request, timeout=TIMEOUT))
            wait_until(lambda: held.running.server.state.inflight == held.batcher.max_in_flight + i + 1, f"request {i + 1} queued")
        started = time.monotonic()
        held.running.stop(grace_s=0.3)
        took = time.monotonic() - started
        errors = [f.exception() for f in queued]
    assert took < 3.0, f"stop took {took:.1f} s with a grace of 0.3 s"
    assert all(e is not None and e.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in e.details() for e in errors), errors


def test_tls_and_token(repository, fashion, tmp_path):
    cert, key = self_signed_cert(tmp_path)
    settings = Settings(
        repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cpu",
        tls_cert=cert, tls_key=key, auth_token="s3cret",
    )
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with ServerThread(settings) as running, grpc.secure_channel(f"localhost:{running.port}", credentials) as ch:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(ch)
        request = infer_request("lenet5", fashion["x"][:1])
        for metadata, expected in ((None, "missing authorization"), ((("authorization", "Bearer wrong"),), "invalid token")):
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, metadata=metadata, timeout=TIMEOUT)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and expected in info.value.details()
        refused = running.server.metrics.registry.get_sample_value(
            "edgecnn_requests_total", {"model": "", "version": "", "api": "ModelInfer", "code": "UNAUTHENTICATED"}
        )
        assert refused == 2
        response = stub.ModelInfer(request, metadata=(("authorization", "Bearer s3cret"),), timeout=TIMEOUT)
        np.testing.assert_allclose(logits_of(response), reference_logits(repository["v2"], fashion["x"][:1]), rtol=1e-5, atol=1e-6)
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


def test_drain_does_not_wait_for_refused_requests(repository, fashion, monkeypatch):
    """Requests refused while draining are never in flight: under steady traffic the drain ends
    when the real in-flight requests do (here one held for 0.3 s), not at the grace period."""
    grace_s = 30.0
    running = ServerThread(Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cpu")).start()
    request = infer_request("lenet5", fashion["x"][:1])
    gate = Gate(running.server.state.batchers[("lenet5", 1)], monkeypatch)
    stop = threading.Event()
    codes: list[grpc.StatusCode] = []

    def traffic() -> None:
        with grpc.insecure_channel(running.address) as ch:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(ch)
            while not stop.is_set():
                try:
                    stub.ModelInfer(request, timeout=TIMEOUT)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())

    senders = [threading.Thread(target=traffic) for _ in range(6)]
    for sender in senders:
        sender.start()
    try:
        with grpc.insecure_channel(running.address) as ch:
            held = inference_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer.future(infer_request("lenet5", fashion["x"][:1], version="1"), timeout=TIMEOUT)
            wait_until(lambda: gate.held == 1 and codes.count(grpc.StatusCode.OK) >= 20, "traffic to flow and one request to be held")
            threading.Timer(0.3, gate.open.set).start()
            started = time.monotonic()
            running.stop(grace_s)
            took = time.monotonic() - started
            assert held.result().outputs, "the in-flight request was not finished"
    finally:
        gate.open.set()
        stop.set()
        for sender in senders:
            sender.join(TIMEOUT)
    assert grpc.StatusCode.UNAVAILABLE in codes, "no request was refused while draining"
    assert took < grace_s / 3, f"the drain took {took:.1f} s of its {grace_s:.0f} s grace: refused requests counted as in flight"


@pytest.mark.skipif(gpu_present(), reason="a GPU is present")
def test_device_cuda_without_gpu_is_a_startup_error(repository):
    with pytest.raises(StartupError, match="--device cuda"):
        ServerThread(Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cuda")).start()


def test_cli_startup_errors(tmp_path, capsys):
    import argparse

    from edgecnn.server import cmd_serve

    parser = argparse.ArgumentParser()
    cmd_serve.configure(parser)
    assert cmd_serve.run(parser.parse_args(["--repository", str(tmp_path / "missing"), "--port", "0", "--metrics-port", "-1"])) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cmd_serve.run(parser.parse_args(["--repository", str(tmp_path / "empty"), "--port", "0", "--metrics-port", "-1"])) == 2
    assert "holds no model" in capsys.readouterr().err


def test_cli_flags_reach_the_settings(tmp_path):
    import argparse

    from edgecnn.server import cmd_serve

    parser = argparse.ArgumentParser()
    cmd_serve.configure(parser)
    defaults = cmd_serve.settings_from_args(parser.parse_args(["--repository", str(tmp_path)]))
    assert (defaults.batch_buckets, defaults.inline_max_us, defaults.device) == ("auto", 1000, "auto")
    argv = ["--repository", str(tmp_path), "--batch-buckets", "off", "--inline-max-us", "0", "--device", "cpu", "--max-queue-delay-us", "500"]
    settings = cmd_serve.settings_from_args(parser.parse_args(argv))
    assert (settings.batch_buckets, settings.fixed_shapes, settings.inline_max_us, settings.max_queue_delay_us) == ("off", False, 0, 500)
    with pytest.raises(SystemExit):
        parser.parse_args(["--repository", str(tmp_path), "--batch-buckets", "sometimes"])


def test_a_model_that_cannot_run_fails_at_startup(repository, tmp_path):
    """The load-time warm-up runs a batch of zeros: metadata that lies about the input shape
    stops the start instead of failing every request."""
    import onnx

    shutil.copytree(repository["dir"] / "lenet5", tmp_path / "repo" / "lenet5")
    shutil.rmtree(tmp_path / "repo" / "lenet5" / "2")
    path = tmp_path / "repo" / "lenet5" / "1" / "model.onnx"
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == repo.Meta.INPUT_SHAPE:
            prop.value = json.dumps([1, 32, 32])
    onnx.save(model, str(path))
    settings = Settings(repository=tmp_path / "repo", host="127.0.0.1", port=0, metrics_port=None, device="cpu")
    with pytest.raises(StartupError, match="a warm-up batch of 1 fails in ONNX Runtime"):
        ServerThread(settings).start()


def _copy_lenet5(repository: dict, target: Path, **config_fields) -> Path:
    """lenet5 (versions 1 and 2) in a repository of its own, with config.pbtxt fields changed."""
    shutil.copytree(repository["dir"] / "lenet5", target / "lenet5")
    config = repo.read_config(target / "lenet5")
    for field, value in config_fields.items():
        if value is None:
            config.ClearField(field)
        else:
            setattr(config, field, value)
    return config


def _write_config(model_dir: Path, config) -> None:
    (model_dir / repo.CONFIG_NAME).write_text(repo.config_to_text(config))


def _serve(repository: Path) -> ServerThread:
    return ServerThread(Settings(repository=repository, host="127.0.0.1", port=0, metrics_port=None, device="cpu"))


def test_version_policy_picks_the_served_versions(repository, fashion, tmp_path):
    """As in Triton: no policy serves the latest version only, `specific` the listed ones (an
    empty version then means the highest listed), a listed version that is missing stops the start."""
    x = fashion["x"][:2]
    config = _copy_lenet5(repository, tmp_path, version_policy=None)
    _write_config(tmp_path / "lenet5", config)
    with _serve(tmp_path) as running:
        client = tritonclient_grpc.InferenceServerClient(url=running.address)
        assert list(client.get_model_metadata("lenet5").versions) == ["2"]
        assert not client.is_model_ready("lenet5", "1")
    config.version_policy.specific.versions[:] = [1]
    _write_config(tmp_path / "lenet5", config)
    with _serve(tmp_path) as running, grpc.insecure_channel(running.address) as ch:
        response = inference_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(infer_request("lenet5", x), timeout=TIMEOUT)
        assert response.model_version == "1"
        np.testing.assert_allclose(logits_of(response), reference_logits(repository["v1"], x), rtol=1e-5, atol=1e-6)
    config.version_policy.specific.versions[:] = [1, 3]
    _write_config(tmp_path / "lenet5", config)
    with pytest.raises(StartupError, match=r"names versions \[3\] that the repository lacks"):
        _serve(tmp_path).start()


def test_a_fixed_batch_dimension_serves_only_unbatched(repository, fashion, tmp_path):
    """A graph exported with its batch dimension fixed at 1 cannot take merged batches: with
    max_batch_size 8 the start fails and says why; with 0 it serves one image per request and its
    metadata shows the batch dimension 1."""
    import onnx

    config = _copy_lenet5(repository, tmp_path, max_batch_size=8)
    shutil.rmtree(tmp_path / "lenet5" / "2")
    path = tmp_path / "lenet5" / "1" / "model.onnx"
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(path))
    _write_config(tmp_path / "lenet5", config)
    with pytest.raises(StartupError, match="batch dimension is fixed at 1, so max_batch_size 8 cannot be served"):
        _serve(tmp_path).start()
    config.max_batch_size = 0
    _write_config(tmp_path / "lenet5", config)
    with _serve(tmp_path) as running:
        client = tritonclient_grpc.InferenceServerClient(url=running.address)
        assert list(client.get_model_metadata("lenet5").inputs[0].shape) == [1, 1, 28, 28]
        x = fashion["x"][:1]
        tensor = tritonclient_grpc.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        np.testing.assert_allclose(client.infer("lenet5", [tensor]).as_numpy("logits"), reference_logits(repository["v1"], x), rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not gpu_present(), reason="needs an NVIDIA GPU")
def test_cuda_provider_serves_the_same_results(repository, fashion):
    settings = Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cuda")
    with ServerThread(settings) as running, grpc.insecure_channel(running.address) as ch:
        info = classifier_pb2_grpc.ClassifierStub(ch).ModelInfo(classifier_pb2.ModelInfoRequest(model="lenet5"), timeout=TIMEOUT)
        assert info.execution_provider == "CUDAExecutionProvider"
        response = inference_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(infer_request("lenet5", fashion["x"][:8]), timeout=TIMEOUT)
        np.testing.assert_allclose(logits_of(response), reference_logits(repository["v2"], fashion["x"][:8]), rtol=1e-3, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not gpu_present(), reason="needs an NVIDIA GPU")
def test_cuda_batches_of_mixed_sizes_give_the_same_results(repository, fashion):
    settings = Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cuda")
    with ServerThread(settings) as running, grpc.insecure_channel(running.address) as ch:
        batched, single = (running.server.state.batchers[(name, 1)] for name in ("lenet5-batched", "lenet5"))
        assert (batched.slots, batched.inline_max_s) == (1, 0.0), "on a GPU: one slot to batch into, never inline"
        assert single.slots >= 2 and single.inline_max_s == 0.0
        assert batched.mv.shape_buckets.sizes == [1, 2, 4, 8, 16, 32, 64] and single.mv.shape_buckets.sizes == [1, 2, 4, 8]
        session = batched.mv.session
        assert session.get_provider_options()[CUDA]["cudnn_conv_algo_search"] == "HEURISTIC"
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(ch)
        bounds = np.cumsum([0, 1, 3, 5, 2, 8, 1, 4, 7])
        xs = [fashion["x"][a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        futures = [stub.ModelInfer.future(infer_request("lenet5-batched", x), timeout=TIMEOUT) for x in xs]
        for future, x in zip(futures, xs):
            np.testing.assert_allclose(logits_of(future.result()), reference_logits(repository["batched"], x), rtol=1e-3, atol=1e-4)


def test_bucket_sizes():
    assert bucket_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert bucket_sizes(48) == [1, 2, 4, 8, 16, 32, 48]
    assert bucket_sizes(2) == [1, 2]
    assert bucket_sizes(1) == bucket_sizes(0) == [1]


def test_batch_buckets_pad_batches_and_keep_each_session_to_one_shape(repository, fashion):
    """What the CUDA provider gets by default (shapes.py), switched on here for the CPU provider."""
    settings = Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cpu", batch_buckets="on", inline_max_us=0)
    with ServerThread(settings) as running, grpc.insecure_channel(running.address) as ch:
        batchers = running.server.state.batchers
        assert sorted(batchers[("lenet5", 1)].mv.shape_buckets.sessions) == [1, 2, 4, 8]  # max batch 8
        buckets = batchers[("lenet5-batched", 1)].mv.shape_buckets
        assert sorted(buckets.sessions) == [1, 2, 4, 8, 16, 32, 64] and buckets.sessions[1] is batchers[("lenet5-batched", 1)].mv.session
        seen: dict[int, set[int]] = {}
        for size, session in buckets.sessions.items():
            # InferenceSession is a Python class: record the batch sizes each one is called with.
            rows = seen.setdefault(size, set())
            session.run = lambda outputs, feeds, _run=session.run, _rows=rows: (_rows.add(len(next(iter(feeds.values())))), _run(outputs, feeds))[1]
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(ch)
        for sizes in ([1, 3, 2, 5], [9, 1, 4, 7, 2], [16], [6]):
            bounds = np.cumsum([0, *sizes])
            xs = [fashion["x"][a:b] for a, b in zip(bounds[:-1], bounds[1:])]
            futures = [stub.ModelInfer.future(infer_request("lenet5-batched", x), timeout=TIMEOUT) for x in xs]
            for future, x in zip(futures, xs):
                np.testing.assert_allclose(logits_of(future.result()), reference_logits(repository["batched"], x), rtol=1e-5, atol=1e-6)
    assert all(shapes <= {size} for size, shapes in seen.items()), seen
    assert len(set().union(*seen.values())) >= 3, f"too few bucket sizes exercised: {seen}"


def load_batched_with_buckets(repository: dict, max_batch_size: int):
    """lenet5-batched loaded on the CPU provider with a session per batch size bucket."""
    entry = next(e for e in repo.list_models(repository["dir"]) if e.name == "lenet5-batched")
    return load_version(entry, repo.read_config(entry.model_dir), [CPU], 1, max_batch_size, 0, fixed_shapes=True)


def test_batch_buckets_run_more_rows_than_the_largest_bucket_in_pieces(repository, fashion):
    mv = load_batched_with_buckets(repository, max_batch_size=4)
    assert mv.shape_buckets.sizes == [1, 2, 4] and mv.shape_buckets.bucket(3) == 4 and mv.shape_buckets.bucket(5) is None
    x = fashion["x"][:11]
    np.testing.assert_allclose(mv.run(x), reference_logits(repository["batched"], x), rtol=1e-5, atol=1e-6)


def test_a_bucket_session_that_cannot_open_is_a_startup_error(repository, monkeypatch):
    from edgecnn.server import runtime

    opened = []

    def open_once(*args):
        if opened:
            raise RuntimeError("CUDA failure 2: out of memory")
        opened.append(args)
        return real_open(*args)

    real_open = runtime.open_session
    monkeypatch.setattr(runtime, "open_session", open_once)
    with pytest.raises(StartupError, match="cannot open a session per batch size bucket.*out of memory"):
        load_batched_with_buckets(repository, max_batch_size=4)


def test_batch_buckets_off_and_auto_on_the_cpu(repository):
    assert Settings(repository=repository["dir"]).fixed_shapes is None
    assert Settings(repository=repository["dir"], batch_buckets="off").fixed_shapes is False
    with pytest.raises(ValueError, match="batch_buckets must be auto, on or off"):
        Settings(repository=repository["dir"], batch_buckets="always")  # type: ignore[arg-type]
    settings = Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cpu")
    with ServerThread(settings) as running:
        assert all(b.mv.shape_buckets is None for b in running.server.state.batchers.values())


def test_cuda_sessions_pick_convolution_kernels_by_heuristic():
    assert with_options([CUDA, CPU]) == [(CUDA, {"cudnn_conv_algo_search": "HEURISTIC"}), CPU]
    assert with_options([CPU]) == [CPU]


def test_serving_side_never_imports_torch():
    code = (
        "import sys, edgecnn.server, edgecnn.server.cmd_serve, edgecnn.server.app\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
