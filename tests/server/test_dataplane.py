"""The data plane's operations called directly, as every front end calls them (no gRPC)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgecnn import repository as repo
from edgecnn.server import dataplane
from edgecnn.server.dataplane import DRAINING, LOADING, Call, DataPlane
from edgecnn.server.device import CPU
from edgecnn.server.errors import InvalidArgument, NotFound, Unavailable
from edgecnn.server.images import ImageInput
from edgecnn.server.metrics import Metrics
from edgecnn.server.model_version import ModelLoader
from edgecnn.server.registry import ModelRegistry
from edgecnn.server.settings import Settings
from edgecnn.server.tensor_checks import InputTensor, RequestedOutput
from tests.onnx_models import FASHION_CLASSES, png_bytes, reference_logits, sample_images


def loaded(repository_dir, workers: int = 2) -> ModelRegistry:
    """Every version of the repository, opened as the server opens them."""
    loader = ModelLoader(Settings(repository=repository_dir, device="cpu"), [CPU], workers=workers)
    return ModelRegistry([loader.load(e, repo.read_config(e.model_dir)) for e in repo.list_models(repository_dir)])


def tensor(x: np.ndarray) -> InputTensor:
    return InputTensor("input", "FP32", x.shape, raw=x.astype("<f4").tobytes())


@pytest.fixture(scope="module")
def plane(repository):
    executor = ThreadPoolExecutor(2)
    plane = DataPlane(Metrics())
    assert plane.refusal() == LOADING and not plane.ready()
    registry = loaded(repository["dir"])
    asyncio.run(_serve(plane, registry, executor))
    yield plane
    executor.shutdown()


async def _serve(plane: DataPlane, registry: ModelRegistry, executor) -> None:
    plane.serve(registry, executor)  # set_model schedules on the running loop


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
    with ThreadPoolExecutor(1) as executor:
        asyncio.run(_serve(plane, loaded(repository["dir"], workers=1), executor))
        plane.start_drain()
        assert plane.refusal() == DRAINING and not plane.ready() and not plane.model_ready("lenet5")
        assert {e.state for e in plane.repository_index()} == {"UNAVAILABLE"} and plane.repository_index(ready_only=True) == []
    with pytest.raises(Unavailable, match="loading"):
        fresh = DataPlane(Metrics())  # a version it does not serve (yet) has no batcher
        dataplane._computed(fresh._served_by(plane.model_info("lenet5").model)[0], np.zeros((1, 1, 28, 28), np.float32))
