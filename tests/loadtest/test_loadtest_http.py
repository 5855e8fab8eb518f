"""`edgecnn loadtest --protocol http` against a real server's HTTP/REST front end: binary and
JSON infer bodies, classify with PNGs, failures counted by HTTP status, and the flags."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgecnn.cli import main
from edgecnn.loadtest.http_requests import header_length, infer_body
from tests.servers import MODEL, TOKEN, serving


@pytest.fixture(scope="module")
def http_url(served_repository):
    with serving(served_repository.dir, http_port=0, auth_token=TOKEN) as running:
        yield f"http://127.0.0.1:{running.http_port}"


@pytest.fixture()
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN)
    return str(path)


def loadtest(tmp_path, capsys, *argv: str) -> tuple[int, dict, str]:
    out = tmp_path / "results.json"
    code = main(["loadtest", "--model", MODEL, "--quiet", "--out", str(out), "--duration", "0.5", "--warmup", "0.2", *argv])
    return code, json.loads(out.read_text()) if out.exists() else {}, capsys.readouterr()


@pytest.mark.parametrize("body", ["binary", "json"])
def test_infer_over_http(http_url, token_file, tmp_path, capsys, body):
    code, report, out = loadtest(tmp_path, capsys, "--server", http_url, "--http-body", body, "--concurrency", "1,4",
                                 "--batch-size", "2", "--auth-token-file", token_file)  # fmt: skip
    assert code == 0, out.err
    config = report["config"]
    assert (config["protocol"], config["http_body"], config["input_shape"]) == ("http", body, [2, 1, 28, 28])
    for step in report["steps"]:
        assert step["errors"] == {} and step["ok"] > 5 and step["images_per_s"] == pytest.approx(2 * step["req_per_s"], rel=0.01)


def test_classify_over_http_with_a_host_port_server(http_url, token_file, tmp_path, capsys):
    host_port = http_url.removeprefix("http://")
    code, report, out = loadtest(tmp_path, capsys, "--server", host_port, "--protocol", "http", "--api", "classify",
                                 "--concurrency", "2", "--auth-token-file", token_file)  # fmt: skip
    assert code == 0, out.err
    assert report["config"]["server"] == http_url and "multipart" in report["config"]["input"]
    assert report["steps"][0]["errors"] == {} and report["steps"][0]["ok"] > 3


def test_failures_are_counted_by_http_status(http_url, tmp_path, capsys):
    # No token: every request is refused with 401 (the shape given, so no metadata call is made).
    code, report, out = loadtest(tmp_path, capsys, "--server", http_url, "--concurrency", "2", "--input-shape", "1,28,28")
    assert code == 1
    step = report["steps"][0]
    assert step["ok"] == 0 and set(step["errors"]) == {"HTTP_401"} and step["errors"]["HTTP_401"] > 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--server", "http://127.0.0.1:1", "--protocol", "grpc"], "an HTTP URL with --protocol grpc"),
        (["--server", "http://127.0.0.1:1", "--tls-ca", "ca.pem"], "use https://"),
        (["--server", "http://127.0.0.1:x"], "expected http://HOST:PORT"),
    ],
)
def test_bad_http_arguments_exit_2(argv, message, capsys):
    assert main(["loadtest", "--model", MODEL, "--input-shape", "1,28,28", *argv]) == 2
    assert message in capsys.readouterr().err


def test_binary_body_header_length():
    x = np.zeros((1, 1, 28, 28), np.float32)
    binary, as_json = infer_body(x, "input", "binary"), infer_body(x, "input", "json")
    n = header_length(binary)
    assert json.loads(binary[:n])["inputs"][0]["parameters"]["binary_data_size"] == len(binary) - n == 784 * 4
    assert header_length(as_json) is None and len(json.loads(as_json)["inputs"][0]["data"]) == 784
