"""The Open Inference Protocol (KServe V2) over HTTP/REST with Triton's extensions, plus images
straight in: a thin adapter (aiohttp) between JSON or binary bodies and the data plane that the
gRPC front end calls too (so both protocols share one copy of each model and its batches).

    GET  /v2/health/live | /v2/health/ready                 200, or 503 while loading/draining
    GET  /v2                                                server metadata and extensions
    GET  /v2/models/{m}[/versions/{v}]                      model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready                200, 404 unknown, 503 loading/draining
    GET  /v2/models/{m}[/versions/{v}]/config               model configuration (JSON)
    GET  /v2/models[/{m}[/versions/{v}]]/stats              Triton's statistics extension
    POST /v2/models/{m}[/versions/{v}]/infer                JSON tensors or binary tensor data
    POST /v2/models/{m}[/versions/{v}]/classify?top_k=K     image/png, image/jpeg or multipart/form-data
    POST /v2/repository/index                               {"ready": bool} optional
    POST /v2/repository/models/{m}/load | unload            model control (when the data plane has it)

Errors are JSON `{"error": "..."}` with the status of the ServingError (STATUS below); the
request metrics count each counted endpoint under the RPC it stands for (ModelInfer, Classify,
...) with protocol="http". The bearer token, when the server has one, is required on every path
but /v2/health/*, as the gRPC health service stays open.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from edgecnn import __version__
from edgecnn.auth_token import bearer

from . import kserve_grpc
from .auth import token_refusal
from .dataplane import Call, DataPlane
from .errors import InvalidArgument, NotFound, QueueFull, ServingError, TooLarge, Unauthenticated, Unavailable
from .http_tensors import BINARY_TYPE, HEADER_LENGTH, JSON_TYPE, decode_request, encode_outcome
from .images import ImageInput
from .request_scope import HTTP, RequestScope

log = logging.getLogger(__name__)

# The one table of ServingError -> HTTP status (looked up along the class's bases; else 500).
STATUS: dict[type[ServingError], int] = {
    InvalidArgument: 400,
    Unauthenticated: 401,
    NotFound: 404,
    TooLarge: 413,
    QueueFull: 429,
    Unavailable: 503,
}
HTTP_EXTENSIONS = ["binary_tensor_data"]
OPEN_PREFIX = "/v2/health/"
IMAGE_TYPES = ("image/png", "image/jpeg")
MULTIPART = "multipart/form-data"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def http_status(exc: ServingError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    response = _json({"error": message}, status)
    if headers:
        response.headers.update(headers)
    return response


def _route_error(request: web.Request, exc: web.HTTPException) -> str:
    if isinstance(exc, web.HTTPNotFound):
        return f"no endpoint {request.method} {request.path}; expected a KServe V2 path such as /v2/models/NAME/infer"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return f"{request.method} not allowed on {request.path}; expected {', '.join(sorted(exc.allowed_methods))}"
    return exc.text or exc.reason


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ServingError as exc:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
        return error_response(http_status(exc), exc.message, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, _route_error(request, exc))
    except Exception as exc:  # as gRPC's INTERNAL: a JSON answer, written before the drain counts it answered
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")


def _api(request: web.Request) -> str:
    """The RPC a counted endpoint stands for, for the request metrics ("" for other paths)."""
    return getattr(request.match_info.handler, "api", "")


def _auth(plane: DataPlane, token: str) -> Callable:
    expected = bearer(token).encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(OPEN_PREFIX):
            refusal = token_refusal(expected, request.headers.get("Authorization"), "header")
            if refusal is not None:
                # Counted before the status goes out, as the gRPC interceptor does.
                plane.metrics.observe_request("", "", _api(request), Unauthenticated.code.name, 0.0, protocol=HTTP)
                raise Unauthenticated(refusal)
        return await handler(request)

    return check


def _answers(plane: DataPlane) -> Callable:
    """Every request is open (received, its answer not yet sent) from its arrival until its
    response is written: a drain waits for these (plane.call_received / call_answered)."""

    @web.middleware
    async def track(request: web.Request, handler: Handler) -> web.StreamResponse:
        taken = plane.call_received()
        try:
            response = await handler(request)
            if plane.refusal() is not None:  # draining: no request after this one on the connection
                response.force_close()
            await response.prepare(request)
            await response.write_eof()
            return response
        finally:
            if taken:
                plane.call_answered()

    return track


def counted(api: str) -> Callable:
    """An endpoint ``(self, request, call)`` run in the request scope (refused while loading or
    draining, in flight, its metrics observed under `api`)."""

    def decorate(method: Callable[[Any, web.Request, Call], Awaitable[web.StreamResponse]]):
        @functools.wraps(method)
        async def handler(self, request: web.Request) -> web.StreamResponse:
            with RequestScope(self.plane, HTTP, api) as call:
                return await method(self, request, call)

        handler.api = api  # type: ignore[attr-defined]
        return handler

    return decorate


_INT64_TYPES = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64)  # fmt: skip


def config_json(config: Message) -> dict:
    """A model configuration as Triton's HTTP API writes it: protobuf's JSON with the proto
    field names, and 64-bit integers as numbers (protobuf writes them as strings)."""
    value = json_format.MessageToDict(config, preserving_proto_field_name=True)
    _int64_as_numbers(config.DESCRIPTOR, value)
    return value


def _int64_as_numbers(descriptor: Descriptor, value: dict) -> None:
    for name, item in value.items():
        field = descriptor.fields_by_name.get(name)
        if field is None:
            continue
        kind = field.message_type
        if kind is not None and kind.GetOptions().map_entry:
            entry = kind.fields_by_name["value"]
            for key, element in item.items():
                if entry.message_type is not None:
                    _int64_as_numbers(entry.message_type, element)
                elif entry.type in _INT64_TYPES:
                    item[key] = int(element)
        elif kind is not None:
            for element in item if field.is_repeated else [item]:
                _int64_as_numbers(kind, element)
        elif field.type in _INT64_TYPES:
            value[name] = [int(e) for e in item] if field.is_repeated else int(item)


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info["model"], request.match_info.get("version", "")


def _json(body: dict | list, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), status=status, content_type=JSON_TYPE)


class KServeHttp:
    def __init__(self, plane: DataPlane, max_body_bytes: int) -> None:
        self.plane = plane
        self.max_body_bytes = max_body_bytes

    async def _body(self, request: web.Request) -> bytes:
        """The whole (decompressed: Content-Encoding gzip or deflate) body, within the limit."""
        declared = request.content_length
        if declared is not None and declared > self.max_body_bytes:
            raise TooLarge(self._too_large(f"{declared} bytes"))
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise TooLarge(self._too_large("more")) from None

    def _too_large(self, size: str) -> str:
        return f"request body of {size} exceeds the server's limit of {self.max_body_bytes} bytes"

    async def _json_body(self, request: web.Request) -> dict:
        """An optional JSON object body ({} when empty)."""
        body = await self._body(request)
        if not body.strip():
            return {}
        try:
            value = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgument(f"malformed JSON body: {exc}") from None
        if not isinstance(value, dict):
            raise InvalidArgument(f"the body is a JSON {type(value).__name__}; expected an object")
        return value

    # --- health and metadata (not counted: as gRPC ServerLive/ServerReady/ModelReady) ---

    async def live(self, request: web.Request) -> web.Response:
        return _json({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        if self.plane.ready():
            return _json({"ready": True})
        return _json({"ready": False, "error": self.plane.refusal() or "not ready"}, status=503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return _json({"name": kserve_grpc.SERVER_NAME, "version": __version__, "extensions": [*kserve_grpc.extensions(self.plane), *HTTP_EXTENSIONS]})

    async def model_ready(self, request: web.Request) -> web.Response:
        name, version = _model(request)
        refusal = self.plane.refusal()
        if refusal is not None:
            return _json({"name": name, "ready": False, "error": refusal}, status=503)
        self.plane.metadata(name, version)  # NotFound (404) for an unknown model or version
        ready = self.plane.model_ready(name, version)
        # As Triton: 200 only when ready (tritonclient.http's is_model_ready reads the status alone).
        return _json({"name": name, "ready": ready}, status=200 if ready else 503)

    # --- counted endpoints ---

    @counted("ModelMetadata")
    async def model_metadata(self, request: web.Request, call: Call) -> web.Response:
        meta = self.plane.metadata(*_model(request), call)
        specs = lambda tensors: [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in tensors]  # noqa: E731
        return _json({
            "name": meta.name, "versions": meta.versions, "platform": meta.platform,
            "inputs": specs(meta.inputs), "outputs": specs(meta.outputs),
        })  # fmt: skip

    @counted("ModelConfig")
    async def model_config(self, request: web.Request, call: Call) -> web.Response:
        config = self.plane.config(*_model(request), call)
        return _json(config_json(config))

    @counted("ModelStatistics")
    async def model_statistics(self, request: web.Request, call: Call) -> web.Response:
        name, version = request.match_info.get("model", ""), request.match_info.get("version", "")
        return _json({"model_stats": self.plane.statistics(name, version)})

    @counted("ModelInfer")
    async def infer(self, request: web.Request, call: Call) -> web.Response:
        name, version = _model(request)
        decoded = decode_request(await self._body(request), request.headers.get(HEADER_LENGTH))
        encode = functools.partial(encode_outcome, decoded)
        body, header_length = await self.plane.infer(name, version, decoded.inputs, decoded.outputs, call=call, encode=encode)
        if header_length is None:
            return web.Response(body=body, content_type=JSON_TYPE)
        return web.Response(body=body, content_type=BINARY_TYPE, headers={HEADER_LENGTH: str(header_length)})

    @counted("Classify")
    async def classify(self, request: web.Request, call: Call) -> web.Response:
        name, version = _model(request)
        top_k = self._top_k(request)
        images = await self._images(request)
        outcome = await self.plane.classify(name, version, images, top_k, call)
        results = [[{"label": p.label, "index": p.index, "score": p.score} for p in predictions] for predictions in outcome.results]
        return _json({"model": outcome.model.name, "version": outcome.model.version_str, "results": results})

    @staticmethod
    def _top_k(request: web.Request) -> int:
        text = request.query.get("top_k", "1")
        try:
            top_k = int(text)
        except ValueError:
            top_k = 0
        if top_k < 1:
            raise InvalidArgument(f"top_k {text!r}: expected a positive number of classes")
        return top_k

    async def _images(self, request: web.Request) -> list[ImageInput]:
        content_type = request.content_type
        if content_type in IMAGE_TYPES:
            return [ImageInput(encoded=await self._body(request))]
        if content_type != MULTIPART:
            raise InvalidArgument(
                f"Content-Type {content_type!r}: expected {' or '.join(IMAGE_TYPES)} (one image) "
                f"or {MULTIPART} (one image per part)"
            )
        declared = request.content_length
        if declared is not None and declared > self.max_body_bytes:
            raise TooLarge(self._too_large(f"{declared} bytes"))
        images, total = [], 0
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not hasattr(part, "read_chunk"):  # a nested multipart
                    raise InvalidArgument(f"part {len(images)} is itself multipart; expected one image file per part")
                data = bytearray()
                while chunk := await part.read_chunk():
                    total += len(chunk)
                    if total > self.max_body_bytes:
                        raise TooLarge(self._too_large("more"))
                    data.extend(chunk)
                images.append(ImageInput(encoded=bytes(data)))
        except web.HTTPRequestEntityTooLarge:
            raise TooLarge(self._too_large("more")) from None
        except ValueError as exc:  # aiohttp's multipart parser on a malformed body
            raise InvalidArgument(f"malformed {MULTIPART} body: {exc}") from None
        return images

    @counted("RepositoryIndex")
    async def repository_index(self, request: web.Request, call: Call) -> web.Response:
        body = await self._json_body(request)
        ready = body.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidArgument(f"\"ready\" is {ready!r}; expected true or false")
        entries = self.plane.repository_index(ready_only=ready)
        return _json([{"name": e.name, "version": e.version, "state": e.state, "reason": e.reason} for e in entries])

    @counted("RepositoryModelLoad")
    async def load(self, request: web.Request, call: Call) -> web.Response:
        parameters = (await self._json_body(request)).get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidArgument("\"parameters\" of a load request: expected a JSON object")
        unknown = sorted(set(parameters) - {"config"})
        if unknown:
            raise InvalidArgument(f"load parameters {unknown} are not supported; expected only \"config\" (a JSON string)")
        config = parameters.get("config")
        if config is not None and not isinstance(config, str):
            raise InvalidArgument("load parameter \"config\": expected the model configuration as a JSON string")
        await self.plane.load_model(request.match_info["model"], config)
        return _json({})

    @counted("RepositoryModelUnload")
    async def unload(self, request: web.Request, call: Call) -> web.Response:
        await self._json_body(request)  # Triton's unload_dependents parameter: no ensembles here
        await self.plane.unload_model(request.match_info["model"])
        return _json({})

    def routes(self) -> list[web.AbstractRouteDef]:
        model_paths = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
        routes = [
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.ready),
            web.get("/v2", self.server_metadata),
            web.get("/v2/models/stats", self.model_statistics),
            web.post("/v2/repository/index", self.repository_index),
            web.post("/v2/repository/models/{model}/load", self.load),
            web.post("/v2/repository/models/{model}/unload", self.unload),
        ]
        for path in model_paths:
            routes += [
                web.get(path, self.model_metadata),
                web.get(f"{path}/ready", self.model_ready),
                web.get(f"{path}/config", self.model_config),
                web.get(f"{path}/stats", self.model_statistics),
                web.post(f"{path}/infer", self.infer),
                web.post(f"{path}/classify", self.classify),
            ]
        return routes


def make_app(plane: DataPlane, max_body_bytes: int, token: str | None = None) -> web.Application:
    middlewares = [_answers(plane), _json_errors] + ([_auth(plane, token)] if token else [])
    # client_max_size: aiohttp's own bound on a body read (413); the handlers check it first.
    app = web.Application(middlewares=middlewares, client_max_size=max_body_bytes)
    app.add_routes(KServeHttp(plane, max_body_bytes).routes())
    return app
