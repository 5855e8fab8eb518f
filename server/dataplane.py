"""The data plane: the one place that owns the served models, their batchers, readiness and
the drain, with the operations every front end needs. Front ends (the gRPC servicers) only
convert between their wire format and these calls (as MLServer's and KServe's data planes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from edgecnn import repository as repo
from edgecnn.protos import model_config_pb2

from .batching import Batcher
from .errors import InvalidArgument, NotFound, Unavailable
from .images import ImageInput, has_encoded, images_to_batch, softmax
from .metrics import Metrics
from .model_version import ModelVersion
from .registry import ModelRegistry
from .settings import DEFAULT_MAX_IMAGE_PIXELS
from .tensor_checks import DATATYPE, InferOutcome, InputTensor, RequestedOutput, class_count, input_batch, top_classes

DRAINING = "server is shutting down and takes no new requests; retry on another replica"
LOADING = "server is loading models and takes no requests yet; retry when it reports SERVING"


class Call:
    """Per-request labels (for the request metrics) that the data plane fills in once it knows
    the model."""

    __slots__ = ("model", "version")

    def __init__(self) -> None:
        self.model = ""
        self.version = ""

    def label(self, mv: ModelVersion) -> None:
        self.model = mv.name
        self.version = mv.version_str


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclass(frozen=True)
class ModelInfo:
    model: ModelVersion
    available_versions: list[int]


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


@dataclass(frozen=True)
class Classification:
    model: ModelVersion
    results: list[list[Prediction]]  # per image, best first


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str  # READY | UNAVAILABLE (Triton's model states)
    reason: str = ""


class DataPlane:
    def __init__(self, metrics: Metrics, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.metrics = metrics
        self.max_image_pixels = max_image_pixels
        self._registry = ModelRegistry([])
        self._batchers: dict[tuple[str, int], Batcher] = {}
        self._ready = False
        self._draining = False
        self.inflight = 0  # requests inside a front end's handler now (event-loop thread only)

    # --- lifecycle (the server app) ---

    def serve(self, registry: ModelRegistry, executor: Executor) -> None:
        """Take the loaded models, give each version its batcher, and turn ready."""
        self._registry = registry
        for mv in registry.all():
            self._batchers[(mv.name, mv.version)] = Batcher(mv, executor, self.metrics.add_model(mv))
        self._ready = True
        self.metrics.ready.set(1)

    def start_drain(self) -> None:
        self._draining = True
        self.metrics.ready.set(0)

    async def stop_batchers(self, deadline: float) -> None:
        """Let every batcher finish its work until the deadline (time.monotonic), then fail the rest."""
        for batcher in self._batchers.values():
            await batcher.stop(deadline)

    def refusal(self) -> str | None:
        """Why a new request is refused now (UNAVAILABLE), or None while serving."""
        if self._draining:
            return DRAINING
        return None if self._ready else LOADING

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count a request as in flight (the drain waits for these) while the block runs."""
        self.metrics.inflight.inc()
        self.inflight += 1
        try:
            yield
        finally:
            self.metrics.inflight.dec()
            self.inflight -= 1

    def model_names(self) -> list[str]:
        return sorted({mv.name for mv in self._registry.all()})

    def providers(self) -> list[str]:
        return sorted({mv.provider for mv in self._registry.all()})

    # --- the operations of every front end ---

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._ready and not self._draining

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self._registry.get(name, version)
        except NotFound:
            return False
        return self.ready()

    def _model(self, name: str, version: str, call: Call | None) -> ModelVersion:
        mv = self._registry.get(name, version)
        if call is not None:
            call.label(mv)
        return mv

    def metadata(self, name: str, version: str = "", call: Call | None = None) -> ModelMetadata:
        mv = self._model(name, version, call)
        batch = -1 if mv.max_batch_size > 0 else 1  # as Triton: a batch dimension when max_batch_size > 0
        return ModelMetadata(
            name=mv.name,
            versions=[v.version_str for v in self._registry.versions_of(mv.name)],
            platform=repo.PLATFORM,
            inputs=[TensorSpec(mv.input_name, DATATYPE, [batch, *mv.input_shape])],
            outputs=[TensorSpec(mv.output_name, DATATYPE, [batch, mv.num_classes])],
        )

    def config(self, name: str, version: str = "", call: Call | None = None) -> model_config_pb2.ModelConfig:
        mv = self._model(name, version, call)
        return mv.serving.effective_config(mv.config)

    def model_info(self, name: str, version: str = "", call: Call | None = None) -> ModelInfo:
        mv = self._model(name, version, call)
        return ModelInfo(mv, [other.version for other in self._registry.versions_of(mv.name)])

    async def infer(
        self,
        name: str,
        version: str,
        inputs: Sequence[InputTensor],
        outputs: Sequence[RequestedOutput] = (),
        call: Call | None = None,
    ) -> InferOutcome:
        mv = self._model(name, version, call)
        x = input_batch(inputs, mv)
        count = class_count(outputs, mv)
        return InferOutcome(mv, await self._run(mv, x), count)

    async def classify(
        self, name: str, version: str, images: Sequence[ImageInput], top_k: int = 1, call: Call | None = None
    ) -> Classification:
        mv = self._model(name, version, call)
        limit = mv.serving.batch_limit
        if len(images) > limit:
            raise InvalidArgument(f"{len(images)} images exceed the max batch size of model {mv.name!r} ({limit})")
        if has_encoded(images):  # decoding is blocking work
            x = await asyncio.to_thread(images_to_batch, images, mv, self.max_image_pixels)
        else:
            x = images_to_batch(images, mv)
        scores = softmax(await self._run(mv, x))
        k = min(max(top_k, 1), mv.num_classes)
        results = [
            [Prediction(mv.labels[i], int(i), float(row[i])) for i in indices]
            for row, indices in zip(scores, top_classes(scores, k))
        ]
        return Classification(mv, results)

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        state = "READY" if self.ready() else "UNAVAILABLE"
        if ready_only and state != "READY":
            return []
        return [IndexEntry(mv.name, mv.version_str, state) for mv in self._registry.all()]

    async def _run(self, mv: ModelVersion, x: np.ndarray) -> np.ndarray:
        batcher = self._batchers.get((mv.name, mv.version))
        if batcher is None:  # not yet serving
            raise Unavailable(LOADING)
        return await batcher.infer(x)

    def batcher(self, name: str, version: int) -> Batcher:
        """A version's batcher (for tests and diagnostics)."""
        return self._batchers[(name, version)]

    def batchers(self) -> list[Batcher]:
        return list(self._batchers.values())
