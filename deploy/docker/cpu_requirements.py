"""The CPU image's requirements: pyproject.toml's dependencies with onnxruntime-gpu read as plain
onnxruntime.

pyproject.toml asks for onnxruntime-gpu on Linux x86_64 (the CUDA build, ~340 MB, which also
runs on the CPU) and for onnxruntime elsewhere. A CPU image never uses the CUDA libraries, so its
build installs the package with `pip install --no-deps .` and the dependencies from this list:
one unconditional onnxruntime line (the -gpu line's version bound), every other dependency as
written, environment markers and all. The same list on every architecture (amd64, arm64).

    python deploy/docker/cpu_requirements.py pyproject.toml > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

GPU, CPU = "onnxruntime-gpu", "onnxruntime"


def _name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def cpu_requirements(pyproject: Path) -> list[str]:
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    out: list[str] = []
    runtime = None
    for requirement in dependencies:
        name = _name(requirement)
        if name == GPU:
            spec = requirement.split(";", 1)[0].strip()
            runtime = CPU + spec[len(re.match(r"\s*[A-Za-z0-9._-]+", spec).group(0)) :]
        elif name == CPU:
            # The non-x86_64 line: replaced by the unconditional one below.
            runtime = runtime or requirement.split(";", 1)[0].strip()
        else:
            out.append(requirement)
    if runtime is None:
        raise ValueError(f"{pyproject}: no onnxruntime dependency")
    return [runtime, *out]


if __name__ == "__main__":
    print("\n".join(cpu_requirements(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"))))
