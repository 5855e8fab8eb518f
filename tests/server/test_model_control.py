"""The live model repository (server/repository_manager.py) in explicit and none modes, through
tritonclient: load, reload with a config override, unload (under load too), the self-test that
refuses a changed model, start-up with a corrupt model, the index, the CLI, memory over cycles."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as tritonclient_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import numpy_helper
from tritonclient.utils import InferenceServerException

from edgecnn import repository as repo
from edgecnn.cli import main
from edgecnn.protos import classifier_pb2, classifier_pb2_grpc
from edgecnn.server import ServerThread, Settings, StartupError
from tests.onnx_models import reference_logits, write_version
from tests.server.grpc_helpers import TIMEOUT, Gate, wait_until

SEED_SECOND = 2


def settings(repository: Path, **fields) -> Settings:
    return Settings(repository=repository, host="127.0.0.1", port=0, metrics_port=None, device="cpu", **fields)


def explicit(repository: Path, *models: str, **fields) -> ServerThread:
    return ServerThread(settings(repository, model_control_mode="explicit", load_models=models, **fields))


def infer(client: tritonclient_grpc.InferenceServerClient, model: str, x: np.ndarray, version: str = ""):
    tensor = tritonclient_grpc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor], model_version=version, outputs=[tritonclient_grpc.InferRequestedOutput("logits")])


def index_of(client) -> dict[tuple[str, str], tuple[str, str]]:
    return {(m.name, m.version): (m.state, m.reason) for m in client.get_model_repository_index().models}


@pytest.fixture
def two_models(tmp_path) -> Path:
    write_version(tmp_path, "lenet5", 1, seed=0)
    write_version(tmp_path, "second", 1, seed=SEED_SECOND)
    return tmp_path


def test_explicit_mode_loads_unloads_and_takes_a_config_override(two_models, samples):
    x = samples["x"][:3]
    with explicit(two_models, "lenet5") as running:
        client = tritonclient_grpc.InferenceServerClient(url=running.address)
        assert "model_repository" in client.get_server_metadata().extensions
        assert client.is_server_ready() and client.is_model_ready("lenet5") and not client.is_model_ready("second")
        assert index_of(client)[("second", "")] == ("UNAVAILABLE", "not loaded")
        client.load_model("second")
        assert index_of(client)[("second", "1")] == ("READY", "")
        np.testing.assert_allclose(infer(client, "second", x).as_numpy("logits"), reference_logits(two_models / "second" / "1" / "model.onnx", x), rtol=1e-5, atol=1e-6)
        client.unload_model("second")
        assert not client.is_model_ready("second")
        assert index_of(client)[("second", "1")] == ("UNAVAILABLE", "unloaded")
        with pytest.raises(InferenceServerException, match="unknown model 'second'") as info:
            infer(client, "second", x)
        assert info.value.status() == "StatusCode.NOT_FOUND"
        override = {"name": "second", "platform": "onnxruntime_onnx", "max_batch_size": 4, "dynamic_batching": {"max_queue_delay_microseconds": 200}}
        client.load_model("second", config=json.dumps(override))
        config = client.get_model_config("second").config
        assert (config.max_batch_size, config.dynamic_batching.max_queue_delay_microseconds) == (4, 200)
        with pytest.raises(InferenceServerException, match="max batch size of model 'second' \\(4\\)"):
            infer(client, "second", np.zeros((5, 1, 28, 28), np.float32))
        client.load_model("second")  # without the override: config.pbtxt again
        assert client.get_model_config("second").config.max_batch_size == 8
        with pytest.raises(InferenceServerException, match="not a valid JSON model configuration"):
            client.load_model("second", config="{not json")
        with pytest.raises(InferenceServerException, match="no model 'third' in the repository"):
            client.load_model("third")
        assert infer(client, "lenet5", x).as_numpy("logits").shape == (3, 10)  # untouched throughout


def test_load_and_unload_are_refused_outside_explicit_mode(two_models):
    with ServerThread(settings(two_models)) as running:
        client = tritonclient_grpc.InferenceServerClient(url=running.address)
        assert "model_repository" not in client.get_server_metadata().extensions
        for call in (client.load_model, client.unload_model):
            with pytest.raises(InferenceServerException, match="disabled in model control mode 'none'") as info:
                call("second")
            assert info.value.status() == "StatusCode.UNAVAILABLE"
        assert client.is_model_ready("second")


def test_unload_lets_the_requests_in_flight_finish(tmp_path, samples, monkeypatch):
    write_version(tmp_path, "lenet5", 1, seed=0, max_batch_size=64, max_queue_delay_us=100_000)
    x = samples["x"][:1]
    with explicit(tmp_path, "lenet5") as running:
        gate = Gate(running.server.plane.batcher("lenet5", 1), monkeypatch)
        client = tritonclient_grpc.InferenceServerClient(url=running.address)
        results: list = []

        def call() -> None:
            try:
                results.append(infer(tritonclient_grpc.InferenceServerClient(url=running.address), "lenet5", x).as_numpy("logits"))
            except InferenceServerException as exc:
                results.append(exc)

        callers = [threading.Thread(target=call) for _ in range(16)]
        for caller in callers:
            caller.start()
        wait_until(lambda: running.server.plane.inflight == 16, "16 requests in flight")
        unloading = threading.Thread(target=client.unload_model, args=("lenet5",))
        unloading.start()
        wait_until(lambda: index_of(client).get(("lenet5", "1"), ("",))[0] == "UNLOADING", "the version to be unloading")
        assert unloading.is_alive(), "the unload did not wait for the requests in flight"
        gate.open.set()
        for caller in callers:
            caller.join(TIMEOUT)
        unloading.join(TIMEOUT)
        assert len(results) == 16 and all(isinstance(r, np.ndarray) for r in results), results
        assert not client.is_model_ready("lenet5")
        assert index_of(client)[("lenet5", "1")] == ("UNAVAILABLE", "unloaded")


def changed_output_copy(model_dir: Path, source: int, target: int) -> Path:
    """Version `target`: version `source`'s file with one output bias moved (still a valid model),
    beside source's selftest.npz: as if the file changed after it was exported and verified."""
    model = onnx.load(str(model_dir / str(source) / repo.MODEL_FILENAME))
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.name == "fc3.bias":
            bias = numpy_helper.to_array(tensor).copy()
            bias[3] += 5.0
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(bias, tensor.name))
    staging = model_dir / f".{target}.partial"
    staging.mkdir()
    onnx.save(model, str(staging / repo.MODEL_FILENAME))
    shutil.copy(model_dir / str(source) / repo.SELFTEST_NAME, staging / repo.SELFTEST_NAME)
    staging.rename(model_dir / str(target))
    return model_dir / str(target)


def test_a_version_whose_output_changed_is_refused_by_its_self_test(tmp_path, samples):
    write_version(tmp_path, "lenet5", 1, seed=0)
    with explicit(tmp_path, "lenet5") as running:
        client = tritonclient_grpc.InferenceServerClient(url=running.address)
        changed_output_copy(tmp_path / "lenet5", 1, 2)
        with pytest.raises(InferenceServerException, match="version 2: .*self-test failed on CPUExecutionProvider"):
            client.load_model("lenet5")
        state, reason = index_of(client)[("lenet5", "2")]
        assert state == "UNAVAILABLE" and "self-test failed" in reason and "top-1 class" in reason
        response = infer(client, "lenet5", samples["x"][:2])
        assert response.get_response().model_version == "1"
        failures = running.server.metrics.registry.get_sample_value("edgecnn_model_load_failures_total", {"model": "lenet5", "version": "2"})
        assert failures == 1
        with grpc.insecure_channel(running.address) as channel:
            info = classifier_pb2_grpc.ClassifierStub(channel).ModelInfo(classifier_pb2.ModelInfoRequest(model="lenet5"), timeout=TIMEOUT)
        assert info.version == 1 and info.selftest.startswith("passed (8 inputs on CPUExecutionProvider")


def test_a_failed_version_under_the_latest_policy_leaves_the_old_one_serving(tmp_path, samples):
    """No version_policy means the latest version only: a broken version 2 must not take version
    1 (which the policy would drop) out of service."""
    write_version(tmp_path, "lenet5", 1, seed=0)
    config = repo.read_config(tmp_path / "lenet5")
    config.ClearField("version_policy")
    (tmp_path / "lenet5" / repo.CONFIG_NAME).write_text(repo.config_to_text(config))
    with explicit(tmp_path, "lenet5") as running:
        client = tritonclient_grpc.InferenceServerClient(url=running.address)
        broken = tmp_path / "lenet5" / "2"
        broken.mkdir()
        (broken / repo.MODEL_FILENAME).write_bytes(b"truncated")
        with pytest.raises(InferenceServerException, match="version 2: .*ONNX Runtime cannot load it"):
            client.load_model("lenet5")
        assert index_of(client)[("lenet5", "1")] == ("READY", "") and index_of(client)[("lenet5", "2")][0] == "UNAVAILABLE"
        assert infer(client, "lenet5", samples["x"][:1]).get_response().model_version == "1"
        shutil.rmtree(broken)
        write_version(tmp_path, "lenet5", 2, seed=4)
        config.ClearField("version_policy")
        (tmp_path / "lenet5" / repo.CONFIG_NAME).write_text(repo.config_to_text(config))
        client.load_model("lenet5")  # now 2 loads, and 1 (dropped by the policy) drains and goes
        assert infer(client, "lenet5", samples["x"][:1]).get_response().model_version == "2"
        wait_until(lambda: index_of(client)[("lenet5", "1")] == ("UNAVAILABLE", "unloaded"), "version 1 to leave")


def test_start_up_with_a_corrupt_model(two_models):
    broken = two_models / "broken"
    shutil.copytree(two_models / "second", broken)
    (broken / "1" / repo.MODEL_FILENAME).write_bytes(b"not an onnx file")
    with pytest.raises(StartupError, match="broken.*ONNX Runtime cannot load it"):
        ServerThread(settings(two_models)).start()
    with ServerThread(settings(two_models, exit_on_error=False)) as running:
        client = tritonclient_grpc.InferenceServerClient(url=running.address)
        assert client.is_server_live() and not client.is_server_ready()  # strict readiness: broken does not serve
        with grpc.insecure_channel(running.address) as channel:  # what an orchestrator's probe asks
            overall = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status
        assert overall == health_pb2.HealthCheckResponse.NOT_SERVING
        assert running.server.metrics.registry.get_sample_value("edgecnn_server_ready") == 0
        assert client.is_model_ready("lenet5") and client.is_model_ready("second") and not client.is_model_ready("broken")
        state, reason = index_of(client)[("broken", "1")]
        assert state == "UNAVAILABLE" and "ONNX Runtime cannot load it" in reason
    with ServerThread(settings(two_models, exit_on_error=False, strict_readiness=False)) as running:
        assert tritonclient_grpc.InferenceServerClient(url=running.address).is_server_ready()


def test_repository_command(two_models, capsys):
    with explicit(two_models, "lenet5") as running:
        server = ["--server", running.address]
        assert main(["repository", "index", *server]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split() == ["MODEL", "VERSION", "STATE", "REASON"]
        assert table[1].split()[:3] == ["lenet5", "1", "READY"] and table[2].split() == ["second", "-", "UNAVAILABLE", "not", "loaded"]
        assert main(["repository", "load", "second", *server, "--config", json.dumps({"max_batch_size": 2})]) == 0
        assert capsys.readouterr().out.strip() == "loaded second"
        assert tritonclient_grpc.InferenceServerClient(url=running.address).get_model_config("second").config.max_batch_size == 2
        assert main(["repository", "unload", "second", *server]) == 0
        assert main(["repository", "load", "third", *server]) == 1
        assert "NOT_FOUND: no model 'third'" in capsys.readouterr().err
        assert main(["repository", "load", *server]) == 2
        assert main(["repository", "load", "second", *server, "--config", "{oops"]) == 2


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def test_memory_stays_bounded_over_20_load_unload_cycles(two_models, samples, capsys):
    x = samples["x"][:1]
    with explicit(two_models, "lenet5") as running:
        client = tritonclient_grpc.InferenceServerClient(url=running.address)

        def cycle() -> None:
            client.load_model("second")
            infer(client, "second", x)
            client.unload_model("second")

        for _ in range(3):  # allocator and ONNX Runtime arenas settle
            cycle()
        before = _rss_kib()
        for _ in range(20):
            cycle()
        grown = _rss_kib() - before
    with capsys.disabled():
        print(f"\nRSS over 20 load/unload cycles of LeNet-5: {before / 1024:.1f} MiB -> {(before + grown) / 1024:.1f} MiB ({grown / 1024:+.1f} MiB)")
    assert grown < 20 * 1024, f"RSS grew by {grown / 1024:.1f} MiB over 20 load/unload cycles"
