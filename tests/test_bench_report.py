"""scripts/bench.py's report: the target rows it derives from measured numbers, and --render.

Synthetic results with known ratios; nothing is measured here (timing goals are reported by
`make bench`, never asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import bench
    finally:
        sys.path.remove(str(SCRIPTS))
    return bench


def step(concurrency: int, req_per_s: float, p50_ms: float, errors: dict[str, int] | None = None) -> dict:
    return {
        "mode": "closed", "concurrency": concurrency, "requests": int(req_per_s), "errors": errors or {},
        "req_per_s": req_per_s, "images_per_s": req_per_s,
        "latency_ms": {"p50": p50_ms, "p90": p50_ms, "p95": p50_ms, "p99": 2 * p50_ms, "p99.9": 2 * p50_ms, "max": 3 * p50_ms},
        "client_cpu": [0.3, 0.3], "client_saturated": False,
        "runs": [{"req_per_s": req_per_s * 0.9, "p50_ms": p50_ms}, {"req_per_s": req_per_s * 1.1, "p50_ms": p50_ms}],
    }  # fmt: skip


def report(*steps: dict) -> dict:
    return {"tool": "edgecnn loadtest", "steps": list(steps), "rounds": 2}


def results(devices: list[str]) -> dict:
    servers = {}
    for device in devices:
        suffix = "" if device == "cpu" else "@cuda"
        servers["floor" + suffix] = report(step(1, 1000, 1.00), step(64, 2000, 30.0))
        servers["batching-off" + suffix] = report(step(1, 950, 1.05), step(64, 1900, 32.0))  # 95% of the floor, p50 1.05x
        servers["batching-on" + suffix] = report(step(1, 900, 1.10), step(64, 2090, 30.0))  # on/off 0.947 at c=1, 1.1x at c=64
    return {
        "created": "2026-11-26 10:00:00 UTC",
        "machine": {"cpu": "test CPU", "logical_cpus": 2, "usable_cpus": 2, "ram_gib": 24.0, "os": "Linux", "python": "3.11",
                    "onnxruntime": "1.31", "grpcio": "1.85", "numpy": "2", "edgecnn": "0.1.0", "gpu": "none",
                    "load_average_at_start": [0.1, 0.1, 0.1]},
        "settings": {"quick": False, "duration": 2.0, "warmup": 0.5, "concurrency": "1,64", "threads": 1, "processes": 2,
                     "batch_delay_us": 500, "callers": 2, "rounds": 2, "devices": devices},
        "notes": [],
        "models": [{"name": "mobilenet-v2", "params": 2236682, "input_shape": [3, 32, 32], "onnx_bytes": 9053323, "weights": "fixed seed"}],
        "onnxruntime": {"mobilenet-v2" + ("" if d == "cpu" else "@cuda"): {"batch1_req_per_s": 300.0, "batch1_p50_ms": 3.0, "batch1_p99_ms": 4.0,
                        "batch1_parallel_req_per_s": 550.0, "batch64_images_per_s": 900.0} for d in devices},
        "servers": {"mobilenet-v2": servers},
        "wall_s": 100.0,
    }  # fmt: skip


def test_targets_per_device(bench):
    rows = {goal: (measured, met) for goal, measured, met in bench.targets(results(["cpu", "cuda"]))}
    for name in ("mobilenet-v2", "mobilenet-v2@cuda"):
        assert rows[f"{name}: batching off reaches >= 90% of the floor's req/s at c=64"] == ("1900 vs 2000 req/s = 95%", True)
        assert rows[f"{name}: batching off p50 at c=1 <= 1.1x the floor's"] == ("1.05 vs 1.00 ms = 1.05x", True)
        measured, met = rows[f"{name}: batching on never > 5% below batching off in req/s"]
        assert measured == "on/off c=1: 0.95, c=64: 1.10 (worst c=1)" and met is False  # 0.947 rounds to 0.95 but is below
        assert rows[f"{name}: batching on is faster where compute dominates (c=64)"] == ("on/off = 1.10x", True)
    assert rows["zero errors"] == ("0 failed requests", True)


def test_errors_anywhere_fail_the_zero_errors_target(bench):
    data = results(["cpu"])
    data["servers"]["mobilenet-v2"]["batching-on"]["steps"][1]["errors"] = {"UNAVAILABLE": 3}
    assert bench.targets(data)[-1] == ("zero errors", "3 failed requests", False)


def test_render_rewrites_the_report_with_notes(bench, tmp_path):
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps(results(["cuda"])))
    out = tmp_path / "report.md"
    assert bench.main(["--render", str(saved), "--out", str(out), "--note", "measured before the fix"]) == 0
    text = out.read_text()
    assert "**Note:** measured before the fix" in text
    assert "| batching-on@cuda | 64 | 2090 | 1881 / 2299 |" in text
    assert "| mobilenet-v2@cuda: batching on is faster where compute dominates (c=64) | on/off = 1.10x | met |" in text
    assert (tmp_path / "report.png").stat().st_size > 0
