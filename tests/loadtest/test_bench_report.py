"""edgecnn/loadtest/bench_report.py: the target rows it derives from measured numbers, and the
report, plot and results it writes (and rewrites from a saved results file).

Synthetic results with known ratios; nothing is measured here (timing goals are reported by
`make bench`, never asserted)."""

from __future__ import annotations

import json
import sys

import pytest

from edgecnn.loadtest import bench_report
from tests.loadtest.bench_results import results, servers


def rows_of(data: dict) -> dict[str, tuple[str, bool]]:
    return {goal: (measured, met) for goal, measured, met in bench_report.targets(data)}


def test_goals_are_judged_at_c64_and_c1_on_each_device_with_its_own_numbers():
    # CPU: every goal met, exactly at its boundary; GPU: every goal missed.
    rows = rows_of(results({"cpu": servers(0.90, 1.10, 1.0), "cuda": servers(0.80, 1.20, 0.90)}))
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


def test_just_below_a_boundary_is_not_met():
    rows = rows_of(results({"cpu": servers(0.8996, 1.1004, 0.9496)}, models=("mobilenet-v2",)))
    assert rows["mobilenet-v2: batching off reaches >= 90% of the floor's req/s at c=64"] == ("1799 vs 2000 req/s = 90.0%", False)
    assert rows["mobilenet-v2: batching off p50 at c=1 <= 1.1x the floor's"][1] is False
    measured, met = rows["mobilenet-v2: batching on never > 5% below batching off in req/s"]
    assert "c=64: 0.950" in measured and met is False


def test_a_sweep_without_c64_leaves_that_goal_unmet():
    data = results({"cpu": servers(1.0, 1.0, 1.2)}, models=("mobilenet-v2",))
    for report in data["servers"]["mobilenet-v2"].values():
        report["steps"] = [s for s in report["steps"] if s["concurrency"] != 64]
    rows = rows_of(data)
    assert rows["mobilenet-v2: batching off reaches >= 90% of the floor's req/s at c=64"] == ("not measured (the sweep lacks c=64)", False)
    assert rows["mobilenet-v2: batching off p50 at c=1 <= 1.1x the floor's"][1] is True


def test_a_step_where_every_request_failed_is_reported_not_crashed_on():
    data = results({"cpu": servers(1.0, 1.0, 1.0)}, models=("lenet5",))
    dead = data["servers"]["lenet5"]["batching-off"]["steps"]
    dead[:] = [{**s, "req_per_s": 0.0, "errors": {"UNAVAILABLE": 7}, "latency_ms": {k: None for k in s["latency_ms"]}} for s in dead]
    rows = rows_of(data)
    assert rows["lenet5: batching off reaches >= 90% of the floor's req/s at c=64"] == ("0 vs 2000 req/s = n/a", False)
    assert rows["lenet5: batching off p50 at c=1 <= 1.1x the floor's"] == ("- vs 1.00 ms = n/a", False)
    assert rows["lenet5: batching on never > 5% below batching off in req/s"][1] is False
    assert rows["zero errors"] == ("28 failed requests", False)


def test_render_rewrites_the_report_and_keeps_the_notes(tmp_path):
    saved = tmp_path / "gpu-run.json"
    saved.write_text(json.dumps(results({"cpu": servers(0.95, 1.0, 1.1), "cuda": servers(0.95, 1.0, 2.0)}, models=("mobilenet-v2",))))
    logged: list[str] = []
    bench_report.render(saved, tmp_path / "gpu-run.md", ["measured before the fix"], logged.append)
    text = (tmp_path / "gpu-run.md").read_text()
    assert "**Note:** measured before the fix" in text
    assert "| batching-on@cuda | 64 | 3800 | 3420 / 4180 |" in text
    assert "| mobilenet-v2@cuda: batching on is faster where compute dominates (c=64) | on/off = 2.000x | met |" in text
    assert "devices here cpu, cuda" in text and "in 2 slice(s) of 1 s, each after a 0.5 s warm-up" in text
    assert "Client CPU saturation (a client process at >= 90% of a core): none." in text
    assert "![throughput and latency per server](gpu-run.png)" in text and (tmp_path / "gpu-run.png").stat().st_size > 0
    assert json.loads(saved.read_text())["notes"] == ["measured before the fix"], "the notes are kept for the next render"
    assert any(line.startswith("met      mobilenet-v2@cuda: batching on is faster") for line in logged)
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
    assert "| floor | 64 | 2000 | 1800 / 2200 | 10.00 | 10.00 | 10.00 | 10.00 | 0 | 30%/30% saturated |" in text
    assert "![" not in text and not (tmp_path / "b.png").exists()
    assert "bench: no plot written: needs matplotlib" in capsys.readouterr().err
    assert json.loads((tmp_path / "b.json").read_text())["targets"][-1] == ["zero errors", "0 failed requests", True]
