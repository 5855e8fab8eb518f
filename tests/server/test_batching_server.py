"""Batching through a real server: merged requests, lone requests, inline runs, deadlines, the queue bound and the end of the grace."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from edgecnn.protos import inference_pb2_grpc
from edgecnn.server import ServerThread, Settings

from tests.onnx_models import reference_logits
from tests.server.grpc_helpers import (
    BATCHED_DELAY_US,
    TIMEOUT,
    Gate,
    held_server,
    infer_request,
    logits_of,
    sample,
    scrape,
    threads_that_ran,
    wait_until,
)


def test_deadline_is_honoured(server, infer_stub, samples, monkeypatch):
    batcher = server.server.plane.batcher("lenet5-batched", 1)
    gate = Gate(batcher, monkeypatch)
    before = scrape(server)
    try:
        blockers = [
            infer_stub.ModelInfer.future(infer_request("lenet5-batched", samples["x"][:1]), timeout=TIMEOUT)
            for _ in range(batcher.max_in_flight)
        ]
        wait_until(lambda: gate.held == batcher.slots, "every compute slot to hold a batch")
        wait_until(lambda: server.server.plane.inflight >= batcher.max_in_flight, "every blocker in the server")
        # As many batches as may be in flight are, so this request waits in the queue until its
        # deadline passes; long enough to reach the server first (at 20 ms, a full garbage
        # collection in this process, the client's too, could take it before it went out).
        with pytest.raises(grpc.RpcError) as info:
            infer_stub.ModelInfer(infer_request("lenet5-batched", samples["x"][1:3]), timeout=0.5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        expired = {"model": "lenet5-batched", "version": "1", "api": "ModelInfer", "code": "DEADLINE_EXCEEDED", "protocol": "grpc"}
        seen = sample(before, "edgecnn_requests_total", **expired)
        wait_until(lambda: sample(scrape(server), "edgecnn_requests_total", **expired) > seen, "the server to see the deadline pass")
    finally:
        gate.open.set()
    assert all(blocker.result().outputs for blocker in blockers)
    after = scrape(server)
    labels = {"model": "lenet5-batched", "version": "1"}
    # The expired request was dropped from the queue, never computed.
    assert sample(after, "edgecnn_batch_size_sum", **labels) - sample(before, "edgecnn_batch_size_sum", **labels) == batcher.max_in_flight
    assert sample(after, "edgecnn_queue_depth", **labels) == 0
    assert infer_stub.ModelInfer(infer_request("lenet5-batched", samples["x"][:1]), timeout=TIMEOUT).outputs


def test_concurrent_requests_are_batched_with_unchanged_results(server, infer_stub, repository, samples, monkeypatch):
    batcher = server.server.plane.batcher("lenet5-batched", 1)
    gate = Gate(batcher, monkeypatch)
    # Two batches in flight: with two per worker thread (32 on the 16-CPU GPU machine) each request had a batch of its own.
    monkeypatch.setattr(batcher, "max_in_flight", 2)
    before = scrape(server)
    xs = [samples["x"][i : i + 1 + i % 3] for i in range(12)]
    try:
        futures = [infer_stub.ModelInfer.future(infer_request("lenet5-batched", x), timeout=TIMEOUT) for x in xs]
        # Hold the first batch until every request has arrived: those that came while it ran must share batches.
        wait_until(lambda: sample(scrape(server), "edgecnn_inflight_requests") >= len(xs), "all requests in the server")
    finally:
        gate.open.set()
    results = [logits_of(f.result()) for f in futures]
    for x, got in zip(xs, results):
        np.testing.assert_allclose(got, reference_logits(repository["batched"], x), rtol=1e-5, atol=1e-6)
    after = scrape(server)
    labels = {"model": "lenet5-batched", "version": "1"}

    def delta(name: str, **extra) -> float:
        return sample(after, name, **labels, **extra) - sample(before, name, **labels, **extra)

    calls = delta("edgecnn_batch_size_count")
    assert delta("edgecnn_batch_size_sum") == sum(len(x) for x in xs)
    assert calls < len(xs), f"{len(xs)} concurrent requests took {calls} ONNX Runtime calls: not batched"
    assert delta("edgecnn_batch_size_bucket", le="4.0") < calls, "no batch of more than 4 rows"


def test_lone_request_is_not_delayed(server, infer_stub, samples):
    """With no other batch running, waiting for company cannot help: a request runs at once."""
    labels = {"model": "lenet5-batched", "version": "1"}
    before = scrape(server)
    for i in range(5):
        infer_stub.ModelInfer(infer_request("lenet5-batched", samples["x"][i : i + 1]), timeout=TIMEOUT)
    after = scrape(server)
    waits = sample(after, "edgecnn_queue_wait_seconds_sum", **labels) - sample(before, "edgecnn_queue_wait_seconds_sum", **labels)
    assert sample(after, "edgecnn_batch_size_count", **labels) - sample(before, "edgecnn_batch_size_count", **labels) == 5
    # The old batcher held each one for the full delay (5 x 100 ms); together they now wait less than one delay.
    assert waits < BATCHED_DELAY_US / 1e6, f"5 lone requests waited {waits:.3f} s in the queue"


@pytest.mark.parametrize("model", ["lenet5", "lenet5-batched"])
def test_small_model_runs_inline_on_the_event_loop(server, infer_stub, samples, monkeypatch, model):
    """LeNet-5's forward pass costs less than handing it to a worker thread: the loop runs it."""
    batcher = server.server.plane.batcher(model, 1)
    assert 0 < batcher.mv.batch1_s < 0.1, "the warm-up measured the batch-1 time"
    names = threads_that_ran(batcher, monkeypatch)
    for i in range(3):
        response = infer_stub.ModelInfer(infer_request(model, samples["x"][i : i + 1], version="1"), timeout=TIMEOUT)
        assert logits_of(response).shape == (1, 10)
    assert names == ["edgecnn-server"] * 3, names


def test_inline_off_runs_on_worker_threads(repository, samples, monkeypatch):
    settings = Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cpu", inline_max_us=0)
    with ServerThread(settings) as running, grpc.insecure_channel(running.address) as ch:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(ch)
        for model in ("lenet5", "lenet5-batched"):
            names = threads_that_ran(running.server.plane.batcher(model, 1), monkeypatch)
            x = samples["x"][:2]
            np.testing.assert_allclose(
                logits_of(stub.ModelInfer(infer_request(model, x, version="1"), timeout=TIMEOUT)),
                reference_logits(repository["v1"] if model == "lenet5" else repository["batched"], x), rtol=1e-5, atol=1e-6,
            )
            assert len(names) == 1 and names[0].startswith("edgecnn-ort"), names


def test_a_model_over_the_budget_runs_inline_only_while_alone(repository, samples, monkeypatch):
    """--inline-idle-max-us: lenet5 is over a 1 us budget, so it runs inline only as the one call
    the server has open; while another call is open it goes to a worker thread."""
    settings = Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cpu",
                        inline_max_us=1, inline_idle_max_us=1_000_000)  # fmt: skip
    with ServerThread(settings) as running, grpc.insecure_channel(running.address) as ch:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(ch)
        plane = running.server.plane
        names = threads_that_ran(plane.batcher("lenet5", 1), monkeypatch)
        x = samples["x"][:1]
        stub.ModelInfer(infer_request("lenet5", x, version="1"), timeout=TIMEOUT)
        assert names == ["edgecnn-server"], names  # alone: on the event loop
        other = plane.batcher("lenet5", 2)
        gate = Gate(other, monkeypatch)
        try:
            held = stub.ModelInfer.future(infer_request("lenet5", x, version="2"), timeout=TIMEOUT)
            wait_until(lambda: gate.held == 1, "a call of version 2 held on a worker thread")
            response = stub.ModelInfer(infer_request("lenet5", x, version="1"), timeout=TIMEOUT)
        finally:
            gate.open.set()
        assert held.result().outputs
        np.testing.assert_allclose(logits_of(response), reference_logits(repository["v1"], x), rtol=1e-5, atol=1e-6)
        assert len(names) == 2 and names[1].startswith("edgecnn-ort"), names


def test_queue_full_is_resource_exhausted(repository, samples, monkeypatch):
    with held_server(repository, samples, monkeypatch, max_queue=1) as held:
        # The next request waits in the queue and fills it.
        futures = [held.stub.ModelInfer.future(held.request, timeout=TIMEOUT) for _ in range(3)]
        wait_until(lambda: any(f.done() for f in futures), "a request to be refused")
        held.gate.open.set()
        futures += held.blockers
        codes = [grpc.StatusCode.OK if f.exception() is None else f.exception().code() for f in futures]
        assert grpc.StatusCode.OK in codes and grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
        assert all("queue full" in f.exception().details() for f in futures if f.exception() is not None)
        assert held.stub.ModelInfer(held.request, timeout=TIMEOUT).outputs


def test_expired_requests_leave_the_queue_at_once(repository, samples, monkeypatch):
    """A queued request whose deadline passes gives its place back before any batch frees one:
    with max_queue 1, the next request is queued, not refused."""
    with held_server(repository, samples, monkeypatch, max_queue=1) as held:
        with pytest.raises(grpc.RpcError) as info:
            held.stub.ModelInfer(held.request, timeout=0.2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: not held.batcher._pending, "the expired request to leave the queue")
        queued = held.stub.ModelInfer.future(held.request, timeout=TIMEOUT)
        wait_until(lambda: len(held.batcher._pending) == 1 or queued.done(), "the next request to be queued")
        held.gate.open.set()
        assert queued.result().outputs and all(b.result().outputs for b in held.blockers)


@pytest.mark.parametrize("delay_us", [300_000, 0], ids=["batching-on", "batching-off"])
def test_shutdown_fails_queued_requests_when_the_grace_ends(repository, samples, monkeypatch, delay_us):
    """Requests still queued when the grace period ends get UNAVAILABLE (retry elsewhere) and
    the stop returns, instead of waiting for the whole queue past the grace; with batching off
    they wait in the worker threads' queue."""
    with held_server(repository, samples, monkeypatch, max_queue_delay_us=delay_us) as held:
        assert held.batcher.batching == (delay_us > 0)
        queued = []
        for i in range(5):
            queued.append(held.stub.ModelInfer.future(held.request, timeout=TIMEOUT))
            wait_until(lambda: held.running.server.plane.inflight == held.batcher.max_in_flight + i + 1, f"request {i + 1} queued")
        started = time.monotonic()
        held.running.stop(grace_s=0.3)
        took = time.monotonic() - started
        errors = [f.exception() for f in queued]
    assert took < 3.0, f"stop took {took:.1f} s with a grace of 0.3 s"
    assert all(e is not None and e.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in e.details() for e in errors), errors
