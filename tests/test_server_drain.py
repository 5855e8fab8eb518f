"""`edgecnn serve` as a real process: bound ports printed, and a SIGTERM drain under load."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgecnn.protos import inference_pb2, inference_pb2_grpc
from tests.conftest_server import export, write_checkpoint

DELAY_US = 1_000_000  # requests that arrive while a batch runs wait in the queue for it to finish
# `edgecnn serve` whose ONNX Runtime calls take 0.5 s more, so requests are surely in flight at SIGTERM
# (a lone request is never held back by the batch delay).
SLOW_SERVE = """
import sys, time
from edgecnn.server.runtime import ModelVersion
run = ModelVersion.run
def slow_run(self, batch):
    time.sleep(0.5)
    return run(self, batch)
ModelVersion.run = slow_run
from edgecnn.cli import main
sys.exit(main())
"""
READY_LINE = re.compile(r"edgecnn serving on (\S+):(\d+) \(metrics :(\d+)\)")


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("drain")
    export(write_checkpoint(root / "run", seed=0), root / "repo", "lenet5", 1, max_queue_delay_us=DELAY_US, max_batch_size=64)
    return root / "repo"


def _serve_command(repository: Path) -> list[str]:
    return [sys.executable, "-c", SLOW_SERVE, "serve", "--repository", str(repository), "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--device", "cpu", "--grace", "20"]


def _wait_for_ready_line(proc: subprocess.Popen, timeout: float) -> re.Match:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        match = READY_LINE.search(line)
        if match:
            return match
    proc.kill()
    raise AssertionError(f"no ready line from edgecnn serve; stderr: {proc.stderr.read()}")


def test_sigterm_drains_in_flight_requests(repository):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_serve_command(repository), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        match = _wait_for_ready_line(proc, timeout=60)
        address = f"127.0.0.1:{match.group(2)}"
        assert int(match.group(3)) > 0
        with grpc.insecure_channel(address) as channel:
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
            time.sleep(0.1)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(request, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            outputs = [future.result() for future in in_flight]
            assert all(len(o.raw_output_contents[0]) == 10 * 4 for o in outputs)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
