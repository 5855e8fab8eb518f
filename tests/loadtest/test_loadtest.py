"""`edgecnn loadtest` against a real server: results, error counting, open-loop rate."""

from __future__ import annotations

import asyncio
import csv
import json
import math
import shutil
import sys
import time

import pytest

from edgecnn.cli import main
from edgecnn.loadtest import runner
from edgecnn.loadtest.grpc_requests import Recorder
from edgecnn.loadtest.openloop import open_loop
from edgecnn.loadtest.plot import PlotUnavailable, plot_latency
from edgecnn.loadtest.runner import Plan, shares, split, split_in_proportion
from edgecnn.loadtest.stats import SATURATION_CPU, StepResult, WorkerResult, latency_ms, new_histogram, pool_steps
from edgecnn.loadtest.worker import WorkerSpec, measure
from edgecnn.loadtest.workload import Target
from tests.certs import self_signed_cert
from tests.servers import MODEL, TOKEN, running_server

LATENCY_KEYS = {"p50", "p90", "p95", "p99", "p99.9", "max", "mean", "min"}
STEP_KEYS = {
    "mode", "concurrency", "rate", "batch_size", "requests", "ok", "errors", "window_ok", "duration_s", "req_per_s",
    "images_per_s", "latency_ms", "client_cpu", "client_saturated", "histogram",
}  # fmt: skip


def loadtest(tmp_path, capsys, *argv: str) -> tuple[int, dict, str]:
    out = tmp_path / "results.json"
    code = main(["loadtest", "--model", MODEL, "--quiet", "--out", str(out), *argv])
    return code, json.loads(out.read_text()) if out.exists() else {}, capsys.readouterr().out


def test_closed_loop_sweep_over_two_processes(served_address, tmp_path, capsys):
    csv_path, plot_path = tmp_path / "steps.csv", tmp_path / "latency.png"
    code, report, table = loadtest(
        tmp_path, capsys, "--server", served_address, "--concurrency", "1,4", "--duration", "1", "--warmup", "0.3",
        "--processes", "2", "--batch-size", "2", "--csv", str(csv_path), "--plot", str(plot_path),
    )  # fmt: skip
    assert code == 0
    config = report["config"]
    assert (config["mode"], config["concurrency"], config["processes"], config["input_shape"]) == ("closed", [1, 4], 2, [2, 1, 28, 28])
    assert [s["concurrency"] for s in report["steps"]] == [1, 4]
    for step in report["steps"]:
        assert STEP_KEYS <= step.keys() and set(step["latency_ms"]) == LATENCY_KEYS
        assert step["errors"] == {} and step["requests"] == step["ok"] > 10
        assert step["req_per_s"] == pytest.approx(step["window_ok"] / step["duration_s"], rel=0.01)
        assert step["duration_s"] == pytest.approx(1.0) and step["batch_size"] == 2
        assert step["images_per_s"] == pytest.approx(2 * step["req_per_s"], rel=0.01)
        latency = step["latency_ms"]
        assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
        # one process for one worker, both processes for four
        assert len(step["client_cpu"]) == min(step["concurrency"], 2)
    merged = new_histogram()
    merged.decode_and_add(report["steps"][1]["histogram"].encode())
    assert merged.get_total_count() == report["steps"][1]["ok"]
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["concurrency"] for r in rows] == ["1", "4"] and rows[0]["errors"] == "0"
    assert plot_path.read_bytes().startswith(b"\x89PNG")
    header = table.splitlines()[0].split()
    assert header[:5] == ["step", "requests", "errors", "req/s", "img/s"] and len(table.splitlines()) == 3


def test_classify_api(served_address, tmp_path, capsys):
    code, report, _ = loadtest(tmp_path, capsys, "--server", served_address, "--api", "classify", "--concurrency", "2", "--requests", "40", "--warmup", "0")
    assert code == 0
    (step,) = report["steps"]
    assert (step["ok"], step["errors"], report["config"]["input"]) == (40, {}, "PNG-encoded random images")


def test_open_loop_keeps_its_rate(served_address, tmp_path, capsys):
    code, report, _ = loadtest(tmp_path, capsys, "--server", served_address, "--rate", "200", "--duration", "3", "--warmup", "0.3")
    assert code == 0
    (step,) = report["steps"]
    assert (step["mode"], step["rate"], step["errors"]) == ("open", 200.0, {})
    assert step["window_s"] == pytest.approx(3.0) and step["ok"] == step["scheduled"]
    assert step["scheduled_per_s"] == pytest.approx(200, rel=0.10)  # the seeded Poisson schedule itself
    # Measured: requests really handed to gRPC inside the window, and answers per second.
    assert step["sent"] <= step["scheduled"]
    assert step["sent_per_s"] == pytest.approx(200, rel=0.10), step
    assert step["req_per_s"] == pytest.approx(200, rel=0.10), step


def test_rejected_requests_are_counted_by_status_code(served_repository, tmp_path, capsys):
    with running_server(served_repository.dir, auth_token=TOKEN) as addr:
        # without --input-shape the test cannot even read the model's metadata
        assert main(["loadtest", "--server", addr, "--model", MODEL, "--duration", "1"]) == 2
        assert "UNAUTHENTICATED" in capsys.readouterr().err
        code, report, table = loadtest(tmp_path, capsys, "--server", addr, "--input-shape", "1,28,28", "--concurrency", "2", "--duration", "0.5", "--warmup", "0")
        assert code == 1
        (step,) = report["steps"]
        assert step["ok"] == 0 and step["errors"] == {"UNAUTHENTICATED": step["requests"]} and step["requests"] > 0
        assert step["latency_ms"]["p50"] is None and "UNAUTHENTICATED:" in table
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN)
        code, report, _ = loadtest(tmp_path, capsys, "--server", addr, "--auth-token-file", str(token_file), "--concurrency", "1", "--requests", "20", "--warmup", "0")
        assert code == 0 and report["steps"][0]["ok"] == 20 and report["config"]["auth"] is True


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls(served_repository, tmp_path, capsys):
    from edgecnn.client import EdgeClient

    cert, key = self_signed_cert(tmp_path)
    with running_server(served_repository.dir, tls_cert=cert, tls_key=key) as addr:
        with EdgeClient(addr, MODEL, tls_ca=cert) as client:
            assert client.model_info().model == MODEL
        code, report, _ = loadtest(tmp_path, capsys, "--server", addr, "--tls-ca", str(cert), "--concurrency", "2", "--requests", "20", "--warmup", "0")
        assert code == 0 and report["steps"][0]["ok"] == 20 and report["config"]["tls"] is True
        code, report, _ = loadtest(tmp_path, capsys, "--server", addr, "--input-shape", "1,28,28", "--concurrency", "1", "--duration", "0.3", "--warmup", "0", "--timeout", "1")
        assert code == 1 and report["steps"][0]["ok"] == 0  # plaintext against a TLS port


def test_unknown_model_with_shape_counts_not_found(served_address, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["loadtest", "--server", served_address, "--model", "nope", "--input-shape", "1,28,28", "--requests", "10", "--concurrency", "1", "--warmup", "0", "--quiet", "--out", str(out)])
    assert code == 1 and json.loads(out.read_text())["steps"][0]["errors"] == {"NOT_FOUND": 10}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--concurrency", "0,4"], "positive integers"),
        (["--input-shape", "1,28"], "expected C,H,W"),
        (["--rate", "nan"], "'nan': expected a positive number of requests per second"),
        (["--rate", "inf"], "'inf': expected a positive number"),
        (["--rate", "fast"], "'fast': expected a positive number"),
        (["--duration", "nan"], "'nan': expected a positive number of seconds"),
        (["--duration", "0"], "'0': expected a positive number of seconds"),
        (["--warmup", "nan"], "'nan': expected a number of seconds >= 0"),
        (["--warmup", "-1"], "'-1': expected a number of seconds >= 0"),
        (["--timeout", "nan"], "'nan': expected a positive number of seconds"),
        (["--timeout", "inf"], "'inf': expected a positive number of seconds"),
    ],
)
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["loadtest", "--model", MODEL, *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_plan_validation():
    target = Target("127.0.0.1:1", MODEL)
    with pytest.raises(ValueError, match="exactly one of a duration or a request count"):
        Plan(target, [b""], 1, duration_s=1.0, requests=5)
    with pytest.raises(ValueError, match="processes 0"):
        Plan(target, [b""], 1, processes=0)
    with pytest.raises(ValueError, match="api 'grpc'"):
        Target("127.0.0.1:1", MODEL, api="grpc")
    assert split(5, 2) == [3, 2] and split(1, 4) == [1] and split(64, 2) == [32, 32]
    assert split_in_proportion(10, [2, 1]) == [7, 3] and split_in_proportion(5, [1, 1, 1]) == [2, 2, 1]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"rate": math.nan}, "rate nan"),
        ({"rate": math.inf}, "rate inf"),
        ({"duration_s": math.nan}, "duration nan"),
        ({"duration_s": math.inf}, "duration inf"),
        ({"warmup_s": math.nan}, "warmup nan"),
        ({"warmup_s": math.inf}, "warmup inf"),
    ],
)
def test_plan_refuses_nan_and_infinity(settings, message):
    with pytest.raises(ValueError, match=message):
        Plan(Target("127.0.0.1:1", MODEL), [b""], 1, **settings)


def test_open_loop_refuses_an_infinite_rate():
    recorder = Recorder(0.0, 1.0, lambda done, failed: None)
    with pytest.raises(ValueError, match="rate inf"):
        asyncio.run(open_loop(None, [b""], math.inf, 0.0, recorder, None, 1.0, (), 0))


def test_open_loop_latency_runs_from_the_scheduled_send_time():
    """No coordinated omission: a warm-up call blocks the event loop for 0.3 s just before the
    measurement starts; the measured arrivals scheduled during that stall go out late and their
    latencies include the wait, though the server (the fake call) answers them at once."""
    stall_s, warmup_s = 0.3, 0.05
    stalled_at: list[float] = []

    async def call(payload, timeout, metadata):
        if not stalled_at:
            stalled_at.append(time.perf_counter())
            time.sleep(stall_s)  # synchronous: nothing else runs on the loop meanwhile

    start = time.perf_counter()
    recorder = Recorder(start + warmup_s, start + 1.0, lambda done, failed: None)
    counts = asyncio.run(open_loop(call, [b""], 200.0, start, recorder, None, 1.0, (), 0))
    assert stalled_at[0] < recorder.measure_start  # the stalling call itself is warm-up, not measured
    assert recorder.ok == counts.scheduled > 100 and not recorder.errors
    latency = latency_ms(recorder.histogram)
    assert latency["max"] >= 1000 * (stall_s - warmup_s) - 50, latency  # the earliest measured arrival waited ~0.25 s
    assert latency["p50"] < 50, latency  # the other requests were answered at once


def _plan(**settings) -> Plan:
    return Plan(Target("127.0.0.1:1", MODEL), [b""], 1, **settings)


def test_open_loop_rate_is_shared_by_the_processes_that_send():
    specs = shares(_plan(rate=100.0, requests=2, duration_s=None, processes=4), None, 0.0)
    assert [spec.requests for spec in specs] == [1, 1]
    assert sum(spec.rate for spec in specs) == pytest.approx(100.0)


def test_closed_loop_requests_follow_each_process_workers():
    specs = shares(_plan(concurrency=(3,), requests=9, duration_s=None, processes=2), 3, 0.0)
    assert [(spec.concurrency, spec.requests) for spec in specs] == [(2, 6), (1, 3)]


def test_fewer_requests_than_workers_is_refused(capsys):
    with pytest.raises(ValueError, match="--requests 3 is below the concurrency 4"):
        _plan(concurrency=(1, 4), requests=3, duration_s=None)
    assert main([*OFFLINE, "--concurrency", "4", "--requests", "2"]) == 2
    assert "--requests 2 is below the concurrency 4" in capsys.readouterr().err


def test_closed_loop_req_per_s_counts_the_completions_inside_the_window():
    # Calls long against the event loop's timer jitter: the completions, half a call from each
    # end of the window, stay inside it even on a busy machine.
    latency_s, concurrency, duration_s = 0.2, 4, 1.2

    async def call(payload, timeout, metadata):
        await asyncio.sleep(latency_s)

    # The warm-up ends halfway through a call: the first measured requests start half a call
    # late and the last ones end half a call after the window; neither half is idle time.
    spec = WorkerSpec(
        target=Target("127.0.0.1:1", MODEL), payloads=[b""], mode="closed", concurrency=concurrency, rate=0.0,
        warmup_s=latency_s / 2, duration_s=duration_s, requests=None, start_at=0.0, seed=0,
    )  # fmt: skip
    result = asyncio.run(measure(spec, call, lambda done, failed: None))
    step = StepResult("closed", concurrency, None, 2, [result]).to_dict()
    assert step["duration_s"] == pytest.approx(duration_s)
    assert step["req_per_s"] == pytest.approx(concurrency / latency_s, rel=0.03), step
    assert step["images_per_s"] == pytest.approx(2 * step["req_per_s"])
    assert step["ok"] == step["requests"] > 0


# Every step answered by a fake runner._run_step: no server, no network.
OFFLINE = ["loadtest", "--model", MODEL, "--server", "127.0.0.1:1", "--input-shape", "1,28,28", "--quiet"]


def answer_steps(monkeypatch, *answers) -> None:
    """runner._run_step answering each step with the next answer: an exception it raises, or a worker result."""
    pending = iter(answers)

    def run_step(specs, slots, pool):
        answer = next(pending)
        if isinstance(answer, BaseException):
            raise answer
        return [answer]

    monkeypatch.setattr(runner, "_run_step", run_step)


@pytest.mark.parametrize(
    "option, name, message",
    [
        ("--out", "missing/r.json", "--out {path}: no folder"),
        ("--csv", "missing/r.csv", "--csv {path}: no folder"),
        ("--plot", "missing/p.png", "--plot {path}: no folder"),
        ("--plot", "latency.xyz", "--plot {path}: the plot's file name must end in one of"),
        ("--plot", "latency", "--plot {path}: the plot's file name must end in one of"),
        ("--out", ".", "--out {path}: a folder"),
    ],
)
def test_outputs_are_checked_before_the_run(monkeypatch, tmp_path, capsys, option, name, message):
    answer_steps(monkeypatch)  # a step run would fail: nothing may run
    path = tmp_path / name
    assert main([*OFFLINE, option, str(path)]) == 2
    err = capsys.readouterr().err
    assert message.format(path=path) in err and len(err.splitlines()) == 1


def test_an_output_that_cannot_be_written_does_not_stop_the_others(monkeypatch, tmp_path, capsys):
    from edgecnn.loadtest import cmd_loadtest

    def refuse(report, path):
        raise PermissionError(13, "Permission denied")

    answer_steps(monkeypatch, _worker([1000] * 10, {}, 0.1))
    monkeypatch.setattr(cmd_loadtest, "write_json", refuse)
    out, csv_path, plot_path = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "p.svg"
    code = main([*OFFLINE, "--concurrency", "1", "--out", str(out), "--csv", str(csv_path), "--plot", str(plot_path)])
    assert code == 1
    assert f"cannot write {out}: Permission denied" in capsys.readouterr().err
    assert len(list(csv.DictReader(csv_path.open()))) == 1 and plot_path.read_text().startswith("<?xml")


@pytest.mark.parametrize(
    "stop, code, message",
    [
        (RuntimeError("load test process 1 failed:\nTraceback (most recent call last):\n  ...\nValueError: boom"), 1,
         "load test process 1 failed: ValueError: boom"),
        (KeyboardInterrupt(), 130, "interrupted (Ctrl-C)"),
        (ValueError("a bug"), 1, "Traceback (most recent call last): ValueError: a bug"),  # in-process: not only RuntimeError
        (RuntimeError(), 1, "Traceback (most recent call last): RuntimeError"),
    ],
)  # fmt: skip
def test_a_stopped_run_still_reports_its_finished_steps(monkeypatch, tmp_path, capsys, stop, code, message):
    answer_steps(monkeypatch, _worker([1000] * 10, {}, 0.1), stop)
    out, csv_path = tmp_path / "r.json", tmp_path / "r.csv"
    assert main([*OFFLINE, "--concurrency", "1,2", "--out", str(out), "--csv", str(csv_path)]) == code
    captured = capsys.readouterr()
    assert f"stopped early, reporting the 1 finished steps: {message}" in captured.err
    assert len(captured.out.splitlines()) == 2  # the table: its header and the finished step
    report = json.loads(out.read_text())
    reason = report["interrupted_reason"]
    assert report["interrupted"] is True
    assert reason == str(stop) if isinstance(stop, RuntimeError) and str(stop) else message.split(": ")[-1] in reason
    assert [s["concurrency"] for s in report["steps"]] == [1]
    assert [row["concurrency"] for row in csv.DictReader(csv_path.open())] == ["1"]


def test_a_finished_run_is_not_marked_interrupted(monkeypatch, tmp_path):
    answer_steps(monkeypatch, _worker([1000] * 10, {}, 0.1))
    out = tmp_path / "r.json"
    assert main([*OFFLINE, "--concurrency", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["interrupted"] is False and "interrupted_reason" not in report


def _worker(
    latencies_us: list[int], errors: dict[str, int], cpu_s: float, window_s: float = 2.0, window_ok: int | None = None
) -> WorkerResult:
    h = new_histogram()
    for v in latencies_us:
        h.record_value(v)
    ok = len(latencies_us)
    return WorkerResult(h.encode(), ok, errors, window_s=window_s, window_ok=ok if window_ok is None else window_ok, cpu_s=cpu_s, wall_s=2.0)


def test_step_merges_worker_histograms():
    step = StepResult("closed", 4, None, 1, [_worker([1000] * 90, {"UNAVAILABLE": 1}, 1.95), _worker([9000] * 10, {"UNAVAILABLE": 2, "INTERNAL": 1}, 0.5)])
    d = step.to_dict()
    assert (d["ok"], d["requests"], d["errors"]) == (100, 104, {"INTERNAL": 1, "UNAVAILABLE": 3})
    assert d["req_per_s"] == 50.0
    assert d["latency_ms"]["p50"] == pytest.approx(1.0, rel=0.01) and d["latency_ms"]["p95"] == pytest.approx(9.0, rel=0.01)
    assert d["client_cpu"] == [0.975, 0.25] and d["client_saturated"] is True


def test_pool_steps_adds_runs_and_merges_their_histograms():
    fast = StepResult("closed", 4, None, 2, [_worker([1000] * 100, {}, 0.4), _worker([1000] * 100, {}, 0.2)]).to_dict()
    slow = StepResult("closed", 4, None, 2, [_worker([3000] * 50, {"UNAVAILABLE": 1}, 1.9, 3.0), _worker([3000] * 50, {}, 0.1)]).to_dict()
    pooled = pool_steps([fast, slow])
    assert (pooled["ok"], pooled["requests"], pooled["errors"]) == (300, 301, {"UNAVAILABLE": 1})
    assert pooled["req_per_s"] == pytest.approx(300 / 5.0) and pooled["images_per_s"] == pytest.approx(2 * 300 / 5.0)
    assert pooled["latency_ms"]["p50"] == pytest.approx(1.0, rel=0.01) and pooled["latency_ms"]["p90"] == pytest.approx(3.0, rel=0.01)
    assert pooled["client_cpu"] == [0.95, 0.1] and pooled["client_saturated"] is True
    assert [run["req_per_s"] for run in pooled["runs"]] == [100.0, pytest.approx(100 / 3, abs=0.01)]
    with pytest.raises(ValueError, match="one concurrency"):
        pool_steps([fast, {**slow, "concurrency": 8}])
    with pytest.raises(ValueError, match="no steps"):
        pool_steps([])


def test_pool_steps_counts_the_window_and_takes_the_batch_size_from_the_steps():
    dead = StepResult("closed", 4, None, 8, [_worker([], {"UNAVAILABLE": 3}, 0.1)]).to_dict()
    alive = StepResult("closed", 4, None, 8, [_worker([1000] * 100, {}, 0.1, window_ok=90)]).to_dict()
    pooled = pool_steps([dead, alive])
    assert (pooled["ok"], pooled["window_ok"], pooled["batch_size"]) == (100, 90, 8)
    assert pooled["req_per_s"] == pytest.approx(90 / 4.0) and pooled["images_per_s"] == pytest.approx(8 * 90 / 4.0)


def test_plot_says_it_needs_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlotUnavailable, match="needs matplotlib"):
        plot_latency({"steps": [], "config": {}}, tmp_path / "x.png")


@pytest.mark.parametrize("cpu_share, warned", [(SATURATION_CPU, True), (SATURATION_CPU - 0.05, False), (0.1, False)])
def test_a_saturated_client_is_warned_about(monkeypatch, capsys, cpu_share, warned):
    worker = _worker([1000] * 10, {}, cpu_s=cpu_share * 2.0)  # wall_s 2.0
    assert worker.cpu_share == pytest.approx(cpu_share)
    answer_steps(monkeypatch, worker)
    assert main([*OFFLINE, "--concurrency", "3"]) == 0
    captured = capsys.readouterr()
    warning = f"warning: c=3: a client process used {cpu_share:.0%} of a CPU core (>= {SATURATION_CPU:.0%})"
    assert (warning in captured.err) is warned, captured.err
    assert ("the client may be the bottleneck: add --processes" in captured.err) is warned
    assert captured.out.splitlines()[1].endswith(f"{cpu_share:.0%}" + (" SATURATED" if warned else ""))


def test_plans_share_a_pool_that_stays_up(served_address):
    """The bench alternates short plans between servers in one pool of client processes."""
    from edgecnn.loadtest.runner import run_plan
    from edgecnn.loadtest.worker import WorkerPool
    from edgecnn.loadtest.workload import make_payloads

    target = Target(served_address, MODEL)
    plan = Plan(target, make_payloads(target, "input", (1, 28, 28), 1), 1, (2,), duration_s=0.3, warmup_s=0.1, processes=2)
    with WorkerPool(2) as pool:
        for _ in range(2):  # the second plan finds the pool still up
            run = run_plan(plan, progress=None, pool=pool)
            assert run.stopped_by is None
            step = run.steps[0].to_dict()
            assert step["ok"] > 0 and step["errors"] == {} and len(step["client_cpu"]) == 2
        with pytest.raises(ValueError, match="3 client processes given a pool of 2"):
            run_plan(Plan(target, plan.payloads, 1, (3,), duration_s=0.3, processes=3), progress=None, pool=pool)


def _established_to(port: int) -> int:
    """TCP connections to `port` in this network namespace now (from /proc/net/tcp and tcp6)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:  # ESTABLISHED, remote port
                    count += 1
    return count


@pytest.mark.parametrize("connections", [1, 3])
def test_a_client_process_spreads_its_requests_over_its_own_connections(served_address, monkeypatch, connections):
    """Target.connections: that many gRPC channels, each over a TCP connection of its own (gRPC
    would share one between equal channels), the requests in turn over them (the bench's
    --workers rows: SO_REUSEPORT balances connections, not requests)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("counts connections in /proc/net/tcp")
    from edgecnn.loadtest import worker
    from edgecnn.loadtest.workload import make_payloads

    port = int(served_address.rsplit(":", 1)[1])
    before = _established_to(port)
    seen = {}
    real_measure = worker.measure

    async def counting_measure(spec, call, progress):
        seen["connections"] = _established_to(port) - before  # every channel ready, nothing sent yet
        return await real_measure(spec, call, progress)

    monkeypatch.setattr(worker, "measure", counting_measure)
    target = Target(served_address, MODEL, connections=connections)
    spec = WorkerSpec(target=target, payloads=make_payloads(target, "input", (1, 28, 28), 1), mode="closed", concurrency=4,
                      rate=0.0, warmup_s=0.0, duration_s=0.3, requests=None, start_at=0.0, seed=0)  # fmt: skip
    result = worker.run_worker(spec, worker.Slots(1), 0)
    assert seen["connections"] == connections
    assert result.ok > 0 and result.errors == {}


def test_requests_go_in_turn_over_the_connections():
    from edgecnn.loadtest.worker import in_turn

    sent = []
    calls = [lambda payload, i=i, **kwargs: sent.append((i, payload, kwargs["timeout"])) for i in range(3)]
    call = in_turn(calls)
    for k in range(7):
        call(k, timeout=1.0)
    assert sent == [(k % 3, k, 1.0) for k in range(7)]
    with pytest.raises(ValueError, match="connections 0: expected >= 1"):
        Target("127.0.0.1:1", MODEL, connections=0)
