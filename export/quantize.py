"""Edge variants of an FP32 ONNX model: static INT8 (QDQ) and FP16, both keeping float32 I/O."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

from edgecnn.repository import INPUT_NAME

QUANTIZATIONS = ("none", "int8", "fp16")


class _BatchReader(CalibrationDataReader):
    def __init__(self, images: np.ndarray, batch_size: int) -> None:
        self._images = images
        self._batch_size = batch_size
        self._batches = self._iterate()

    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self._images), self._batch_size):
            yield {INPUT_NAME: np.ascontiguousarray(self._images[start : start + self._batch_size], dtype=np.float32)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self._iterate()


def quantize_int8(model: onnx.ModelProto, calibration_images: np.ndarray, batch_size: int = 64) -> onnx.ModelProto:
    """Static INT8 in QDQ format with per-channel weights, calibrated (MinMax) on the given images.

    Activations are uint8 and weights int8 (U8S8): the combination ONNX Runtime's x86 CPU kernels
    run fastest; S8S8 measured slower than FP32 on AVX2 here.
    """
    if len(calibration_images) == 0:
        raise ValueError("INT8 calibration needs at least one image")
    with tempfile.TemporaryDirectory(prefix="edgecnn-int8-") as tmp:
        fp32, prepared, quantized = (Path(tmp) / n for n in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(model, fp32)
        quant_pre_process(fp32, prepared)
        quantize_static(
            prepared,
            quantized,
            _BatchReader(calibration_images, batch_size),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        return onnx.load(quantized)


def convert_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and compute; Cast nodes at the edges keep the float32 input and output."""
    converted = convert_float_to_float16(model, keep_io_types=True)
    # the converter appends the input Casts at the end of the node list; ONNX wants topological order
    OnnxModel.graph_topological_sort(converted.graph, is_deterministic=True)
    return converted
