"""KServe V2 REST inference bodies <-> the data plane's protocol-neutral tensors: JSON tensors
(`data` flat or nested, row-major) and Triton's binary tensor data extension.

A binary request body is a JSON header of `Inference-Header-Content-Length` bytes followed by
the inputs' bytes, each input saying how many in `parameters.binary_data_size`, in the order of
the inputs. An output is answered as binary data when its `parameters.binary_data` is true, or,
when it does not say, when the request's `parameters.binary_data_output` is; Triton's
classification extension (`parameters.classification`: K) answers the top K classes as BYTES
"score:index:label" strings instead of the logits.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidArgument
from .tensor_checks import CLASSIFICATION, DATATYPE, InferOutcome, InputTensor, RequestedOutput

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_DATA = "binary_data"
BINARY_DATA_SIZE = "binary_data_size"
BINARY_DATA_OUTPUT = "binary_data_output"
OUTPUT_PARAMETERS = {BINARY_DATA, CLASSIFICATION}
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput]
    binary: dict[str, bool]  # per requested output: answer it as binary data
    binary_default: bool  # outputs not named (or not saying): the request's binary_data_output


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} is {type(value).__name__}; expected a JSON object")
    return value


def _parameters(spec: dict, what: str) -> dict:
    return _object(spec.get("parameters", {}), f"{what} parameters")


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{what} is {value!r}; expected true or false")
    return value


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{what} is {value!r}; expected a non-negative integer")
    return value


def split_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """The JSON header (an object) and the binary part after it."""
    if header_length is None:
        n = len(body)
    else:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 <= n <= len(body):
            raise InvalidArgument(
                f"{HEADER_LENGTH} {header_length!r}: expected the byte length of the JSON header, "
                f"an integer from 0 to the body's {len(body)} bytes"
            )
    try:
        header = json.loads(bytes(body[:n]))
    except (ValueError, UnicodeDecodeError) as exc:
        where = f"the first {n} bytes ({HEADER_LENGTH})" if header_length is not None else "the body"
        raise InvalidArgument(f"malformed JSON in {where}: {exc}") from None
    return _object(header, "the request"), memoryview(body)[n:]


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise InvalidArgument(f"{what} shape is {value!r}; expected a list of integers")
    return tuple(value)


def _values(data: Any, what: str) -> np.ndarray:
    """`data` (flat or nested lists of numbers, row-major) as flat float32."""
    if not isinstance(data, list):
        raise InvalidArgument(f"{what} data is {type(data).__name__}; expected a (flat or nested) list of numbers")
    try:
        values = np.asarray(data, dtype=np.float32)
    except (ValueError, TypeError):
        raise InvalidArgument(f"{what} data: expected numbers in equal-length (flat or nested) lists") from None
    return values.reshape(-1)


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    header, binary = split_body(body, header_length)
    specs = header.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise InvalidArgument("the request has no \"inputs\"; expected a list of input tensors")
    inputs = []
    offset = 0
    for i, spec in enumerate(specs):
        spec = _object(spec, f"input {i}")
        name = spec.get("name")
        what = f"input {name!r}" if isinstance(name, str) else f"input {i}"
        if not isinstance(name, str):
            raise InvalidArgument(f"{what} has no \"name\"; expected a string")
        datatype = spec.get("datatype")
        if not isinstance(datatype, str):
            raise InvalidArgument(f"{what} has no \"datatype\"; expected {DATATYPE!r}")
        shape = _shape(spec.get("shape"), what)
        parameters = _parameters(spec, what)
        raw, values = None, None
        if BINARY_DATA_SIZE in parameters:
            if "data" in spec:
                raise InvalidArgument(f"{what} has both \"data\" and {BINARY_DATA_SIZE}; send one of them")
            size = _count(parameters[BINARY_DATA_SIZE], f"{what} {BINARY_DATA_SIZE}")
            if offset + size > len(binary):
                raise InvalidArgument(
                    f"{what}: {BINARY_DATA_SIZE} {size} reaches past the {len(binary)} bytes of binary data after the "
                    f"JSON header ({HEADER_LENGTH})"
                )
            raw = binary[offset : offset + size]
            offset += size
        elif "data" not in spec:
            raise InvalidArgument(f"{what} has neither \"data\" nor a {BINARY_DATA_SIZE} parameter")
        elif datatype == DATATYPE:  # other types are refused by name in the data plane's checks
            values = _values(spec["data"], what)
        else:
            values = ()
        inputs.append(
            InputTensor(name, datatype, shape, raw=raw, values=values, raw_field="binary data", values_field="data")
        )
    if offset != len(binary):
        raise InvalidArgument(
            f"{len(binary)} bytes of binary data after the JSON header, but the inputs' {BINARY_DATA_SIZE} add up to "
            f"{offset}; check {HEADER_LENGTH}"
        )
    parameters = _parameters(header, "the request")
    binary_default = _bool(parameters.get(BINARY_DATA_OUTPUT, False), BINARY_DATA_OUTPUT)
    outputs, binary_outputs = _outputs(header.get("outputs", []))
    request_id = header.get("id")
    return InferRequest(None if request_id is None else str(request_id), inputs, outputs, binary_outputs, binary_default)


def _outputs(specs: Any) -> tuple[list[RequestedOutput], dict[str, bool]]:
    if not isinstance(specs, list):
        raise InvalidArgument(f"\"outputs\" is {type(specs).__name__}; expected a list of requested outputs")
    wanted, binary = [], {}
    for i, spec in enumerate(specs):
        spec = _object(spec, f"output {i}")
        name = spec.get("name")
        if not isinstance(name, str):
            raise InvalidArgument(f"output {i} has no \"name\"; expected a string")
        parameters = _parameters(spec, f"output {name!r}")
        unknown = sorted(set(parameters) - OUTPUT_PARAMETERS)
        if unknown:
            raise InvalidArgument(f"output {name!r}: unsupported parameters {unknown}; expected only {sorted(OUTPUT_PARAMETERS)}")
        count = 0
        if CLASSIFICATION in parameters:
            count = parameters[CLASSIFICATION]
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise InvalidArgument(f"output {name!r}: parameter {CLASSIFICATION!r} is {count!r}; expected a positive integer")
        if BINARY_DATA in parameters:
            binary[name] = _bool(parameters[BINARY_DATA], f"output {name!r} {BINARY_DATA}")
        wanted.append(RequestedOutput(name, count))
    return wanted, binary


def _bytes_tensor(elements: list[bytes]) -> bytes:
    """A BYTES tensor's binary data: each element a 4-byte little-endian length, then the bytes."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _json_number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)  # JSON has no NaN or infinity


def encode_outcome(request: InferRequest, outcome: InferOutcome) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it (None: the
    whole body is JSON)."""
    mv, logits = outcome.model, outcome.logits
    binary = request.binary.get(mv.output_name, request.binary_default)
    if outcome.class_count:
        elements = outcome.classification()
        output: dict[str, Any] = {"name": mv.output_name, "datatype": "BYTES", "shape": [len(logits), outcome.class_count]}
        raw = _bytes_tensor(elements) if binary else None
        data: list | None = None if binary else [e.decode() for e in elements]
    else:
        output = {"name": mv.output_name, "datatype": DATATYPE, "shape": list(logits.shape)}
        raw = np.ascontiguousarray(logits, dtype="<f4").tobytes() if binary else None
        data = None if binary else [_json_number(v) for v in logits.reshape(-1).tolist()]
    if raw is not None:
        output["parameters"] = {BINARY_DATA_SIZE: len(raw)}
    else:
        output["data"] = data
    response: dict[str, Any] = {"model_name": mv.name, "model_version": mv.version_str}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = [output]
    head = json.dumps(response, separators=(",", ":")).encode()
    if raw is None:
        return head, None
    return head + raw, len(head)
