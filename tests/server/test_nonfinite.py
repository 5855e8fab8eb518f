"""NaN and infinite inputs: ModelInfer accepts them by default as Triton does (perf_analyzer's
default random data holds such bit patterns) and counts them in edgecnn_nonfinite_inputs_total;
`--reject-nonfinite` (Settings.reject_nonfinite) refuses them with INVALID_ARGUMENT; Classify
always refuses them."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from edgecnn.protos import classifier_pb2, inference_pb2_grpc
from edgecnn.server import ServerThread, Settings
from edgecnn.server.errors import InvalidArgument
from edgecnn.server.tensor_checks import InputTensor, input_batch

from tests.server.grpc_helpers import TIMEOUT, infer_request, logits_of, sample, scrape

METRIC = "edgecnn_nonfinite_inputs_total"


def nonfinite(x: np.ndarray) -> np.ndarray:
    bad = x.copy()
    bad[0, 0, 3, 3] = np.nan
    bad[-1, 0, 5, 5] = np.inf
    return bad


def test_model_infer_accepts_and_counts_nonfinite_inputs_by_default(server, infer_stub, samples):
    x = nonfinite(samples["x"][:2])
    code = dict(api="ModelInfer", code="INVALID_ARGUMENT", model="lenet5", version="1")
    scraped = scrape(server)
    before, refused = sample(scraped, METRIC, model="lenet5", version="1"), sample(scraped, "edgecnn_requests_total", **code)
    for _ in range(3):
        logits = logits_of(infer_stub.ModelInfer(infer_request("lenet5", x, version="1"), timeout=TIMEOUT))
        assert logits.shape == (2, 10)
    finite = logits_of(infer_stub.ModelInfer(infer_request("lenet5", samples["x"][:2], version="1"), timeout=TIMEOUT))
    assert np.isfinite(finite).all()
    after = scrape(server)
    assert sample(after, METRIC, model="lenet5", version="1") == before + 3  # per request, finite ones not counted
    assert sample(after, "edgecnn_requests_total", **code) == refused


def test_classify_refuses_nonfinite_tensors_by_default(classifier_stub):
    request = classifier_pb2.ClassifyRequest(model="lenet5")
    request.images.add(tensor=classifier_pb2.FloatTensor(shape=[1, 28, 28], data=np.full(784, np.nan, "<f4").tobytes()))
    with pytest.raises(grpc.RpcError) as info:
        classifier_stub.Classify(request, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "expected finite" in info.value.details()


@pytest.fixture(scope="module")
def rejecting(repository):
    settings = Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=0, device="cpu", reject_nonfinite=True)
    with ServerThread(settings) as running:
        yield running


def test_reject_nonfinite_refuses_them_with_invalid_argument(rejecting, samples):
    x = samples["x"][:1]
    with grpc.insecure_channel(rejecting.address) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(infer_request("lenet5", nonfinite(x)), timeout=TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "input 'input' holds NaN or infinite values; expected finite" in info.value.details()
        assert stub.ModelInfer(infer_request("lenet5", x), timeout=TIMEOUT).outputs  # still serving
    assert sample(scrape(rejecting), METRIC, model="lenet5", version="2") == 1  # counted when refused too


def test_input_batch_decides_per_call():
    from types import SimpleNamespace

    mv = SimpleNamespace(name="m", input_name="input", input_shape=(1, 2, 2), sample_nbytes=16, sample_size=4,
                         serving=SimpleNamespace(batch_limit=4))  # fmt: skip
    x = np.array([[[[0.0, np.inf], [1.0, 2.0]]]], np.float32)
    tensor = InputTensor("input", "FP32", x.shape, raw=x.tobytes())
    seen = []
    assert input_batch([tensor], mv, reject_nonfinite=False, on_nonfinite=seen.append).shape == (1, 1, 2, 2)
    with pytest.raises(InvalidArgument, match="expected finite"):
        input_batch([tensor], mv, reject_nonfinite=True, on_nonfinite=seen.append)
    assert seen == [mv, mv]
    with pytest.raises(InvalidArgument, match="expected finite"):
        input_batch([tensor], mv)  # the default refuses, for any other caller
    finite = InputTensor("input", "FP32", x.shape, raw=np.zeros_like(x).tobytes())
    input_batch([finite], mv, reject_nonfinite=False, on_nonfinite=seen.append)
    assert len(seen) == 2
