"""`edgecnn health` and check_health against an in-process grpc.health.v1 server."""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from edgecnn.cli import main, missing_module_hint
from edgecnn.client.health import HealthCheckError, check_health
from tests.certs import self_signed_cert

TOKEN = "s3cret-token"


class _AuthInterceptor(grpc.ServerInterceptor):
    """Rejects calls without the bearer token, like a server started with an auth token."""

    def intercept_service(self, continuation, handler_call_details):
        if ("authorization", f"Bearer {TOKEN}") in (handler_call_details.invocation_metadata or ()):
            return continuation(handler_call_details)

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        return grpc.unary_unary_rpc_method_handler(deny)


def _start(
    credentials: grpc.ServerCredentials | None = None, interceptors: tuple = ()
) -> tuple[grpc.Server, str, health.HealthServicer]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=list(interceptors))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("lenet5", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("broken", health_pb2.HealthCheckResponse.NOT_SERVING)
    return server, f"127.0.0.1:{port}", servicer


@pytest.fixture(scope="module")
def live():
    server, address, servicer = _start()
    yield address, servicer
    server.stop(None)


@pytest.fixture(scope="module")
def stopped_address() -> str:
    server, address, _ = _start()
    server.stop(None).wait()
    return address


def test_check_health_statuses(live):
    address, _ = live
    assert check_health(address) == "SERVING"
    assert check_health(address, "lenet5") == "SERVING"
    assert check_health(address, "broken") == "NOT_SERVING"
    assert check_health(address, "no-such-model") == "SERVICE_UNKNOWN"


def test_check_health_unreachable_raises(stopped_address):
    with pytest.raises(HealthCheckError, match="UNAVAILABLE"):
        check_health(stopped_address, timeout=2)


@pytest.mark.parametrize("server", ["127.0.0.1", "127.0.0.1:http", ":8001", "host:70000"])
def test_check_health_rejects_bad_address(server):
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        check_health(server)


def test_cli_exit_codes_and_one_line_status(live, stopped_address, capsys):
    address, _ = live
    cases = [
        (["--server", address], 0, "server at", "SERVING"),
        (["--server", address, "--model", "lenet5"], 0, "model lenet5", "SERVING"),
        (["--server", address, "--model", "broken"], 1, "model broken", "NOT_SERVING"),
        (["--server", address, "--model", "nope"], 1, "model nope", "SERVICE_UNKNOWN"),
        (["--server", stopped_address, "--timeout", "2"], 1, "server at", "UNREACHABLE"),
    ]
    for argv, code, what, status in cases:
        assert main(["health", *argv]) == code, argv
        out = capsys.readouterr().out
        assert out.count("\n") == 1, out
        assert what in out and f": {status}" in out, out


def test_cli_follows_status_changes(live, capsys):
    address, servicer = live
    servicer.set("flip", health_pb2.HealthCheckResponse.SERVING)
    assert main(["health", "--server", address, "--model", "flip"]) == 0
    servicer.set("flip", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert main(["health", "--server", address, "--model", "flip"]) == 1
    assert "NOT_SERVING" in capsys.readouterr().out.splitlines()[-1]


def test_cli_installed_entry_point(live):
    """The exact command of the Dockerfile HEALTHCHECK, as a separate process."""
    address, _ = live
    exe = shutil.which("edgecnn", path=str(Path(sys.executable).parent))
    assert exe, "the edgecnn console script is not installed in this environment"
    done = subprocess.run([exe, "health", "--server", address], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"server at {address}: SERVING"


def test_auth_token_file(tmp_path, capsys):
    server, address, _ = _start(interceptors=[_AuthInterceptor()])
    try:
        with pytest.raises(HealthCheckError, match="UNAUTHENTICATED"):
            check_health(address)
        assert check_health(address, auth_token=TOKEN) == "SERVING"
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        assert main(["health", "--server", address, "--auth-token-file", str(token_file)]) == 0
        empty = tmp_path / "empty"
        empty.write_text("\n")
        assert main(["health", "--server", address, "--auth-token-file", str(empty)]) == 1
        assert "empty" in capsys.readouterr().err
    finally:
        server.stop(None)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_ca(tmp_path, capsys):
    cert, key = self_signed_cert(tmp_path)
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    server, address, _ = _start(credentials)
    try:
        assert check_health(address, tls_ca=cert) == "SERVING"
        with pytest.raises(HealthCheckError):
            check_health(address, timeout=2)  # plaintext against a TLS port gets no answer
        assert main(["health", "--server", address, "--tls-ca", str(cert)]) == 0
        assert main(["health", "--server", address, "--tls-ca", str(tmp_path / "missing.pem")]) == 1
        assert "TLS CA file" in capsys.readouterr().err
    finally:
        server.stop(None)


def test_missing_module_hint_names_the_right_install(monkeypatch, capsys):
    assert "pip install 'edgecnn[train]'" in missing_module_hint("torch")
    assert "pip install 'edgecnn[train]'" in missing_module_hint("onnxscript.ir")
    assert "pip install 'edgecnn[loadtest]'" in missing_module_hint("hdrh.histogram")
    serving = missing_module_hint("grpc_health.v1")
    assert "cannot import grpc_health.v1" in serving and "pip install edgecnn" in serving and "[train]" not in serving
    monkeypatch.setitem(sys.modules, "edgecnn.client.cmd_health", None)  # as if a serving dependency were missing
    assert main(["health"]) == 2
    err = capsys.readouterr().err
    assert "edgecnn health: cannot import edgecnn.client.cmd_health" in err and "[train]" not in err
