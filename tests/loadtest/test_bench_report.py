"""edgecnn/loadtest/bench_report.py: the target rows it derives from measured numbers, and the
report, plot and results it writes (and rewrites from a saved results file).

Synthetic results with known ratios; nothing is measured here (timing goals are reported by
`make bench`, never asserted)."""

from __future__ import annotations

import json
import sys

import pytest

from edgecnn.loadtest import bench_report
from tests.loadtest.bench_results import results, servers, sweep


def rows_of(data: dict) -> dict[str, tuple[str, bool]]:
    return {goal: (measured, met) for goal, measured, met in bench_report.targets(data)}


def test_goals_are_judged_at_c64_and_c1_on_each_device_with_its_own_numbers():
    # CPU: every goal met, exactly at its boundary; GPU: every goal missed.
    rows = rows_of(results({"cpu": servers(0.90, 1.10, 1.0), "cuda": servers(0.80, 1.20, 0.90)}))
    assert rows["lenet5 [edgecnn loadtest]: batching off reaches >= 90% of the faster floor's req/s at c=64"] == ("1800 vs 2000 req/s (floor) = 90.0%", True)
    assert rows["lenet5 [edgecnn loadtest]: batching off p50 at c=1 <= 1.1x the faster floor's"] == ("1.10 vs 1.00 ms (floor) = 1.100x", True)
    assert rows["mobilenet-v2 [edgecnn loadtest]: batching on is faster where compute dominates (c=64)"] == ("on/off = 1.000x", False)
    assert rows["lenet5@cuda [edgecnn loadtest]: batching off reaches >= 90% of the faster floor's req/s at c=64"] == ("1600 vs 2000 req/s (floor) = 80.0%", False)
    assert rows["lenet5@cuda [edgecnn loadtest]: batching off p50 at c=1 <= 1.1x the faster floor's"] == ("1.20 vs 1.00 ms (floor) = 1.200x", False)
    assert rows["lenet5@cuda [edgecnn loadtest]: batching on never > 5% below batching off in req/s"] == (
        "on/off c=1: 0.900, c=4: 0.900, c=16: 0.900, c=64: 0.900 (worst c=1)", False)  # fmt: skip
    # "where compute dominates": MobileNetV2 everywhere, every model on the GPU, LeNet-5 not on the CPU.
    assert "lenet5@cuda [edgecnn loadtest]: batching on is faster where compute dominates (c=64)" in rows
    assert "mobilenet-v2@cuda [edgecnn loadtest]: batching on is faster where compute dominates (c=64)" in rows
    assert "lenet5 [edgecnn loadtest]: batching on is faster where compute dominates (c=64)" not in rows
    assert rows["zero errors"] == ("0 failed requests", True)


def test_just_below_a_boundary_is_not_met():
    rows = rows_of(results({"cpu": servers(0.8996, 1.1004, 0.9496)}, models=("mobilenet-v2",)))
    assert rows["mobilenet-v2 [edgecnn loadtest]: batching off reaches >= 90% of the faster floor's req/s at c=64"] == ("1799 vs 2000 req/s (floor) = 90.0%", False)
    assert rows["mobilenet-v2 [edgecnn loadtest]: batching off p50 at c=1 <= 1.1x the faster floor's"][1] is False
    measured, met = rows["mobilenet-v2 [edgecnn loadtest]: batching on never > 5% below batching off in req/s"]
    assert "c=64: 0.950" in measured and met is False


def test_a_sweep_without_c64_leaves_that_goal_unmet():
    data = results({"cpu": servers(1.0, 1.0, 1.2)}, models=("mobilenet-v2",))
    for report in data["servers"]["mobilenet-v2"].values():
        report["steps"] = [s for s in report["steps"] if s["concurrency"] != 64]
    rows = rows_of(data)
    assert rows["mobilenet-v2 [edgecnn loadtest]: batching off reaches >= 90% of the faster floor's req/s at c=64"] == ("not measured (the sweep lacks c=64)", False)
    assert rows["mobilenet-v2 [edgecnn loadtest]: batching off p50 at c=1 <= 1.1x the faster floor's"][1] is True


def test_a_step_where_every_request_failed_is_reported_not_crashed_on():
    data = results({"cpu": servers(1.0, 1.0, 1.0)}, models=("lenet5",))
    dead = data["servers"]["lenet5"]["batching-off"]["steps"]
    dead[:] = [{**s, "req_per_s": 0.0, "errors": {"UNAVAILABLE": 7}, "latency_ms": {k: None for k in s["latency_ms"]}} for s in dead]
    rows = rows_of(data)
    assert rows["lenet5 [edgecnn loadtest]: batching off reaches >= 90% of the faster floor's req/s at c=64"] == ("0 vs 2000 req/s (floor) = n/a", False)
    assert rows["lenet5 [edgecnn loadtest]: batching off p50 at c=1 <= 1.1x the faster floor's"] == ("- vs 1.00 ms (floor) = n/a", False)
    assert rows["lenet5 [edgecnn loadtest]: batching on never > 5% below batching off in req/s"][1] is False
    assert rows["zero errors"] == ("28 failed requests", False)


def test_render_rewrites_the_report_and_keeps_the_notes(tmp_path):
    saved = tmp_path / "gpu-run.json"
    saved.write_text(json.dumps(results({"cpu": servers(0.95, 1.0, 1.1), "cuda": servers(0.95, 1.0, 2.0)}, models=("mobilenet-v2",))))
    logged: list[str] = []
    bench_report.render(saved, tmp_path / "gpu-run.md", ["measured before the fix"], logged.append)
    text = (tmp_path / "gpu-run.md").read_text()
    assert "**Note:** measured before the fix" in text
    assert "| batching-on@cuda | 64 | 3800 | 3420 / 4180 |" in text
    assert "| mobilenet-v2@cuda [edgecnn loadtest]: batching on is faster where compute dominates (c=64) | on/off = 2.000x | met |" in text
    assert "devices here cpu, cuda" in text and "in 2 slice(s) of 1 s, each after a 0.5 s warm-up" in text
    assert "Client CPU saturation (a client process at >= 90% of a core): none." in text
    assert "![throughput and latency per server](gpu-run.png)" in text and (tmp_path / "gpu-run.png").stat().st_size > 0
    assert json.loads(saved.read_text())["notes"] == ["measured before the fix"], "the notes are kept for the next render"
    assert any(line.startswith("met      mobilenet-v2@cuda [edgecnn loadtest]: batching on is faster") for line in logged)
    bench_report.render(saved, tmp_path / "gpu-run.md", [], logged.append)
    assert "**Note:** measured before the fix" in (tmp_path / "gpu-run.md").read_text()


@pytest.mark.parametrize(
    "drop, missing",
    [
        (("notes",), "no notes"),  # written before --note
        (("settings", "devices"), "no settings.devices"),  # before --devices
        (("settings", "slices"), "no settings.slices"),  # before the alternating slices
    ],
)
def test_results_of_an_older_version_are_refused(tmp_path, drop, missing):
    data = results({"cpu": servers(1.0, 1.0, 1.0)}, models=("lenet5",))
    holder = data if len(drop) == 1 else data[drop[0]]
    del holder[drop[-1]]
    saved = tmp_path / "old.json"
    saved.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"{missing}: not the results of this version of scripts/bench.py"):
        bench_report.render(saved, tmp_path / "old.md", [], print)
    assert not (tmp_path / "old.md").exists()


def test_a_saturated_client_is_listed_and_a_missing_matplotlib_leaves_the_plot_out(tmp_path, monkeypatch, capsys):
    data = results({"cpu": servers(1.0, 1.0, 1.0)}, models=("lenet5",))
    data["servers"]["lenet5"]["floor"]["steps"][2]["client_saturated"] = True  # c=64
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    bench_report.write_report(data, tmp_path / "b.md", lambda message: None)
    text = (tmp_path / "b.md").read_text()
    assert "Client CPU saturation (a client process at >= 90% of a core): lenet5 floor c=64." in text
    assert "| floor | 64 | 2000 | 1800 / 2200 | 10.00 | 10.00 | 10.00 | 10.00 | 0 | n/a | 30%/30% saturated |" in text
    assert "![" not in text and not (tmp_path / "b.png").exists()
    assert "bench: no plot written: needs matplotlib" in capsys.readouterr().err
    assert json.loads((tmp_path / "b.json").read_text())["targets"][-1] == ["zero errors", "0 failed requests", True]


def pa_report(mode: str, req_per_s: dict[int, float], p50_ms: float, server_us: dict | None = None, errors: dict | None = None) -> dict:
    steps = [{"concurrency": c, "req_per_s": r, "errors": errors or {}, "latency_ms": {"p50": p50_ms, "p90": p50_ms, "p95": p50_ms, "p99": p50_ms},
              "server_us": server_us, "runs": [{"req_per_s": r, "p50_ms": p50_ms}]} for c, r in req_per_s.items()]  # fmt: skip
    return {"tool": "perf_analyzer", "client": f"perf_analyzer ({mode})", "steps": steps}


def with_perf_analyzer(data: dict, model: str, errors: dict | None = None) -> dict:
    """perf_analyzer rows: floor 2000 req/s at c=64 (p50 0.50 ms), floor-inline 2500 (p50 0.40 ms),
    batching off 2300 (p50 0.41 ms) in sync mode; async: batching off fails one run."""
    sweep = {1: 1000.0, 64: 2000.0}
    breakdown = {"request": 120, "overhead": 15, "queue": 0, "compute_input": 25, "compute_infer": 70, "compute_output": 10}
    data["settings"]["perf_analyzer"] = {"rounds": 1, "modes": ["sync", "async"], "interval_ms": 500, "stability_percent": 100.0, "version": "2.41"}
    data["perf_analyzer"] = {model: {
        "floor": {m: pa_report(m, sweep, 0.5) for m in ("sync", "async")},
        "floor-inline": {m: pa_report(m, {c: r * 1.25 for c, r in sweep.items()}, 0.4) for m in ("sync", "async")},
        "batching-off": {"sync": pa_report("sync", {c: r * 1.15 for c, r in sweep.items()}, 0.41, breakdown),
                         "async": pa_report("async", sweep, 0.5, breakdown, errors)},
    }}  # fmt: skip
    data["perf_analyzer_missing"] = None
    return data


def test_the_faster_floor_sets_each_goal():
    data = results({"cpu": servers(0.95, 1.05, 1.0)}, models=("lenet5",))
    inline = data["servers"]["lenet5"]["floor-inline"]["steps"]
    for step in inline:  # faster at c=64, slower at c=1: each goal takes the better one
        step["req_per_s"] *= 1.1 if step["concurrency"] == 64 else 0.5
        step["latency_ms"]["p50"] *= 0.9 if step["concurrency"] == 1 else 1.0
    rows = rows_of(data)
    assert rows["lenet5 [edgecnn loadtest]: batching off reaches >= 90% of the faster floor's req/s at c=64"] == ("1900 vs 2200 req/s (floor-inline) = 86.4%", False)
    assert rows["lenet5 [edgecnn loadtest]: batching off p50 at c=1 <= 1.1x the faster floor's"] == ("1.05 vs 0.90 ms (floor-inline) = 1.167x", False)
    del data["servers"]["lenet5"]["floor-inline"]  # results from before floor-inline: the one floor
    assert rows_of(data)["lenet5 [edgecnn loadtest]: batching off p50 at c=1 <= 1.1x the faster floor's"] == ("1.05 vs 1.00 ms (floor) = 1.050x", True)


def test_perf_analyzer_goals_sections_and_errors(tmp_path):
    data = with_perf_analyzer(results({"cpu": servers(1.0, 1.0, 1.0)}, models=("lenet5",)), "lenet5",
                              errors={"perf_analyzer against x (async) failed (exit 99): error: ...": 1})  # fmt: skip
    rows = rows_of(data)
    assert rows["lenet5 [perf_analyzer (sync)]: batching off reaches >= 90% of the faster floor's req/s at c=64"] == ("2300 vs 2500 req/s (floor-inline) = 92.0%", True)
    assert rows["lenet5 [perf_analyzer (sync)]: batching off p50 at c=1 <= 1.05x the faster floor's"] == ("0.41 vs 0.40 ms (floor-inline) = 1.025x", True)
    assert rows["lenet5 [perf_analyzer (async)]: batching off reaches >= 90% of the faster floor's req/s at c=64"][1] is False
    assert rows["zero errors"] == ("0 failed requests (edgecnn loadtest), 2 failed perf_analyzer runs", False)
    bench_report.write_report(data, tmp_path / "b.md", lambda message: None)
    text = (tmp_path / "b.md").read_text()
    assert "## (b)-(d) Servers under perf_analyzer" in text and "Client: the `edgecnn loadtest` library" in text
    assert "| floor-inline | perf_analyzer (sync) | 64 | 2500 | 2500 | 0.40 | 0.40 | 0.40 | 0.40 | 0 |" in text
    assert "Errors: perf_analyzer against x (async) failed (exit 99)" in text
    assert "## edgecnn's server-side breakdown (perf_analyzer, from ModelStatistics)" in text
    assert "| lenet5 | batching-off | perf_analyzer (sync) | 1 | 1150 | 0.41 | 120 | 15 | 0 | 25 | 70 | 10 |" in text
    assert "Triton's **perf_analyzer** (2.41" in text


def test_a_run_without_perf_analyzer_says_why(tmp_path):
    data = results({"cpu": servers(1.0, 1.0, 1.0)}, models=("lenet5",))
    data["settings"]["perf_analyzer"] = {"rounds": 1, "modes": ["sync"], "interval_ms": 500, "stability_percent": 100.0}
    data["perf_analyzer"], data["perf_analyzer_missing"] = {"lenet5": {}}, "perf_analyzer does not start: libb64.so.0d"
    bench_report.write_report(data, tmp_path / "b.md", lambda message: None)
    text = (tmp_path / "b.md").read_text()
    assert "- perf_analyzer: not measured in this run (perf_analyzer does not start: libb64.so.0d)." in text
    assert "Servers under perf_analyzer" not in text and rows_of(data)["zero errors"] == ("0 failed requests", True)


def with_http_and_workers(data: dict) -> dict:
    """LeNet-5's batching-off process over HTTP (binary at 80% of its gRPC req/s, JSON at 50%) at
    c=1, 16, 64, and workers-1 / workers-2 at c=64: 1800 / 2400 req/s (1.333x, and 1.2x the floor's
    2000); MobileNetV2 was asked for over HTTP but has no HTTP rows."""
    lenet5 = data["servers"]["lenet5"]
    off = {s["concurrency"]: s["req_per_s"] for s in lenet5["batching-off"]["steps"]}
    lenet5["http-binary"] = sweep({c: off[c] * 0.8 for c in (1, 16, 64)}, 1.5)
    lenet5["http-json"] = sweep({c: off[c] * 0.5 for c in (1, 16, 64)}, 2.5)
    lenet5["workers-1"] = sweep({64: 1800.0}, 1.0)
    lenet5["workers-2"] = sweep({64: 2400.0}, 1.0)
    data["settings"]["http"] = {"models": ["lenet5", "mobilenet-v2"], "concurrency": [1, 16, 64]}
    data["settings"]["workers"] = {"models": ["lenet5"], "concurrency": [64], "connections_per_process": 4, "connections": 8, "missing": None}
    return data


def test_http_and_workers_goals_at_their_boundaries(tmp_path):
    data = with_http_and_workers(results({"cpu": servers(1.0, 1.0, 1.0)}))
    rows = rows_of(data)
    assert rows["lenet5 [edgecnn loadtest]: HTTP binary reaches >= 80% of gRPC's req/s at c=64"] == ("1600 vs 2000 req/s (gRPC, batching-off) = 80.0%", True)
    assert rows["mobilenet-v2 [edgecnn loadtest]: HTTP binary reaches >= 80% of gRPC's req/s at c=64"] == ("not measured (no HTTP rows)", False)
    assert rows["lenet5 [edgecnn loadtest]: --workers 2 >= 1.3x --workers 1's req/s at c=64 (8 client connections)"] == ("2400 vs 1800 req/s (workers-1) = 1.333x", True)
    assert rows["lenet5 [edgecnn loadtest]: --workers 2 >= 1.2x the faster floor's req/s at c=64 (8 client connections)"] == ("2400 vs 2000 req/s (floor) = 1.200x", True)
    assert not any("mobilenet-v2" in goal and "workers" in goal for goal in rows), "workers rows for LeNet-5 only"
    data["servers"]["lenet5"]["http-binary"]["steps"][-1]["req_per_s"] = 1599.0  # c=64
    data["servers"]["lenet5"]["workers-2"]["steps"][0]["req_per_s"] = 2339.0
    rows = rows_of(data)
    assert rows["lenet5 [edgecnn loadtest]: HTTP binary reaches >= 80% of gRPC's req/s at c=64"][1] is False
    assert rows["lenet5 [edgecnn loadtest]: --workers 2 >= 1.3x --workers 1's req/s at c=64 (8 client connections)"] == ("2339 vs 1800 req/s (workers-1) = 1.299x", False)

    bench_report.write_report(data, tmp_path / "b.md", lambda message: None)
    text = (tmp_path / "b.md").read_text()
    assert "## edgecnn over gRPC and HTTP/REST (issue 14)" in text
    assert "| lenet5 | edgecnn loadtest | 64 | gRPC | 2000 | 100.0% | 10.00 | 10.00 | 0 |" in text
    assert "| lenet5 | edgecnn loadtest | 1 | HTTP JSON | 500 | 50.0% | 2.50 | 2.50 | 0 |" in text
    assert "## edgecnn serve --workers (issue 15)" in text and "over 8 client connections (4 per client process)" in text
    assert "| lenet5 | edgecnn loadtest | workers-2 | 64 | 2339 | 1.299x | 1.169x | 10.00 | 10.00 | 0 |" in text
    assert "| lenet5 | edgecnn loadtest | floor | 64 | 2000 | 1.111x | 1.000x |" in text
    assert "**http-binary**" in text and "**workers-1** / **workers-2**" in text
    assert "| mobilenet-v2 | edgecnn loadtest | 64 | gRPC |" not in text, "no HTTP rows: no comparison"


def test_http_and_workers_goals_per_perf_analyzer_mode():
    data = with_perf_analyzer(with_http_and_workers(results({"cpu": servers(1.0, 1.0, 1.0)}, models=("lenet5",))), "lenet5")
    pa = data["perf_analyzer"]["lenet5"]
    pa["http-binary"] = {"sync": pa_report("sync", {1: 800.0, 64: 1610.0}, 0.6)}  # 70% of batching off's 2300
    pa["workers-1"] = {m: pa_report(m, {64: 2000.0}, 0.5) for m in ("sync", "async")}
    pa["workers-2"] = {m: pa_report(m, {64: 3000.0}, 0.5) for m in ("sync", "async")}
    rows = rows_of(data)
    assert rows["lenet5 [perf_analyzer (sync)]: HTTP binary reaches >= 80% of gRPC's req/s at c=64"] == ("1610 vs 2300 req/s (gRPC, batching-off) = 70.0%", False)
    assert "lenet5 [perf_analyzer (async)]: HTTP binary reaches >= 80% of gRPC's req/s at c=64" not in rows, "async measured no HTTP"
    assert rows["lenet5 [perf_analyzer (sync)]: --workers 2 >= 1.3x --workers 1's req/s at c=64"] == ("3000 vs 2000 req/s (workers-1) = 1.500x", True)
    assert rows["lenet5 [perf_analyzer (sync)]: --workers 2 >= 1.2x the faster floor's req/s at c=64"] == ("3000 vs 2500 req/s (floor-inline) = 1.200x", True)
    assert not any("perf_analyzer (async)]: --workers" in goal for goal in rows), "--async opens too few connections to judge"


def test_a_run_without_workers_says_why():
    data = with_http_and_workers(results({"cpu": servers(1.0, 1.0, 1.0)}, models=("lenet5",)))
    for kind in ("workers-1", "workers-2"):
        del data["servers"]["lenet5"][kind]
    data["settings"]["workers"]["missing"] = "edgecnn serve has no --workers option"
    rows = rows_of(data)
    assert rows["lenet5 [edgecnn loadtest]: --workers 2 >= 1.3x --workers 1's req/s at c=64"] == ("not measured (edgecnn serve has no --workers option)", False)
    text = "\n".join(bench_report._workers_method(data["settings"]))
    assert "not measured in this run (edgecnn serve has no --workers option)" in text and not bench_report._workers_section(data)
    del data["settings"]["workers"], data["settings"]["http"]  # results from before these rows: no such goals
    assert not any("workers" in goal or "HTTP" in goal for goal in rows_of(data))


def test_eight_workers_are_judged_by_their_own_goal_and_a_count_without_one_by_none():
    """--workers-count 8 (the issue's 16-CPU machine): --workers 8 >= 4x --workers 1 at c=64, with
    no floor goal; a results file without a count is a run of --workers 2."""
    data = with_http_and_workers(results({"cpu": servers(1.0, 1.0, 1.0)}, models=("lenet5",)))
    lenet5 = data["servers"]["lenet5"]
    lenet5["workers-8"] = sweep({64: 7200.0}, 1.0)  # 4x workers-1's 1800
    del lenet5["workers-2"]
    data["settings"]["workers"]["count"] = 8
    rows = rows_of(data)
    goal = "lenet5 [edgecnn loadtest]: --workers 8 >= 4x --workers 1's req/s at c=64 (8 client connections)"
    assert rows[goal] == ("7200 vs 1800 req/s (workers-1) = 4.000x", True)
    assert [g for g in rows if "--workers" in g] == [goal], "no floor goal, no --workers 2 goal"
    lenet5["workers-8"]["steps"][0]["req_per_s"] = 7199.0
    assert rows_of(data)[goal][1] is False
    section = "\n".join(bench_report._workers_section(data))
    assert "| lenet5 | edgecnn loadtest | workers-8 | 64 | 7199 | 3.999x | 3.599x |" in section
    assert "Targets: --workers 8 >= 4x --workers 1 at c=64," in section
    assert "**workers-1** / **workers-8**" in "\n".join(bench_report._workers_method(data["settings"]))
    data["settings"]["workers"]["count"] = 4
    lenet5["workers-4"] = lenet5.pop("workers-8")
    assert not [g for g in rows_of(data) if "--workers" in g], "no goal set for --workers 4"
    assert "Targets: none for --workers 4 at c=64," in "\n".join(bench_report._workers_section(data))


def test_one_connection_to_two_workers_is_judged_against_one_worker_at_c1():
    data = with_perf_analyzer(with_http_and_workers(results({"cpu": servers(1.0, 1.0, 1.0)}, models=("lenet5",))), "lenet5")
    data["settings"]["workers"]["concurrency"] = [1, 64]
    pa = data["perf_analyzer"]["lenet5"]
    pa["workers-1"] = {m: pa_report(m, {1: 1000.0, 64: 2000.0}, 0.5) for m in ("sync", "async")}
    pa["workers-2"] = {"sync": pa_report("sync", {1: 950.0, 64: 3000.0}, 0.5), "async": pa_report("async", {1: 949.0, 64: 3000.0}, 0.5)}
    rows = rows_of(data)
    goal = "lenet5 [perf_analyzer ({})]: one client connection (c=1) to --workers 2 gets >= 95% of --workers 1's req/s"
    assert rows[goal.format("sync")] == ("950 vs 1000 req/s (workers-1) = 0.950x", True)
    assert rows[goal.format("async")] == ("949 vs 1000 req/s (workers-1) = 0.949x", False)
    assert not any("[edgecnn loadtest]: one client connection" in g for g in rows), "the load tester spreads over its connections"
    del pa["workers-2"]["async"]["steps"][0]
    assert rows_of(data)[goal.format("async")] == ("not measured (no c=1 figures)", False)


def test_a_step_with_its_cpu_shows_the_servers_cores_and_cost_per_request(tmp_path):
    data = results({"cpu": servers(1.0, 1.0, 1.0)}, models=("lenet5",))
    data["servers"]["lenet5"]["floor"]["steps"][2]["cpu"] = {"wall_s": 4.0, "server_s": 4.6, "client_s": None}  # c=64, 2000 req/s
    bench_report.write_report(data, tmp_path / "b.md", lambda message: None)
    text = (tmp_path / "b.md").read_text()
    assert "| floor | 64 | 2000 | 1800 / 2200 | 10.00 | 10.00 | 10.00 | 10.00 | 0 | 1.15 cores, 575 us/req | 30%/30% |" in text
