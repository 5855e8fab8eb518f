"""Export a training run into a model repository, atomically and only when it verifies.

The version (model.onnx, verification.json, selftest.npz) is built in a staging folder inside the
repository (same filesystem). Everything is converted, checked, verified and validated first; the
one change to the repository is the final rename of the staged version (or, for a new model, of
the staged model folder with its config.pbtxt and labels.txt). Any failure before it leaves the
repository exactly as it was, and a new version never rewrites what older versions share
(config.pbtxt, labels.txt).
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

from edgecnn.export.onnx_checks import check_onnx
from edgecnn.export.data import dataset_sample, random_inputs, run_data_dir
from edgecnn.export.metadata import CALIBRATION_KEY, build_metadata, set_metadata
from edgecnn.export.quantize import QUANTIZATIONS, convert_fp16, quantize_int8
from edgecnn.export.selftest_writer import build_selftest, write_selftest
from edgecnn.export.source import load_source
from edgecnn.export.verify import (
    AUTO,
    DEFAULT_SAMPLES,
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
    SELFTEST_NAME,
    VERIFICATION_NAME,
    ModelVersionPath,
    build_config,
    config_to_text,
    next_version,
    read_config,
    read_labels,
    write_labels,
)
from edgecnn.protos.model_config_pb2 import ModelConfig
from edgecnn.training.checkpoint import CHECKPOINT_NAME, file_sha256

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
    try:
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
    except torch.onnx.errors.OnnxExporterError as exc:
        raise ExportError(
            f"torch.onnx could not convert {type(model).__name__} for input [batch, "
            f"{', '.join(map(str, input_shape))}]: {type(exc).__name__}: {_exporter_summary(exc)}"
        ) from exc
    proto = program.model_proto
    produced = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if produced != opset:  # torch.onnx keeps its own opset when it cannot convert to the one asked for
        raise ExportError(f"asked for opset {opset}, but torch.onnx produced opset {produced}; pass an opset it supports (e.g. {produced})")
    return proto


def _exporter_summary(exc: Exception) -> str:
    """The cause line of torch.onnx's long, colored error text."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    _, _, summary = text.partition("## Exception summary")
    lines = [line.strip() for line in (summary or text).splitlines() if line.strip()]
    return lines[0] if lines else "no details"


def _checkpoint_path(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_NAME if run_dir.is_dir() else run_dir


def _calibration_images(
    dataset: str, input_shape: list[int], count: int, data_dir: str | None, allow_random: bool = False
) -> tuple[np.ndarray, str]:
    images, why = dataset_sample(dataset, "train", count, input_shape, data_dir)
    if images is None:
        if not allow_random:
            raise ExportError(
                f"INT8 calibration needs {dataset} training images: {why}. Pass --calibrate-on-random to calibrate "
                "on random inputs instead (fine for size and speed, not for accuracy)"
            )
        log.warning("INT8 calibration on %d RANDOM inputs (--calibrate-on-random): %s", count, why)
        return random_inputs(count, input_shape, seed=1), (
            f"{count} standard-normal random inputs (--calibrate-on-random; {why})"
        )
    return images.x, images.source


def build_variant(
    fp32: onnx.ModelProto,
    quantize: str,
    *,
    dataset: str,
    input_shape: list[int],
    data_dir: str | None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    calibrate_on_random: bool = False,
    calibration_method: str = "minmax",
    int8_exclude: Sequence[str] = (),
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The requested variant of an FP32 model, plus extra metadata describing how it was made.

    INT8 calibrates on the dataset's training images; without them it fails unless
    calibrate_on_random allows random inputs (recorded in the metadata's edgecnn.calibration,
    with a calibration method other than minmax and the nodes int8_exclude keeps in float).
    """
    if quantize == "none":
        return fp32, {}
    if quantize == "fp16":
        return convert_fp16(fp32), {}
    if quantize == "int8":
        images, source = _calibration_images(dataset, input_shape, calibration_images, data_dir, calibrate_on_random)
        if calibration_method != "minmax":
            source += f"; {calibration_method} calibration"
        if int8_exclude:
            source += f"; kept in float: {', '.join(int8_exclude)}"
        quantized = quantize_int8(fp32, images, calibration_method=calibration_method, nodes_to_exclude=int8_exclude)
        return quantized, {CALIBRATION_KEY: source}
    raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, not {quantize!r}")


def _existing_config(model_dir: Path) -> ModelConfig | None:
    """The config of the model already at model_dir; None when there is none (or only an empty folder)."""
    if not model_dir.exists():
        return None
    if not model_dir.is_dir():
        raise ExportError(f"{model_dir} exists and is not a folder")
    if not (model_dir / CONFIG_NAME).is_file():
        if any(model_dir.iterdir()):
            raise ExportError(f"{model_dir} exists but holds no {CONFIG_NAME}: not a model folder; use another --name")
        return None
    return read_config(model_dir)


def _check_compatible(
    model_dir: Path, config: ModelConfig, input_shape: list[int], classes: list[str], max_batch_size: int | None
) -> None:
    """A new version must fit what config.pbtxt and labels.txt already say about the older ones."""
    hint = "config.pbtxt and labels.txt are shared by every version; export it under another --name"
    have = (list(config.input[0].dims), list(config.output[0].dims)) if config.input and config.output else None
    if have != (input_shape, [len(classes)]):
        shown = f"input dims {have[0]} -> output dims {have[1]}" if have else "no input/output"
        raise ExportError(
            f"{model_dir} holds a model with {shown}; this run has input {input_shape} -> {len(classes)} classes. {hint}"
        )
    labels = read_labels(model_dir)
    if labels != classes:
        differ = next((i for i, (a, b) in enumerate(zip(labels, classes)) if a != b), min(len(labels), len(classes)))
        theirs = labels[differ] if differ < len(labels) else None
        ours = classes[differ] if differ < len(classes) else None
        raise ExportError(
            f"{model_dir / LABELS_NAME} lists {len(labels)} labels and this run has {len(classes)} classes; "
            f"they first differ at index {differ}: {theirs!r} vs {ours!r}. {hint}"
        )
    if max_batch_size is not None and max_batch_size != config.max_batch_size:
        raise ExportError(
            f"{model_dir / CONFIG_NAME} has max_batch_size {config.max_batch_size}, not the requested {max_batch_size}; "
            "a new version keeps the model's config (leave --max-batch-size out, or edit config.pbtxt)"
        )


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
    test_images: int | None | str = AUTO,
    thresholds: Thresholds = Thresholds(),
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    max_batch_size: int | None = None,
    calibrate_on_random: bool = False,
    calibration_method: str = "minmax",
    int8_exclude: Sequence[str] = (),
) -> ModelVersionPath:
    """Export a training run (its dir or model.pt) as version `version` of `name` in `repository`.

    max_batch_size goes into a new model's config.pbtxt (default DEFAULT_MAX_BATCH_SIZE); an
    existing model keeps its config, and a different explicit value is refused.
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, not {quantize!r}")
    if calibrate_on_random and quantize != "int8":
        raise ValueError("calibrate_on_random (--calibrate-on-random) only applies to --quantize int8")
    if (calibration_method != "minmax" or int8_exclude) and quantize != "int8":
        raise ValueError("calibration_method and int8_exclude (--calibration-method, --int8-exclude) only apply to --quantize int8")
    if max_batch_size is not None and max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, not {max_batch_size}")
    if calibration_images < 1:
        raise ValueError(f"calibration_images must be >= 1, not {calibration_images}")
    run_dir = Path(run_dir)
    checkpoint = _checkpoint_path(run_dir)
    model, meta = load_source(checkpoint)
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
    existing = _existing_config(model_dir)
    if existing is not None:
        _check_compatible(model_dir, existing, input_shape, classes, max_batch_size)
    data_dir = str(data_dir) if data_dir is not None else run_data_dir(checkpoint.parent)

    log.info("converting %s (%s) to ONNX", checkpoint, meta["model"])
    fp32 = to_onnx(model, input_shape, opset=opset)
    onnx_model, extra = build_variant(
        fp32, quantize, dataset=meta["dataset"], input_shape=input_shape, data_dir=data_dir,
        calibration_images=calibration_images, calibrate_on_random=calibrate_on_random,
        calibration_method=calibration_method, int8_exclude=int8_exclude,
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
        # The server's load-time check: inputs and the CPU logits of the file that passed verification.
        selftest = build_selftest(staged_version / MODEL_FILENAME, metadata, thresholds.atol, thresholds.rtol, data_dir)
        write_selftest(staged_version / SELFTEST_NAME, selftest)
        # The model folder may have changed during the (long) verification: check it again, then
        # make the one change to the repository.
        current = _existing_config(model_dir)
        if current is None:
            batch = DEFAULT_MAX_BATCH_SIZE if max_batch_size is None else max_batch_size
            (staged_model_dir / CONFIG_NAME).write_text(config_to_text(build_config(name, input_shape, len(classes), batch)))
            write_labels(staged_model_dir, classes)
            os.rename(staged_model_dir, model_dir)  # atomic; fails if another export filled model_dir meanwhile
        else:
            _check_compatible(model_dir, current, input_shape, classes, max_batch_size)
            if (model_dir / str(version)).exists():
                raise ExportError(f"{model_dir / str(version)} appeared during the export; pick another --version")
            os.rename(staged_version, model_dir / str(version))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_repository:
            shutil.rmtree(repository, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    result = ModelVersionPath(name, version, model_dir)
    log.info("exported %s", result.onnx_path)
    return result
