"""scripts/bench.py, the driver: its flags, the servers it starts for every round, what it saves
after every leg, and --render. Servers are faked except the floor server's own test."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from edgecnn.loadtest import side_by_side
from tests.loadtest.bench_results import results, servers

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import bench
    finally:
        sys.path.remove(str(SCRIPTS))
    return bench


def test_render_rewrites_the_report_beside_the_results_and_keeps_the_notes(bench, tmp_path):
    saved = tmp_path / "gpu-run.json"
    saved.write_text(json.dumps(results({"cpu": servers(0.95, 1.0, 1.1), "cuda": servers(0.95, 1.0, 2.0)}, models=("mobilenet-v2",))))
    assert bench.main(["--render", str(saved), "--note", "measured before the fix"]) == 0
    text = (tmp_path / "gpu-run.md").read_text()  # the default --out: beside the results
    assert "**Note:** measured before the fix" in text
    assert "| batching-on@cuda | 64 | 3800 | 3420 / 4180 |" in text
    assert "| mobilenet-v2@cuda [edgecnn loadtest]: batching on is faster where compute dominates (c=64) | on/off = 2.000x | met |" in text
    assert (tmp_path / "gpu-run.png").stat().st_size > 0
    assert json.loads(saved.read_text())["notes"] == ["measured before the fix"], "the notes are kept for the next render"
    assert bench.main(["--render", str(saved)]) == 0
    assert "**Note:** measured before the fix" in (tmp_path / "gpu-run.md").read_text()


def test_render_refuses_the_results_of_an_older_version(bench, tmp_path, capsys):
    data = results({"cpu": servers(1.0, 1.0, 1.0)}, models=("lenet5",))
    del data["settings"]["devices"], data["notes"]  # as written before --devices and --note existed
    saved = tmp_path / "old.json"
    saved.write_text(json.dumps(data))
    assert bench.main(["--render", str(saved)]) == 2
    assert f"bench: --render {saved}: no notes, settings.devices: not the results of this version" in capsys.readouterr().err
    assert not (tmp_path / "old.md").exists()


def test_a_bad_concurrency_is_refused_before_anything_runs(bench, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--concurrency", "0,4"])
    assert exit_info.value.code == 2 and "'0,4': expected positive integers" in capsys.readouterr().err
    assert bench.parse_args(["--concurrency", "1, 4", "--devices", "cpu"]).concurrency == (1, 4)
    assert bench.parse_args(["--devices", "cpu"]).concurrency == (1, 4, 16, 64)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--duration", "nan"], "'nan': expected a positive number of seconds"),
        (["--duration", "0"], "'0': expected a positive number of seconds"),
        (["--warmup", "-1"], "'-1': expected a number of seconds >= 0"),
        (["--rounds", "0"], "expected an integer >= 1, not 0"),
        (["--slices", "0"], "expected an integer >= 1, not 0"),
        (["--processes", "two"], "expected an integer >= 1, not 'two'"),
        (["--devices", "tpu"], "--devices tpu: expected cpu and/or cuda"),
        (["--models", "resnet"], "unknown models ['resnet']"),
        (["--workers-count", "1"], "expected an integer >= 2, not 1"),
    ],
)
def test_bad_numbers_and_names_exit_2(bench, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_quick_is_one_round_of_1s_steps_in_one_slice(bench):
    args = bench.parse_args(["--quick", "--devices", "cpu"])
    assert (args.duration, args.warmup, args.rounds, args.slices) == (1.0, 0.5, 1, 1)


def test_results_are_saved_after_every_finished_leg(bench, tmp_path, monkeypatch):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    models = [bench.BenchModel(name, tmp_path, onnx, 1000, (3, 32, 32), "fixed seed") for name in ("lenet5", "cifar-cnn")]

    def measure_servers(model, device, args, log, perf_analyzer_reports=None):
        if model.name == "cifar-cnn":
            raise RuntimeError("edgecnn loadtest failed")
        return servers(1.0, 1.0, 1.0)

    monkeypatch.setattr(bench, "prepare_models", lambda workdir, names, log, **_: models)
    monkeypatch.setattr(bench, "machine", dict)
    monkeypatch.setattr(bench, "cuda_usable", lambda: False)
    monkeypatch.setattr(bench, "bench_onnxruntime", lambda *args: {"batch1_req_per_s": 300.0})
    monkeypatch.setattr(bench, "measure_servers", measure_servers)
    monkeypatch.setattr(bench, "serve_lacks_workers", lambda: "edgecnn serve has no --workers option")
    workdir = tmp_path / "work"
    with pytest.raises(RuntimeError, match="loadtest failed"):
        bench.main(["--models", "lenet5,cifar-cnn", "--devices", "cpu", "--workdir", str(workdir), "--out", str(tmp_path / "b.md")])
    saved = json.loads((workdir / "results.json").read_text())
    assert list(saved["servers"]) == ["lenet5"] and set(saved["servers"]["lenet5"]) == set(bench.SERVERS)
    assert saved["settings"]["concurrency"] == "1,4,16,64" and saved["settings"]["devices"] == ["cpu"]
    assert saved["settings"]["http"] == {"models": ["lenet5"], "concurrency": [1, 16, 64]}
    assert saved["settings"]["workers"] == {"models": ["lenet5"], "count": 2, "concurrency": [1, 64], "connections_per_process": 4, "connections": 8,
                                            "missing": "edgecnn serve has no --workers option"}  # fmt: skip
    assert [p.name for p in workdir.iterdir()] == ["results.json"]  # no temporary file left behind


@pytest.mark.parametrize("kind, where", [("floor", "on an executor thread"), ("floor-inline", "inline on the event loop")])
def test_floor_server_starts_and_answers_as_onnx_runtime(bench, served_repository, tmp_path, kind, where):
    """The bench's floor servers start (their warm-up included), say where batch-1 calls run, tell
    perf_analyzer their config, and answer with the session's logits."""
    import numpy as np
    import onnxruntime as ort
    import tritonclient.grpc as tritonclient_grpc

    from tests.servers import MODEL

    model = bench.BenchModel(MODEL, served_repository.dir, served_repository.onnx, 0, (1, 28, 28), "test")
    cmd, ready = bench.server_command(kind, model, threads=1, delay_us=0, device="cpu")
    log = tmp_path / "floor.log"
    with bench.running(cmd, ready, log) as listening:
        address = listening.grpc
        assert listening.http is None, "the floor server speaks gRPC only"
        client = tritonclient_grpc.InferenceServerClient(url=address)
        assert list(client.get_model_metadata(MODEL).inputs[0].shape) == [-1, 1, 28, 28]
        config = client.get_model_config(MODEL).config
        assert (config.max_batch_size, list(config.input[0].dims)) == (64, [1, 28, 28])
        x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
        tensor = tritonclient_grpc.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        got = client.infer(MODEL, [tensor]).as_numpy("logits")
        single = tritonclient_grpc.InferInput("input", [1, 1, 28, 28], "FP32")
        single.set_data_from_numpy(x[:1])
        one = client.infer(MODEL, [single]).as_numpy("logits")
    assert f"batch-1 calls run {where}" in log.read_text()
    session = ort.InferenceSession(str(served_repository.onnx), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, session.run(None, {"input": x})[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one, got[:1], rtol=1e-5, atol=1e-6)


def test_servers_are_measured_in_alternating_slices_and_pooled_per_round(bench, tmp_path, monkeypatch):
    """Every step: `slices` slices per server, alternating between the four, the order rotating
    each slice; a row pools them all, and its runs are the rounds."""
    from contextlib import contextmanager, nullcontext

    from edgecnn.loadtest.stats import StepResult, WorkerResult, new_histogram

    started, order = [], []

    @contextmanager
    def running(cmd, ready, log_path):
        started.append(log_path.name)
        yield bench.Listening(log_path.name.split("-round")[0], None, os.getpid())

    def run_slice(plan, concurrency, pool):
        kind = plan.target.server.rsplit("-cpu", 1)[0].split("lenet5-", 1)[1]
        order.append((kind, concurrency))
        ok = {"floor": 100, "floor-inline": 95, "batching-off": 90, "batching-on": 80}[kind]
        histogram = new_histogram()
        histogram.record_value(1000)
        worker = WorkerResult(histogram=histogram.encode(), ok=ok, errors={}, window_s=1.0, window_ok=ok, cpu_s=0.1, wall_s=1.0)
        return StepResult("closed", concurrency, None, 1, [worker]).to_dict()

    monkeypatch.setattr(bench, "running", running)
    monkeypatch.setattr(side_by_side, "WorkerPool", lambda processes: nullcontext())
    monkeypatch.setattr(side_by_side, "run_slice", run_slice)
    args = bench.parse_args(["--devices", "cpu", "--rounds", "2", "--slices", "2", "--concurrency", "1,4", "--workers-concurrency", "64", "--workdir", str(tmp_path),
                             "--http-models", ""])  # fmt: skip
    model = bench.BenchModel("lenet5", tmp_path, tmp_path / "model.onnx", 1000, (1, 28, 28), "test")
    reports = bench.measure_servers(model, "cpu", args, lambda message: None)

    kinds = list(bench.SERVERS)
    n = 2 * len(kinds)  # one step of one round: two slices per server
    assert started == [f"lenet5-{kind}-cpu-round{r}.log" for r in (1, 2) for kind in kinds], "all four up together, fresh each round"
    assert [kind for kind, _ in order[:n]] == kinds[0:] + kinds[1:] + kinds[:1], "round 1, c=1: slice 1 then slice 2, rotated"
    assert [c for _, c in order] == [1] * n + [4] * n + [1] * n + [4] * n
    assert [kind for kind, _ in order[2 * n : 2 * n + len(kinds)]] == kinds[2:] + kinds[:2], "round 2 starts where round 1 left off"
    for kind, report in reports.items():
        assert [step["concurrency"] for step in report["steps"]] == [1, 4]
        for step in report["steps"]:
            assert len(step["runs"]) == 2, "one run per round"
            assert step["duration_s"] == 4.0  # 2 rounds x 2 slices x 1 s
            assert step["cpu"]["server_s"] is not None and step["cpu"]["wall_s"] > 0  # the server's pid (this process here) read
    assert reports["floor"]["steps"][0]["req_per_s"] / reports["batching-on"]["steps"][0]["req_per_s"] == pytest.approx(100 / 80)


def test_perf_analyzer_measures_the_same_servers_in_the_first_pa_rounds(bench, tmp_path, monkeypatch):
    from contextlib import contextmanager, nullcontext

    from edgecnn.loadtest import perf_analyzer
    from edgecnn.loadtest.stats import StepResult, WorkerResult, new_histogram

    @contextmanager
    def running(cmd, ready, log_path):
        yield bench.Listening(log_path.name.split("-round")[0], None, os.getpid())

    def run_slice(plan, concurrency, pool):
        histogram = new_histogram()
        histogram.record_value(1000)
        worker = WorkerResult(histogram=histogram.encode(), ok=10, errors={}, window_s=1.0, window_ok=10, cpu_s=0.1, wall_s=1.0)
        return StepResult("closed", concurrency, None, 1, [worker]).to_dict()

    rounds_seen = []

    def measure_round(pa, targets, sweep, round_index, modes, interval_ms, stability, log):
        rounds_seen.append((round_index, sorted(targets), tuple(sweep), tuple(modes), interval_ms))
        return {name: {mode: {c: {**perf_analyzer.failed_row(c, mode, "x"), "errors": {}, "req_per_s": 100.0 * (round_index + 1)}
                              for c in sweep} for mode in modes} for name in targets}  # fmt: skip

    monkeypatch.setattr(bench, "running", running)
    monkeypatch.setattr(side_by_side, "WorkerPool", lambda processes: nullcontext())
    monkeypatch.setattr(side_by_side, "run_slice", run_slice)
    monkeypatch.setattr(bench.pa, "measure_round", measure_round)
    args = bench.parse_args(["--devices", "cpu", "--rounds", "3", "--slices", "1", "--concurrency", "1,4", "--workers-concurrency", "64", "--workdir", str(tmp_path),
                             "--pa-rounds", "2", "--pa-modes", "async", "--pa-interval-ms", "300", "--http-models", ""])  # fmt: skip
    args.perf_analyzer = object()
    model = bench.BenchModel("lenet5", tmp_path, tmp_path / "model.onnx", 1000, (1, 28, 28), "test")
    reports: dict = {}
    bench.measure_servers(model, "cpu", args, lambda message: None, reports)
    assert [r for r, *_ in rounds_seen] == [0, 1], "the first --pa-rounds rounds only"
    assert rounds_seen[0][1:] == (sorted(bench.SERVERS), (1, 4), ("async",), 300)
    assert set(reports) == set(bench.SERVERS)
    steps = reports["batching-off"]["async"]["steps"]
    assert reports["batching-off"]["async"]["client"] == "perf_analyzer (async)"
    assert [s["concurrency"] for s in steps] == [1, 4] and steps[0]["req_per_s"] == 150.0 and len(steps[0]["runs"]) == 2


def test_http_and_workers_targets_are_measured_beside_the_servers(bench, tmp_path, monkeypatch):
    """LeNet-5: the batching-off process also over HTTP, binary and JSON, with its own REST bodies
    at the HTTP steps; workers-1 and workers-2 (--workers N) at c=1 and 64 over several connections per
    client process; perf_analyzer measures each target over its protocol at its own steps."""
    from contextlib import contextmanager, nullcontext

    from edgecnn.loadtest import perf_analyzer
    from edgecnn.loadtest.http_requests import header_length
    from edgecnn.loadtest.stats import StepResult, WorkerResult, new_histogram

    commands, sliced, pa_calls = {}, [], []

    @contextmanager
    def running(cmd, ready, log_path):
        kind = log_path.name.split("lenet5-", 1)[1].rsplit("-cpu", 1)[0]
        commands[kind] = cmd
        yield bench.Listening(f"{kind}:1", f"http://{kind}:2" if "--http-port" in cmd and "0" == cmd[cmd.index("--http-port") + 1] else None,
                              os.getpid())  # fmt: skip

    def run_slice(plan, concurrency, pool):
        t = plan.target
        sliced.append((t.server, t.protocol, t.http_body, t.connections, concurrency, plan.payloads[0]))
        histogram = new_histogram()
        histogram.record_value(1000)
        worker = WorkerResult(histogram=histogram.encode(), ok=10, errors={}, window_s=1.0, window_ok=10, cpu_s=0.1, wall_s=1.0)
        return StepResult("closed", concurrency, None, 1, [worker]).to_dict()

    def run(pa, model, server, concurrency, interval_ms, mode, stability_percent=None, timeout_s=None, protocol="grpc", tensor_format="binary"):
        pa_calls.append((server, concurrency[0], protocol, tensor_format))
        return [{**perf_analyzer.failed_row(concurrency[0], mode, "x"), "errors": {}, "req_per_s": 100.0}]

    monkeypatch.setattr(bench, "running", running)
    monkeypatch.setattr(side_by_side, "WorkerPool", lambda processes: nullcontext())
    monkeypatch.setattr(side_by_side, "run_slice", run_slice)
    monkeypatch.setattr(bench.pa, "run", run)
    args = bench.parse_args(["--devices", "cpu", "--rounds", "1", "--slices", "1", "--concurrency", "1,4,64", "--workdir", str(tmp_path),
                             "--pa-modes", "sync", "--http-concurrency", "1,16,64"])  # fmt: skip
    args.perf_analyzer = object()
    model = bench.BenchModel("lenet5", tmp_path, tmp_path / "model.onnx", 1000, (1, 28, 28), "test")
    by_pa: dict = {}
    reports = bench.measure_servers(model, "cpu", args, lambda message: None, by_pa)

    assert list(commands) == [*bench.SERVERS, "workers-1", "workers-2"], "the workers servers start with the four"
    assert commands["workers-2"][-2:] == ["--workers", "2"] and commands["workers-1"][-2:] == ["--workers", "1"]
    assert "--workers" not in commands["batching-off"]
    expected = {**{k: [1, 4, 64] for k in bench.SERVERS}, "http-binary": [1, 64], "http-json": [1, 64], "workers-1": [1, 64], "workers-2": [1, 64]}
    assert {k: [s["concurrency"] for s in r["steps"]] for k, r in reports.items()} == expected
    assert {k: [s["concurrency"] for s in r["sync"]["steps"]] for k, r in by_pa.items()} == expected, "perf_analyzer: the same steps"
    http = {(server, protocol, body) for server, protocol, body, _, _, _ in sliced if protocol == "http"}
    assert http == {("http://batching-off:2", "http", "binary"), ("http://batching-off:2", "http", "json")}, "batching-off's own HTTP port"
    first_payload = {(server, body): payload for server, protocol, body, _, _, payload in sliced}
    assert header_length(first_payload["http://batching-off:2", "binary"]) is not None
    assert first_payload["http://batching-off:2", "json"].startswith(b'{"inputs"') and header_length(first_payload["http://batching-off:2", "json"]) is None
    assert {server: n for server, _, _, n, _, _ in sliced if n > 1} == {"workers-1:1": 4, "workers-2:1": 4}
    assert ("http://batching-off:2", 64, "http", "json") in pa_calls and ("workers-2:1", 64, "grpc", "binary") in pa_calls
    assert ("workers-2:1", 1, "grpc", "binary") in pa_calls  # one connection, at c=1


def test_no_workers_servers_without_the_option_or_off_the_cpu(bench, tmp_path):
    model = bench.BenchModel("lenet5", tmp_path, tmp_path / "model.onnx", 1000, (1, 28, 28), "test")
    args = bench.parse_args(["--devices", "cpu"])
    assert bench.server_kinds(model, "cpu", args) == [*bench.SERVERS, "workers-1", "workers-2"]
    assert bench.server_kinds(model, "cuda", args) == list(bench.SERVERS)
    eight = bench.parse_args(["--devices", "cpu", "--workers-count", "8"])
    assert bench.server_kinds(model, "cpu", eight) == [*bench.SERVERS, "workers-1", "workers-8"]
    assert bench.server_command("workers-8", model, 1, 0, "cpu")[0][-2:] == ["--workers", "8"]
    args.workers_missing = "edgecnn serve has no --workers option"
    assert bench.server_kinds(model, "cpu", args) == list(bench.SERVERS)
    assert bench.server_kinds(model, "cpu", bench.parse_args(["--devices", "cpu", "--workers-models", ""])) == list(bench.SERVERS)
    assert bench.parse_args(["--devices", "cpu", "--concurrency", "4,16"]).workers_sweep == ()
    assert bench.parse_args(["--devices", "cpu", "--concurrency", "1,4"]).workers_sweep == (1,)


def test_workers_are_measured_only_where_serve_takes_the_option(bench, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: SimpleNamespace(stdout="usage: edgecnn serve [--workers N|auto]"))
    assert bench.serve_lacks_workers() is None
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: SimpleNamespace(stdout="usage: edgecnn serve [--threads T]"))
    assert bench.serve_lacks_workers() == "edgecnn serve has no --workers option"
