"""One served model version: its ONNX Runtime session and everything the hot path needs,
computed once at load time."""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import onnxruntime as ort

from edgecnn import repository as repo
from edgecnn.protos import model_config_pb2

from .device import CUDA
from .errors import StartupError
from .onnx_info import opset_version
from .serving_config import ModelServing, resolve_serving
from .sessions import open_session
from .settings import Settings
from .shapes import ShapeBuckets

log = logging.getLogger(__name__)

DEFAULT_PIXEL_SCALE = 1.0 / 255.0
WARMUP_RUNS = 2  # untimed: the first runs allocate buffers (and on CUDA pick kernels)
TIMED_RUNS = 5


@dataclass(frozen=True)
class Verification:
    present: bool
    passed: bool
    summary: str
    details_json: str


@dataclass
class ModelVersion:
    name: str
    version: int
    onnx_path: Path
    session: ort.InferenceSession
    config: model_config_pb2.ModelConfig
    provider: str
    input_name: str
    output_name: str
    input_shape: tuple[int, int, int]  # C, H, W
    labels: list[str]
    mean: np.ndarray  # float32 (C, 1, 1)
    std: np.ndarray
    pixel_scale: float
    architecture: str
    dataset: str
    params: int
    onnx_bytes: int
    opset: int
    quantization: str
    test_accuracy: float
    serving: ModelServing
    verification: Verification
    # False when neither the ONNX metadata nor labels.txt names the classes (labels are "0".."N-1").
    has_labels: bool = True
    # Median seconds of a warm batch-1 run, measured at load (decides inline vs worker thread).
    batch1_s: float = math.nan
    # CUDA: one session per batch size bucket, so no session sees its input shape change (shapes.py).
    shape_buckets: ShapeBuckets | None = None
    # The load-time self-test's result (selftest.npz run on the chosen execution provider).
    selftest: str = "not run"
    # Derived constants for request validation.
    sample_size: int = field(init=False)
    sample_nbytes: int = field(init=False)
    version_str: str = field(init=False)

    def __post_init__(self) -> None:
        self.sample_size = int(np.prod(self.input_shape))
        self.sample_nbytes = self.sample_size * 4
        self.version_str = str(self.version)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def max_batch_size(self) -> int:
        return self.serving.max_batch_size

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a float32 (N, C, H, W) batch; blocking (the batcher decides whether the event
        loop or a worker thread calls it: inline.py)."""
        if self.shape_buckets is not None:
            return self.shape_buckets.run(batch)
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def warm_up(self) -> None:
        """Run batches of zeros before the first request (Triton's model warm-up), one per shape
        bucket too, and record the median batch-1 time; a model that cannot run fails here, at
        start-up."""
        times = []
        for size in self.shape_buckets.sizes if self.shape_buckets else [1]:
            x = np.zeros((size, *self.input_shape), dtype=np.float32)
            try:
                for i in range(WARMUP_RUNS + (TIMED_RUNS if size == 1 else 0)):
                    start = perf_counter()
                    out = self.run(x)
                    if size == 1 and i >= WARMUP_RUNS:
                        times.append(perf_counter() - start)
            except Exception as exc:  # ORT raises its own exception types per failure
                raise StartupError(f"{self.onnx_path}: a warm-up batch of {size} fails in ONNX Runtime: {exc}") from exc
            if out.shape != (size, self.num_classes):
                raise StartupError(
                    f"{self.onnx_path}: a batch of {size} gives logits of shape {list(out.shape)}; expected [{size}, {self.num_classes}]"
                )
        self.batch1_s = statistics.median(times)


def _summarize(report: dict[str, Any]) -> str:
    parts = [
        f"{c.get('inputs')} x{c.get('count')}: max abs error {c.get('max_abs_error', float('nan')):.3g}, "
        f"top-1 agreement {100 * c.get('top1_agreement', float('nan')):.2f}%"
        for c in report.get("comparisons", [])
        if isinstance(c, dict)
    ]
    parts += [f"breach: {b}" for b in report.get("breaches", [])]
    return ("passed" if report.get("passed") else "FAILED") + (f" ({'; '.join(parts)})" if parts else "")


def _read_verification(path: Path) -> Verification:
    if not path.is_file():
        return Verification(False, False, "not verified (no verification.json)", "")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return Verification(True, False, f"unreadable verification.json: {exc}", "")
    try:
        report = json.loads(text)
        return Verification(True, bool(report.get("passed")), _summarize(report), text)
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        return Verification(True, False, f"unreadable verification.json: {exc}", text)


def _input_shape(meta: dict[str, Any], config: model_config_pb2.ModelConfig, session: ort.InferenceSession) -> tuple[int, int, int]:
    if repo.Meta.INPUT_SHAPE in meta:
        shape = [int(d) for d in meta[repo.Meta.INPUT_SHAPE]]
    elif config.input and len(config.input[0].dims) == 3:
        shape = [int(d) for d in config.input[0].dims]
    else:
        shape = list(session.get_inputs()[0].shape[1:])
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise StartupError(f"cannot tell the [C, H, W] input shape of the model (got {shape})")
    return tuple(shape)  # type: ignore[return-value]


def _check_batch_dim(session: ort.InferenceSession, max_batch_size: int, path: Path) -> None:
    """A graph exported with a fixed batch size cannot take merged batches (Triton refuses it too)."""
    dim = session.get_inputs()[0].shape[0]
    if isinstance(dim, int) and (dim != 1 or max_batch_size > 1):
        raise StartupError(
            f"{path}: the input's batch dimension is fixed at {dim}, so max_batch_size {max_batch_size} cannot be served; "
            "export with a dynamic batch axis (edgecnn export does), or serve a batch-1 graph with max_batch_size 0 or 1"
        )


def _per_channel(values: Any, channels: int, default: float, what: str, path: Path) -> np.ndarray:
    if values is None:
        log.warning("%s: no %s in the ONNX metadata; using %s", path, what, default)
        values = [default] * channels
    array = np.asarray(values, dtype=np.float32).reshape(-1)
    if array.size == 1:
        array = np.repeat(array, channels)
    if array.size != channels:
        raise StartupError(f"{path}: {what} has {array.size} values, expected one per channel ({channels})")
    return array.reshape(channels, 1, 1)


@dataclass(frozen=True)
class ModelLoader:
    """Opens model versions the way this server serves them."""

    settings: Settings
    providers: list[str]  # best first (device.providers_for)
    workers: int  # the server's ONNX Runtime worker threads

    def load(self, entry: repo.ModelVersionPath, config: model_config_pb2.ModelConfig) -> ModelVersion:
        """Open, check and warm up one version; StartupError when it cannot be served."""
        path = entry.onnx_path
        try:
            session = open_session(path, self.settings.threads, self.providers)
        except Exception as exc:  # ORT raises its own exception types per failure
            raise StartupError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
        provider = session.get_providers()[0]
        if self.providers[0] == CUDA and provider != CUDA:
            raise StartupError(f"{path}: asked for {CUDA} but ONNX Runtime fell back to {provider}")
        meta = repo.decode_metadata(dict(session.get_modelmeta().custom_metadata_map))
        shape = _input_shape(meta, config, session)
        labels = meta.get(repo.Meta.LABELS) or repo.read_labels(entry.model_dir)
        outputs = session.get_outputs()
        num_classes = outputs[0].shape[-1] if isinstance(outputs[0].shape[-1], int) else len(labels)
        has_labels = bool(labels)
        if not has_labels:
            labels = [str(i) for i in range(num_classes)]
        if num_classes != len(labels):
            raise StartupError(f"{path}: the model has {num_classes} outputs but {len(labels)} labels")
        serving = resolve_serving(config, self.settings, provider, self.workers)
        _check_batch_dim(session, serving.max_batch_size, path)
        accuracy = meta.get(repo.Meta.TEST_ACCURACY)
        mv = ModelVersion(
            name=entry.name,
            version=entry.version,
            onnx_path=path,
            session=session,
            config=config,
            provider=provider,
            input_name=session.get_inputs()[0].name,
            output_name=outputs[0].name,
            input_shape=shape,
            labels=list(labels),
            mean=_per_channel(meta.get(repo.Meta.MEAN), shape[0], 0.0, "mean", path),
            std=_per_channel(meta.get(repo.Meta.STD), shape[0], 1.0, "std", path),
            pixel_scale=float(meta.get(repo.Meta.PIXEL_SCALE, DEFAULT_PIXEL_SCALE)),
            architecture=str(meta.get(repo.Meta.MODEL, "")),
            dataset=str(meta.get(repo.Meta.DATASET, "")),
            params=int(meta.get(repo.Meta.PARAMS, 0)),
            onnx_bytes=path.stat().st_size,
            opset=opset_version(path),
            quantization=str(meta.get(repo.Meta.QUANTIZATION, "none")),
            test_accuracy=float(accuracy) if accuracy is not None else math.nan,
            serving=serving,
            verification=_read_verification(entry.verification_path),
            has_labels=has_labels,
        )
        if serving.batch_buckets:
            mv.shape_buckets = self._open_buckets(mv)
        mv.warm_up()
        mv.selftest = run_selftest(mv, entry.selftest_path)
        return mv

    def _open_buckets(self, mv: ModelVersion) -> ShapeBuckets:
        """mv's session as the batch-1 bucket and a session of the same settings for every other."""
        path = mv.onnx_path
        try:
            buckets = ShapeBuckets(
                mv.session, lambda: open_session(path, self.settings.threads, self.providers),
                mv.max_batch_size, mv.input_name, mv.output_name,
            )
        except Exception as exc:  # e.g. out of GPU memory: every bucket holds its own copy of the weights
            raise StartupError(f"{path}: cannot open a session per batch size bucket (--batch-buckets off avoids them): {exc}") from exc
        fell_back = [size for size, s in buckets.sessions.items() if s.get_providers()[0] != mv.provider]
        if fell_back:
            raise StartupError(f"{path}: the sessions of batch size buckets {fell_back} fell back from {mv.provider}")
        return buckets


def run_selftest(mv: ModelVersion, path: Path) -> str:
    """Run the golden inputs `edgecnn export` stored with the version on the provider chosen and
    compare with the logits it verified; StartupError when they differ (a corrupt or truncated
    file, kernels that disagree, a changed preprocessing contract). Returns a summary."""
    if not path.is_file():
        return f"absent (no {path.name})"
    try:
        with np.load(path) as data:
            inputs, expected = data["inputs"].astype(np.float32), data["logits"]
            atol, rtol = float(data["atol"]), float(data["rtol"])
    except Exception as exc:  # numpy raises several types on a damaged archive
        raise StartupError(f"{path}: unreadable self-test data: {exc}") from exc
    if inputs.ndim != 4 or tuple(inputs.shape[1:]) != mv.input_shape:
        raise StartupError(f"{path}: self-test inputs of shape {list(inputs.shape)} do not fit the model's input [N, {', '.join(map(str, mv.input_shape))}]")
    step = mv.serving.batch_limit
    try:
        outputs = np.concatenate([mv.run(np.ascontiguousarray(inputs[i : i + step])) for i in range(0, len(inputs), step)])
    except Exception as exc:  # ORT raises its own exception types per failure
        raise StartupError(f"{mv.onnx_path}: the self-test fails in ONNX Runtime: {exc}") from exc
    reason = repo.check_selftest(outputs, expected, atol, rtol)
    if reason is not None:
        raise StartupError(f"{mv.onnx_path}: self-test failed on {mv.provider}: {reason}")
    error = float(np.abs(outputs.astype(np.float64) - expected).max())
    return f"passed ({len(inputs)} inputs on {mv.provider}, max abs error {error:.2g}, atol {atol:g}, rtol {rtol:g})"
