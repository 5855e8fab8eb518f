"""The Open Inference Protocol (KServe V2) over gRPC: inference.GRPCInferenceService, a thin
adapter between its protobuf messages and the data plane. ModelInfer takes the common request
(one raw input, the logits) through the data plane's simple path (DataPlane.simple_request:
checked and decoded once, and where it runs at once answered in one synchronous call, which for
LeNet-5 is most of the difference to a bare server; docs/benchmarks.md) and any other through infer()."""

from __future__ import annotations

import functools

import grpc
from google.protobuf import json_format

from edgecnn import __version__
from edgecnn.protos import inference_pb2, inference_pb2_grpc

from .dataplane import Call, DataPlane, SimpleRequest
from .errors import InvalidArgument, ServingError
from .grpc_handlers import rpc, take_call
from .request_scope import GRPC
from .grpc_tensors import decode_inputs, decode_outputs, encode_outcome, single_raw_input

SERVER_NAME = "edgecnn"
# model_repository is listed when load and unload are taken (--model-control-mode explicit).
EXTENSIONS = ["model_configuration", "classification", "statistics"]


def extensions(plane: DataPlane) -> list[str]:
    """The protocol extensions served now: model_repository only while load and unload are taken."""
    return EXTENSIONS + (["model_repository"] if plane.model_control else [])


class KServeServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def ServerLive(self, request, context):
        return inference_pb2.ServerLiveResponse(live=self.plane.live())

    async def ServerReady(self, request, context):
        return inference_pb2.ServerReadyResponse(ready=self.plane.ready())

    async def ModelReady(self, request, context):
        return inference_pb2.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version))

    async def ServerMetadata(self, request, context):
        return inference_pb2.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=extensions(self.plane))

    @rpc("ModelMetadata")
    async def ModelMetadata(self, request, context, call: Call):
        meta = self.plane.metadata(request.name, request.version, call)
        response = inference_pb2.ModelMetadataResponse(name=meta.name, versions=meta.versions, platform=meta.platform)
        for spec in meta.inputs:
            response.inputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        for spec in meta.outputs:
            response.outputs.add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return response

    @rpc("ModelConfig")
    async def ModelConfig(self, request, context, call: Call):
        return inference_pb2.ModelConfigResponse(config=self.plane.config(request.name, request.version, call))

    async def ModelInfer(self, request, context):
        """The common request through the data plane's simple path, any other through infer()."""
        plane = self.plane
        single = single_raw_input(request)
        simple = plane.simple_request(request.model_name, request.model_version, *single) if single is not None else None
        if simple is None:
            return await self._infer(request, context)
        encode = functools.partial(encode_outcome, request)
        if not simple.runs_now():
            return await self._infer_simple(request, context, simple, encode)
        # Taken as rpc() takes a call, once answered: nothing awaited since it arrived.
        try:
            answer = plane.answer_now(simple, encode, GRPC)
        except ServingError as exc:
            take_call(plane, context)
            await context.abort(exc.code, exc.message)
        take_call(plane, context)
        return answer

    @rpc("ModelInfer")
    async def _infer_simple(self, request, context, call: Call, simple: SimpleRequest, encode):
        return await self.plane.infer_simple(simple, call, encode)

    @rpc("ModelInfer")
    async def _infer(self, request, context, call: Call):
        inputs, outputs = decode_inputs(request), decode_outputs(request)
        encode = functools.partial(encode_outcome, request)
        return await self.plane.infer(request.model_name, request.model_version, inputs, outputs, call, encode)

    @rpc("ModelStatistics")
    async def ModelStatistics(self, request, context, call: Call):
        """Triton's statistics extension (server/statistics.py says what each number holds)."""
        stats = self.plane.statistics(request.name, request.version)
        return json_format.ParseDict({"model_stats": stats}, inference_pb2.ModelStatisticsResponse())

    @rpc("RepositoryIndex")
    async def RepositoryIndex(self, request, context, call: Call):
        response = inference_pb2.RepositoryIndexResponse()
        for entry in self.plane.repository_index(ready_only=request.ready):
            response.models.add(name=entry.name, version=entry.version, state=entry.state, reason=entry.reason)
        return response

    @rpc("RepositoryModelLoad")
    async def RepositoryModelLoad(self, request, context, call: Call):
        config = request.parameters.get("config")
        if config is not None and config.WhichOneof("parameter_choice") != "string_param":
            raise InvalidArgument("the 'config' parameter must be a string holding a JSON model configuration")
        await self.plane.load_model(request.model_name, config.string_param if config is not None else None)
        return inference_pb2.RepositoryModelLoadResponse()

    @rpc("RepositoryModelUnload")
    async def RepositoryModelUnload(self, request, context, call: Call):
        await self.plane.unload_model(request.model_name)
        return inference_pb2.RepositoryModelUnloadResponse()


def add_to_server(plane: DataPlane, server: grpc.aio.Server) -> None:
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(KServeServicer(plane), server)
