"""The Prometheus endpoint of a real server after a few requests."""

from __future__ import annotations

import grpc
import pytest

from tests.onnx_models import PARAMS_LENET5
from tests.server.grpc_helpers import (
    TIMEOUT,
    infer_request,
    sample,
    scrape,
    wait_until,
)


def test_metrics_scrape(server, infer_stub, samples):
    before = scrape(server)
    for _ in range(3):
        infer_stub.ModelInfer(infer_request("lenet5", samples["x"][:2], version="1"), timeout=TIMEOUT)
    not_found = {"model": "", "version": "", "api": "ModelInfer", "code": "NOT_FOUND", "protocol": "grpc"}
    with pytest.raises(grpc.RpcError):
        infer_stub.ModelInfer(infer_request("no-such-model", samples["x"][:1]), timeout=TIMEOUT)
    # The server counts a request once its answer is sent: the client may read it first.
    wait_until(lambda: sample(scrape(server), "edgecnn_requests_total", **not_found) > sample(before, "edgecnn_requests_total", **not_found), "the NOT_FOUND count")
    after = scrape(server)
    assert sample(after, "edgecnn_model_parameters", model="lenet5", version="1") == PARAMS_LENET5
    assert sample(after, "edgecnn_model_onnx_bytes", model="lenet5", version="1") > 0
    info = {dict(k[1]).get("version"): dict(k[1]) for k in after if k[0] == "edgecnn_model_info" and dict(k[1]).get("model") == "lenet5"}
    assert info["1"]["provider"] == "CPUExecutionProvider" and int(info["1"]["opset"]) >= 7
    ok = {"model": "lenet5", "version": "1", "api": "ModelInfer", "code": "OK", "protocol": "grpc"}
    assert sample(after, "edgecnn_requests_total", **ok) - sample(before, "edgecnn_requests_total", **ok) == 3
    e2e = {"model": "lenet5", "version": "1", "api": "ModelInfer", "protocol": "grpc"}
    assert sample(after, "edgecnn_request_duration_seconds_count", **e2e) - sample(before, "edgecnn_request_duration_seconds_count", **e2e) == 3
    mv = {"model": "lenet5", "version": "1"}
    for name in ("edgecnn_queue_wait_seconds_count", "edgecnn_inference_duration_seconds_count", "edgecnn_batch_size_count"):
        assert sample(after, name, **mv) - sample(before, name, **mv) == 3, name
    assert sample(after, "edgecnn_batch_size_sum", **mv) - sample(before, "edgecnn_batch_size_sum", **mv) == 6
    assert sample(after, "edgecnn_inflight_requests") == 0
    assert sample(after, "edgecnn_server_ready") == 1
    assert sample(after, "edgecnn_requests_total", **not_found) - sample(before, "edgecnn_requests_total", **not_found) == 1
