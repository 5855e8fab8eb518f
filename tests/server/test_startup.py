"""Start-up: errors that stop it, command-line flags, version policies, fixed batch dimensions."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tritonclient_grpc
from edgecnn.protos import inference_pb2_grpc
from edgecnn.server import ServerThread, Settings, StartupError
from edgecnn.server.device import gpu_present

from edgecnn import repository as repo
from tests.onnx_models import reference_logits
from tests.server.grpc_helpers import (
    TIMEOUT,
    copy_lenet5,
    infer_request,
    logits_of,
    serve_repository,
    write_config,
)


@pytest.mark.skipif(gpu_present(), reason="a GPU is present")
def test_device_cuda_without_gpu_is_a_startup_error(repository):
    with pytest.raises(StartupError, match="--device cuda"):
        ServerThread(Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cuda")).start()


def test_cli_startup_errors(tmp_path, capsys):
    import argparse

    from edgecnn.server import cmd_serve

    parser = argparse.ArgumentParser()
    cmd_serve.configure(parser)
    assert cmd_serve.run(parser.parse_args(["--repository", str(tmp_path / "missing"), "--port", "0", "--metrics-port", "-1"])) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cmd_serve.run(parser.parse_args(["--repository", str(tmp_path / "empty"), "--port", "0", "--metrics-port", "-1"])) == 2
    assert "holds no model" in capsys.readouterr().err


def test_cli_flags_reach_the_settings(tmp_path):
    import argparse

    from edgecnn.server import cmd_serve

    parser = argparse.ArgumentParser()
    cmd_serve.configure(parser)
    defaults = cmd_serve.settings_from_args(parser.parse_args(["--repository", str(tmp_path)]))
    assert (defaults.batch_buckets, defaults.inline_max_us, defaults.inline_idle_max_us, defaults.device) == ("auto", 400, 2000, "auto")
    argv = ["--repository", str(tmp_path), "--batch-buckets", "off", "--inline-max-us", "0", "--inline-idle-max-us", "3000",
            "--device", "cpu", "--max-queue-delay-us", "500"]  # fmt: skip
    settings = cmd_serve.settings_from_args(parser.parse_args(argv))
    assert (settings.batch_buckets, settings.inline_max_us, settings.inline_idle_max_us, settings.max_queue_delay_us) == ("off", 0, 3000, 500)
    with pytest.raises(SystemExit):
        parser.parse_args(["--repository", str(tmp_path), "--batch-buckets", "sometimes"])
    assert (defaults.model_control_mode, defaults.load_models, defaults.exit_on_error, defaults.strict_readiness) == ("none", (), True, True)
    control = ["--repository", str(tmp_path), "--model-control-mode", "explicit", "--load-model", "a", "--load-model", "b",
               "--exit-on-error", "false", "--strict-readiness", "False", "--repository-poll-secs", "2.5"]  # fmt: skip
    settings = cmd_serve.settings_from_args(parser.parse_args(control))
    assert (settings.model_control_mode, settings.load_models, settings.exit_on_error, settings.strict_readiness) == ("explicit", ("a", "b"), False, False)
    assert settings.repository_poll_secs == 2.5
    with pytest.raises(ValueError, match="--load-model needs --model-control-mode explicit"):
        cmd_serve.settings_from_args(parser.parse_args(["--repository", str(tmp_path), "--load-model", "a"]))
    for bad in (["--exit-on-error", "maybe"], ["--repository-poll-secs", "0"], ["--model-control-mode", "auto"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["--repository", str(tmp_path), *bad])


def test_a_model_that_cannot_run_fails_at_startup(repository, tmp_path):
    """The load-time warm-up runs a batch of zeros: metadata that lies about the input shape
    stops the start instead of failing every request."""
    import onnx

    shutil.copytree(repository["dir"] / "lenet5", tmp_path / "repo" / "lenet5")
    shutil.rmtree(tmp_path / "repo" / "lenet5" / "2")
    path = tmp_path / "repo" / "lenet5" / "1" / "model.onnx"
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == repo.Meta.INPUT_SHAPE:
            prop.value = json.dumps([1, 32, 32])
    onnx.save(model, str(path))
    settings = Settings(repository=tmp_path / "repo", host="127.0.0.1", port=0, metrics_port=None, device="cpu")
    with pytest.raises(StartupError, match="a warm-up batch of 1 fails in ONNX Runtime"):
        ServerThread(settings).start()


def test_version_policy_picks_the_served_versions(repository, samples, tmp_path):
    """As in Triton: no policy serves the latest version only, `specific` the listed ones (an
    empty version then means the highest listed), a listed version that is missing stops the start."""
    x = samples["x"][:2]
    config = copy_lenet5(repository, tmp_path, version_policy=None)
    write_config(tmp_path / "lenet5", config)
    with serve_repository(tmp_path) as running:
        client = tritonclient_grpc.InferenceServerClient(url=running.address)
        assert list(client.get_model_metadata("lenet5").versions) == ["2"]
        assert not client.is_model_ready("lenet5", "1")
    config.version_policy.specific.versions[:] = [1]
    write_config(tmp_path / "lenet5", config)
    with serve_repository(tmp_path) as running, grpc.insecure_channel(running.address) as ch:
        response = inference_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(infer_request("lenet5", x), timeout=TIMEOUT)
        assert response.model_version == "1"
        np.testing.assert_allclose(logits_of(response), reference_logits(repository["v1"], x), rtol=1e-5, atol=1e-6)
    config.version_policy.specific.versions[:] = [1, 3]
    write_config(tmp_path / "lenet5", config)
    with pytest.raises(StartupError, match=r"names versions \[3\] that the repository lacks"):
        serve_repository(tmp_path).start()


def test_a_fixed_batch_dimension_serves_only_unbatched(repository, samples, tmp_path):
    """A graph exported with its batch dimension fixed at 1 cannot take merged batches: with
    max_batch_size 8 the start fails and says why; with 0 it serves one image per request and its
    metadata shows the batch dimension 1."""
    import onnx

    config = copy_lenet5(repository, tmp_path, max_batch_size=8)
    shutil.rmtree(tmp_path / "lenet5" / "2")
    path = tmp_path / "lenet5" / "1" / "model.onnx"
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(path))
    write_config(tmp_path / "lenet5", config)
    with pytest.raises(StartupError, match="batch dimension is fixed at 1, so max_batch_size 8 cannot be served"):
        serve_repository(tmp_path).start()
    config.max_batch_size = 0
    write_config(tmp_path / "lenet5", config)
    with serve_repository(tmp_path) as running:
        client = tritonclient_grpc.InferenceServerClient(url=running.address)
        assert list(client.get_model_metadata("lenet5").inputs[0].shape) == [1, 1, 28, 28]
        x = samples["x"][:1]
        tensor = tritonclient_grpc.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        np.testing.assert_allclose(client.infer("lenet5", [tensor]).as_numpy("logits"), reference_logits(repository["v1"], x), rtol=1e-5, atol=1e-6)


def test_serving_side_never_imports_torch():
    code = (
        "import sys, edgecnn.server, edgecnn.server.cmd_serve, edgecnn.server.app\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
