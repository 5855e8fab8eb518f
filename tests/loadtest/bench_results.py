"""Synthetic results of scripts/bench.py with known ratios, for the tests of its report and of
the script: nothing is measured here."""

from __future__ import annotations

SWEEP = (16, 1, 64, 4)  # out of order on purpose: the goals are set at c=64 and c=1


def step(concurrency: int, req_per_s: float, p50_ms: float | None) -> dict:
    return {
        "mode": "closed", "concurrency": concurrency, "requests": int(req_per_s), "errors": {},
        "req_per_s": req_per_s, "images_per_s": req_per_s,
        "latency_ms": {k: p50_ms for k in ("p50", "p90", "p95", "p99", "p99.9", "max")},
        "client_cpu": [0.3, 0.3], "client_saturated": False,
        "runs": [{"req_per_s": req_per_s * 0.9, "p50_ms": p50_ms}, {"req_per_s": req_per_s * 1.1, "p50_ms": p50_ms}],
    }  # fmt: skip


def sweep(req_per_s: dict[int, float], p50_ms: float) -> dict:
    """A pooled report: req/s per concurrency, p50 of c=1 (the others' latencies are not judged)."""
    return {"tool": "edgecnn loadtest", "rounds": 2, "steps": [step(c, req_per_s[c], p50_ms if c == 1 else 10.0) for c in req_per_s]}


FLOOR = {c: 1000.0 * {1: 1, 4: 2, 16: 2, 64: 2}[c] for c in SWEEP}


def servers(off_share: float, off_p50: float, on_over_off: float) -> dict[str, dict]:
    """Floor (both variants alike), batching off at off_share of the floor (p50 off_p50 vs the
    floor's 1.0 ms) and batching on at on_over_off of batching off, at every concurrency."""
    off = {c: FLOOR[c] * off_share for c in SWEEP}
    return {
        "floor": sweep(FLOOR, 1.0),
        "floor-inline": sweep(FLOOR, 1.0),
        "batching-off": sweep(off, off_p50),
        "batching-on": sweep({c: off[c] * on_over_off for c in SWEEP}, off_p50),
    }


def results(per_device: dict[str, dict[str, dict]], models=("lenet5", "mobilenet-v2")) -> dict:
    return {
        "created": "2026-11-26 10:00:00 UTC",
        "machine": {"cpu": "test CPU", "logical_cpus": 2, "usable_cpus": 2, "ram_gib": 24.0, "os": "Linux", "python": "3.11",
                    "onnxruntime": "1.31", "grpcio": "1.85", "numpy": "2", "edgecnn": "0.1.0", "gpu": "none",
                    "load_average_at_start": [0.1, 0.1, 0.1]},
        "settings": {"quick": False, "duration": 2.0, "warmup": 0.5, "concurrency": ",".join(map(str, SWEEP)), "threads": 1,
                     "processes": 2, "batch_delay_us": 500, "callers": 2, "rounds": 2, "slices": 2, "devices": list(per_device)},
        "notes": [],
        "models": [{"name": m, "params": 1000, "input_shape": [3, 32, 32], "onnx_bytes": 4000, "weights": "fixed seed"} for m in models],
        "onnxruntime": {m + ("" if d == "cpu" else "@cuda"): {"batch1_req_per_s": 300.0, "batch1_p50_ms": 3.0, "batch1_p99_ms": 4.0,
                        "batch1_parallel_req_per_s": 550.0, "batch64_images_per_s": 900.0} for m in models for d in per_device},
        "servers": {m: {kind + ("" if d == "cpu" else "@cuda"): report for d, kinds in per_device.items() for kind, report in kinds.items()}
                    for m in models},
        "wall_s": 100.0,
    }  # fmt: skip
