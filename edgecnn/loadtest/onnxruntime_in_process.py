"""ONNX Runtime called in-process, no gRPC: the compute limit `make bench` sets the servers beside."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from edgecnn.server.device import providers_for
from edgecnn.server.sessions import open_session

from .stats import new_histogram, record_seconds


def _ort_loop(session, x: np.ndarray, duration_s: float, callers: int) -> tuple[float, dict[str, float]]:
    """Runs per second and batch latency (ms) with `callers` threads calling back-to-back."""
    name = session.get_inputs()[0].name
    histogram = new_histogram()
    lock = threading.Lock()
    counts = []

    def caller() -> None:
        n = 0
        while (start := time.perf_counter()) < end:
            session.run(None, {name: x})
            with lock:
                record_seconds(histogram, time.perf_counter() - start)
            n += 1
        counts.append(n)

    session.run(None, {name: x})  # warm-up (on CUDA the first call of a shape can take seconds)
    t0 = time.perf_counter()
    end = t0 + duration_s
    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    latency = {"p50": histogram.get_value_at_percentile(50) / 1000, "p99": histogram.get_value_at_percentile(99) / 1000}
    return sum(counts) / elapsed, latency


def bench_onnxruntime(onnx: Path, input_shape: tuple[int, ...], threads: int, duration_s: float, callers: int, device: str) -> dict:
    """Batch 1 back-to-back (one caller: req/s, p50 and p99 ms; then `callers` callers: req/s) and
    batch 64 (`callers` callers: images/s), each for `duration_s`, random float32 inputs."""
    session = open_session(onnx, threads, providers_for(device))
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, *input_shape), dtype=np.float32)
    big = rng.standard_normal((64, *input_shape), dtype=np.float32)
    rps, latency = _ort_loop(session, one, duration_s, 1)
    parallel_rps, _ = _ort_loop(session, one, duration_s, callers)
    batches_per_s, _ = _ort_loop(session, big, duration_s, callers)
    return {
        "batch1_req_per_s": rps, "batch1_p50_ms": latency["p50"], "batch1_p99_ms": latency["p99"],
        "batch1_parallel_req_per_s": parallel_rps, "batch64_images_per_s": 64 * batches_per_s,
    }  # fmt: skip
