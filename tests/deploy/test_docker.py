"""deploy/docker without a container engine: the Dockerfiles parsed and held to the real `edgecnn
serve` command line, their ignore files, the CPU image's requirements (plain onnxruntime), and the
CPU image's ENTRYPOINT/CMD serving from a fresh virtualenv installed the way its build installs.
The built image itself: tests/deploy/test_image.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

from tests.child_process import ServeProcess
from tests.deploy.files import (
    DOCKERFILE,
    DOCKERFILE_GPU,
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    MODEL,
    ROOT,
    expand,
    healthcheck,
    healthcheck_command,
    last,
    local_argv,
    model_infer,
    parse_dockerfile,
    parse_serve_args,
    reference_logits,
    serve_command,
)

sys.path.insert(0, str(ROOT / "deploy" / "docker"))
from cpu_requirements import cpu_requirements  # noqa: E402

# Architecture names that would tie an image to one platform.
ARCH_WORDS = re.compile(r"x86_64|amd64|aarch64|arm64|--platform|linux/")


def _run_lines(path: Path) -> list[str]:
    return [ins.value for stage in parse_dockerfile(path)[1] for ins in stage if ins.keyword == "RUN"]


@pytest.mark.parametrize("path", [DOCKERFILE, DOCKERFILE_GPU], ids=["cpu", "gpu"])
def test_dockerfile_serving_image(path: Path):
    args, stages = parse_dockerfile(path)
    assert len(stages) >= 2, "multi-stage: build the venv in one stage, copy it into the runtime one"
    final = stages[-1]
    user = last(final, "USER").value.split(":")[0]
    assert user not in ("root", "0", ""), f"final USER is {user!r}"
    installs = [line for line in _run_lines(path) if "pip install" in line]
    assert installs, "no pip install line"
    for line in installs:
        for install in re.findall(r"pip install ([^&]*)", line):
            assert "torch" not in install and "[" not in install, f"no torch, no extras in the image: {install}"
            if path == DOCKERFILE:
                assert "onnxruntime-gpu" not in install, install
    joined = " ".join(installs)
    if path == DOCKERFILE:
        # Plain onnxruntime: the package without its dependencies, which come from the CPU list.
        assert re.search(r"pip install --no-deps \.(\s|$)", joined), joined
        assert "cpu_requirements.py pyproject.toml > /tmp/requirements.txt" in joined
        assert "pip install -r /tmp/requirements.txt" in joined
    else:
        assert re.search(r"pip install \.(\s|$)", joined), f"the plain serving install `pip install .`: {joined}"
    assert any(ins.keyword == "COPY" and ins.value.startswith("--from=") for ins in final)
    assert set(last(final, "EXPOSE").value.split()) == {str(HTTP_PORT), str(GRPC_PORT), str(METRICS_PORT)}
    assert json.loads(last(final, "VOLUME").value) == ["/models"]
    assert healthcheck_command(path) == ["edgecnn", "health", "--server", f"127.0.0.1:{GRPC_PORT}", "--timeout", "4"]
    assert serve_command(path)[:2] == ["edgecnn", "serve"]
    opts = parse_serve_args(serve_command(path)[2:])
    assert (str(opts.repository), opts.port, opts.metrics_port, opts.host) == ("/models", GRPC_PORT, METRICS_PORT, "0.0.0.0")
    base = expand(stages[-1][0].value.split()[0], args)
    if path == DOCKERFILE:
        assert base == "python:3.11-slim-bookworm", base
        assert opts.device == "cpu"
    else:
        assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-cudnn-runtime-ubuntu24\.04", base), base
        assert opts.device == "cuda"


def test_cpu_dockerfile_names_no_architecture():
    """`--platform linux/arm64` away from an edge board's image: no instruction names one."""
    _, stages = parse_dockerfile(DOCKERFILE)
    for stage in stages:
        for ins in stage:
            assert not ARCH_WORDS.search(ins.value), f"{ins.keyword} {ins.value}"
    assert all("python3*" in line or "site-packages" not in line for line in _run_lines(DOCKERFILE)), "no fixed interpreter path"


def test_cpu_requirements_swap_onnxruntime_gpu_for_onnxruntime():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    listed = cpu_requirements(ROOT / "pyproject.toml")
    parsed = [Requirement(line) for line in listed]
    names = [r.name for r in parsed]
    assert names.count("onnxruntime") == 1 and "onnxruntime-gpu" not in names
    runtime = parsed[names.index("onnxruntime")]
    assert runtime.marker is None, "the same runtime on every architecture"
    gpu = next(Requirement(d) for d in project if Requirement(d).name == "onnxruntime-gpu")
    assert runtime.specifier == gpu.specifier
    others = [d for d in project if Requirement(d).name not in ("onnxruntime", "onnxruntime-gpu")]
    assert [line for line in listed if Requirement(line).name != "onnxruntime"] == others
    for machine in ("x86_64", "aarch64"):
        env = {"platform_machine": machine, "platform_system": "Linux", "sys_platform": "linux"}
        assert all(r.marker is None or r.marker.evaluate(env) for r in parsed), machine


def test_healthcheck_timeout_fits_docker_timeout():
    options, command = healthcheck(DOCKERFILE)
    docker_timeout = float(re.search(r"--timeout=(\d+)s", options).group(1))
    assert float(command[command.index("--timeout") + 1]) < docker_timeout


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob (Go filepath.Match plus **), for the patterns used here."""
    out, i = "", 0
    pattern = pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_keeps(ignore_file: Path, path: str) -> bool:
    """Whether `path` (relative to the build context) goes into the context: the last pattern
    matching the path or one of its parents decides, `!` re-includes."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    keep = True
    for line in ignore_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _dockerignore_regex(line[1:] if negate else line)
        if any(regex.fullmatch(c) for c in candidates):
            keep = negate
    return keep


def _package_dirs() -> list[str]:
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return sorted(set(setuptools_cfg["package-dir"].values()))


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, DOCKERFILE_GPU], ids=["cpu", "gpu"])
def test_dockerignore_sends_only_the_package(dockerfile: Path):
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore} (BuildKit's per-Dockerfile ignore file; podman gets it as --ignorefile)"
    kept = ["pyproject.toml", "README.md"] + [f"{d}/__init__.py" for d in _package_dirs()]
    if dockerfile == DOCKERFILE:
        kept.append("deploy/docker/cpu_requirements.py")
    for path in kept:
        assert dockerignore_keeps(ignore, path), path
    for path in [".venv/bin/python", "runs/lenet5/model.pt", "tests/deploy/test_docker.py", ".git/HEAD", "deploy/k8s/base/pvc.yaml",
                 "edgecnn/__pycache__/cli.cpython-311.pyc", "model_repository/lenet5/1/model.onnx"]:  # fmt: skip
        assert not dockerignore_keeps(ignore, path), path
    for d in _package_dirs():
        assert (ROOT / d / "__init__.py").is_file(), f"pyproject's package dir {d} has no __init__.py"


def test_dockerignore_matcher_follows_docker_rules(tmp_path):
    ignore = tmp_path / "x.dockerignore"
    ignore.write_text("*\n!src/\n**/*.pyc\n!src/keep.pyc\n")
    assert dockerignore_keeps(ignore, "src/a/b.py")
    assert not dockerignore_keeps(ignore, "src/a/b.pyc")
    assert dockerignore_keeps(ignore, "src/keep.pyc")
    assert not dockerignore_keeps(ignore, "other/file")


# --- the image's install in a fresh virtualenv ---------------------------------------------------


def build_context(dockerfile: Path, dest: Path) -> Path:
    """Copy what `docker build` would send: the repository filtered by the Dockerfile's ignore file."""
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    negated = [line.strip()[1:].strip("/") for line in ignore.read_text().splitlines() if line.strip().startswith("!")]
    for folder, dirs, files in os.walk(ROOT):
        rel = Path(folder).relative_to(ROOT)
        kept = [(d, (rel / d).as_posix()) for d in dirs]
        dirs[:] = [
            d for d, path in kept if dockerignore_keeps(ignore, path) or any(n.startswith(f"{path}/") for n in negated)
        ]
        for name in files:
            path = (rel / name).as_posix()
            if dockerignore_keeps(ignore, path):
                (dest / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / path, dest / path)
    return dest


NOT_SERVING_PACKAGES = {"torch", "torchvision", "onnx", "onnxscript", "matplotlib", "tqdm", "hdrhistogram", "tritonclient", "onnxruntime-gpu"}


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory) -> Path:
    """A clean virtualenv installed as the CPU image's build installs, from its build context:
    cpu_requirements.py's list, then `pip install --no-deps .`."""
    root = tmp_path_factory.mktemp("serving-venv")
    context = build_context(DOCKERFILE, root / "context")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    started = time.monotonic()
    requirements = root / "requirements.txt"
    listed = subprocess.run([python, "deploy/docker/cpu_requirements.py", "pyproject.toml"], cwd=context,
                            capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    requirements.write_text(listed.stdout)
    for argv in (["-r", str(requirements)], ["--no-deps", "."]):
        done = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *argv],
                              cwd=context, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-4000:]
    print(f"serving install into a clean venv: {time.monotonic() - started:.0f} s")
    return venv


def test_image_command_serves_from_a_serving_only_install(serving_venv, served_repository):
    bin_dir = serving_venv / "bin"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "HOME": str(serving_venv)}
    run = {"capture_output": True, "text": True, "env": env, "cwd": serving_venv, "timeout": 60}
    no_torch = subprocess.run([str(bin_dir / "python"), "-c", "import torch"], **run)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr, no_torch
    listed = subprocess.run([str(bin_dir / "python"), "-m", "pip", "list", "--format=json"], **run)
    installed = {package["name"].lower() for package in json.loads(listed.stdout)}
    # The serving side carries ONNX Runtime (the CPU build), grpc, numpy and pillow (and what they
    # need): no training, export, plotting, load-testing or CUDA packages.
    assert not installed & NOT_SERVING_PACKAGES, installed & NOT_SERVING_PACKAGES
    assert "onnxruntime" in installed

    # As the image runs it: ENTRYPOINT + CMD resolved through PATH, /models and ports swapped.
    served = ServeProcess(local_argv(serve_command(DOCKERFILE), served_repository.dir), env=env, cwd=serving_venv)
    try:
        check = [served.address if w == f"127.0.0.1:{GRPC_PORT}" else w for w in healthcheck_command(DOCKERFILE)]
        done = subprocess.run(check, **run)
        assert done.returncode == 0 and done.stdout.strip().endswith(": SERVING"), done
        x = np.random.default_rng(1).random((2, 1, 28, 28), dtype=np.float32)
        expected = reference_logits(served_repository.onnx, x)
        np.testing.assert_allclose(model_infer(served.address, MODEL, x), expected, rtol=1e-4, atol=1e-5)
        probe = "import sys, edgecnn.server, edgecnn.client.health; print('torch' in sys.modules)"
        loaded = subprocess.run([str(bin_dir / "python"), "-c", probe], **run)
        assert loaded.stdout.strip() == "False", loaded
    finally:
        assert served.stop() == 0, "".join(served.output)
