"""The Open Inference Protocol over gRPC (inference.GRPCInferenceService), tritonclient as the client."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tritonclient_grpc
from edgecnn.protos import inference_pb2

from tests.onnx_models import reference_logits
from tests.server.grpc_helpers import (
    BATCHED_DELAY_US,
    TIMEOUT,
    infer_request,
    logits_of,
    wait_until,
)


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


def test_tritonclient_classification_extension(server, repository, samples):
    """InferRequestedOutput(class_count=K): per image the K highest logits as Triton's
    "value:index:label" BYTES strings, highest first."""
    x = samples["x"][:4]
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
        assert [label for _, _, label in parsed] == [samples["classes"][int(index)] for _, index, _ in parsed]
        np.testing.assert_allclose([float(value) for value, _, _ in parsed], np.sort(logits)[::-1][:3], atol=1e-5)
    # As Triton: more classes than the model has gives them all.
    everything = client.infer("lenet5", [tensor], model_version="1", outputs=[tritonclient_grpc.InferRequestedOutput("logits", class_count=50)])
    assert everything.as_numpy("logits").shape == (4, 10)


def test_classification_of_a_model_without_labels_is_value_and_index():
    from types import SimpleNamespace

    from edgecnn.server.tensor_checks import InferOutcome

    logits = np.array([[0.5, 2.0, -1.0]], np.float32)
    unlabeled = SimpleNamespace(labels=["0", "1", "2"], has_labels=False)
    assert InferOutcome(unlabeled, logits, 2).classification() == [b"2.000000:1", b"0.500000:0"]
    labeled = SimpleNamespace(labels=["a", "b", "c"], has_labels=True)
    assert InferOutcome(labeled, logits, 1).classification() == [b"2.000000:1:b"]


def test_model_config_shows_dynamic_batching_only_when_on(server):
    client = tritonclient_grpc.InferenceServerClient(url=server.address)
    assert client.get_model_config("lenet5-batched").config.HasField("dynamic_batching")
    unbatched = client.get_model_config("lenet5").config  # max_queue_delay_us 0: every request its own run
    assert unbatched.max_batch_size == 8 and not unbatched.HasField("dynamic_batching")


@pytest.mark.parametrize("version, key", [("", "v2"), ("1", "v1"), ("2", "v2")])
def test_tritonclient_infer_equals_onnxruntime(server, repository, samples, version, key):
    x = samples["x"][:5]
    client = tritonclient_grpc.InferenceServerClient(url=server.address)
    tensor = tritonclient_grpc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("lenet5", [tensor], model_version=version, outputs=[tritonclient_grpc.InferRequestedOutput("logits")])
    np.testing.assert_allclose(result.as_numpy("logits"), reference_logits(repository[key], x), rtol=1e-5, atol=1e-6)
    assert result.get_response().model_version == key[1]


def test_typed_contents_equal_raw_contents(infer_stub, samples):
    x = samples["x"][:3]
    typed = inference_pb2.ModelInferRequest(model_name="lenet5")
    tensor = typed.inputs.add(name="input", datatype="FP32", shape=x.shape)
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    raw = infer_stub.ModelInfer(infer_request("lenet5", x), timeout=TIMEOUT)
    np.testing.assert_array_equal(logits_of(infer_stub.ModelInfer(typed, timeout=TIMEOUT)), logits_of(raw))
    assert raw.id == "t" and raw.model_name == "lenet5"


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
    # NaN is accepted by default, as Triton does: tests/server/test_nonfinite.py (refused under reject_nonfinite).
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


def test_infer_errors_name_what_was_expected(infer_stub, samples):
    x = samples["x"][:1]
    for label, request, code, expected in _bad_requests(x):
        with pytest.raises(grpc.RpcError) as info:
            infer_stub.ModelInfer(request, timeout=TIMEOUT)
        assert info.value.code() == code, label
        assert expected in info.value.details(), (label, info.value.details())
        assert infer_stub.ModelInfer(infer_request("lenet5", x), timeout=TIMEOUT).outputs, f"not serving after {label}"


@pytest.mark.parametrize("path", ["answered at once", "simple, through the batcher", "through infer()"])
def test_an_onnx_runtime_failure_is_internal_with_its_message(server, infer_stub, samples, monkeypatch, path):
    """Every ModelInfer path (DataPlane.answer_now, infer_simple and infer) answers INTERNAL,
    and the call is marked answered (the drain waits for nothing)."""
    plane = server.server.plane
    batcher = plane.batcher("lenet5", 1)

    def broken(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("ORT broke")

    monkeypatch.setattr(batcher.mv, "run", broken)
    if path == "through infer()":  # typed contents take infer()
        request = inference_pb2.ModelInferRequest(model_name="lenet5", model_version="1")
        request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28]).contents.fp32_contents.extend(samples["x"][0].ravel())
    else:
        request = infer_request("lenet5", samples["x"][:1], version="1")
    if path == "simple, through the batcher":  # a worker thread runs it
        monkeypatch.setattr(batcher, "inline_max_s", 0.0)
        monkeypatch.setattr(batcher, "inline_idle_max_s", 0.0)
    with pytest.raises(grpc.RpcError) as info:
        infer_stub.ModelInfer(request, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "internal error in ModelInfer: RuntimeError: ORT broke"
    wait_until(lambda: plane.open_calls == 0 and plane.inflight == 0, "the call marked answered")
