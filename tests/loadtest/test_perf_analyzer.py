"""Triton's perf_analyzer as a reference client (edgecnn/loadtest/perf_analyzer.py): its default
random data against a real server with zero errors (where perf_analyzer and its libraries are
installed: `make bench` installs them; skipped with the reason elsewhere), and its output read
into load tester rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecnn.loadtest import perf_analyzer
from edgecnn.loadtest.perf_analyzer import PerfAnalyzer, PerfAnalyzerError, PerfAnalyzerMissing
from tests.servers import MODEL

SYNC_CSV = """Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
2,1510.93,3,1203,0,24,80,10,1,1179,1502,1946,4681
1,1191.68,3,730,0,27,65,10,1,664,862,2206,4576
"""
SYNC_STDOUT = """*** Measurement Settings ***
  Batch size: 1

Request concurrency: 1
  Client: 
    Request count: 4324
    Throughput: 1191.68 infer/sec
    Avg latency: 837 usec (standard deviation 744 usec)
    p50 latency: 664 usec
  Server: 
    Inference count: 4326
    Execution count: 4326
    Successful request count: 4326
    Avg request latency: 119 usec (overhead 17 usec + queue 0 usec + compute input 27 usec + compute infer 65 usec + compute output 10 usec)

Request concurrency: 2
  Client: 
    Request count: 5484
    Throughput: 1510.93 infer/sec
    Avg latency: 1323 usec (standard deviation 920 usec)
  Server: 
    Inference count: 5484
    Execution count: 5484
    Successful request count: 5484
    Avg request latency: 130 usec (overhead 16 usec + queue 0 usec + compute input 24 usec + compute infer 80 usec + compute output 10 usec)

Inferences/Second vs. Client Average Batch Latency
Concurrency: 1, throughput: 1191.68 infer/sec, latency 837 usec
"""
# A server without the statistics extension (the bench's floor server): no server columns.
FLOOR_CSV = "Concurrency,Inferences/Second,Client Send,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n1,1534.08,6,1,478,653,1048,4781\n"


def test_rows_in_the_load_testers_format_with_the_servers_breakdown():
    rows = perf_analyzer.rows(SYNC_CSV, SYNC_STDOUT, "sync")
    assert [r["concurrency"] for r in rows] == [1, 2]  # in order, whatever the CSV's order
    one = rows[0]
    assert (one["tool"], one["client"], one["mode"], one["errors"]) == ("perf_analyzer", "perf_analyzer (sync)", "closed", {})
    assert (one["req_per_s"], one["images_per_s"], one["requests"]) == (1191.68, 1191.68, 4324)
    assert one["latency_ms"] == {"p50": 0.664, "p90": 0.862, "p95": 2.206, "p99": 4.576, "mean": 0.837}
    assert one["server_us"] == {"request": 119, "overhead": 17, "queue": 0, "compute_input": 27, "compute_infer": 65, "compute_output": 10}
    assert one["server_counts"] == {"inference_count": 4326, "execution_count": 4326, "success_count": 4326}
    assert rows[1]["server_us"]["compute_infer"] == 80


def test_rows_of_a_server_without_statistics_and_of_batches():
    (row,) = perf_analyzer.rows(FLOOR_CSV, "Request concurrency: 1\n  Client: \n    Request count: 2763\n", "async", batch_size=4)
    assert row["client"] == "perf_analyzer (async)" and row["server_us"] is None and row["server_counts"] is None
    assert (row["req_per_s"], row["images_per_s"], row["latency_ms"]["mean"]) == (383.52, 1534.08, None)
    with pytest.raises(PerfAnalyzerError, match="no measurement"):
        perf_analyzer.rows(FLOOR_CSV.splitlines()[0], "", "sync")


def test_command_line():
    pa = PerfAnalyzer(Path("/x/perf_analyzer"), {}, "v")
    cmd = perf_analyzer.command(pa, "lenet5", "h:1", (4, 4), 500, Path("o.csv"), "async", stability_percent=50, max_trials=8)
    assert cmd == ["/x/perf_analyzer", "-m", "lenet5", "-i", "grpc", "-u", "h:1", "-b", "1", "--concurrency-range", "4:4",
                   "--measurement-interval", "500", "-f", "o.csv", "--async", "--stability-percentage", "50", "--max-trials", "8"]  # fmt: skip
    with pytest.raises(ValueError, match="mode"):
        perf_analyzer.command(pa, "m", "h:1", (1, 1), 500, Path("o.csv"), "open")
    with pytest.raises(ValueError, match="concurrency range 4:2"):
        perf_analyzer.command(pa, "m", "h:1", (4, 2), 500, Path("o.csv"))


@pytest.mark.parametrize("tensor_format", ["binary", "json"])
def test_command_line_over_http(tensor_format):
    pa = PerfAnalyzer(Path("/x/perf_analyzer"), {}, "v")
    cmd = perf_analyzer.command(pa, "lenet5", "http://h:8000", (1, 1), 500, Path("o.csv"), protocol="http", tensor_format=tensor_format)
    assert cmd[:7] == ["/x/perf_analyzer", "-m", "lenet5", "-i", "http", "-u", "h:8000"]  # its -u takes HOST:PORT
    assert cmd[-5:] == ["--input-tensor-format", tensor_format, "--output-tensor-format", tensor_format, "--sync"]
    grpc = perf_analyzer.command(pa, "lenet5", "h:1", (1, 1), 500, Path("o.csv"), tensor_format="json")
    assert "--input-tensor-format" not in grpc, "gRPC has no tensor format"
    for kwargs, message in (({"protocol": "rest"}, "protocol 'rest'"), ({"tensor_format": "xml"}, "tensor format 'xml'"),
                            ({"protocol": "http", "server": "https://h:1"}, "plain HTTP only")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            perf_analyzer.command(pa, "m", kwargs.pop("server", "h:1"), (1, 1), 500, Path("o.csv"), **kwargs)


def test_a_round_measures_each_target_over_its_protocol_at_its_own_steps(monkeypatch):
    from edgecnn.loadtest.side_by_side import Measured
    from edgecnn.loadtest.workload import Target

    calls = []

    def fake_run(pa, model, server, concurrency, interval_ms, mode, stability_percent=None, timeout_s=None, protocol="grpc",
                 tensor_format="binary"):  # fmt: skip
        calls.append((server, concurrency[0], protocol, tensor_format))
        return [{**perf_analyzer.rows(SYNC_CSV, SYNC_STDOUT, mode)[0], "concurrency": concurrency[0]}]

    monkeypatch.setattr(perf_analyzer, "run", fake_run)
    targets = {"grpc": Measured(Target("h:1", "m")), "json": Measured(Target("http://h:2", "m", protocol="http", http_body="json"), [b""], (4,)),
               "bare": Target("h:3", "m")}  # fmt: skip
    measured = perf_analyzer.measure_round(PerfAnalyzer(Path("x"), {}, "v"), targets, (1, 4), round_index=0, modes=("sync",))
    assert calls == [("h:1", 1, "grpc", "binary"), ("h:3", 1, "grpc", "binary"),
                     ("http://h:2", 4, "http", "json"), ("h:3", 4, "grpc", "binary"), ("h:1", 4, "grpc", "binary")]  # fmt: skip
    assert list(measured["json"]["sync"]) == [4] and list(measured["grpc"]["sync"]) == [1, 4]


def test_a_missing_binary_or_library_says_what_to_install(tmp_path):
    with pytest.raises(PerfAnalyzerMissing, match="does not start"):
        perf_analyzer.locate(tmp_path / "nope")
    fake = tmp_path / "perf_analyzer"
    fake.write_text("#!/bin/sh\necho 'perf_analyzer: error while loading shared libraries: libb64.so.0d: cannot open' >&2\nexit 127\n")
    fake.chmod(0o755)
    with pytest.raises(PerfAnalyzerMissing, match="libb64.so.0d.*libb64-0d"):
        perf_analyzer.locate(fake)


def test_a_failed_run_raises_with_its_message(tmp_path):
    fake = tmp_path / "perf_analyzer"
    fake.write_text("#!/bin/sh\necho 'Request concurrency: 1'\necho 'Failed to obtain stable measurement within 10 measurement windows' \nexit 2\n")
    fake.chmod(0o755)
    with pytest.raises(PerfAnalyzerError, match="exit 2.*stable measurement") as info:
        perf_analyzer.run(PerfAnalyzer(fake, {}, "v"), "m", "h:1", (1, 1))
    assert info.value.unstable


@pytest.fixture(scope="module")
def pa() -> PerfAnalyzer:
    try:
        return perf_analyzer.locate()
    except PerfAnalyzerMissing as exc:
        pytest.skip(f"perf_analyzer is not usable here: {exc}")


@pytest.fixture(scope="module")
def http_url(served_repository):
    from tests.servers import serving

    with serving(served_repository.dir, http_port=0) as running:
        yield f"http://127.0.0.1:{running.http_port}"


@pytest.mark.parametrize("tensor_format", ["binary", "json"])
def test_perf_analyzer_over_http_has_zero_errors(pa, http_url, tensor_format):
    """`-i http` with its default random data as binary tensors or JSON: zero errors, the server's breakdown read."""
    (row,) = perf_analyzer.run(pa, MODEL, http_url, (2, 2), interval_ms=400, stability_percent=100, timeout_s=120,
                               protocol="http", tensor_format=tensor_format)  # fmt: skip
    assert row["errors"] == {} and row["req_per_s"] > 0 and row["latency_ms"]["p50"] > 0
    assert row["server_us"] is not None and row["server_us"]["compute_infer"] > 0


def test_perf_analyzer_default_random_data_has_zero_errors(pa, served_address):
    """perf_analyzer's defaults (random bytes: NaN and infinite float32 patterns) for ~2 s; it
    stops at the first failed request, so rows mean zero errors, and the server says the same."""
    import tritonclient.grpc as tritonclient_grpc

    (row,) = perf_analyzer.run(pa, MODEL, served_address, (2, 2), interval_ms=600, stability_percent=100, timeout_s=120)
    assert row["errors"] == {} and row["req_per_s"] > 0 and row["latency_ms"]["p50"] > 0
    assert row["server_us"] is not None and row["server_us"]["compute_infer"] > 0  # from ModelStatistics
    (stats,) = tritonclient_grpc.InferenceServerClient(served_address).get_inference_statistics(MODEL).model_stats
    assert stats.inference_stats.fail.count == 0 and stats.inference_stats.success.count >= row["requests"] > 0


def test_a_round_alternates_the_servers_and_keeps_failures_as_errors(monkeypatch):
    from edgecnn.loadtest.workload import Target

    calls = []

    def fake_run(pa, model, server, concurrency, interval_ms, mode, stability_percent=None, timeout_s=None, **kwargs):
        calls.append((server, concurrency[0], mode))
        if server == "b" and mode == "async":
            raise PerfAnalyzerError("perf_analyzer against b (async) failed (exit 99): error: boom")
        row = perf_analyzer.rows(SYNC_CSV, SYNC_STDOUT, mode)[0]
        return [{**row, "concurrency": concurrency[0]}]

    monkeypatch.setattr(perf_analyzer, "run", fake_run)
    targets = {"a": Target("a", "m"), "b": Target("b", "m"), "c": Target("c", "m")}
    measured = perf_analyzer.measure_round(PerfAnalyzer(Path("x"), {}, "v"), targets, (1, 4), round_index=0)
    assert [server for server, _, _ in calls] == list("abc" "bca" "cab" "abc")  # per (c, mode): rotated
    assert [(c, mode) for _, c, mode in calls[::3]] == [(1, "sync"), (1, "async"), (4, "sync"), (4, "async")]
    failed = measured["b"]["async"][4]
    assert failed["errors"] == {"perf_analyzer against b (async) failed (exit 99): error: boom": 1} and failed["req_per_s"] == 0.0
    assert measured["a"]["sync"][4]["req_per_s"] == 1191.68


def test_rounds_pool_to_their_mean_and_keep_each_round():
    one, two = (perf_analyzer.rows(SYNC_CSV, SYNC_STDOUT, "sync")[0] for _ in range(2))
    two = {**two, "req_per_s": 1000.0, "images_per_s": 1000.0, "latency_ms": {**two["latency_ms"], "p50": 1.0},
           "server_us": {**two["server_us"], "request": 121}}  # fmt: skip
    failed = perf_analyzer.failed_row(1, "sync", "boom")
    pooled = perf_analyzer.pool_rows([one, two, failed])
    assert pooled["req_per_s"] == round((1191.68 + 1000.0) / 3, 2)  # a failed round measured nothing
    assert pooled["latency_ms"]["p50"] == pytest.approx((0.664 + 1.0) / 2)  # over the rounds that measured
    assert pooled["server_us"]["request"] == 120.0 and pooled["errors"] == {"boom": 1}
    assert [r["req_per_s"] for r in pooled["runs"]] == [1191.68, 1000.0, 0.0] and "server_counts" not in pooled


def test_an_abort_reports_its_reason():
    """perf_analyzer aborts with the reason on the line after std::runtime_error's."""
    output = (
        "    Execution count: 1417\n"
        "terminate called after throwing an instance of 'std::runtime_error'\n"
        "  what():  Server side statistics compute counts must be the same.\n"
    )
    assert perf_analyzer._failure(output).endswith("what():  Server side statistics compute counts must be the same.")
