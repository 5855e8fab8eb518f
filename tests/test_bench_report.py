"""scripts/bench.py's report: the target rows it derives from measured numbers, and --render.

Synthetic results with known ratios; nothing is measured here (timing goals are reported by
`make bench`, never asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
SWEEP = (16, 1, 64, 4)  # out of order on purpose: the goals are set at c=64 and c=1


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import bench
    finally:
        sys.path.remove(str(SCRIPTS))
    return bench


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
    """Floor, batching off at off_share of the floor (p50 off_p50 vs the floor's 1.0 ms) and
    batching on at on_over_off of batching off, at every concurrency."""
    off = {c: FLOOR[c] * off_share for c in SWEEP}
    return {
        "floor": sweep(FLOOR, 1.0),
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
                     "processes": 2, "batch_delay_us": 500, "callers": 2, "rounds": 2, "devices": list(per_device)},
        "notes": [],
        "models": [{"name": m, "params": 1000, "input_shape": [3, 32, 32], "onnx_bytes": 4000, "weights": "fixed seed"} for m in models],
        "onnxruntime": {m + ("" if d == "cpu" else "@cuda"): {"batch1_req_per_s": 300.0, "batch1_p50_ms": 3.0, "batch1_p99_ms": 4.0,
                        "batch1_parallel_req_per_s": 550.0, "batch64_images_per_s": 900.0} for m in models for d in per_device},
        "servers": {m: {kind + ("" if d == "cpu" else "@cuda"): report for d, kinds in per_device.items() for kind, report in kinds.items()}
                    for m in models},
        "wall_s": 100.0,
    }  # fmt: skip


def rows_of(bench, data: dict) -> dict[str, tuple[str, bool]]:
    return {goal: (measured, met) for goal, measured, met in bench.targets(data)}


def test_goals_are_judged_at_c64_and_c1_on_each_device_with_its_own_numbers(bench):
    # CPU: every goal met, exactly at its boundary; GPU: every goal missed.
    rows = rows_of(bench, results({"cpu": servers(0.90, 1.10, 1.0), "cuda": servers(0.80, 1.20, 0.90)}))
    assert rows["lenet5: batching off reaches >= 90% of the floor's req/s at c=64"] == ("1800 vs 2000 req/s = 90.0%", True)
    assert rows["lenet5: batching off p50 at c=1 <= 1.1x the floor's"] == ("1.10 vs 1.00 ms = 1.100x", True)
    assert rows["mobilenet-v2: batching on is faster where compute dominates (c=64)"] == ("on/off = 1.000x", False)
    assert rows["lenet5@cuda: batching off reaches >= 90% of the floor's req/s at c=64"] == ("1600 vs 2000 req/s = 80.0%", False)
    assert rows["lenet5@cuda: batching off p50 at c=1 <= 1.1x the floor's"] == ("1.20 vs 1.00 ms = 1.200x", False)
    assert rows["lenet5@cuda: batching on never > 5% below batching off in req/s"] == (
        "on/off c=1: 0.900, c=4: 0.900, c=16: 0.900, c=64: 0.900 (worst c=1)", False)  # fmt: skip
    # "where compute dominates": MobileNetV2 everywhere, every model on the GPU, LeNet-5 not on the CPU.
    assert "lenet5@cuda: batching on is faster where compute dominates (c=64)" in rows
    assert "mobilenet-v2@cuda: batching on is faster where compute dominates (c=64)" in rows
    assert "lenet5: batching on is faster where compute dominates (c=64)" not in rows
    assert rows["zero errors"] == ("0 failed requests", True)


def test_just_below_a_boundary_is_not_met(bench):
    rows = rows_of(bench, results({"cpu": servers(0.8996, 1.1004, 0.9496)}, models=("mobilenet-v2",)))
    assert rows["mobilenet-v2: batching off reaches >= 90% of the floor's req/s at c=64"] == ("1799 vs 2000 req/s = 90.0%", False)
    assert rows["mobilenet-v2: batching off p50 at c=1 <= 1.1x the floor's"][1] is False
    measured, met = rows["mobilenet-v2: batching on never > 5% below batching off in req/s"]
    assert "c=64: 0.950" in measured and met is False


def test_a_sweep_without_c64_leaves_that_goal_unmet(bench):
    data = results({"cpu": servers(1.0, 1.0, 1.2)}, models=("mobilenet-v2",))
    for report in data["servers"]["mobilenet-v2"].values():
        report["steps"] = [s for s in report["steps"] if s["concurrency"] != 64]
    rows = rows_of(bench, data)
    assert rows["mobilenet-v2: batching off reaches >= 90% of the floor's req/s at c=64"] == ("not measured (the sweep lacks c=64)", False)
    assert rows["mobilenet-v2: batching off p50 at c=1 <= 1.1x the floor's"][1] is True


def test_a_step_where_every_request_failed_is_reported_not_crashed_on(bench):
    data = results({"cpu": servers(1.0, 1.0, 1.0)}, models=("lenet5",))
    dead = data["servers"]["lenet5"]["batching-off"]["steps"]
    dead[:] = [{**s, "req_per_s": 0.0, "errors": {"UNAVAILABLE": 7}, "latency_ms": {k: None for k in s["latency_ms"]}} for s in dead]
    rows = rows_of(bench, data)
    assert rows["lenet5: batching off reaches >= 90% of the floor's req/s at c=64"] == ("0 vs 2000 req/s = n/a", False)
    assert rows["lenet5: batching off p50 at c=1 <= 1.1x the floor's"] == ("- vs 1.00 ms = n/a", False)
    assert rows["lenet5: batching on never > 5% below batching off in req/s"][1] is False
    assert rows["zero errors"] == ("28 failed requests", False)


def test_render_rewrites_the_report_keeps_the_notes_and_reads_older_results(bench, tmp_path):
    data = results({"cpu": servers(0.95, 1.0, 1.1), "cuda": servers(0.95, 1.0, 2.0)}, models=("mobilenet-v2",))
    del data["settings"]["devices"], data["notes"]  # as written before --devices and --note existed
    saved = tmp_path / "gpu-run.json"
    saved.write_text(json.dumps(data))
    assert bench.main(["--render", str(saved), "--note", "measured before the fix"]) == 0
    text = (tmp_path / "gpu-run.md").read_text()  # the default --out: beside the results
    assert "**Note:** measured before the fix" in text
    assert "| batching-on@cuda | 64 | 3800 | 3420 / 4180 |" in text
    assert "| mobilenet-v2@cuda: batching on is faster where compute dominates (c=64) | on/off = 2.000x | met |" in text
    assert (tmp_path / "gpu-run.png").stat().st_size > 0
    assert json.loads(saved.read_text())["notes"] == ["measured before the fix"], "the notes are kept for the next render"
    assert bench.main(["--render", str(saved)]) == 0
    assert "**Note:** measured before the fix" in (tmp_path / "gpu-run.md").read_text()


def test_a_bad_concurrency_is_refused_before_anything_runs(bench, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--concurrency", "0,4"])
    assert exit_info.value.code == 2 and "'0,4': expected positive integers" in capsys.readouterr().err
    assert bench.parse_args(["--concurrency", "1, 4", "--devices", "cpu"]).concurrency == "1,4"


def test_results_are_saved_after_every_finished_leg(bench, tmp_path, monkeypatch):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    models = [bench.BenchModel(name, tmp_path, onnx, 1000, (3, 32, 32), "fixed seed") for name in ("lenet5", "cifar-cnn")]

    def measure_servers(model, device, args, log):
        if model.name == "cifar-cnn":
            raise RuntimeError("edgecnn loadtest failed")
        return servers(1.0, 1.0, 1.0)

    monkeypatch.setattr(bench, "prepare_models", lambda workdir, names, log: models)
    monkeypatch.setattr(bench, "machine", dict)
    monkeypatch.setattr(bench, "cuda_usable", lambda: False)
    monkeypatch.setattr(bench, "bench_onnxruntime", lambda *args: {"batch1_req_per_s": 300.0})
    monkeypatch.setattr(bench, "measure_servers", measure_servers)
    workdir = tmp_path / "work"
    with pytest.raises(RuntimeError, match="loadtest failed"):
        bench.main(["--models", "lenet5,cifar-cnn", "--devices", "cpu", "--workdir", str(workdir), "--out", str(tmp_path / "b.md")])
    saved = json.loads((workdir / "results.json").read_text())
    assert list(saved["servers"]) == ["lenet5"] and set(saved["servers"]["lenet5"]) == set(bench.SERVERS)
    assert [p.name for p in workdir.iterdir()] == ["results.json"]  # no temporary file left behind


def test_floor_server_starts_and_answers_as_onnx_runtime(bench, served_repository, tmp_path):
    """The bench's floor server starts (its warm-up call included) and answers with the session's logits."""
    import numpy as np
    import onnxruntime as ort
    import tritonclient.grpc as tritonclient_grpc

    from tests.servers import MODEL

    model = bench.BenchModel(MODEL, served_repository.dir, served_repository.onnx, 0, (1, 28, 28), "test")
    cmd, ready = bench.server_command("floor", model, threads=1, delay_us=0, device="cpu")
    log = tmp_path / "floor.log"
    with bench.running(cmd, ready, log) as address:
        client = tritonclient_grpc.InferenceServerClient(url=address)
        assert list(client.get_model_metadata(MODEL).inputs[0].shape) == [-1, 1, 28, 28]
        x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
        tensor = tritonclient_grpc.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        got = client.infer(MODEL, [tensor]).as_numpy("logits")
    session = ort.InferenceSession(str(served_repository.onnx), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, session.run(None, {"input": x})[0], rtol=1e-5, atol=1e-6)


def test_servers_are_measured_in_alternating_slices_and_pooled_per_round(bench, tmp_path, monkeypatch):
    """Every step: `slices` slices per server, alternating between the three, the order rotating
    each slice; a row pools them all, and its runs are the rounds."""
    from contextlib import contextmanager, nullcontext

    from edgecnn.loadtest.stats import StepResult, WorkerResult, new_histogram

    started, order = [], []

    @contextmanager
    def running(cmd, ready, log_path):
        started.append(log_path.name)
        yield log_path.name.split("-round")[0]

    def run_slice(plan, concurrency, pool):
        kind = plan.target.server.rsplit("-cpu", 1)[0].split("lenet5-", 1)[1]
        order.append((kind, concurrency))
        ok = {"floor": 100, "batching-off": 90, "batching-on": 80}[kind]
        histogram = new_histogram()
        histogram.record_value(1000)
        worker = WorkerResult(histogram=histogram.encode(), ok=ok, errors={}, window_s=1.0, window_ok=ok, cpu_s=0.1, wall_s=1.0)
        return StepResult("closed", concurrency, None, 1, [worker]).to_dict()

    monkeypatch.setattr(bench, "running", running)
    monkeypatch.setattr(bench, "WorkerPool", lambda processes: nullcontext())
    monkeypatch.setattr(bench, "run_slice", run_slice)
    args = bench.parse_args(["--devices", "cpu", "--rounds", "2", "--slices", "2", "--concurrency", "1,4", "--workdir", str(tmp_path)])
    model = bench.BenchModel("lenet5", tmp_path, tmp_path / "model.onnx", 1000, (1, 28, 28), "test")
    reports = bench.measure_servers(model, "cpu", args, lambda message: None)

    kinds = list(bench.SERVERS)
    assert started == [f"lenet5-{kind}-cpu-round{r}.log" for r in (1, 2) for kind in kinds], "all three up together, fresh each round"
    assert [kind for kind, _ in order[:6]] == kinds[0:] + kinds[1:] + kinds[:1], "round 1, c=1: slice 1 then slice 2, rotated"
    assert [c for _, c in order] == [1] * 6 + [4] * 6 + [1] * 6 + [4] * 6
    assert [kind for kind, _ in order[12:15]] == kinds[2:] + kinds[:2], "round 2 starts where round 1 left off"
    for kind, report in reports.items():
        assert [step["concurrency"] for step in report["steps"]] == [1, 4]
        for step in report["steps"]:
            assert len(step["runs"]) == 2, "one run per round"
            assert step["duration_s"] == 4.0  # 2 rounds x 2 slices x 1 s
    assert reports["floor"]["steps"][0]["req_per_s"] / reports["batching-on"]["steps"][0]["req_per_s"] == pytest.approx(100 / 80)
