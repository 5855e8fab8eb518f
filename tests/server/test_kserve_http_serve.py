"""`edgecnn serve` with its HTTP/REST front end as a real process: the flags, the ready line, both
protocols on one server, and a SIGTERM drain that answers the HTTP requests in flight."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest
import tritonclient.http as tritonclient_http

from edgecnn.server import cmd_serve
from edgecnn.server.app import INTAKE_S
from edgecnn.server.cmd_serve import READY_LINE
from tests.child_process import ServeProcess
from tests.onnx_models import reference_logits, write_version
from tests.server.http_helpers import binary_infer_body, binary_logits, request
from tests.server.test_drain import SLOW_SERVE  # `edgecnn serve` whose ONNX Runtime calls take 0.5 s more
from tests.servers import serve_argv



@pytest.fixture(scope="module")
def lenet5_repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("http-serve") / "repo"
    onnx_path = write_version(root, "lenet5", 1, seed=0, max_batch_size=8, max_queue_delay_us=0)
    return root, onnx_path


def _settings(*flags: str):
    parser = argparse.ArgumentParser()
    cmd_serve.configure(parser)
    return cmd_serve.settings_from_args(parser.parse_args(["--repository", "r", *flags]))


def test_http_port_flags():
    assert _settings().http_port == 8000  # Triton's
    assert _settings("--http-port", "0").http_port == 0
    assert _settings("--http-port", "-1").http_port is None
    assert _settings("--no-http").http_port is None


def test_ready_line_with_and_without_http():
    with_http = READY_LINE.search("edgecnn serving on 0.0.0.0:8001 (metrics :8002), http :8000")
    assert with_http.groups() == ("0.0.0.0", "8001", "8002", "8000")
    without = READY_LINE.search("edgecnn serving on 127.0.0.1:5 (no metrics)")
    assert without.groups() == ("127.0.0.1", "5", None, None)


def test_serve_answers_both_protocols_and_classify_over_http(lenet5_repository, tmp_path):
    import subprocess

    from tests.onnx_models import png_bytes, sample_images
    from tests.servers import edgecnn_exe

    repository, onnx_path = lenet5_repository
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28), dtype=np.float32)
    with ServeProcess(serve_argv(repository, "--grace", "1")) as served:
        assert served.http_port and served.http_port not in (served.port, served.metrics_port)
        client = tritonclient_http.InferenceServerClient(url=f"127.0.0.1:{served.http_port}")
        assert client.is_server_ready()
        tensor = tritonclient_http.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        logits = client.infer("lenet5", [tensor]).as_numpy("logits")
        client.close()
        np.testing.assert_allclose(logits, reference_logits(onnx_path, x), rtol=1e-5, atol=1e-6)
        # The same images over both protocols through `edgecnn classify`: the scheme picks HTTP.
        files = []
        for i, image in enumerate(sample_images(3)):
            files.append(tmp_path / f"{i}.png")
            files[-1].write_bytes(png_bytes(image))
        tables = []
        for server in (served.address, served.http_url):
            done = subprocess.run(
                [edgecnn_exe(), "classify", "--server", server, "--model", "lenet5", "--top-k", "2", *map(str, files)],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            tables.append(done.stdout)
        assert tables[0] == tables[1] and tables[0].count("\n") == 1 + 3 * 2, tables  # a header, 2 rows an image
    assert served.proc.returncode == 0, "".join(served.output)


def test_no_http_flag_serves_grpc_only(lenet5_repository):
    repository, _ = lenet5_repository
    with ServeProcess(serve_argv(repository, "--no-http", "--metrics-port", "-1")) as served:
        assert served.http_port is None and served.port
        assert "http :" not in "".join(served.output)


def test_sigterm_answers_http_requests_in_flight(lenet5_repository):
    repository, onnx_path = lenet5_repository
    argv = serve_argv(repository, "--grace", "20", program=[sys.executable, "-c", SLOW_SERVE])
    served = ServeProcess(argv, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout_s=60)
    try:
        x = np.random.default_rng(1).standard_normal((1, 1, 28, 28), dtype=np.float32)
        body, headers = binary_infer_body(x)
        replies = []

        def send() -> None:
            replies.append(request(served.http_port, "POST", "/v2/models/lenet5/infer", body, headers))

        senders = [threading.Thread(target=send) for _ in range(8)]  # 2 s of work on 2 worker threads
        for sender in senders:
            sender.start()
        time.sleep(0.3)
        served.proc.send_signal(signal.SIGTERM)
        time.sleep(INTAKE_S + 0.1)  # requests received this soon after the signal are still served
        assert request(served.http_port, "GET", "/v2/health/ready").status == 503
        refused = request(served.http_port, "POST", "/v2/models/lenet5/infer", body, headers)
        assert refused.status == 503 and "shutting down" in refused.json()["error"], refused.body
        for sender in senders:
            sender.join(30)
        assert [r.status for r in replies] == [200] * 8, [r.body for r in replies]
        for reply in replies:
            np.testing.assert_allclose(binary_logits(reply), reference_logits(onnx_path, x), rtol=1e-5, atol=1e-6)
        assert served.proc.wait(timeout=30) == 0, "".join(served.output)
    finally:
        served.kill()
