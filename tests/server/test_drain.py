"""`edgecnn serve` as a real process: it answers tritonclient and Classify, prints its bound
ports, and drains on SIGTERM under load."""

from __future__ import annotations

import collections
import os
import signal
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tritonclient_grpc
from tritonclient.utils import InferenceServerException
from edgecnn.protos import (
    classifier_pb2,
    classifier_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
)
from edgecnn.server import ServerThread, Settings
from edgecnn.server.app import INTAKE_S
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.child_process import ServeProcess
from tests.onnx_models import (
    FASHION_CLASSES,
    normalized,
    png_bytes,
    reference_logits,
    sample_images,
    write_version,
)
from tests.server.grpc_helpers import TIMEOUT, Gate, infer_request, wait_until
from tests.servers import serve_argv

DELAY_US = 1_000_000  # requests that arrive while a batch runs wait in the queue for it to finish
# `edgecnn serve` whose ONNX Runtime calls take 0.5 s more, so requests are surely in flight at SIGTERM
# (a lone request is never held back by the batch delay).
SLOW_SERVE = """
import sys, time
from edgecnn.server.model_version import ModelVersion
run = ModelVersion.run
def slow_run(self, batch):
    time.sleep(0.5)
    return run(self, batch)
ModelVersion.run = slow_run
from edgecnn.cli import main
sys.exit(main())
"""


@pytest.fixture(scope="module")
def batched_repository(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("drain")
    write_version(root / "repo", "lenet5", 1, seed=0, max_batch_size=64, max_queue_delay_us=DELAY_US)
    return root / "repo"


def test_edgecnn_serve_answers_tritonclient_and_classify(batched_repository):
    """Issue 4's "done when": the real command on a LeNet-5 batched_repository serves both APIs."""
    images = sample_images(4)
    x = normalized(images)
    expected = reference_logits(batched_repository / "lenet5" / "1" / "model.onnx", x)
    with ServeProcess(serve_argv(batched_repository, "--grace", "1")) as served:
        client = tritonclient_grpc.InferenceServerClient(url=served.address)
        assert client.is_server_ready() and client.is_model_ready("lenet5")
        tensor = tritonclient_grpc.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("lenet5", [tensor], outputs=[tritonclient_grpc.InferRequestedOutput("logits")])
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-5, atol=1e-6)
        client.close()
        request = classifier_pb2.ClassifyRequest(model="lenet5", top_k=10)
        for image in images:
            request.images.add(encoded=png_bytes(image))
        with grpc.insecure_channel(served.address) as channel:
            response = classifier_pb2_grpc.ClassifierStub(channel).Classify(request, timeout=10)
        assert len(response.results) == 4
        for result, logits in zip(response.results, expected):
            assert sorted(p.index for p in result.predictions) == list(range(10))
            assert [p.label for p in result.predictions] == [FASHION_CLASSES[p.index] for p in result.predictions]
            probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            np.testing.assert_allclose([p.score for p in result.predictions], probs[[p.index for p in result.predictions]], rtol=1e-4, atol=1e-6)
    assert served.proc.returncode == 0, "".join(served.output)


def test_sigterm_drains_in_flight_requests(batched_repository):
    served = ServeProcess(serve_argv(batched_repository, "--grace", "20", program=[sys.executable, "-c", SLOW_SERVE]), env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout_s=60)
    proc = served.proc
    try:
        assert served.metrics_port and served.metrics_port > 0
        with grpc.insecure_channel(served.address) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            x = np.random.default_rng(0).standard_normal((1, 1, 28, 28), dtype=np.float32)
            request = inference_pb2.ModelInferRequest(model_name="lenet5")
            request.inputs.add(name="input", datatype="FP32", shape=x.shape)
            request.raw_input_contents.append(x.tobytes())
            assert stub.ServerReady(inference_pb2.ServerReadyRequest(), timeout=5).ready
            in_flight = [stub.ModelInfer.future(request, timeout=30) for _ in range(24)]
            time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            time.sleep(INTAKE_S + 0.1)  # requests received this soon after the signal are still served
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(request, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            outputs = [future.result() for future in in_flight]
            assert all(len(o.raw_output_contents[0]) == 10 * 4 for o in outputs)
        assert proc.wait(timeout=30) == 0, "".join(served.output)
    finally:
        served.kill()


def test_drain_does_not_wait_for_refused_requests(repository, samples, monkeypatch):
    """Requests refused while draining are never in flight: under steady traffic the drain ends
    when the real in-flight requests do (here one held for 0.3 s), not at the grace period."""
    grace_s = 30.0
    running = ServerThread(Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cpu")).start()
    request = infer_request("lenet5", samples["x"][:1])
    gate = Gate(running.server.plane.batcher("lenet5", 1), monkeypatch)
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
            held = inference_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer.future(infer_request("lenet5", samples["x"][:1], version="1"), timeout=TIMEOUT)
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


def sigterm_under_callers(argv: list[str], callers: int, before_signal_s: float, env=None) -> tuple[dict, dict, int]:
    """`callers` closed-loop tritonclient callers against the server `argv` starts, SIGTERM after
    before_signal_s: the status codes of the requests sent before the signal and after it, and
    the exit code."""
    served = ServeProcess(argv, env=env, timeout_s=60)
    x = np.zeros((1, 1, 28, 28), np.float32)
    before: collections.Counter = collections.Counter()
    after: collections.Counter = collections.Counter()
    signalled = threading.Event()
    done = threading.Event()

    def caller() -> None:
        client = tritonclient_grpc.InferenceServerClient(url=served.address)
        tensor = tritonclient_grpc.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        while not done.is_set():
            sent_after = signalled.is_set()
            try:
                client.infer("lenet5", [tensor], client_timeout=30)
                code = "OK"
            except InferenceServerException as exc:
                code = (exc.status() or "").replace("StatusCode.", "")
            (after if sent_after else before)[code] += 1
            if sent_after and code != "OK":
                time.sleep(0.01)  # as a client that fails over would: it does not hammer this server
    threads = [threading.Thread(target=caller) for _ in range(callers)]
    try:
        for t in threads:
            t.start()
        time.sleep(before_signal_s)
        signalled.set()
        served.proc.send_signal(signal.SIGTERM)
        code = served.proc.wait(60)
    finally:
        done.set()
        for t in threads:
            t.join(60)
        served.kill()
    return dict(before), dict(after), code


def test_sigterm_under_64_callers_answers_every_request_it_received(repository):
    """Of the requests in flight at the signal none is CANCELLED (grpc's shutdown cancelled 62 of
    64 before): all get their result; later ones get UNAVAILABLE (or, within the short intake
    window, their result); exit 0."""
    before, after, code = sigterm_under_callers(serve_argv(repository["dir"], "--grace", "10"), 64, 1.5)
    assert code == 0
    in_flight_at_signal = 64
    assert set(before) == {"OK"} and before["OK"] >= in_flight_at_signal, before
    assert "CANCELLED" not in after and set(after) <= {"OK", "UNAVAILABLE"} and after.get("UNAVAILABLE"), after


def test_sigterm_with_a_batch_of_64_computing_answers_it(batched_repository):
    """Batching on, each ONNX Runtime call 0.5 s longer: at the signal a batch of (nearly) 64
    requests is computing and the rest wait for it; every one of them gets its logits."""
    argv = serve_argv(batched_repository, "--grace", "20", program=[sys.executable, "-c", SLOW_SERVE])
    before, after, code = sigterm_under_callers(argv, 64, 1.8, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert code == 0
    assert set(before) == {"OK"} and before["OK"] >= 64, before
    assert "CANCELLED" not in after and set(after) <= {"OK", "UNAVAILABLE"}, after
