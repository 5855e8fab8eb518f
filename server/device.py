"""Which ONNX Runtime execution provider a session gets for --device auto|cpu|cuda."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import onnxruntime as ort

from .errors import StartupError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# ONNX Runtime's default cuDNN search (EXHAUSTIVE) times every convolution algorithm for each
# new input shape; the heuristic picks at once, which keeps the warm-up of every batch size
# bucket (shapes.py) short. (It did not remove the per-shape set-up cost that shapes.py avoids.)
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}


@functools.cache
def gpu_present() -> bool:
    """An NVIDIA GPU is really there (onnxruntime-gpu lists CUDA even on machines without one)."""
    if Path("/dev/nvidia0").exists():
        return True
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and "GPU" in result.stdout


def cuda_usable() -> bool:
    return CUDA in ort.get_available_providers() and gpu_present()


def with_options(providers: list[str]) -> list[str | tuple[str, dict[str, str]]]:
    """The providers as InferenceSession takes them, with the options this server sets."""
    return [(p, CUDA_OPTIONS) if p == CUDA else p for p in providers]


def providers_for(device: str) -> list[str]:
    """The provider list to open sessions with, best first."""
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if CUDA not in ort.get_available_providers():
            raise StartupError(
                "--device cuda: this ONNX Runtime build has no CUDAExecutionProvider "
                f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use --device cpu"
            )
        if not gpu_present():
            raise StartupError("--device cuda: no NVIDIA GPU found (no /dev/nvidia0, nvidia-smi lists none); use --device auto or cpu")
        return [CUDA, CPU]
    if device == "auto":
        return [CUDA, CPU] if cuda_usable() else [CPU]
    raise StartupError(f"--device must be auto, cpu or cuda, got {device!r}")
