"""The protos: stubs up to date, and the Open Inference Protocol parts wire-identical to Triton's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import tritonclient.grpc.model_config_pb2 as triton_config
import tritonclient.grpc.service_pb2 as triton_service
from google.protobuf.descriptor import Descriptor, EnumDescriptor

from edgecnn.protos import classifier_pb2, inference_pb2, model_config_pb2

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_are_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def _field_signature(message: Descriptor) -> dict[str, tuple]:
    return {
        f.name: (f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else None)
        for f in message.fields
    }


def _assert_same_message(ours: Descriptor, theirs: Descriptor) -> None:
    assert ours.full_name == theirs.full_name
    our_fields, their_fields = _field_signature(ours), _field_signature(theirs)
    for name, signature in our_fields.items():
        assert name in their_fields, f"{ours.full_name}.{name} is not in Triton's proto"
        assert signature == their_fields[name], f"{ours.full_name}.{name}: {signature} != {their_fields[name]}"
    for nested in ours.nested_types:
        _assert_same_message(nested, theirs.nested_types_by_name[nested.name])
    for enum in ours.enum_types:
        _assert_same_enum(enum, theirs.enum_types_by_name[enum.name])


def _assert_same_enum(ours: EnumDescriptor, theirs: EnumDescriptor) -> None:
    assert {v.name: v.number for v in ours.values}.items() <= {v.name: v.number for v in theirs.values}.items()


@pytest.mark.parametrize("name", sorted(inference_pb2.DESCRIPTOR.message_types_by_name))
def test_inference_messages_match_triton(name: str) -> None:
    ours = inference_pb2.DESCRIPTOR.message_types_by_name[name]
    _assert_same_message(ours, triton_service.DESCRIPTOR.message_types_by_name[name])


def test_inference_messages_carry_every_triton_field() -> None:
    # The infer messages must not silently drop a field Triton clients send.
    for name in ("ModelInferRequest", "ModelInferResponse", "InferTensorContents", "ModelMetadataResponse"):
        ours = inference_pb2.DESCRIPTOR.message_types_by_name[name]
        theirs = triton_service.DESCRIPTOR.message_types_by_name[name]
        assert set(_field_signature(ours)) == set(_field_signature(theirs)), name


def test_inference_service_methods_match_triton() -> None:
    ours = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == "inference.GRPCInferenceService" == theirs.full_name
    expected = {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer", "RepositoryIndex"}
    assert expected <= set(ours.methods_by_name)
    for method in ours.methods:
        twin = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == twin.input_type.full_name
        assert method.output_type.full_name == twin.output_type.full_name


def test_model_config_matches_triton() -> None:
    for name, ours in model_config_pb2.DESCRIPTOR.message_types_by_name.items():
        _assert_same_message(ours, triton_config.DESCRIPTOR.message_types_by_name[name])
    _assert_same_enum(model_config_pb2.DataType.DESCRIPTOR, triton_config.DataType.DESCRIPTOR)


def test_wire_roundtrip_with_tritonclient_messages() -> None:
    theirs = triton_service.ModelInferRequest(model_name="lenet5", model_version="1", id="7")
    tensor = theirs.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1.0, 2.0])
    theirs.raw_input_contents.append(b"\x00\x01")
    ours = inference_pb2.ModelInferRequest.FromString(theirs.SerializeToString())
    assert (ours.model_name, ours.model_version, ours.id) == ("lenet5", "1", "7")
    assert list(ours.inputs[0].shape) == [1, 2] and list(ours.inputs[0].contents.fp32_contents) == [1.0, 2.0]
    assert ours.raw_input_contents == [b"\x00\x01"]


def test_classifier_service_shape() -> None:
    service = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"]
    assert service.full_name == "edgecnn.v1.Classifier"
    assert set(service.methods_by_name) == {"Classify", "ModelInfo"}
    request = classifier_pb2.ClassifyRequest(model="m", top_k=3)
    assert not request.HasField("version")
    request.images.add(encoded=b"png")
    request.images.add(tensor=classifier_pb2.FloatTensor(shape=[1, 2, 2], data=bytes(16)))
    parsed = classifier_pb2.ClassifyRequest.FromString(request.SerializeToString())
    assert [image.WhichOneof("source") for image in parsed.images] == ["encoded", "tensor"]
