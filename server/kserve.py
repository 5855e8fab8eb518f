"""The Open Inference Protocol (KServe V2) servicer: inference.GRPCInferenceService."""

from __future__ import annotations

import grpc

from edgecnn import __version__
from edgecnn import repository as repo
from edgecnn.protos import inference_pb2, inference_pb2_grpc, model_config_pb2

from .calls import Call, rpc
from .errors import NotFound
from .runtime import ModelVersion
from .state import ServerState
from .tensors import DATATYPE, class_count, decode_input, encode_output

SERVER_NAME = "edgecnn"
# model_repository is not listed: RepositoryIndex answers, but load/unload (model control) is not offered.
EXTENSIONS = ["model_configuration", "classification"]


def effective_config(mv: ModelVersion) -> model_config_pb2.ModelConfig:
    """config.pbtxt with the batching the server really applies (command-line overrides)."""
    config = model_config_pb2.ModelConfig()
    config.CopyFrom(mv.config)
    config.max_batch_size = mv.max_batch_size
    if mv.dynamic_batching:
        config.dynamic_batching.max_queue_delay_microseconds = mv.max_queue_delay_us
    else:  # Triton reads a dynamic_batching block, even an empty one, as batching on
        config.ClearField("dynamic_batching")
    return config


class KServeServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def ServerLive(self, request, context):
        return inference_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return inference_pb2.ServerReadyResponse(ready=self.state.serving)

    async def ModelReady(self, request, context):
        try:
            self.state.registry.get(request.name, request.version)
        except NotFound:
            return inference_pb2.ModelReadyResponse(ready=False)
        return inference_pb2.ModelReadyResponse(ready=self.state.serving)

    async def ServerMetadata(self, request, context):
        return inference_pb2.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    @rpc("ModelMetadata")
    async def ModelMetadata(self, request, context, call: Call):
        mv = self.state.registry.get(request.name, request.version)
        call.label(mv.name, mv.version_str)
        response = inference_pb2.ModelMetadataResponse(
            name=mv.name,
            versions=[v.version_str for v in self.state.registry.versions_of(mv.name)],
            platform=repo.PLATFORM,
        )
        batch = -1 if mv.max_batch_size > 0 else 1  # as Triton: a batch dimension when max_batch_size > 0
        response.inputs.add(name=mv.input_name, datatype=DATATYPE, shape=[batch, *mv.input_shape])
        response.outputs.add(name=mv.output_name, datatype=DATATYPE, shape=[batch, mv.num_classes])
        return response

    @rpc("ModelConfig")
    async def ModelConfig(self, request, context, call: Call):
        mv = self.state.registry.get(request.name, request.version)
        call.label(mv.name, mv.version_str)
        return inference_pb2.ModelConfigResponse(config=effective_config(mv))

    @rpc("ModelInfer")
    async def ModelInfer(self, request, context, call: Call):
        mv = self.state.registry.get(request.model_name, request.model_version)
        call.label(mv.name, mv.version_str)
        x = decode_input(request, mv)
        top_k = class_count(request, mv)
        logits = await self.state.batcher(mv).infer(x)
        return encode_output(request, mv, logits, top_k)

    @rpc("RepositoryIndex")
    async def RepositoryIndex(self, request, context, call: Call):
        response = inference_pb2.RepositoryIndexResponse()
        state = "READY" if self.state.serving else "UNAVAILABLE"
        if request.ready and state != "READY":
            return response
        for mv in self.state.registry.all():
            response.models.add(name=mv.name, version=mv.version_str, state=state)
        return response


def add_to_server(state: ServerState, server: grpc.aio.Server) -> None:
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(KServeServicer(state), server)
