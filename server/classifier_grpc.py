"""edgecnn.v1.Classifier over gRPC (images in, labels and softmax scores out; and model facts),
a thin adapter between its protobuf messages and the data plane."""

from __future__ import annotations

import grpc

from edgecnn.protos import classifier_pb2, classifier_pb2_grpc

from .dataplane import Call, DataPlane
from .grpc_handlers import rpc
from .images import ImageInput


def _version(request) -> str:
    return str(request.version) if request.HasField("version") else ""


def _image(image: classifier_pb2.Image) -> ImageInput:
    source = image.WhichOneof("source")
    if source == "encoded":
        return ImageInput(encoded=image.encoded)
    if source == "tensor":
        return ImageInput(tensor_shape=tuple(image.tensor.shape), tensor_data=image.tensor.data)
    return ImageInput()


class ClassifierServicer(classifier_pb2_grpc.ClassifierServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    @rpc("Classify")
    async def Classify(self, request, context, call: Call):
        images = [_image(image) for image in request.images]
        outcome = await self.plane.classify(request.model, _version(request), images, request.top_k, call)
        response = classifier_pb2.ClassifyResponse(model=outcome.model.name, version=outcome.model.version)
        for predictions in outcome.results:
            result = response.results.add()
            for p in predictions:
                result.predictions.add(label=p.label, index=p.index, score=p.score)
        return response

    @rpc("ModelInfo")
    async def ModelInfo(self, request, context, call: Call):
        info = self.plane.model_info(request.model, _version(request), call)
        mv, v = info.model, info.model.verification
        return classifier_pb2.ModelInfoResponse(
            model=mv.name,
            version=mv.version,
            available_versions=info.available_versions,
            architecture=mv.architecture,
            parameters=mv.params,
            onnx_bytes=mv.onnx_bytes,
            opset=mv.opset,
            quantization=mv.quantization,
            execution_provider=mv.provider,
            input_shape=list(mv.input_shape),
            labels=mv.labels,
            mean=mv.mean.reshape(-1).tolist(),
            std=mv.std.reshape(-1).tolist(),
            pixel_scale=mv.pixel_scale,
            dataset=mv.dataset,
            test_accuracy=mv.test_accuracy,
            max_batch_size=mv.max_batch_size,
            verification=classifier_pb2.Verification(
                present=v.present, passed=v.passed, summary=v.summary, details_json=v.details_json
            ),
            selftest=mv.selftest,
        )


def add_to_server(plane: DataPlane, server: grpc.aio.Server) -> None:
    classifier_pb2_grpc.add_ClassifierServicer_to_server(ClassifierServicer(plane), server)
