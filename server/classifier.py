"""edgecnn.v1.Classifier: images in, labels and softmax scores out; and model facts."""

from __future__ import annotations

import asyncio

import grpc

from edgecnn.protos import classifier_pb2, classifier_pb2_grpc

from .calls import Call, rpc
from .errors import InvalidArgument
from .images import has_encoded, images_to_batch, softmax
from .state import ServerState
from .tensors import batch_limit, top_classes


def _version(request) -> str:
    return str(request.version) if request.HasField("version") else ""


class ClassifierServicer(classifier_pb2_grpc.ClassifierServicer):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    @rpc("Classify")
    async def Classify(self, request, context, call: Call):
        mv = self.state.registry.get(request.model, _version(request))
        call.label(mv.name, mv.version_str)
        limit = batch_limit(mv)
        if len(request.images) > limit:
            raise InvalidArgument(f"{len(request.images)} images exceed the max batch size of model {mv.name!r} ({limit})")
        if has_encoded(request.images):
            x = await asyncio.to_thread(images_to_batch, request.images, mv, self.state.max_image_pixels)
        else:
            x = images_to_batch(request.images, mv)
        scores = softmax(await self.state.batcher(mv).infer(x))
        k = min(max(request.top_k, 1), mv.num_classes)
        response = classifier_pb2.ClassifyResponse(model=mv.name, version=mv.version)
        for row, indices in zip(scores, top_classes(scores, k)):
            result = response.results.add()
            for i in indices:
                result.predictions.add(label=mv.labels[i], index=int(i), score=float(row[i]))
        return response

    @rpc("ModelInfo")
    async def ModelInfo(self, request, context, call: Call):
        mv = self.state.registry.get(request.model, _version(request))
        call.label(mv.name, mv.version_str)
        v = mv.verification
        return classifier_pb2.ModelInfoResponse(
            model=mv.name,
            version=mv.version,
            available_versions=[other.version for other in self.state.registry.versions_of(mv.name)],
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
        )


def add_to_server(state: ServerState, server: grpc.aio.Server) -> None:
    classifier_pb2_grpc.add_ClassifierServicer_to_server(ClassifierServicer(state), server)
