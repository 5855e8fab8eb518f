"""grpc.health.v1 (overall "" and per model name) and server reflection."""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from edgecnn.protos import classifier_pb2, inference_pb2, model_config_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

SERVICE_NAMES = (
    inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    """One pool with every served service (ours live in edgecnn.protos._pool, grpc's in the
    default pool), dependencies first."""
    pool = descriptor_pool.DescriptorPool()
    for module in (model_config_pb2, inference_pb2, classifier_pb2, health_pb2, reflection_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
    return pool


class Health:
    def __init__(self, server: grpc.aio.Server) -> None:
        self.servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
        reflection.enable_server_reflection(SERVICE_NAMES, server, pool=_reflection_pool())

    async def set_all(self, names: list[str], status: int) -> None:
        for name in ("", *names):
            await self.servicer.set(name, status)

    async def drain(self) -> None:
        """NOT_SERVING for every service from now on."""
        await self.servicer.enter_graceful_shutdown()
