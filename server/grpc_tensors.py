"""ModelInfer's protobuf messages <-> the data plane's protocol-neutral tensors."""

from __future__ import annotations

import struct

import numpy as np

from edgecnn.protos import inference_pb2

from .errors import InvalidArgument
from .tensor_checks import CLASSIFICATION, DATATYPE, InferOutcome, InputTensor, RequestedOutput

RAW_FIELD = "raw contents"  # how error messages name where the request's values are
VALUES_FIELD = "contents.fp32_contents"


def decode_inputs(request: inference_pb2.ModelInferRequest) -> list[InputTensor]:
    raw = request.raw_input_contents
    inputs = request.inputs
    if raw and len(raw) != len(inputs):
        raise InvalidArgument(f"expected {len(inputs)} raw_input_contents entry (one per input), got {len(raw)}")
    tensors = []
    for i, tensor in enumerate(inputs):
        if raw and tensor.HasField("contents") and tensor.contents.ByteSize():
            raise InvalidArgument(f"input {tensor.name!r} has both raw_input_contents and contents; send one of them")
        data, values = (raw[i], None) if raw else (None, tensor.contents.fp32_contents)
        tensors.append(InputTensor(tensor.name, tensor.datatype, tuple(tensor.shape), data, values, RAW_FIELD, VALUES_FIELD))
    return tensors


def single_raw_input(request: inference_pb2.ModelInferRequest) -> tuple[InputTensor, str | None] | None:
    """The request's one raw input and the one output it names (None: none named), when it is
    the request DataPlane.simple_request takes (no typed contents, no output parameters); else None."""
    raw, inputs, outputs = request.raw_input_contents, request.inputs, request.outputs
    if len(raw) != 1 or len(inputs) != 1 or len(outputs) > 1:
        return None
    tensor = inputs[0]
    if tensor.HasField("contents"):
        return None
    output = None
    if outputs:
        if outputs[0].parameters:
            return None
        output = outputs[0].name
    return InputTensor(tensor.name, tensor.datatype, tuple(tensor.shape), raw[0]), output


def decode_outputs(request: inference_pb2.ModelInferRequest) -> list[RequestedOutput]:
    """The outputs asked for, with Triton's classification extension (the output parameter
    "classification", what tritonclient's InferRequestedOutput(class_count=K) sends)."""
    wanted = []
    for output in request.outputs:
        if not output.parameters:
            wanted.append(RequestedOutput(output.name, 0))
            continue
        unknown = sorted(set(output.parameters) - {CLASSIFICATION})
        if unknown:
            raise InvalidArgument(f"output {output.name!r}: unsupported parameters {unknown}; expected only {CLASSIFICATION!r}")
        count = 0
        if CLASSIFICATION in output.parameters:
            param = output.parameters[CLASSIFICATION]
            count = param.int64_param if param.WhichOneof("parameter_choice") == "int64_param" else 0
            if count < 1:
                raise InvalidArgument(f"output {output.name!r}: parameter {CLASSIFICATION!r} must be a positive int64")
        wanted.append(RequestedOutput(output.name, count))
    return wanted


def encode_outcome(request: inference_pb2.ModelInferRequest, outcome: InferOutcome) -> inference_pb2.ModelInferResponse:
    mv, logits = outcome.model, outcome.logits
    response = inference_pb2.ModelInferResponse(model_name=mv.name, model_version=mv.version_str, id=request.id)
    if outcome.class_count:
        response.outputs.add(name=mv.output_name, datatype="BYTES", shape=[len(logits), outcome.class_count])
        # A BYTES tensor: each element a 4-byte little-endian length, then the bytes.
        response.raw_output_contents.append(b"".join(struct.pack("<I", len(e)) + e for e in outcome.classification()))
    else:
        response.outputs.add(name=mv.output_name, datatype=DATATYPE, shape=logits.shape)
        response.raw_output_contents.append(np.ascontiguousarray(logits, dtype="<f4").tobytes())
    return response
