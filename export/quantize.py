"""Edge variants of an FP32 ONNX model: static INT8 (QDQ) and FP16, both keeping float32 I/O."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
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
# INT8 activation calibration: each activation's range is its min..max over the calibration
# images (minmax), or the range of its central CALIB_PERCENTILE % of values (percentile), or the
# range that minimizes the KL divergence of its histogram once quantized (entropy).
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
CALIB_PERCENTILE = 99.999


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


def prepare_for_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's quantization pre-processing (shape inference, graph clean-up): the graph
    quantize_int8 quantizes, whose node names nodes_to_exclude / nodes_to_quantize refer to."""
    with tempfile.TemporaryDirectory(prefix="edgecnn-int8-") as tmp:
        fp32, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
        onnx.save(model, fp32)
        quant_pre_process(fp32, prepared)
        return onnx.load(prepared)


def quantize_int8(
    model: onnx.ModelProto,
    calibration_images: np.ndarray | None,
    batch_size: int = 64,
    *,
    calibration_method: str = "minmax",
    nodes_to_exclude: Sequence[str] = (),
    nodes_to_quantize: Sequence[str] | None = None,
    prepared: bool = False,
    calibration_cache: Path | None = None,
) -> onnx.ModelProto:
    """Static INT8 in QDQ format with per-channel weights, calibrated on the given images.

    Activations are uint8 and weights int8 (U8S8): the combination ONNX Runtime's x86 CPU kernels
    run fastest; S8S8 measured slower than FP32 on AVX2 here. nodes_to_exclude stay in float32
    (names of the pre-processed graph, prepare_for_int8); nodes_to_quantize, when given, are the
    only nodes quantized. prepared: the model already went through prepare_for_int8.
    calibration_cache: a JSON file of activation ranges, written on first use and read after
    (then calibration_images may be None), so that several variants share one calibration.
    """
    if calibration_method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, not {calibration_method!r}")
    cached = calibration_cache is not None and Path(calibration_cache).is_file()
    if not cached and (calibration_images is None or len(calibration_images) == 0):
        raise ValueError("INT8 calibration needs at least one image")
    reader = None if calibration_images is None else _BatchReader(calibration_images, batch_size)
    source = model if prepared else prepare_for_int8(model)
    names = {n.name for n in source.graph.node}
    unknown = sorted(set(nodes_to_exclude) - names) + sorted(set(nodes_to_quantize or ()) - names)
    if unknown:  # ONNX Runtime ignores them silently
        raise ValueError(f"no node named {', '.join(unknown)} in the graph to quantize (names after quant_pre_process)")
    extra_options = {"CalibPercentile": CALIB_PERCENTILE} if calibration_method == "percentile" else {}
    with tempfile.TemporaryDirectory(prefix="edgecnn-int8-") as tmp:
        prepared_path, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        onnx.save(source, prepared_path)
        quantize_static(
            prepared_path,
            quantized,
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATION_METHODS[calibration_method],
            nodes_to_exclude=list(nodes_to_exclude),
            nodes_to_quantize=None if nodes_to_quantize is None else list(nodes_to_quantize),
            extra_options=extra_options,
            calibration_cache_path=calibration_cache,
        )
        return onnx.load(quantized)


def convert_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and compute; Cast nodes at the edges keep the float32 input and output."""
    converted = convert_float_to_float16(model, keep_io_types=True)
    # the converter appends the input Casts at the end of the node list; ONNX wants topological order
    OnnxModel.graph_topological_sort(converted.graph, is_deterministic=True)
    return converted
