"""Bearer-token authentication as a grpc.aio server interceptor.

Clients send ``authorization: Bearer <token>`` metadata. The health service stays open so
orchestrator probes (Kubernetes grpc probes) work without the secret. Refusals are counted in
edgecnn_requests_total with code UNAUTHENTICATED and an empty model label (the model an
unauthenticated caller names is not trusted as a label value).
"""

from __future__ import annotations

import hmac
import logging

import grpc

from edgecnn.auth_token import METADATA_KEY, bearer

from .metrics import Metrics

log = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def api_name(method: str) -> str:
    """'/inference.GRPCInferenceService/ModelInfer' -> 'ModelInfer' (the metrics' api label)."""
    return method.rsplit("/", 1)[-1]


def _denying_handler(handler: grpc.RpcMethodHandler, message: str, metrics: Metrics, api: str) -> grpc.RpcMethodHandler:
    async def deny(request, context: grpc.aio.ServicerContext):
        # Counted before the status goes out, so a client that sees the refusal sees it counted.
        metrics.observe_request("", "", api, grpc.StatusCode.UNAUTHENTICATED.name, 0.0)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kwargs = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    return grpc.stream_stream_rpc_method_handler(deny, **kwargs)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str, metrics: Metrics) -> None:
        if not token:
            raise ValueError("the auth token is empty")
        self._expected = bearer(token).encode()
        self._metrics = metrics

    def _authorized(self, metadata) -> tuple[bool, str]:
        for key, value in metadata or ():
            if key == METADATA_KEY:
                given = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(given, self._expected):
                    return True, ""
                return False, "invalid token in the authorization metadata; expected 'Bearer <token>' with the server's token"
        return False, "missing authorization metadata; expected 'authorization: Bearer <token>'"

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(OPEN_PREFIXES):
            return await continuation(handler_call_details)
        ok, message = self._authorized(handler_call_details.invocation_metadata)
        handler = await continuation(handler_call_details)
        if ok or handler is None:
            return handler
        log.info("refused %s: %s", handler_call_details.method, message)
        return _denying_handler(handler, message, self._metrics, api_name(handler_call_details.method))
