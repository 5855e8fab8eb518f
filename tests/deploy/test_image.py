"""The CPU image, built and run (`make image-test`; CI runs it wherever docker or podman works).

deploy/docker/image.py builds deploy/docker/Dockerfile with the engine that works here, on
python:3.11-slim-bookworm, pulled, or built locally with debootstrap where no registry answers
(OFFLINE_BASE=1 forces that, 0 forbids it; unset: pull, else local). The container runs as
compose and Kubernetes run it (read-only root, no capabilities, the model repository mounted
read-only) and is checked only through its published ports and the engine: health SERVING (gRPC
and HTTP),
tritonclient's ModelInfer equal to in-process ONNX Runtime, Classify on PNGs, /metrics, the image's
HEALTHCHECK command, non-root, no torch, no compilers, and SIGTERM -> exit 0 within the grace.
Without a container engine the module skips (EDGECNN_IMAGE_TEST=1, as `make image-test` sets,
makes that a failure).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import grpc
import numpy as np
import pytest

from grpc_health.v1 import health_pb2, health_pb2_grpc
from tests.deploy.files import (
    DEPLOY,
    DOCKERFILE,
    MODEL,
    healthcheck_command,
    parse_serve_args,
    reference_logits,
    scrape,
    scrape_text,
    serve_command,
)

_spec = importlib.util.spec_from_file_location("edgecnn_deploy_image", DEPLOY / "docker" / "image.py")
image = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(image)

ENGINE, WHY = image.find_engine()
TAG = "edgecnn-server:image-test"
MAX_IMAGE_BYTES = 300 * 10**6
STARTUP_S = 90
pytestmark = pytest.mark.timeout(900)  # the first build of the base and the image


@pytest.fixture(scope="module")
def engine():
    if ENGINE is None:
        why = f"no container engine ({WHY}): the image test did not run"
        if os.environ.get("EDGECNN_IMAGE_TEST") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return ENGINE


@pytest.fixture(scope="module")
def built(engine, tmp_path_factory):
    offline = {"1": "1", "0": "0"}.get(os.environ.get("OFFLINE_BASE", ""), "auto")
    log = tmp_path_factory.mktemp("image") / "build.log"
    started = time.monotonic()
    base = image.build(engine, TAG, offline, log_file=log)
    seconds = time.monotonic() - started
    print(f"\n[image-test] {engine.describe()}: built {TAG} on {base} in {seconds:.0f} s")
    return {"base": base, "build_s": seconds}


def _published(engine, name: str, port: int) -> str:
    out = engine.run("port", name, f"{port}/tcp", timeout=30).stdout.strip().splitlines()[-1]
    return out.replace("0.0.0.0", "127.0.0.1")


@pytest.fixture(scope="module")
def container(engine, built, served_repository, tmp_path_factory):
    """The image serving a copy of the test repository (world-readable: the server is uid 10001)."""
    repository = tmp_path_factory.mktemp("image-models") / "models"
    shutil.copytree(served_repository.dir, repository)
    for path in [repository, *repository.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    name = f"edgecnn-image-test-{os.getpid()}"
    engine.run("rm", "--force", name, check=False, timeout=60)
    started = time.monotonic()
    engine.run("run", "--detach", "--name", name, *engine.container_args, "--read-only", "--tmpfs", "/tmp",
               "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--publish", "127.0.0.1::8000",
               "--publish", "127.0.0.1::8001", "--publish", "127.0.0.1::8002", "--volume", f"{repository}:/models:ro",
               TAG, timeout=120)  # fmt: skip
    try:
        while "edgecnn serving on" not in (logs := _logs(engine, name)):
            state = engine.run("inspect", "--format", "{{.State.Status}}", name, timeout=30).stdout.strip()
            assert state == "running" and time.monotonic() - started < STARTUP_S, f"container {state}:\n{logs}"
            time.sleep(0.5)
        print(f"[image-test] container serving {time.monotonic() - started:.1f} s after `run`")
        yield {"name": name, "http": _published(engine, name, 8000), "grpc": _published(engine, name, 8001),
               "metrics": _published(engine, name, 8002), "repository": repository}  # fmt: skip
    finally:
        engine.run("rm", "--force", name, check=False, timeout=120)


def _logs(engine, name: str) -> str:
    done = engine.run("logs", name, check=False, timeout=30)
    return done.stdout + done.stderr


def _exec(engine, name: str, *argv: str) -> subprocess.CompletedProcess:
    return engine.run("exec", name, *argv, check=False, timeout=60)


def test_image_size(engine, built):
    size = image.image_size(engine, TAG)
    history = engine.run("history", "--format", "{{.Size}}\t{{.CreatedBy}}", TAG, timeout=60).stdout.strip()
    du = engine.run("run", "--rm", *engine.container_args, "--entrypoint", "sh", TAG, "-c",
                    "du -s -m /opt/edgecnn; cd /opt/edgecnn/lib/python3*/site-packages && du -s -m * | sort -n -r | head -12",
                    timeout=120).stdout  # fmt: skip
    print(f"[image-test] {TAG}: {size / 1e6:.0f} MB ({size} bytes) on {built['base']}")
    print("[image-test] layers (newest first):\n" + "\n".join(f"    {line[:110]}" for line in history.splitlines()))
    print("[image-test] /opt/edgecnn and its largest packages (MB):\n" + "\n".join(f"    {line}" for line in du.splitlines()))
    assert size <= MAX_IMAGE_BYTES, f"{size / 1e6:.0f} MB > {MAX_IMAGE_BYTES / 1e6:.0f} MB"


def test_health_serving_through_the_published_port(container):
    with grpc.insecure_channel(container["grpc"]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", MODEL):
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING, service


def test_http_readiness_through_the_published_port(container):
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready"):
        with urllib.request.urlopen(f"http://{container['http']}{path}", timeout=10) as reply:
            assert reply.status == 200, path


def test_tritonclient_infer_equals_in_process_onnxruntime(container, served_repository):
    import tritonclient.grpc as triton

    x = np.random.default_rng(7).random((4, 1, 28, 28), dtype=np.float32)
    client = triton.InferenceServerClient(url=container["grpc"])
    try:
        assert client.is_server_ready() and client.is_model_ready(MODEL)
        inputs = [triton.InferInput("input", list(x.shape), "FP32")]
        inputs[0].set_data_from_numpy(x)
        result = client.infer(MODEL, inputs, outputs=[triton.InferRequestedOutput("logits")])
        got = result.as_numpy("logits")
    finally:
        client.close()
    np.testing.assert_allclose(got, reference_logits(served_repository.onnx, x), rtol=1e-5, atol=1e-5)


def test_classify_pngs(container, served_repository):
    from edgecnn.client import EdgeClient
    from tests.onnx_models import FASHION_CLASSES, normalized, png_bytes, sample_images

    images = sample_images(5, seed=3)
    expected = reference_logits(served_repository.onnx, normalized(images))
    probabilities = np.exp(expected - expected.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    with EdgeClient(container["grpc"], model=MODEL) as client:
        predictions = client.classify([png_bytes(image) for image in images], top_k=3)
    for got, want in zip(predictions, probabilities):
        order = np.argsort(-want)[:3]
        assert [p.index for p in got] == list(order)
        assert [p.label for p in got] == [FASHION_CLASSES[i] for i in order]
        np.testing.assert_allclose([p.score for p in got], want[order], rtol=1e-4, atol=1e-6)


def test_metrics_through_the_published_port(container):
    host, port = container["metrics"].rsplit(":", 1)
    samples = scrape(int(port), host)
    ok = [s for s in samples["edgecnn_requests_total"] if s["model"] == MODEL and s["code"] == "OK"]
    assert ok and sum(float(s["__value__"]) for s in ok) >= 1, samples.get("edgecnn_requests_total")
    assert [float(s["__value__"]) for s in samples["edgecnn_server_ready"]] == [1.0]
    info = [s for s in samples["edgecnn_model_info"] if s["model"] == MODEL]
    assert info and info[0]["provider"] == "CPUExecutionProvider", info
    assert "process_resident_memory_bytes" in samples and "_created" not in scrape_text(int(port), host)


def test_healthcheck_command_passes_inside(engine, container):
    check = json.loads(engine.run("inspect", "--format", "{{json .Config.Healthcheck}}", container["name"], timeout=30).stdout)
    assert check and check["Test"] == ["CMD", *healthcheck_command(DOCKERFILE)], f"image lost its HEALTHCHECK: {check}"
    done = _exec(engine, container["name"], *healthcheck_command(DOCKERFILE))
    assert done.returncode == 0 and done.stdout.strip().endswith(": SERVING"), done
    if engine.name == "podman":
        ran = engine.run("healthcheck", "run", container["name"], check=False, timeout=60)
        assert ran.returncode == 0, ran


def test_non_root_without_torch_pip_or_compilers(engine, container):
    name = container["name"]
    assert _exec(engine, name, "id", "-u").stdout.strip() == "10001"
    torch = _exec(engine, name, "python", "-c", "import torch")
    assert torch.returncode != 0 and "No module named 'torch'" in torch.stderr, torch
    listed = _exec(engine, name, "python", "-c", "import importlib.metadata as m; print('\\n'.join(sorted(d.metadata['Name'].lower() for d in m.distributions())))")
    installed = set(listed.stdout.split())
    assert "onnxruntime" in installed and not installed & {"onnxruntime-gpu", "torch", "pip", "setuptools"}, installed
    compilers = _exec(engine, name, "sh", "-c", "for c in cc gcc c++ g++ clang tcc as ld make; do command -v $c; done; true")
    assert compilers.stdout.strip() == "", f"compilers in the image: {compilers.stdout}"
    writable = _exec(engine, name, "sh", "-c", "touch /models/x || touch /opt/edgecnn/x")
    assert writable.returncode != 0, "the model mount and the venv must be read-only"


def test_sigterm_exits_zero_within_the_grace(engine, container):
    """Last (it stops the container): `stop` sends SIGTERM; the server drains and exits 0."""
    grace = parse_serve_args(serve_command(DOCKERFILE)[2:]).grace
    started = time.monotonic()
    engine.run("stop", "--time", "30", container["name"], timeout=60)
    seconds = time.monotonic() - started
    state = json.loads(engine.run("inspect", "--format", "{{json .State}}", container["name"], timeout=30).stdout)
    print(f"[image-test] SIGTERM -> exit {state['ExitCode']} in {seconds:.1f} s (grace {grace:.0f} s)")
    assert state["ExitCode"] == 0 and not state.get("OOMKilled"), (state, _logs(engine, container["name"]))
    assert seconds < grace + 5, f"stop took {seconds:.1f} s"
    assert "draining" in _logs(engine, container["name"])
