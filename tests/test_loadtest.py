"""`edgecnn loadtest` against a real server: results, error counting, open-loop rate."""

from __future__ import annotations

import csv
import json
import shutil
import sys

import pytest

from edgecnn.cli import main
from edgecnn.loadtest.plot import PlotUnavailable, plot_latency
from edgecnn.loadtest.runner import Plan, split
from edgecnn.loadtest.stats import StepResult, WorkerResult, new_histogram, pool_steps
from edgecnn.loadtest.workload import Target
from tests.conftest_server import self_signed_cert
from tests.servers import MODEL, TOKEN, running_server

LATENCY_KEYS = {"p50", "p90", "p95", "p99", "p99.9", "max", "mean", "min"}
STEP_KEYS = {
    "mode", "concurrency", "rate", "requests", "ok", "errors", "duration_s", "req_per_s", "images_per_s",
    "latency_ms", "client_cpu", "client_saturated", "histogram",
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
        assert step["req_per_s"] == pytest.approx(step["ok"] / step["duration_s"], rel=0.01)
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


def _worker(latencies_us: list[int], errors: dict[str, int], cpu_s: float, elapsed_s: float = 2.0) -> WorkerResult:
    h = new_histogram()
    for v in latencies_us:
        h.record_value(v)
    return WorkerResult(h.encode(), len(latencies_us), errors, elapsed_s=elapsed_s, cpu_s=cpu_s, wall_s=2.0)


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


def test_plot_says_it_needs_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlotUnavailable, match="needs matplotlib"):
        plot_latency({"steps": [], "config": {}}, tmp_path / "x.png")
