"""Bearer-token authentication: the check both front ends share (token_refusal), and a grpc.aio
server interceptor (the HTTP front end checks the `Authorization` header in server/kserve_http.py).

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
from .request_scope import GRPC

log = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def token_refusal(expected: bytes, given: str | bytes | None, where: str) -> str | None:
    """None when `given` (the authorization value sent, None when absent) is `expected`
    (bearer(token) encoded), else why the request is refused; `where` names what carries it."""
    if given is None:
        return f"missing authorization {where}; expected 'authorization: Bearer <token>'"
    if hmac.compare_digest(given.encode() if isinstance(given, str) else given, expected):
        return None
    return f"invalid token in the authorization {where}; expected 'Bearer <token>' with the server's token"


def api_name(method: str) -> str:
    """'/inference.GRPCInferenceService/ModelInfer' -> 'ModelInfer' (the metrics' api label)."""
    return method.rsplit("/", 1)[-1]


def _denying_handler(handler: grpc.RpcMethodHandler, message: str, metrics: Metrics, api: str) -> grpc.RpcMethodHandler:
    async def deny(request, context: grpc.aio.ServicerContext):
        # Counted before the status goes out, so a client that sees the refusal sees it counted.
        metrics.observe_request("", "", api, grpc.StatusCode.UNAUTHENTICATED.name, 0.0, protocol=GRPC)
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

    def _refusal(self, metadata) -> str | None:
        given = next((value for key, value in metadata or () if key == METADATA_KEY), None)
        return token_refusal(self._expected, given, "metadata")

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(OPEN_PREFIXES):
            return await continuation(handler_call_details)
        message = self._refusal(handler_call_details.invocation_metadata)
        handler = await continuation(handler_call_details)
        if message is None or handler is None:
            return handler
        log.info("refused %s: %s", handler_call_details.method, message)
        return _denying_handler(handler, message, self._metrics, api_name(handler_call_details.method))
