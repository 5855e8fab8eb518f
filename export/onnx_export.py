"""Export a training run into a model repository, atomically and only when it verifies.

The version is built in a staging folder inside the repository (same filesystem) and renamed
into place at the end; any failure before that leaves the repository exactly as it was.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from edgecnn.export.checks import check_onnx
from edgecnn.export.data import dataset_images, random_inputs, run_data_dir
from edgecnn.export.metadata import CALIBRATION_KEY, build_metadata, set_metadata
from edgecnn.export.quantize import QUANTIZATIONS, convert_fp16, quantize_int8
from edgecnn.export.verify import (
    DEFAULT_SAMPLES,
    DEFAULT_TEST_IMAGES,
    Thresholds,
    format_report,
    verify_onnx,
    write_report,
)
from edgecnn.repository import (
    CONFIG_NAME,
    DEFAULT_MAX_BATCH_SIZE,
    INPUT_NAME,
    LABELS_NAME,
    MODEL_FILENAME,
    OUTPUT_NAME,
    VERIFICATION_NAME,
    ModelVersionPath,
    build_config,
    config_to_text,
    next_version,
    read_config,
    write_labels,
)
from edgecnn.training.checkpoint import CHECKPOINT_NAME, file_sha256, load_checkpoint

log = logging.getLogger(__name__)

# torch 2.14's dynamo exporter implements opset 18 natively; lower opsets go through a
# version converter, so 18 gives the cleanest graph.
DEFAULT_OPSET = 18
MIN_OPSET = 17
DEFAULT_CALIBRATION_IMAGES = 512
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ExportError(RuntimeError):
    pass


class VerificationFailed(ExportError):
    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__("verification failed, repository left unchanged:\n" + format_report(report))
        self.report = report


def to_onnx(
    model: nn.Module, input_shape: Sequence[int], *, opset: int | None = None, output_name: str = OUTPUT_NAME
) -> onnx.ModelProto:
    """The one conversion path: torch.onnx's dynamo exporter, float32 NCHW input with a dynamic batch."""
    opset = DEFAULT_OPSET if opset is None else opset
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, not {opset}")
    example = torch.randn((2, *input_shape), generator=torch.Generator().manual_seed(0))
    program = torch.onnx.export(
        model.eval(),
        (example,),
        input_names=[INPUT_NAME],
        output_names=[output_name],
        opset_version=opset,
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        optimize=True,
        verbose=False,
    )
    return program.model_proto


def _checkpoint_path(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_NAME if run_dir.is_dir() else run_dir


def _calibration_images(dataset: str, input_shape: list[int], count: int, data_dir: str | None) -> tuple[np.ndarray, str]:
    images, why = dataset_images(dataset, "train", None, input_shape, data_dir)
    if images is None:
        log.warning("INT8 calibration on %d RANDOM inputs: %s", count, why)
        return random_inputs(count, input_shape, seed=1), f"{count} standard-normal random inputs ({why})"
    pick = np.sort(np.random.default_rng(0).choice(len(images.x), size=min(count, len(images.x)), replace=False))
    return images.x[pick], f"{len(pick)} random images of the {dataset} train split (seed 0)"


def build_variant(
    fp32: onnx.ModelProto,
    quantize: str,
    *,
    dataset: str,
    input_shape: list[int],
    data_dir: str | None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The requested variant of an FP32 model, plus extra metadata describing how it was made."""
    if quantize == "none":
        return fp32, {}
    if quantize == "fp16":
        return convert_fp16(fp32), {}
    if quantize == "int8":
        images, source = _calibration_images(dataset, input_shape, calibration_images, data_dir)
        return quantize_int8(fp32, images), {CALIBRATION_KEY: source}
    raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, not {quantize!r}")


def _check_compatible(model_dir: Path, input_shape: list[int], num_classes: int) -> None:
    if not (model_dir / CONFIG_NAME).is_file():
        return
    config = read_config(model_dir)
    have = (list(config.input[0].dims), list(config.output[0].dims)) if config.input and config.output else None
    if have != (input_shape, [num_classes]):
        raise ExportError(
            f"{model_dir} holds a model with input/output dims {have}; this run has {input_shape} -> [{num_classes}]. "
            "Export it under another --name"
        )


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def export_run(
    run_dir: str | Path,
    repository: str | Path,
    *,
    name: str | None = None,
    version: int | None = None,
    opset: int | None = None,
    quantize: str = "none",
    verify: bool = True,
    data_dir: str | Path | None = None,
    samples: int = DEFAULT_SAMPLES,
    test_images: int | None = DEFAULT_TEST_IMAGES,
    thresholds: Thresholds = Thresholds(),
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> ModelVersionPath:
    """Export a training run (its dir or model.pt) as version `version` of `name` in `repository`."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, not {quantize!r}")
    run_dir = Path(run_dir)
    checkpoint = _checkpoint_path(run_dir)
    model, meta = load_checkpoint(checkpoint)
    name = name or meta["model"]
    if not _NAME_RE.match(name):
        raise ExportError(f"model name {name!r} must be letters, digits, '.', '_' or '-', not starting with '.' or '-'")
    repository = Path(repository)
    model_dir = repository / name
    version = next_version(model_dir) if version is None else version
    if version < 1:
        raise ExportError(f"version must be a positive integer, not {version}")
    if (model_dir / str(version)).exists():
        raise ExportError(f"{model_dir / str(version)} already exists; pick another --version or leave it out")
    input_shape = [int(v) for v in meta["input_shape"]]
    classes = list(meta["classes"])
    _check_compatible(model_dir, input_shape, len(classes))
    data_dir = str(data_dir) if data_dir is not None else run_data_dir(checkpoint.parent)

    log.info("converting %s (%s) to ONNX", checkpoint, meta["model"])
    fp32 = to_onnx(model, input_shape, opset=opset)
    onnx_model, extra = build_variant(
        fp32, quantize, dataset=meta["dataset"], input_shape=input_shape, data_dir=data_dir,
        calibration_images=calibration_images,
    )
    metadata = build_metadata(meta, checkpoint, file_sha256(checkpoint), quantize)
    set_metadata(onnx_model, metadata)
    for key, value in extra.items():
        onnx_model.metadata_props.add(key=key, value=value)
    check_onnx(onnx_model, input_shape, len(classes))

    created_repository = not repository.exists()
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=repository))
    try:
        new_model = not model_dir.exists()
        staged_model_dir = staging / name
        staged_version = staged_model_dir / str(version)
        staged_version.mkdir(parents=True)
        onnx.save(onnx_model, staged_version / MODEL_FILENAME)
        if verify:
            report = verify_onnx(
                staged_version / MODEL_FILENAME, model, metadata, samples=samples, test_images=test_images,
                thresholds=thresholds, data_dir=data_dir,
            )
            if not report["passed"]:
                raise VerificationFailed(report)
            write_report(report, staged_version / VERIFICATION_NAME)
        config_text = config_to_text(build_config(name, input_shape, len(classes), max_batch_size))
        if new_model:
            (staged_model_dir / CONFIG_NAME).write_text(config_text)
            write_labels(staged_model_dir, classes)
            os.rename(staged_model_dir, model_dir)  # atomic; fails if another export created it meanwhile
        else:
            os.rename(staged_version, model_dir / str(version))
            config_path = model_dir / CONFIG_NAME
            if not config_path.is_file() or config_path.read_text() != config_text:
                _write_text_atomic(config_path, config_text)
            write_labels(staged_model_dir, classes)
            (staged_model_dir / LABELS_NAME).replace(model_dir / LABELS_NAME)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_repository:
            shutil.rmtree(repository, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    result = ModelVersionPath(name, version, model_dir)
    log.info("exported %s", result.onnx_path)
    return result
