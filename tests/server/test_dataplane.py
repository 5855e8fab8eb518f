"""The data plane's operations called directly, as every front end calls them (no gRPC)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from edgecnn import repository as repo
from edgecnn.server import dataplane
from edgecnn.server.compute_threads import ComputeThreads
from edgecnn.server.dataplane import DRAINING, LOADING, Call, DataPlane
from edgecnn.server.device import CPU
from edgecnn.server.errors import InvalidArgument, NotFound, ServingError, Unavailable
from edgecnn.server.images import ImageInput
from edgecnn.server.metrics import Metrics
from edgecnn.server.model_version import ModelLoader
from edgecnn.server.registry import ModelRegistry
from edgecnn.server.request_scope import GRPC, RequestScope
from edgecnn.server.settings import Settings
from edgecnn.server.statistics import VersionStatistics
from edgecnn.server.tensor_checks import InferOutcome, InputTensor, RequestedOutput
from tests.onnx_models import FASHION_CLASSES, png_bytes, reference_logits, sample_images


def loaded(repository_dir, workers: int = 2) -> ModelRegistry:
    """Every version of the repository, opened as the server opens them."""
    loader = ModelLoader(Settings(repository=repository_dir, device="cpu"), [CPU], workers=workers)
    return ModelRegistry([loader.load(e, repo.read_config(e.model_dir)) for e in repo.list_models(repository_dir)])


def tensor(x: np.ndarray) -> InputTensor:
    return InputTensor("input", "FP32", x.shape, raw=x.astype("<f4").tobytes())


@pytest.fixture(scope="module")
def plane(repository):
    threads = ComputeThreads(2)
    plane = DataPlane(Metrics())
    assert plane.refusal() == LOADING and not plane.ready()
    registry = loaded(repository["dir"])
    asyncio.run(_serve(plane, registry, threads))
    yield plane
    threads.shutdown()


async def _serve(plane: DataPlane, registry: ModelRegistry, threads: ComputeThreads) -> None:
    plane.serve(registry, threads)  # set_model schedules on the running loop


def test_readiness_and_metadata(plane):
    assert plane.live() and plane.ready() and plane.refusal() is None
    assert plane.model_ready("lenet5", "1") and not plane.model_ready("lenet5", "7") and not plane.model_ready("nope")
    meta = plane.metadata("lenet5")
    assert (meta.name, meta.versions, meta.platform) == ("lenet5", ["1", "2"], repo.PLATFORM)
    assert (meta.inputs[0].shape, meta.outputs[0].shape) == ([-1, 1, 28, 28], [-1, 10])
    assert plane.config("lenet5-batched").dynamic_batching.max_queue_delay_microseconds > 0
    assert not plane.config("lenet5").HasField("dynamic_batching")
    info = plane.model_info("lenet5", "1")
    assert (info.model.version, info.available_versions) == (1, [1, 2])
    assert [(e.name, e.version, e.state) for e in plane.repository_index()] == [
        ("lenet5", "1", "READY"), ("lenet5", "2", "READY"), ("lenet5-batched", "1", "READY"),
    ]  # fmt: skip


def test_infer_and_classify_label_the_call(plane, repository, samples):
    x = samples["x"][:3]
    call = Call()
    outcome = asyncio.run(plane.infer("lenet5", "", [tensor(x)], [RequestedOutput("logits")], call))
    assert (call.model, call.version) == ("lenet5", "2")
    np.testing.assert_allclose(outcome.logits, reference_logits(repository["v2"], x), rtol=1e-5, atol=1e-6)
    top = asyncio.run(plane.infer("lenet5", "2", [tensor(x)], [RequestedOutput("logits", class_count=2)]))
    assert top.class_count == 2 and len(top.classification()) == 6
    images = [ImageInput(encoded=png_bytes(image)) for image in sample_images(2)]
    result = asyncio.run(plane.classify("lenet5", "1", images, top_k=3))
    assert [len(r) for r in result.results] == [3, 3]
    assert all(p.label == FASHION_CLASSES[p.index] for r in result.results for p in r)


def test_errors_name_what_was_expected(plane, samples):
    x = samples["x"][:1]
    with pytest.raises(NotFound, match="unknown model 'nope'"):
        plane.metadata("nope")
    with pytest.raises(InvalidArgument, match="unknown output 'probs'"):
        asyncio.run(plane.infer("lenet5", "", [tensor(x)], [RequestedOutput("probs")]))
    with pytest.raises(InvalidArgument, match="expected exactly 1 input"):
        asyncio.run(plane.infer("lenet5", "", []))
    with pytest.raises(InvalidArgument, match="9 images exceed the max batch size"):
        asyncio.run(plane.classify("lenet5", "", [ImageInput(tensor_shape=(1, 28, 28), tensor_data=x.tobytes())] * 9))


def test_drain_refuses_with_the_retry_message(repository):
    plane = DataPlane(Metrics())
    threads = ComputeThreads(1)
    try:
        asyncio.run(_serve(plane, loaded(repository["dir"], workers=1), threads))
        plane.start_drain()
        assert plane.refusal() == DRAINING and not plane.ready() and not plane.model_ready("lenet5")
        assert {e.state for e in plane.repository_index()} == {"UNAVAILABLE"} and plane.repository_index(ready_only=True) == []
    finally:
        threads.shutdown()
    with pytest.raises(Unavailable, match="loading"):
        fresh = DataPlane(Metrics())  # a version it does not serve (yet) has no batcher
        dataplane._computed(fresh._served_by(plane.model_info("lenet5").model)[0], np.zeros((1, 1, 28, 28), np.float32))


def _numbers(plane: DataPlane, name: str, version: str) -> dict:
    """What a request adds to: its version's statistics and its request and batch metrics."""
    stats = plane.statistics(name, version)[0]
    read = plane.metrics.registry.get_sample_value
    labels = {"model": name, "version": version}
    return {
        "inference_count": stats["inference_count"],
        "execution_count": stats["execution_count"],
        **{f"{key}_count": value["count"] for key, value in stats["inference_stats"].items()},
        "requests": read("edgecnn_requests_total", {**labels, "api": "ModelInfer", "code": "OK", "protocol": "grpc"}) or 0,
        "batch_rows": read("edgecnn_batch_size_sum", labels) or 0,
        "queue_waits": read("edgecnn_queue_wait_seconds_count", labels) or 0,
        "nonfinite": read("edgecnn_nonfinite_inputs_total", labels) or 0,
    }


def _logits(outcome: InferOutcome) -> np.ndarray:
    return outcome.logits


def now(plane: DataPlane, name: str, version: str, tensor: InputTensor, output: str | None = None):
    """What ModelInfer's answer at once gives (None where it leaves the request to infer())."""
    simple = plane.simple_request(name, version, tensor, output)
    return None if simple is None or not simple.runs_now() else plane.answer_now(simple, _logits, "grpc")


async def _infer_both_ways(plane: DataPlane, x: np.ndarray, simple_path) -> tuple[np.ndarray, np.ndarray]:
    fast = await simple_path(plane, x)
    with RequestScope(plane, GRPC, "ModelInfer") as call:
        general = await plane.infer("lenet5", "1", [tensor(x)], [], call)
    return fast, general.logits


async def _answered_now(plane: DataPlane, x: np.ndarray) -> np.ndarray:
    simple = plane.simple_request("lenet5", "1", tensor(x), None)
    assert simple.runs_now()
    return plane.answer_now(simple, _logits, "grpc")


async def _through_the_batcher(plane: DataPlane, x: np.ndarray) -> np.ndarray:
    """As ModelInfer takes a simple request that waits for a worker thread: in a RequestScope."""
    simple = plane.simple_request("lenet5", "1", tensor(x), None)
    assert not simple.runs_now()
    with RequestScope(plane, GRPC, "ModelInfer") as call:
        return await plane.infer_simple(simple, call, _logits)


@pytest.mark.parametrize("simple_path", [_answered_now, _through_the_batcher], ids=["at once", "through the batcher"])
def test_simple_requests_answer_and_count_as_infer_does(plane, repository, samples, monkeypatch, simple_path):
    """The simple path (one raw input, the logits), answered at once or through the batcher,
    gives infer()'s answer and adds to the same statistics and metrics, a non-finite input included."""
    if simple_path is _through_the_batcher:
        batcher = plane.batcher("lenet5", 1)
        monkeypatch.setattr(batcher, "inline_max_s", 0.0)
        monkeypatch.setattr(batcher, "inline_idle_max_s", 0.0)
    x = samples["x"][:2].copy()
    x[1, 0, 0, 0] = np.inf
    before = _numbers(plane, "lenet5", "1")
    fast, general = asyncio.run(_infer_both_ways(plane, x, simple_path))
    assert fast is not None
    np.testing.assert_array_equal(fast, general)
    np.testing.assert_allclose(fast[:1], reference_logits(repository["v1"], x[:1]), rtol=1e-5, atol=1e-6)
    after = _numbers(plane, "lenet5", "1")
    added = {key: after[key] - before[key] for key in after}
    assert added == {
        "inference_count": 4, "execution_count": 2, "success_count": 2, "fail_count": 0, "queue_count": 2,
        "compute_input_count": 2, "compute_infer_count": 2, "compute_output_count": 2, "cache_hit_count": 0,
        "cache_miss_count": 0, "requests": 2, "batch_rows": 4, "queue_waits": 2, "nonfinite": 2,
    }  # fmt: skip


def test_simple_request_leaves_every_other_request_to_infer(plane, samples, monkeypatch):
    """None (infer() takes it, with its error messages): a model or version not served, another
    input name or shape, typed values, a batch over the limit, an output of another name, while
    draining, a refused non-finite input. A request for the worker threads is simple but does
    not run at once."""
    x = samples["x"][:1]
    simple = plane.simple_request
    assert simple("nope", "", tensor(x), None) is None
    assert simple("lenet5", "7", tensor(x), None) is None
    assert simple("lenet5", "1", tensor(x)._replace(name="image"), None) is None
    assert simple("lenet5", "1", tensor(samples["x"][:1, :, :14]), None) is None
    assert simple("lenet5", "1", InputTensor("input", "FP32", x.shape, values=x.ravel().tolist()), None) is None
    assert simple("lenet5", "1", tensor(samples["x"][:9]), None) is None  # max batch 8
    assert simple("lenet5", "1", tensor(x), "probs") is None
    assert now(plane, "lenet5", "1", tensor(x), "logits") is not None
    batcher = plane.batcher("lenet5", 1)
    monkeypatch.setattr(batcher, "inline_max_s", 0.0)
    monkeypatch.setattr(batcher, "inline_idle_max_s", 0.0)
    queued = simple("lenet5", "1", tensor(x), None)
    assert queued is not None and not queued.runs_now(), "a call for the worker threads"
    monkeypatch.undo()
    monkeypatch.setattr(plane, "reject_nonfinite", True)
    assert simple("lenet5", "1", tensor(np.full_like(x, np.nan)), None) is None
    monkeypatch.setattr(plane, "_draining_since", 0.0)
    assert simple("lenet5", "1", tensor(x), None) is None


def test_answer_now_counts_an_onnx_runtime_failure_as_internal(plane, samples, monkeypatch):
    batcher = plane.batcher("lenet5", 2)

    def broken(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("ORT broke")

    monkeypatch.setattr(batcher.mv, "run", broken)
    failed = plane.statistics("lenet5", "2")[0]["inference_stats"]["fail"]["count"]
    read = plane.metrics.registry.get_sample_value
    internal = {"model": "lenet5", "version": "2", "api": "ModelInfer", "code": "INTERNAL", "protocol": "grpc"}
    counted = read("edgecnn_requests_total", internal) or 0
    with pytest.raises(ServingError) as info:
        now(plane, "lenet5", "2", tensor(samples["x"][:1]))
    assert info.value.code.name == "INTERNAL" and info.value.message == "internal error in ModelInfer: RuntimeError: ORT broke"
    assert plane.statistics("lenet5", "2")[0]["inference_stats"]["fail"]["count"] == failed + 1
    assert read("edgecnn_requests_total", internal) == counted + 1
    assert plane.inflight == 0


def test_statistics_count_a_request_in_every_field_at_once(plane, samples, monkeypatch):
    """Triton's counts stay equal in every snapshot (perf_analyzer refuses a window whose compute
    counts differ): a batch computed on a worker thread adds its requests' queue and infer counts
    with their success, not when the batch ends, before those requests resume."""
    batcher = plane.batcher("lenet5", 1)
    monkeypatch.setattr(batcher, "inline_max_s", 0.0)
    monkeypatch.setattr(batcher, "inline_idle_max_s", 0.0)
    stats = batcher.stats
    fields = ("success", "queue", "compute_input", "compute_infer", "compute_output")
    snapshots: list[tuple[int, ...]] = []
    executed = VersionStatistics.executed

    def snapshot_after(self: VersionStatistics, *args, **kwargs) -> None:
        executed(self, *args, **kwargs)
        if self is stats:
            snapshots.append(tuple(getattr(stats, f).count for f in fields))

    monkeypatch.setattr(VersionStatistics, "executed", snapshot_after)
    before = tuple(getattr(stats, f).count for f in fields)

    async def burst():
        await asyncio.gather(*(plane.infer("lenet5", "1", [tensor(samples["x"][i : i + 1])]) for i in range(5)))

    asyncio.run(burst())
    assert len(snapshots) == 5 and all(len(set(counts)) == 1 for counts in snapshots), snapshots
    assert tuple(getattr(stats, f).count for f in fields) == tuple(n + 5 for n in before)
