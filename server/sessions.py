"""ONNX Runtime sessions with the settings of every served one."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from .device import with_options


def open_session(path: Path | str, threads: int, providers: list[str]) -> ort.InferenceSession:
    """A session with the settings of every served one (the benchmark's floor server and
    in-process runs open theirs here too, so the comparison is like for like)."""
    return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=with_options(providers))


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no per-node placement chatter
    return options
