"""Structural checks every exported file passes before it may enter a repository."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from edgecnn.export.cpu_inference import make_session
from edgecnn.repository import INPUT_NAME, OUTPUT_NAME


class CheckError(RuntimeError):
    """The ONNX file is malformed or does not honour the repository's input/output contract."""


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in value.type.tensor_type.shape.dim]


def _expect_io(value: onnx.ValueInfoProto, name: str, tail: list[int]) -> None:
    if value.name != name:
        raise CheckError(f"graph {'input' if name == INPUT_NAME else 'output'} is named {value.name!r}, expected {name!r}")
    elem = value.type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        raise CheckError(f"{name!r} has type {onnx.TensorProto.DataType.Name(elem)}, expected FLOAT (float32)")
    dims = _dims(value)
    if len(dims) != len(tail) + 1 or not isinstance(dims[0], str) or dims[1:] != tail:
        raise CheckError(f"{name!r} has shape {dims}, expected [batch, {', '.join(map(str, tail))}] with a symbolic batch dim")


def check_onnx(
    model: onnx.ModelProto,
    input_shape: Sequence[int],
    output_shape: int | Sequence[int],
    output_name: str = OUTPUT_NAME,
) -> None:
    """onnx.checker (full_check), strict shape inference, the I/O contract, and an ORT run at two batch sizes.

    output_shape is the output's shape after the batch dim: the class count for a classifier.
    """
    tail = [output_shape] if isinstance(output_shape, int) else [int(d) for d in output_shape]
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise CheckError(f"ONNX validation failed: {exc}") from exc
    if len(inferred.graph.input) != 1 or len(inferred.graph.output) != 1:
        raise CheckError(
            f"expected one input and one output, got {len(inferred.graph.input)} and {len(inferred.graph.output)}"
        )
    _expect_io(inferred.graph.input[0], INPUT_NAME, list(input_shape))
    _expect_io(inferred.graph.output[0], output_name, tail)

    try:
        session = make_session(model.SerializeToString())
    except Exception as exc:  # ORT raises its own exception types per failure kind
        raise CheckError(f"ONNX Runtime cannot load the model: {exc}") from exc
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        x = rng.standard_normal((batch, *input_shape), dtype=np.float32)
        (out,) = session.run([output_name], {INPUT_NAME: x})
        if out.shape != (batch, *tail):
            raise CheckError(f"ONNX Runtime returned shape {out.shape} for batch {batch}, expected {(batch, *tail)}")
        if not np.all(np.isfinite(out)):
            raise CheckError(f"ONNX Runtime returned non-finite values for batch {batch}")
