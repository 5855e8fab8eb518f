"""The model repository: Triton's layout, shared by the exporter (writes) and the server (reads).

    <repo>/<name>/config.pbtxt            Triton ModelConfig in protobuf text format
    <repo>/<name>/labels.txt              one class label per line
    <repo>/<name>/<version>/model.onnx    float32 NCHW input "input", float32 output "logits"
    <repo>/<name>/<version>/verification.json
    <repo>/<name>/<version>/selftest.npz  golden inputs and logits to check a loaded version with

Everything a consumer needs to preprocess an image and name the class is also inside the
ONNX file as metadata_props under the keys below. No torch here: the server imports this.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format

from edgecnn.protos import model_config_pb2

CONFIG_NAME = "config.pbtxt"
LABELS_NAME = "labels.txt"
MODEL_FILENAME = "model.onnx"
VERIFICATION_NAME = "verification.json"
# np.savez: inputs float32 [N, C, H, W], logits float32 [N, K] (ONNX Runtime CPU on model.onnx),
# atol and rtol float32 scalars (the tolerance check_selftest applies). See export/selftest_writer.py.
SELFTEST_NAME = "selftest.npz"
PLATFORM = "onnxruntime_onnx"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_MAX_BATCH_SIZE = 64


class RepositoryError(ValueError):
    pass


# ONNX metadata_props keys. Lists and numbers are stored as JSON text.
class Meta:
    MODEL = "edgecnn.model"  # architecture name, e.g. lenet5
    LABELS = "edgecnn.labels"  # JSON list of class names, index = logit index
    MEAN = "edgecnn.mean"  # JSON list, per channel, applied after scaling pixels to [0, 1]
    STD = "edgecnn.std"
    PIXEL_SCALE = "edgecnn.pixel_scale"  # "0.00392156862745098": uint8 pixel * scale -> [0, 1]
    INPUT_LAYOUT = "edgecnn.input_layout"  # "NCHW"
    INPUT_SHAPE = "edgecnn.input_shape"  # JSON [C, H, W]
    PARAMS = "edgecnn.params"
    DATASET = "edgecnn.dataset"
    TEST_ACCURACY = "edgecnn.test_accuracy"  # from training, PyTorch FP32
    CHECKPOINT_SHA256 = "edgecnn.checkpoint_sha256"
    # The checkpoint's file name ("model.pt"), never its path: `edgecnn verify --run-dir` says where it is.
    CHECKPOINT_FILE = "edgecnn.checkpoint_file"
    TORCH_VERSION = "edgecnn.torch_version"
    EDGECNN_VERSION = "edgecnn.version"
    QUANTIZATION = "edgecnn.quantization"  # none | int8 | fp16


JSON_KEYS = {Meta.LABELS, Meta.MEAN, Meta.STD, Meta.INPUT_SHAPE, Meta.PARAMS, Meta.TEST_ACCURACY, Meta.PIXEL_SCALE}


def encode_metadata(values: dict[str, Any]) -> dict[str, str]:
    return {k: (json.dumps(v) if k in JSON_KEYS else str(v)) for k, v in values.items()}


def decode_metadata(props: dict[str, str]) -> dict[str, Any]:
    return {k: (json.loads(v) if k in JSON_KEYS else v) for k, v in props.items()}


def build_config(
    name: str,
    input_shape: tuple[int, ...] | list[int],
    num_classes: int,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    max_queue_delay_us: int = 500,
) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig(
        name=name,
        platform=PLATFORM,
        max_batch_size=max_batch_size,
        default_model_filename=MODEL_FILENAME,
    )
    config.version_policy.all.SetInParent()
    config.input.add(
        name=INPUT_NAME,
        data_type=model_config_pb2.TYPE_FP32,
        format=model_config_pb2.ModelInput.FORMAT_NCHW,
        dims=list(input_shape),
    )
    config.output.add(
        name=OUTPUT_NAME, data_type=model_config_pb2.TYPE_FP32, dims=[num_classes], label_filename=LABELS_NAME
    )
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    return config


def config_to_text(config: model_config_pb2.ModelConfig) -> str:
    return text_format.MessageToString(config)


def read_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    path = Path(model_dir) / CONFIG_NAME
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except FileNotFoundError:
        raise RepositoryError(f"{path}: missing (every model folder needs a {CONFIG_NAME})") from None
    except text_format.ParseError as exc:
        raise RepositoryError(f"{path}: not a valid model configuration: {exc}") from None


def read_labels(model_dir: Path) -> list[str]:
    path = Path(model_dir) / LABELS_NAME
    return path.read_text().splitlines() if path.is_file() else []


def write_labels(model_dir: Path, labels: list[str]) -> None:
    (Path(model_dir) / LABELS_NAME).write_text("".join(f"{label}\n" for label in labels))


def versions(model_dir: Path) -> list[int]:
    """The numeric version folders that hold a model file, ascending."""
    found = []
    for child in Path(model_dir).iterdir() if Path(model_dir).is_dir() else []:
        if child.is_dir() and child.name.isdigit() and (child / MODEL_FILENAME).is_file():
            found.append(int(child.name))
    return sorted(found)


def next_version(model_dir: Path) -> int:
    existing = [int(c.name) for c in Path(model_dir).iterdir() if c.name.isdigit()] if Path(model_dir).is_dir() else []
    return max(existing, default=0) + 1


@dataclass(frozen=True)
class ModelVersionPath:
    name: str
    version: int
    model_dir: Path

    @property
    def version_dir(self) -> Path:
        return self.model_dir / str(self.version)

    @property
    def onnx_path(self) -> Path:
        return self.version_dir / MODEL_FILENAME

    @property
    def verification_path(self) -> Path:
        return self.version_dir / VERIFICATION_NAME

    @property
    def selftest_path(self) -> Path:
        return self.version_dir / SELFTEST_NAME


def check_selftest(outputs: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> str | None:
    """None when outputs reproduce a version's selftest.npz logits: every value within
    atol + rtol * |expected| and the same top-1 class in every row; else one line naming the worst row."""
    outputs, expected = np.asarray(outputs), np.asarray(expected)
    if outputs.shape != expected.shape or expected.ndim != 2 or expected.shape[1] == 0:
        return f"outputs have shape {list(outputs.shape)}, expected {list(expected.shape)} (rows x classes)"
    rows = len(expected)
    non_finite = np.flatnonzero(~np.isfinite(outputs).all(axis=1))
    if non_finite.size:
        return f"row {non_finite[0]} of {rows}: non-finite outputs ({non_finite.size} rows have some)"
    error = np.abs(outputs.astype(np.float64) - expected.astype(np.float64))
    allowed = float(atol) + float(rtol) * np.abs(expected.astype(np.float64))
    excess = (error - allowed).max(axis=1, initial=-np.inf)
    got_class, want_class = outputs.argmax(axis=1), expected.argmax(axis=1)
    failing = (excess > 0) | (got_class != want_class)
    if not failing.any():
        return None
    worst = int(np.flatnonzero(failing)[np.argmax(excess[failing])])
    column = int(np.argmax(error[worst] - allowed[worst]))
    reason = (
        f"row {worst} of {rows}: max |error| {error[worst].max():.3g} (at class {column}: allowed "
        f"{allowed[worst, column]:.3g} = atol {float(atol):g} + rtol {float(rtol):g} x |{expected[worst, column]:.4g}|)"
    )
    if got_class[worst] != want_class[worst]:
        reason += f", top-1 class {got_class[worst]} instead of {want_class[worst]}"
    return reason + f"; {int(failing.sum())} of {rows} rows differ"


def list_models(repository: Path) -> list[ModelVersionPath]:
    """Every (model, version) in a repository, sorted by name then version."""
    repository = Path(repository)
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} does not exist or is not a folder")
    found = []
    for model_dir in sorted(p for p in repository.iterdir() if (p / CONFIG_NAME).is_file()):
        for version in versions(model_dir):
            found.append(ModelVersionPath(model_dir.name, version, model_dir))
    return found


def resolve(model_dir: Path, version: int | None = None) -> ModelVersionPath:
    """One version of a model folder; the latest when version is None."""
    model_dir = Path(model_dir)
    available = versions(model_dir)
    if not available:
        raise RepositoryError(f"{model_dir}: no version folder with a {MODEL_FILENAME}")
    if version is None:
        version = available[-1]
    elif version not in available:
        raise RepositoryError(f"{model_dir}: no version {version} (have {', '.join(map(str, available))})")
    return ModelVersionPath(model_dir.name, version, model_dir)
