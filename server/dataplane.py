"""The data plane: the one place that owns the served models, their batchers, readiness and
the drain, with the operations every front end needs. Front ends (the gRPC servicers) only
convert between their wire format and these calls (as MLServer's and KServe's data planes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from edgecnn import repository as repo
from edgecnn.protos import model_config_pb2

from .batching import Batcher, Computed
from .compute_threads import ComputeThreads
from .errors import InvalidArgument, NotFound, Unavailable, internal_error
from .images import ImageInput, has_encoded, images_to_batch, softmax
from .metrics import Metrics
from .model_version import ModelVersion
from .registry import ModelRegistry
from .settings import DEFAULT_MAX_IMAGE_PIXELS
from .statistics import VersionStatistics
from .tensor_checks import DATATYPE, InferOutcome, InputTensor, RequestedOutput, class_count, input_batch, top_classes

if TYPE_CHECKING:
    from .repository_manager import RepositoryManager

log = logging.getLogger(__name__)
F32 = np.dtype("<f4")

DRAINING = "server is shutting down and takes no new requests; retry on another replica"
LOADING = "server is loading models and takes no requests yet; retry when it reports SERVING"


class Call:
    """Per-request labels (for the request metrics) that the data plane fills in once it knows
    the model."""

    __slots__ = ("model", "version", "epoch")

    def __init__(self) -> None:
        self.model = ""
        self.version = ""
        self.epoch: tuple[str, int] | None = None  # (model, its epoch) when the request looked the model up

    def label(self, mv: ModelVersion) -> None:
        self.model = mv.name
        self.version = mv.version_str


class SimpleRequest(NamedTuple):
    """The request most clients send, checked and decoded (DataPlane.simple_request): one raw
    FP32 input the model takes as it is, its logits asked for."""

    mv: ModelVersion
    batcher: Batcher
    x: np.ndarray
    start: int  # perf_counter_ns when its checks began (compute_input counts them)
    decoded: int

    def runs_now(self) -> bool:
        """It runs at once on the event loop (Batcher.runs_now; its call not yet counted open)."""
        return self.batcher.runs_now(len(self.x), call_counted=False)


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
    def __init__(
        self, metrics: Metrics, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, reject_nonfinite: bool = False
    ) -> None:
        self.metrics = metrics
        self.max_image_pixels = max_image_pixels
        self.reject_nonfinite = reject_nonfinite  # ModelInfer only; Classify always refuses them
        self._registry = ModelRegistry([])
        self._batchers: dict[tuple[str, int], Batcher] = {}
        self._retiring: list[Batcher] = []  # versions no longer looked up, finishing their requests
        self._threads: ComputeThreads | None = None
        # Requests in flight by the model they looked up and its epoch then (a model's epoch
        # advances at every swap of its versions): a version that left in epoch E is freed once
        # no request of its model from an epoch <= E is in flight.
        self._epochs: dict[str, int] = {}
        self._epoch_users: dict[tuple[str, int], int] = {}
        self.manager: RepositoryManager | None = None  # the live repository (app.py sets it)
        self._ready = False
        self._draining_since: float | None = None  # time.monotonic() of the drain's start
        self._intake_s = 0.0
        self.inflight = 0  # requests inside a front end's handler now (event-loop thread only)
        self.open_calls = 0  # requests taken and not yet answered (their answer may be on its way out)
        self.last_intake = 0.0  # time.monotonic() of the latest request received
        metrics.track_inflight(lambda: self.inflight)

    # --- lifecycle (the server app) ---

    def serve(self, registry: ModelRegistry, threads: ComputeThreads) -> None:
        """Take the loaded models, give each version its batcher, and turn ready."""
        self.attach(threads)
        for name in {mv.name for mv in registry.all()}:
            self.set_model(name, registry.versions_of(name))
        self.mark_ready()

    def attach(self, threads: ComputeThreads) -> None:
        """The worker threads the batchers hand ONNX Runtime calls to."""
        self._threads = threads

    def mark_ready(self) -> None:
        self._ready = True
        self.metrics.ready.set(1)

    def set_model(self, name: str, versions: list[ModelVersion]) -> list[tuple[ModelVersion, asyncio.Future]]:
        """Serve exactly these versions of the model from the next request on (none: unload
        it). Versions kept keep their batcher; each one that leaves retires: its queued and
        running requests finish on it. Returns (version, future done once it is drained)."""
        assert self._threads is not None, "attach() first"
        leaving = [mv for mv in self._registry.versions_of(name) if all(mv is not other for other in versions)]
        for mv in versions:
            key = (mv.name, mv.version)
            current = self._batchers.get(key)
            if current is None or current.mv is not mv:
                if current is not None:
                    self._retiring.append(current)
                self._batchers[key] = Batcher(mv, self._threads, self.metrics.add_model(mv), self.calls_open)
        for mv in leaving:
            key = (mv.name, mv.version)
            if key in self._batchers and self._batchers[key].mv is mv:
                self._retiring.append(self._batchers.pop(key))
        self._registry.set_versions(name, versions)
        left_in = self._epochs.get(name, 0)
        self._epochs[name] = left_in + 1
        loop = asyncio.get_running_loop()
        return [(mv, loop.create_task(self._retire(mv, left_in))) for mv in leaving]

    def _may_use(self, name: str, epoch: int) -> bool:
        """Some request in flight looked model `name` up in `epoch` or before."""
        return any(model == name and e <= epoch for model, e in self._epoch_users)

    async def _retire(self, mv: ModelVersion, left_in: int) -> None:
        """Once no request that could still use mv is in flight and its batcher is idle, free it."""
        batcher = next(b for b in self._retiring if b.mv is mv)
        while self._may_use(mv.name, left_in) or not batcher.idle:
            await asyncio.sleep(0.005)
        self._retiring.remove(batcher)
        if (mv.name, mv.version) not in self._batchers:
            self.metrics.remove_model(mv)

    def start_drain(self, intake_s: float = 0.0) -> None:
        """Not ready from now on; requests received within intake_s are still served (those that
        reached the transport before the drain began and waited for the event loop), later ones
        are refused."""
        self._draining_since = time.monotonic()
        self._intake_s = intake_s
        self.metrics.ready.set(0)

    async def stop_batchers(self, deadline: float) -> None:
        """Let every batcher finish its work until the deadline (time.monotonic), then fail the rest."""
        for batcher in [*self._batchers.values(), *self._retiring]:
            await batcher.stop(deadline)

    def refusal(self) -> str | None:
        """Why a new request is refused now (UNAVAILABLE), or None while serving."""
        if self._draining_since is not None and time.monotonic() - self._draining_since >= self._intake_s:
            return DRAINING
        return None if self._ready else LOADING

    def call_received(self) -> bool:
        """A front end received a request. True when it is taken (not refused): then
        call_answered once its answer is sent (or its call ended); the drain waits for those."""
        self.last_intake = time.monotonic()
        if self.refusal() is not None:
            return False
        self.open_calls += 1
        return True

    def call_answered(self, *_done: object) -> None:
        """The answer of a call taken is sent (_done: what a transport's done callback passes)."""
        self.open_calls -= 1

    def calls_open(self) -> int:
        return self.open_calls

    def request_started(self) -> None:
        """A request is in flight (the drain waits for these) until request_finished."""
        self.inflight += 1

    def request_finished(self, call: Call | None = None) -> None:
        """The request is no longer in flight; a version it looked up through `call` may be freed."""
        self.inflight -= 1
        if call is not None and call.epoch is not None:
            left = self._epoch_users[call.epoch] - 1
            if left:
                self._epoch_users[call.epoch] = left
            else:
                del self._epoch_users[call.epoch]

    def model_names(self) -> list[str]:
        return sorted({mv.name for mv in self._registry.all()})

    def providers(self) -> list[str]:
        return sorted({mv.provider for mv in self._registry.all()})

    # --- the operations of every front end ---

    def live(self) -> bool:
        return True

    def serving(self) -> bool:
        """Loaded and not draining (whatever the models' states)."""
        return self._ready and self._draining_since is None

    def ready(self) -> bool:
        """ServerReady: serving, and with strict readiness every model that should serve does."""
        return self.serving() and (self.manager is None or self.manager.ready())

    def versions_of(self, name: str) -> list[ModelVersion]:
        return self._registry.versions_of(name)

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self._registry.get(name, version)
        except NotFound:
            return False
        return self.serving()

    def _model(self, name: str, version: str, call: Call | None) -> ModelVersion:
        mv = self._registry.get(name, version)
        if call is not None:
            self._pin(mv, call)
        return mv

    def _pin(self, mv: ModelVersion, call: Call) -> None:
        """Label the call with mv, and keep mv from being freed while the call is in flight."""
        call.label(mv)
        if call.epoch is None:
            call.epoch = (mv.name, self._epochs.get(mv.name, 0))
            self._epoch_users[call.epoch] = self._epoch_users.get(call.epoch, 0) + 1

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
        encode: Callable[[InferOutcome], Any] | None = None,
    ) -> Any:
        """The InferOutcome, or encode(outcome) when given: the front end's encoding is then
        timed as the request's compute_output (statistics.py)."""
        mv = self._model(name, version, call)
        batcher, stats = self._served_by(mv)
        start = perf_counter_ns()
        try:
            x = input_batch(inputs, mv, self.reject_nonfinite, self.metrics.count_nonfinite)
            count = class_count(outputs, mv)
        except BaseException:
            stats.failed(perf_counter_ns() - start)
            raise
        return await self._answer(mv, batcher, stats, x, count, start, perf_counter_ns(), encode)

    async def _answer(
        self,
        mv: ModelVersion,
        batcher: Batcher | None,
        stats: VersionStatistics,
        x: np.ndarray,
        count: int,
        start: int,
        decoded: int,
        encode: Callable[[InferOutcome], Any] | None,
    ) -> Any:
        """A checked request's answer from its batcher, counted in its statistics."""
        try:
            result = await _computed(batcher, x)
            outcome = InferOutcome(mv, result.logits, count)
            computed = perf_counter_ns()
            answer = outcome if encode is None else encode(outcome)
        except BaseException:
            stats.failed(perf_counter_ns() - start)
            raise
        stats.succeeded(start, decoded, computed, perf_counter_ns(), result.queue_ns, result.infer_ns)
        return answer

    def simple_request(self, name: str, version: str, tensor: InputTensor, output: str | None) -> SimpleRequest | None:
        """The request most clients send, checked and decoded without infer()'s general
        decoding: one raw FP32 input the model takes as it is, its logits asked for (`output`
        None, or the model's output with no parameters), a version with a batcher. None: not
        such a request, or not now (loading, draining, a non-finite input refused): infer()
        takes it, with its error messages. A non-finite input accepted is counted here."""
        if not self._ready or self._draining_since is not None:
            return None
        mv = self._registry.lookup(name, version)
        if mv is None or tensor.name != mv.input_name or tensor.datatype != DATATYPE or (output is not None and output != mv.output_name):
            return None
        batcher = self._batchers.get((mv.name, mv.version))
        shape, raw = tensor.shape, tensor.raw
        if batcher is None or batcher.mv is not mv or len(shape) != 4 or shape[1:] != mv.input_shape or raw is None:
            return None
        n = shape[0]
        start = perf_counter_ns()  # compute_input counts the checks too, as infer()'s does
        if not 1 <= n <= mv.serving.batch_limit or len(raw) != n * mv.sample_nbytes:
            return None
        x = np.frombuffer(raw, dtype=F32).reshape(shape)
        if not np.isfinite(x).all():
            if self.reject_nonfinite:
                return None
            self.metrics.count_nonfinite(mv)
        return SimpleRequest(mv, batcher, x, start, perf_counter_ns())

    async def infer_simple(self, request: SimpleRequest, call: Call, encode: Callable[[InferOutcome], Any]) -> Any:
        """encode(outcome) of a simple request that does not run at once (a front end's
        RequestScope holds `call`), with infer()'s statistics; nothing awaited since
        simple_request looked its version up."""
        self._pin(request.mv, call)
        batcher = request.batcher
        return await self._answer(request.mv, batcher, batcher.stats, request.x, 0, request.start, request.decoded, encode)

    def answer_now(self, request: SimpleRequest, encode: Callable[[InferOutcome], Any], protocol: str) -> Any:
        """encode(outcome) of a simple request that runs at once (request.runs_now()), computed
        on the event loop, with the metrics and statistics infer() gives it, without its
        coroutines and per-call objects: nothing here awaits, so no drain or version swap can
        come between the lookup and the answer. The front end still marks the call received and
        answered (call_received, call_answered).
        Raises ServingError (INTERNAL, counted) when ONNX Runtime or the encoding fails."""
        mv, batcher, start = request.mv, request.batcher, request.start
        stats = batcher.stats
        self.inflight += 1
        try:
            result = batcher.run_now(request.x)
            computed = perf_counter_ns()
            answer = encode(InferOutcome(mv, result.logits, 0))
        except Exception as exc:
            took = perf_counter_ns() - start
            stats.failed(took)
            log.error("ModelInfer (%s) failed", protocol, exc_info=exc)
            self.metrics.observe_request(mv.name, mv.version_str, "ModelInfer", "INTERNAL", took / 1e9, protocol=protocol)
            raise internal_error("ModelInfer", exc) from exc
        finally:
            self.inflight -= 1
        end = perf_counter_ns()
        stats.succeeded(start, request.decoded, computed, end, 0, result.infer_ns)
        self.metrics.observe_request(mv.name, mv.version_str, "ModelInfer", "OK", (end - start) / 1e9, protocol=protocol)
        return answer

    async def classify(
        self, name: str, version: str, images: Sequence[ImageInput], top_k: int = 1, call: Call | None = None
    ) -> Classification:
        mv = self._model(name, version, call)
        batcher, stats = self._served_by(mv)
        start = perf_counter_ns()
        try:
            limit = mv.serving.batch_limit
            if len(images) > limit:
                raise InvalidArgument(f"{len(images)} images exceed the max batch size of model {mv.name!r} ({limit})")
            if has_encoded(images):  # decoding is blocking work
                x = await asyncio.to_thread(images_to_batch, images, mv, self.max_image_pixels)
            else:
                x = images_to_batch(images, mv)
            decoded = perf_counter_ns()
            result = await _computed(batcher, x)
            computed = perf_counter_ns()
            scores = softmax(result.logits)
            k = min(max(top_k, 1), mv.num_classes)
            results = [
                [Prediction(mv.labels[i], int(i), float(row[i])) for i in indices]
                for row, indices in zip(scores, top_classes(scores, k))
            ]
        except BaseException:
            stats.failed(perf_counter_ns() - start)
            raise
        stats.succeeded(start, decoded, computed, perf_counter_ns(), result.queue_ns, result.infer_ns)
        return Classification(mv, results)

    def statistics(self, name: str = "", version: str = "") -> list[dict]:
        """Triton's ModelStatistics (as JSON, statistics.py) of every served version of every
        model (name empty), of every served version of one model (version empty), or of one."""
        if not name:
            served = self._registry.all()
        elif version:
            served = [self._registry.get(name, version)]
        else:
            self._registry.get(name)  # NotFound for an unknown model
            served = self._registry.versions_of(name)
        return [
            batcher.stats.as_dict(mv.name, mv.version_str)
            for mv in served
            if (batcher := self._batcher_of(mv)) is not None
        ]

    def _served_by(self, mv: ModelVersion) -> tuple[Batcher | None, VersionStatistics]:
        """mv's batcher, looked up once per request, and the statistics the request counts in.
        Not served (yet): no batcher, the request fails in _computed with UNAVAILABLE and its
        numbers go nowhere."""
        batcher = self._batcher_of(mv)
        return batcher, (batcher.stats if batcher is not None else VersionStatistics())

    def repository_index(self, ready_only: bool = False) -> list[IndexEntry]:
        serving = self.serving()
        if self.manager is not None:
            return self.manager.index(serving, ready_only)
        state = "READY" if serving else "UNAVAILABLE"
        if ready_only and state != "READY":
            return []
        return [IndexEntry(mv.name, mv.version_str, state) for mv in self._registry.all()]

    @property
    def model_control(self) -> bool:
        """Whether load and unload requests are taken (--model-control-mode explicit)."""
        return self.manager is not None and self.manager.control_enabled

    async def load_model(self, name: str, config_json: str | None = None) -> None:
        """Load or reload a model from the repository (config_json: a JSON model configuration
        used instead of config.pbtxt)."""
        if self.manager is None:
            raise Unavailable("this server has no model repository manager")
        await self.manager.load_model(name, config_json)

    async def unload_model(self, name: str) -> None:
        if self.manager is None:
            raise Unavailable("this server has no model repository manager")
        await self.manager.unload_model(name)

    def _batcher_of(self, mv: ModelVersion) -> Batcher | None:
        """mv's batcher, also while mv retires (a request that looked it up before a swap)."""
        batcher = self._batchers.get((mv.name, mv.version))
        if batcher is not None and batcher.mv is mv:
            return batcher
        return next((b for b in self._retiring if b.mv is mv), None)

    def batcher(self, name: str, version: int) -> Batcher:
        """A version's batcher (for tests and diagnostics)."""
        return self._batchers[(name, version)]

    def batchers(self) -> list[Batcher]:
        return list(self._batchers.values())


def _computed(batcher: Batcher | None, x: np.ndarray) -> Awaitable[Computed]:
    """The batcher's logits for x (UNAVAILABLE while the version is not yet served)."""
    if batcher is None:
        raise Unavailable(LOADING)
    return batcher.infer(x)
