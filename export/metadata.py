"""The edgecnn metadata written into every exported ONNX file (keys: edgecnn.repository.Meta)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from edgecnn import __version__
from edgecnn.repository import Meta, decode_metadata, encode_metadata

PIXEL_SCALE = 1.0 / 255.0
# Not one of Meta's consumer keys: where INT8 calibration images came from (provenance only).
CALIBRATION_KEY = "edgecnn.calibration"


def build_metadata(meta: dict[str, Any], checkpoint: Path, checkpoint_sha256: str, quantization: str) -> dict[str, Any]:
    """Metadata for a model rebuilt from a checkpoint's meta dict (see training.checkpoint)."""
    import torch  # the exporter's torch version is what made the graph

    return {
        Meta.MODEL: meta["model"],
        Meta.LABELS: list(meta["classes"]),
        Meta.MEAN: [float(v) for v in meta["mean"]],
        Meta.STD: [float(v) for v in meta["std"]],
        Meta.PIXEL_SCALE: PIXEL_SCALE,
        Meta.INPUT_LAYOUT: "NCHW",
        Meta.INPUT_SHAPE: [int(v) for v in meta["input_shape"]],
        Meta.PARAMS: int(meta["params"]),
        Meta.DATASET: meta["dataset"],
        Meta.TEST_ACCURACY: meta.get("test_accuracy"),
        Meta.CHECKPOINT_SHA256: checkpoint_sha256,
        Meta.CHECKPOINT_FILE: Path(checkpoint).name,  # no machine path in a file that travels
        Meta.TORCH_VERSION: torch.__version__,
        Meta.EDGECNN_VERSION: __version__,
        Meta.QUANTIZATION: quantization,
    }


def set_metadata(model: onnx.ModelProto, values: dict[str, Any]) -> None:
    """Replace the model's edgecnn.* metadata_props with values (other producers' keys stay)."""
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith("edgecnn.")]
    del model.metadata_props[:]
    for key, value in kept + sorted(encode_metadata(values).items()):
        model.metadata_props.add(key=key, value=value)


def read_metadata(model: onnx.ModelProto | str | Path) -> dict[str, Any]:
    """The decoded edgecnn.* metadata of a model or ONNX file."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return decode_metadata({p.key: p.value for p in model.metadata_props if p.key.startswith("edgecnn.")})
