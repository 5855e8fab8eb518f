"""Triton's statistics extension (ModelStatistics, server/statistics.py): the counts match the
requests sent, through tritonclient's get_inference_statistics() and the RPC itself."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tritonclient_grpc
from edgecnn.protos import classifier_pb2, inference_pb2
from edgecnn.server.batching import Batcher
from edgecnn.server.compute_threads import ComputeThreads
from edgecnn.server.statistics import VersionStatistics

from tests.server.grpc_helpers import TIMEOUT, held_server, infer_request, wait_until
from tests.server.test_batcher import FakeMetrics, SlowModel, rows, serving

DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def stats_of(client, model: str, version: str):
    (stats,) = client.get_inference_statistics(model, version).model_stats
    assert (stats.name, stats.version) == (model, version)
    return stats


def test_statistics_is_an_extension_and_lists_every_served_version(server):
    client = tritonclient_grpc.InferenceServerClient(url=server.address)
    assert "statistics" in client.get_server_metadata().extensions
    everything = client.get_inference_statistics().model_stats
    assert [(s.name, s.version) for s in everything] == [("lenet5", "1"), ("lenet5", "2"), ("lenet5-batched", "1")]
    assert [s.version for s in client.get_inference_statistics("lenet5").model_stats] == ["1", "2"]
    with pytest.raises(tritonclient_grpc.InferenceServerException, match="unknown model 'nope'"):
        client.get_inference_statistics("nope")


def test_counts_match_the_requests_sent(server, infer_stub, samples):
    """lenet5 v1 has batching off: every request is its own ONNX Runtime call."""
    client = tritonclient_grpc.InferenceServerClient(url=server.address)
    untouched = stats_of(client, "lenet5", "2")
    started_ms = time.time() * 1000
    sizes = [1, 1, 1, 4, 4]
    for n in sizes:
        infer_stub.ModelInfer(infer_request("lenet5", samples["x"][:n], version="1"), timeout=TIMEOUT)
    with pytest.raises(grpc.RpcError):  # a known model, a bad request: counted as failed
        infer_stub.ModelInfer(infer_request("lenet5", samples["x"][:1].reshape(1, 1, 784, 1), version="1"), timeout=TIMEOUT)
    stats = stats_of(client, "lenet5", "1")
    assert stats.inference_count == sum(sizes) and stats.execution_count == len(sizes)
    assert started_ms - 1 <= stats.last_inference <= time.time() * 1000 + 1
    infer = stats.inference_stats
    for field in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert getattr(infer, field).count == len(sizes), field
    assert infer.fail.count == 1 and infer.fail.ns > 0
    assert infer.success.ns > 0 and infer.compute_infer.ns > 0 and infer.compute_input.ns > 0
    parts = infer.queue.ns + infer.compute_input.ns + infer.compute_infer.ns + infer.compute_output.ns
    assert parts <= infer.success.ns  # the rest is perf_analyzer's "overhead"
    assert {b.batch_size: b.compute_infer.count for b in stats.batch_stats} == {1: 3, 4: 2}
    assert all(b.compute_input.count == b.compute_infer.count == b.compute_output.count for b in stats.batch_stats)
    assert stats_of(client, "lenet5", "2") == untouched  # another version's requests are its own


def test_classify_is_counted_too(server, classifier_stub, samples):
    client = tritonclient_grpc.InferenceServerClient(url=server.address)
    before = stats_of(client, "lenet5-batched", "1")
    request = classifier_pb2.ClassifyRequest(model="lenet5-batched", top_k=2)
    for image in samples["x"][:3]:
        request.images.add(tensor=classifier_pb2.FloatTensor(shape=[1, 28, 28], data=image.astype("<f4").tobytes()))
    classifier_stub.Classify(request, timeout=TIMEOUT)
    after = stats_of(client, "lenet5-batched", "1")
    assert after.inference_count - before.inference_count == 3
    assert after.inference_stats.success.count - before.inference_stats.success.count == 1


def test_merged_batches_count_rows_executions_and_requests(repository, samples, monkeypatch):
    """Requests queued behind held batches merge: per request queue/compute counts, per batch
    executions and batch sizes."""
    with held_server(repository, samples, monkeypatch) as held:
        client = tritonclient_grpc.InferenceServerClient(url=held.running.address)
        plane = held.running.server.plane
        queued = [held.stub.ModelInfer.future(held.request, timeout=TIMEOUT) for _ in range(10)]
        wait_until(lambda: len(held.batcher._pending) == 10, "ten queued requests")
        held.gate.open.set()
        for call in [*held.blockers, *queued]:
            call.result()
        wait_until(lambda: plane.inflight == 0, "every answer sent")
        stats = stats_of(client, "lenet5", "1")
    requests = 10 + len(held.blockers)
    infer = stats.inference_stats
    assert infer.success.count == infer.queue.count == infer.compute_infer.count == requests
    assert stats.inference_count == requests == sum(b.batch_size * b.compute_infer.count for b in stats.batch_stats)
    assert stats.execution_count == sum(b.compute_infer.count for b in stats.batch_stats) < requests
    assert max(b.batch_size for b in stats.batch_stats) > 1 and infer.queue.ns > 0


def test_worker_thread_batches_are_added_on_the_event_loop():
    """A batch computed on a worker thread hands its times back; the counters are written on the
    loop only (no lock), and add up."""
    model = SlowModel(serving(inline_max_s=0.0, compute_slots=2))
    written_on: set[str] = set()

    class Watched(VersionStatistics):
        __slots__ = ()

        def executed(self, *args, **kwargs) -> None:
            import threading

            written_on.add(threading.current_thread().name)
            super().executed(*args, **kwargs)

    async def main(threads):
        batcher = Batcher(model, threads, FakeMetrics())  # type: ignore[arg-type]
        batcher.stats = Watched()
        await asyncio.gather(*(batcher.infer(rows(1 + i % 3, i)) for i in range(30)))
        return batcher.stats

    threads = ComputeThreads(2, name="worker")
    stats = asyncio.run(main(threads))
    threads.shutdown(wait=True)
    assert written_on == {"MainThread"}
    assert all(name.startswith("worker") for _, name in model.calls)
    assert stats.inference_count == sum(1 + i % 3 for i in range(30)) == sum(n for n, _ in model.calls)
    assert stats.execution_count == len(model.calls)


def test_as_dict_is_tritons_json_layout():
    from google.protobuf import json_format

    stats = VersionStatistics()
    stats.executed(rows=2, infer_ns=100, input_ns=0)
    stats.succeeded(start=0, decoded=10, computed=120, end=125, queue_ns=5, infer_ns=100)
    message = json_format.ParseDict(stats.as_dict("m", "1"), inference_pb2.ModelStatistics())
    assert (message.inference_count, message.execution_count) == (2, 1)
    assert [getattr(message.inference_stats, f).count for f in DURATIONS] == [1, 0, 1, 1, 1, 1]
    assert (message.inference_stats.success.ns, message.inference_stats.compute_output.ns) == (125, 5)
    assert [(b.batch_size, b.compute_infer.ns) for b in message.batch_stats] == [(2, 100)]
    assert np.isclose(message.last_inference, time.time() * 1000, atol=5000)
