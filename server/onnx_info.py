"""Facts about an ONNX file read straight from its protobuf bytes (no `onnx` package on the
serving side): the default-domain opset version."""

from __future__ import annotations

from pathlib import Path

_MODEL_OPSET_IMPORT = 8  # ModelProto.opset_import
_OPSET_DOMAIN = 1  # OperatorSetIdProto.domain
_OPSET_VERSION = 2  # OperatorSetIdProto.version


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes):
    """Yield (field number, wire type, value) for one protobuf message; length-delimited
    values are memoryview slices, so the big graph field is skipped without copying."""
    view = memoryview(data)
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = view[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = view[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = view[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def opset_version(onnx_path: Path) -> int:
    """The ai.onnx opset the model imports; 0 when it declares none."""
    data = Path(onnx_path).read_bytes()
    for number, wire, value in _fields(data):
        if number != _MODEL_OPSET_IMPORT or wire != 2:
            continue
        domain, version = "", 0
        for sub_number, sub_wire, sub_value in _fields(bytes(value)):
            if sub_number == _OPSET_DOMAIN and sub_wire == 2:
                domain = bytes(sub_value).decode()
            elif sub_number == _OPSET_VERSION and sub_wire == 0:
                version = sub_value
        if domain in ("", "ai.onnx"):
            return version
    return 0
