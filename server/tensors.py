"""Open Inference Protocol tensors <-> numpy for one model version, with the checks that turn
bad input into INVALID_ARGUMENT messages naming what was expected."""

from __future__ import annotations

import struct

import numpy as np

from edgecnn.protos import inference_pb2

from .errors import InvalidArgument
from .runtime import ModelVersion

DATATYPE = "FP32"
CLASSIFICATION = "classification"


def check_finite(x: np.ndarray, what: str) -> None:
    if not np.isfinite(x).all():
        raise InvalidArgument(f"{what} holds NaN or infinite values; expected finite float32 numbers")


def batch_limit(mv: ModelVersion) -> int:
    return mv.max_batch_size if mv.max_batch_size > 0 else 1


def decode_input(request: inference_pb2.ModelInferRequest, mv: ModelVersion) -> np.ndarray:
    """The request's single input as float32 (N, C, H, W)."""
    if len(request.inputs) != 1:
        raise InvalidArgument(f"expected exactly 1 input tensor named {mv.input_name!r}, got {len(request.inputs)}")
    tensor = request.inputs[0]
    if tensor.name != mv.input_name:
        raise InvalidArgument(f"unknown input {tensor.name!r}; expected {mv.input_name!r}")
    if tensor.datatype != DATATYPE:
        raise InvalidArgument(f"input {tensor.name!r} has datatype {tensor.datatype!r}; expected {DATATYPE!r}")
    shape = tuple(tensor.shape)
    c, h, w = mv.input_shape
    if len(shape) != 4 or shape[1:] != mv.input_shape or shape[0] < 1:
        raise InvalidArgument(f"input {tensor.name!r} has shape {list(shape)}; expected [N, {c}, {h}, {w}] with N >= 1")
    n = shape[0]
    limit = batch_limit(mv)
    if n > limit:
        raise InvalidArgument(f"batch of {n} exceeds the max batch size of model {mv.name!r} ({limit})")
    if request.raw_input_contents:
        if tensor.HasField("contents") and tensor.contents.ByteSize():
            raise InvalidArgument(f"input {tensor.name!r} has both raw_input_contents and contents; send one of them")
        if len(request.raw_input_contents) != 1:
            raise InvalidArgument(f"expected 1 raw_input_contents entry (one per input), got {len(request.raw_input_contents)}")
        raw = request.raw_input_contents[0]
        if len(raw) != n * mv.sample_nbytes:
            raise InvalidArgument(
                f"input {tensor.name!r}: raw contents hold {len(raw)} bytes; expected {n * mv.sample_nbytes} "
                f"(shape {list(shape)} x 4 bytes of little-endian float32)"
            )
        x = np.frombuffer(raw, dtype="<f4").reshape(shape)
    else:
        values = tensor.contents.fp32_contents
        if len(values) != n * mv.sample_size:
            raise InvalidArgument(
                f"input {tensor.name!r}: contents.fp32_contents holds {len(values)} values; "
                f"expected {n * mv.sample_size} for shape {list(shape)} (or send raw_input_contents)"
            )
        x = np.asarray(values, dtype=np.float32).reshape(shape)
    check_finite(x, f"input {tensor.name!r}")
    return x


def class_count(request: inference_pb2.ModelInferRequest, mv: ModelVersion) -> int:
    """Top classes asked for through Triton's classification extension (the output parameter
    "classification", what tritonclient's InferRequestedOutput(class_count=K) sends); 0 for logits."""
    count = 0
    for wanted in request.outputs:
        if wanted.name != mv.output_name:
            raise InvalidArgument(f"unknown output {wanted.name!r}; expected {mv.output_name!r}")
        unknown = sorted(set(wanted.parameters) - {CLASSIFICATION})
        if unknown:
            raise InvalidArgument(f"output {wanted.name!r}: unsupported parameters {unknown}; expected only {CLASSIFICATION!r}")
        if CLASSIFICATION in wanted.parameters:
            param = wanted.parameters[CLASSIFICATION]
            count = param.int64_param if param.WhichOneof("parameter_choice") == "int64_param" else 0
            if count < 1:
                raise InvalidArgument(f"output {wanted.name!r}: parameter {CLASSIFICATION!r} must be a positive int64")
    return min(count, mv.num_classes)  # as Triton: asking for more classes than there are gives them all


def encode_output(
    request: inference_pb2.ModelInferRequest, mv: ModelVersion, logits: np.ndarray, top_k: int = 0
) -> inference_pb2.ModelInferResponse:
    response = inference_pb2.ModelInferResponse(model_name=mv.name, model_version=mv.version_str, id=request.id)
    if top_k:
        response.outputs.add(name=mv.output_name, datatype="BYTES", shape=[len(logits), top_k])
        response.raw_output_contents.append(_classification_bytes(logits, top_k, mv.labels if mv.has_labels else None))
    else:
        response.outputs.add(name=mv.output_name, datatype=DATATYPE, shape=logits.shape)
        response.raw_output_contents.append(np.ascontiguousarray(logits, dtype="<f4").tobytes())
    return response


def top_classes(values: np.ndarray, k: int) -> np.ndarray:
    """Per row the indices of the k highest values, highest first (ties: the lower index)."""
    return np.argsort(-values, axis=1, kind="stable")[:, :k]


def _classification_bytes(logits: np.ndarray, top_k: int, labels: list[str] | None) -> bytes:
    """Triton's classification output: per row the top_k "value:index:label" strings ("value:index"
    for a model without labels), highest first, as a BYTES tensor (each element a 4-byte
    little-endian length, then the bytes)."""
    parts = []
    for row, indices in zip(logits, top_classes(logits, top_k)):
        for i in indices:
            element = (f"{row[i]:f}:{i}" + (f":{labels[i]}" if labels else "")).encode()
            parts += [struct.pack("<I", len(element)), element]
    return b"".join(parts)
