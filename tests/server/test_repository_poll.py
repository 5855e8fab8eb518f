"""Poll mode in-process (server/repository_manager.py): a version folder without a model file is
ignored until the file appears, a removed version drains and goes, a removed model is unloaded,
a half-written file fails to load and serves once complete; what serves is never interrupted."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import grpc
import onnx
import tritonclient.grpc as tritonclient_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgecnn import repository as repo
from edgecnn.server import ServerThread, Settings
from tests.onnx_models import lenet5_onnx, write_selftest, write_version

POLL_S = 0.2


def poll_server(repository: Path) -> ServerThread:
    return ServerThread(Settings(repository=repository, host="127.0.0.1", port=0, metrics_port=None, device="cpu",
                                 model_control_mode="poll", repository_poll_secs=POLL_S))  # fmt: skip


def eventually(condition, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def versions(client, name: str = "lenet5") -> dict[str, tuple[str, str]]:
    return {m.version: (m.state, m.reason) for m in client.get_model_repository_index().models if m.name == name}


def test_poll_follows_the_repository(tmp_path):
    write_version(tmp_path, "lenet5", 1, seed=0)
    write_version(tmp_path, "other", 1, seed=3)
    with poll_server(tmp_path) as running:
        client = tritonclient_grpc.InferenceServerClient(url=running.address)
        assert "model_repository" not in client.get_server_metadata().extensions  # no load/unload requests in poll mode
        empty = tmp_path / "lenet5" / "2"
        empty.mkdir()
        time.sleep(3 * POLL_S)
        assert "2" not in versions(client), "a version folder without model.onnx was acted on"
        partial = onnx.load(str(tmp_path / "lenet5" / "1" / repo.MODEL_FILENAME)).SerializeToString()[:5000]
        (empty / repo.MODEL_FILENAME).write_bytes(partial)  # as a copy still on its way
        eventually(lambda: versions(client).get("2", ("",))[0] == "UNAVAILABLE", "the half-written version to fail")
        assert client.get_model_metadata("lenet5").versions == ["1"]
        staged = tmp_path / "lenet5" / ".model.onnx.partial"
        onnx.save(lenet5_onnx(seed=5), str(staged))
        staged.replace(empty / repo.MODEL_FILENAME)  # the whole file, moved into place
        write_selftest(empty / repo.MODEL_FILENAME, empty / repo.SELFTEST_NAME)
        eventually(lambda: versions(client).get("2") == ("READY", ""), "version 2 once complete")
        assert client.get_model_metadata("lenet5").versions == ["1", "2"]
        shutil.rmtree(tmp_path / "lenet5" / "1")
        eventually(lambda: versions(client).get("1") == ("UNAVAILABLE", "unloaded"), "version 1 to be unloaded")
        assert client.get_model_metadata("lenet5").versions == ["2"]
        shutil.rmtree(tmp_path / "other")
        eventually(lambda: not client.is_model_ready("other"), "the removed model to be unloaded")
        with grpc.insecure_channel(running.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(service="other"), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert client.is_server_ready()  # the removed model is no longer expected to serve
