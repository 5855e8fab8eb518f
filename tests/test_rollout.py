"""Rolling out a model while serving, end to end: `edgecnn serve --model-control-mode poll` under
a closed loop of 16 tritonclient callers, `edgecnn export` writing version 2 into the served
repository, then a corrupt version 3. No request may fail, and every answer's logits must be the
logits of the version that says it served them."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as tritonclient_grpc
from tritonclient.utils import InferenceServerException

from edgecnn import repository as repo
from tests.child_process import ServeProcess
from tests.onnx_models import reference_logits
from tests.servers import edgecnn_exe, serve_argv

POLL_S = 1.0
CALLERS = 16


def export(run: Path, repository: Path, version: int) -> None:
    subprocess.run(
        [edgecnn_exe(), "export", str(run), "--repository", str(repository), "--name", "lenet5", "--version", str(version),
         "--samples", "4", "--test-images", "16"],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def corrupt_version(model_dir: Path, version: int) -> None:
    """A version whose model.onnx is not an ONNX file, moved into place whole."""
    staging = model_dir / f".{version}.partial"
    staging.mkdir()
    (staging / repo.MODEL_FILENAME).write_bytes(b"\x08\x07 this is not a model")
    staging.rename(model_dir / str(version))


def index(client) -> dict[str, tuple[str, str]]:
    return {m.version: (m.state, m.reason) for m in client.get_model_repository_index().models if m.name == "lenet5"}


def wait_for(condition, what: str, timeout_s: float) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.02)
    return time.monotonic() - start


def test_poll_mode_rolls_out_an_exported_version_and_refuses_a_corrupt_one_losing_nothing(tmp_path, fashion_mnist_dir):
    from edgecnn.export.untrained import fixed_seed_run

    repository = tmp_path / "repo"
    runs = [fixed_seed_run(tmp_path / f"run-{seed}", "lenet5", "fashion-mnist", seed=seed) for seed in (0, 1)]
    export(runs[0], repository, 1)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28), dtype=np.float32)
    answers: list[tuple[str, np.ndarray]] = []
    failures: list[str] = []
    stop = threading.Event()
    served = ServeProcess(serve_argv(repository, "--model-control-mode", "poll", "--repository-poll-secs", str(POLL_S), "--grace", "10"))

    def caller() -> None:
        client = tritonclient_grpc.InferenceServerClient(url=served.address)
        tensor = tritonclient_grpc.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        while not stop.is_set():
            try:
                result = client.infer("lenet5", [tensor])
                answers.append((result.get_response().model_version, result.as_numpy("logits")))
            except InferenceServerException as exc:
                failures.append(f"{exc.status()}: {exc.message()}")

    callers = [threading.Thread(target=caller) for _ in range(CALLERS)]
    try:
        for c in callers:
            c.start()
        control = tritonclient_grpc.InferenceServerClient(url=served.address)
        wait_for(lambda: len(answers) > 50, "answers from version 1", 30)
        export(runs[1], repository, 2)  # into a staging folder, then moved into place whole
        took = wait_for(lambda: any(v == "2" for v, _ in answers[-CALLERS:]), "version 2 to serve", 60)
        assert took <= 2 * POLL_S + 1.0, f"version 2 served {took:.1f} s after its export (poll every {POLL_S} s)"
        corrupt_version(repository / "lenet5", 3)
        wait_for(lambda: index(control).get("3", ("",))[0] == "UNAVAILABLE", "version 3 to be refused", 30)
        state, reason = index(control)["3"]
        assert "ONNX Runtime cannot load it" in reason, reason
        assert index(control)["2"] == ("READY", "") and index(control)["1"] == ("READY", "")
        served_before = len(answers)
        wait_for(lambda: len(answers) > served_before + 100, "answers after version 3's refusal", 30)
        assert {v for v, _ in answers[served_before:]} == {"2"}, "the corrupt version took traffic or 2 stopped"
    finally:
        stop.set()
        for c in callers:
            c.join(30)
        served.proc.send_signal(signal.SIGTERM)
        code = served.proc.wait(30)
        served.kill()
    assert code == 0, "".join(served.output[-30:])
    assert failures == [], failures[:5]
    assert {v for v, _ in answers} == {"1", "2"}
    expected = {v: reference_logits(repository / "lenet5" / v / repo.MODEL_FILENAME, x) for v in ("1", "2")}
    assert not np.allclose(expected["1"], expected["2"])
    for version, logits in answers:
        np.testing.assert_allclose(logits, expected[version], rtol=1e-5, atol=1e-6)
