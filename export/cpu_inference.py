"""ONNX Runtime sessions and batched inference for export-side checks (no torch)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgecnn.repository import INPUT_NAME


def make_session(model: str | Path | bytes, threads: int = 1) -> ort.InferenceSession:
    """A CPU session: verification compares against PyTorch on CPU, so it must be reproducible."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_batched(session: ort.InferenceSession, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The session's first output for every row of x, computed batch_size rows at a time."""
    outputs = [
        session.run(None, {INPUT_NAME: np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)})[0]
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(outputs) if outputs else np.empty((0,), np.float32)
