"""edgecnn/loadtest/side_by_side.py: servers measured side by side in alternating slices.
Fake slices check the order, the rotation and the pooling; one run against a real server checks
the shared pool of client processes."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import pytest

from edgecnn.loadtest import side_by_side
from edgecnn.loadtest.side_by_side import Measured, SliceSchedule, measure_side_by_side, measure_step, rotated
from edgecnn.loadtest.stats import StepResult, WorkerResult, new_histogram
from edgecnn.loadtest.workload import Target, make_payloads
from tests.servers import MODEL

NAMES = ["a", "b", "c"]
OK = {"a": 100, "b": 50, "c": 20}  # successes per slice of 1 s


def fake_step(name: str, concurrency: int, latency_us: int = 1000) -> dict:
    histogram = new_histogram()
    histogram.record_value(latency_us)
    worker = WorkerResult(histogram.encode(), OK[name], {}, window_s=1.0, window_ok=OK[name], cpu_s=0.1, wall_s=1.0)
    return StepResult("closed", concurrency, None, 1, [worker]).to_dict()


@pytest.fixture
def slices(monkeypatch) -> list[tuple[str, int]]:
    """Every slice run, as (server, concurrency), each answered at once by a fake step (a server's
    n-th slice of a step or round: latency n ms); no client processes."""
    order: list[tuple[str, int]] = []

    def run_slice(plan, concurrency, pool):
        order.append((plan.target.server, concurrency))
        sent.append((plan.target.server, concurrency, tuple(plan.payloads), plan.target.protocol))
        return fake_step(plan.target.server, concurrency, latency_us=1000 * order.count((plan.target.server, concurrency)))

    monkeypatch.setattr(side_by_side, "run_slice", run_slice)
    monkeypatch.setattr(side_by_side, "WorkerPool", lambda processes: nullcontext())
    sent.clear()
    return order


sent: list[tuple[str, int, tuple[bytes, ...], str]] = []  # every slice: (server, concurrency, its requests, protocol)


def round_servers(names=NAMES, started=None):
    @contextmanager
    def servers(r):
        if started is not None:
            started.append(r)
        yield {name: Target(name, MODEL) for name in (names(r) if callable(names) else names)}

    return servers


def test_rotated_starts_at_the_turn():
    assert [rotated(NAMES, turn) for turn in range(4)] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_a_step_alternates_its_slices_between_the_servers_the_order_rotating(slices):
    schedule = SliceSchedule((4,), duration_s=3.0, warmup_s=0.0, slices=3, processes=1)
    plans = {name: schedule.plan(Target(name, MODEL), [b""]) for name in NAMES}
    steps = measure_step(plans, 4, round_index=1, slices=3, pool=None)
    # round 1 of 3-slice steps: turns 3, 4, 5
    assert [name for name, _ in slices] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {c for _, c in slices} == {4}
    for name, step in steps.items():
        assert (step["ok"], step["duration_s"], step["concurrency"]) == (3 * OK[name], 3.0, 4)
        assert [run["req_per_s"] for run in step["runs"]] == [OK[name]] * 3, "a step pools its slices"
        # its three slices' latencies (1, 2 and 3 ms), merged
        assert step["latency_ms"]["min"] == pytest.approx(1.0, rel=0.01) and step["latency_ms"]["max"] == pytest.approx(3.0, rel=0.01)


def test_rounds_are_pooled_per_server_and_step_the_rotation_going_on(slices):
    started, logged = [], []
    schedule = SliceSchedule((1, 8), duration_s=2.0, warmup_s=0.1, slices=2, processes=2)
    reports = measure_side_by_side(round_servers(started=started), 3, schedule, [b""], logged.append)
    assert started == [0, 1, 2], "each round's servers brought up in turn"
    assert len(slices) == 3 * 2 * 2 * 3  # rounds x steps x slices x servers
    firsts = [slices[i][0] for i in range(0, len(slices), 3)]  # who opens each slice
    assert firsts == ["a", "b"] + ["a", "b"] + ["c", "a"] + ["c", "a"] + ["b", "c"] + ["b", "c"]
    assert [c for _, c in slices[:12]] == [1] * 6 + [8] * 6
    assert list(reports) == NAMES
    for name, report in reports.items():
        assert report["tool"] == "edgecnn loadtest" and [s["concurrency"] for s in report["steps"]] == [1, 8]
        for step in report["steps"]:
            assert len(step["runs"]) == 3, "one run per round"
            assert (step["ok"], step["duration_s"], step["req_per_s"]) == (6 * OK[name], 6.0, OK[name])
    assert logged[:2] == ["  c=1: a 100 req/s, b 50 req/s, c 20 req/s", "  c=8: a 100 req/s, b 50 req/s, c 20 req/s"]
    assert len(logged) == 6


def test_every_round_must_name_the_same_servers(slices):
    schedule = SliceSchedule((1,), duration_s=1.0, warmup_s=0.0, slices=1, processes=1)
    with pytest.raises(ValueError, match=r"round 2 has servers \['a', 'b'\]; round 1 had \['a', 'b', 'c'\]"):
        measure_side_by_side(round_servers(lambda r: NAMES if r == 0 else NAMES[:2]), 2, schedule, [b""])
    with pytest.raises(ValueError, match="rounds 0"):
        measure_side_by_side(round_servers(), 0, schedule, [b""])


def test_each_target_carries_its_own_requests_and_part_of_the_sweep(slices):
    """A gRPC target with the shared requests beside HTTP targets with their own bodies, one
    measured at c=1 and c=8 only: each step alternates between the targets measured there."""
    http = Target("http://h:1", MODEL, protocol="http")
    targets = {"a": Target("a", MODEL), "b": Measured(Target("b", MODEL, protocol="http"), [b"json"], sweep=(1, 8)),
               "c": Measured(Target("c", MODEL), [b"own"], sweep=(4,))}  # fmt: skip
    seen = []

    @contextmanager
    def servers(r):
        yield targets

    schedule = SliceSchedule((1, 4, 8), duration_s=1.0, warmup_s=0.0, slices=1, processes=1)
    logged: list[str] = []
    reports = measure_side_by_side(servers, 2, schedule, [b"shared"], logged.append, lambda r, t: seen.append((r, t)))
    assert slices[:4] == [("a", 1), ("b", 1), ("a", 4), ("c", 4)], "c=1: a and b; c=4: a and c"
    assert {(server, payloads, protocol) for server, _, payloads, protocol in sent} == {
        ("a", (b"shared",), "grpc"), ("b", (b"json",), "http"), ("c", (b"own",), "grpc")}  # fmt: skip
    assert [[s["concurrency"] for s in reports[name]["steps"]] for name in "abc"] == [[1, 4, 8], [1, 8], [4]]
    assert all(len(step["runs"]) == 2 for report in reports.values() for step in report["steps"])
    assert logged[:3] == ["  c=1: a 100 req/s, b 50 req/s", "  c=4: a 100 req/s, c 20 req/s", "  c=8: a 100 req/s, b 50 req/s"]
    (r0, given), _ = seen
    assert r0 == 0 and given["a"] == Measured(Target("a", MODEL), [b"shared"]) and given["b"] is targets["b"], "each round's targets, as Measured"
    assert http.connections == 1


@pytest.mark.parametrize(
    "targets, payloads, message",
    [
        ({"a": Target("a", MODEL)}, None, "a: no requests of its own and none shared"),
        ({"a": Measured(Target("a", MODEL), [b""], sweep=(2,))}, [b""], r"a: concurrency \[2\]: expected some of the sweep's \[1, 4\]"),
        ({"a": Measured(Target("a", MODEL), [b""], sweep=())}, [b""], r"a: concurrency \[\]"),
    ],
)
def test_a_target_without_requests_or_off_the_sweep_is_refused(slices, targets, payloads, message):
    @contextmanager
    def servers(r):
        yield targets

    schedule = SliceSchedule((1, 4), duration_s=1.0, warmup_s=0.0, slices=1, processes=1)
    with pytest.raises(ValueError, match=message):
        measure_side_by_side(servers, 1, schedule, payloads)
    assert slices == []


def test_every_round_must_measure_a_target_at_the_same_steps(slices):
    @contextmanager
    def servers(r):
        yield {"a": Measured(Target("a", MODEL), sweep=(1,) if r == 0 else (1, 4))}

    schedule = SliceSchedule((1, 4), duration_s=1.0, warmup_s=0.0, slices=1, processes=1)
    with pytest.raises(ValueError, match=r"round 2 measures a at \(1, 4\); round 1 at \(1,\)"):
        measure_side_by_side(servers, 2, schedule, [b""])


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"slices": 0}, "slices 0: expected >= 1"),
        ({"sweep": (0, 4)}, "concurrency .0, 4.: expected positive worker counts"),
        ({"sweep": ()}, "concurrency .*: expected positive worker counts"),
        ({"duration_s": float("nan")}, "duration nan"),
        ({"warmup_s": -1.0}, "warmup -1.0"),
        ({"processes": 0}, "processes 0"),
    ],
)
def test_a_bad_schedule_is_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        SliceSchedule(**{"sweep": (1,), "duration_s": 1.0, "warmup_s": 0.0, **settings})


def test_a_slice_that_could_not_finish_stops_the_measurement(monkeypatch):
    from edgecnn.loadtest import runner

    def run_step(specs, slots, pool):
        raise RuntimeError("load test process 1 failed:\nValueError: boom")

    monkeypatch.setattr(runner, "_run_step", run_step)
    plan = SliceSchedule((2,), duration_s=1.0, warmup_s=0.0, processes=1).plan(Target("127.0.0.1:1", MODEL), [b""])
    with pytest.raises(RuntimeError, match="load test against 127.0.0.1:1 stopped: load test process 1 failed"):
        side_by_side.run_slice(plan, 2, pool=None)


def test_two_targets_share_one_pool_of_client_processes(served_address):
    """Two names for one real server: every slice answered, both pooled alike, over two client processes."""
    payloads = make_payloads(Target(served_address, MODEL), "input", (1, 28, 28), 1)
    schedule = SliceSchedule((1, 2), duration_s=0.4, warmup_s=0.1, slices=2, processes=2)
    reports = measure_side_by_side(_same_server(served_address), 1, schedule, payloads)
    assert list(reports) == ["first", "second"]
    for report in reports.values():
        for step in report["steps"]:
            assert step["errors"] == {} and step["ok"] > 0 and len(step["runs"]) == 1
            assert step["duration_s"] == pytest.approx(0.4, rel=0.05)
        assert len(report["steps"][1]["client_cpu"]) == 2, "c=2 spread over both client processes"


def _same_server(address: str):
    @contextmanager
    def servers(r):
        yield {"first": Target(address, MODEL), "second": Target(address, MODEL)}

    return servers
