"""Buffered histogram observations land as prometheus_client's own observe() puts them."""

from __future__ import annotations

import threading

import grpc

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from edgecnn.server import app
from edgecnn.server.metric_buffers import HistogramBuffer, add_observations
from edgecnn.server.metrics import LATENCY_BUCKETS, QUEUE_WAIT_BUCKETS, Metrics
from edgecnn.protos import inference_pb2_grpc

from tests.server.grpc_helpers import infer_request, serve_repository, wait_until


def _histogram(buckets) -> Histogram:
    return Histogram("h", "test", ["model"], buckets=buckets, registry=CollectorRegistry()).labels("m")


def _samples(child: Histogram) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("le", "")): s.value for s in child._samples()}


def test_bulk_add_matches_observe_one_by_one():
    rng = np.random.default_rng(0)
    for buckets in (LATENCY_BUCKETS, QUEUE_WAIT_BUCKETS, (1, 2, 3, 8, 64)):
        bounds = [float(b) for b in buckets]
        # Values on every bound, just above and below, zero, negative, and beyond the last bound.
        values = [0.0, -1.0, 1e9, *bounds, *(np.nextafter(b, np.inf) for b in bounds), *(np.nextafter(b, -np.inf) for b in bounds)]
        values += list(rng.exponential(0.001, 500)) + list(rng.integers(1, 70, 100).astype(float))
        one_by_one, bulk = _histogram(buckets), _histogram(buckets)
        for v in values:
            one_by_one.observe(float(v))
        add_observations(bulk, values[:300])
        add_observations(bulk, values[300:])
        expected, got = _samples(one_by_one), _samples(bulk)
        assert np.isclose(got.pop(("_sum", "")), expected.pop(("_sum", "")), rtol=1e-12)  # summed in another order
        assert got == expected


def test_nan_lands_in_no_bucket_as_with_observe():
    one_by_one, bulk = _histogram(LATENCY_BUCKETS), _histogram(LATENCY_BUCKETS)
    one_by_one.observe(float("nan"))
    add_observations(bulk, [float("nan")])
    assert _samples(bulk)[("_count", "")] == _samples(one_by_one)[("_count", "")] == 0


def test_values_appended_while_flushing_are_kept():
    child = _histogram(LATENCY_BUCKETS)
    buffer = HistogramBuffer(child)
    per_thread, threads = 20_000, 3

    def observe():
        for _ in range(per_thread):
            buffer.observe(0.00002)

    workers = [threading.Thread(target=observe) for _ in range(threads)]
    for w in workers:
        w.start()
    while any(w.is_alive() for w in workers):
        buffer.flush()
    buffer.flush()
    assert _samples(child)[("_count", "")] == per_thread * threads


def test_a_scrape_counts_every_request_answered_before_it():
    metrics = Metrics()
    inflight = [3]
    metrics.track_inflight(lambda: inflight[0])
    for _ in range(5):
        metrics.observe_request("lenet5", "1", "ModelInfer", "OK", 0.0002, protocol="grpc")
    labels = {"model": "lenet5", "version": "1", "api": "ModelInfer"}
    read = metrics.registry.get_sample_value
    assert read("edgecnn_requests_total", {**labels, "code": "OK", "protocol": "grpc"}) == 5
    assert read("edgecnn_request_duration_seconds_bucket", {**labels, "protocol": "grpc", "le": "0.00025"}) == 5
    assert read("edgecnn_inflight_requests") == 3
    inflight[0] = 0
    assert read("edgecnn_inflight_requests") == 0


def test_an_unscraped_server_adds_its_buffers_itself(repository, samples, monkeypatch):
    """Nothing scrapes (no metrics port): the buffers still reach their metrics, so they never grow
    without bound (read from the children, which does not flush as a scrape does)."""
    monkeypatch.setattr(app, "FLUSH_UNSCRAPED_S", 0.05)
    with serve_repository(repository["dir"]) as running, grpc.insecure_channel(running.address) as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        for row in samples["x"][:5]:
            stub.ModelInfer(infer_request("lenet5", row[None]), timeout=10)
        metrics = running.server.metrics
        answered = metrics.requests.labels("lenet5", "2", "ModelInfer", "OK", "grpc")
        inference = metrics.inference.labels("lenet5", "2")
        wait_until(lambda: answered._value.get() == 5, "the periodic flush")
        wait_until(lambda: inference._sum.get() > 0, "the batcher's observations")
        assert all(not pending for _, _, pending in metrics._request_series.values())
