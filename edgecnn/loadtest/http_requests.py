"""The load tester's HTTP/REST path (`--protocol http`): request bodies made once (KServe V2
binary tensor data by default, or JSON tensors; multipart PNGs for /classify) and sent through
one aiohttp client session per process with keep-alive connections, so the client spends its
CPU on the wire. A failed request raises RequestFailed with its code: HTTP_<status> for an
answer that is not 200, DEADLINE_EXCEEDED past the timeout, UNAVAILABLE without an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
import numpy as np

from edgecnn.client.http_client import HEADER_LENGTH, ssl_context

from .grpc_requests import RequestFailed

HTTP_BODIES = ("binary", "json")  # infer: the binary tensor data extension, or JSON tensors
BOUNDARY = "edgecnn-loadtest-boundary"
FP32 = "FP32"


def model_path(model: str, version: int | None) -> str:
    path = f"/v2/models/{quote(model, safe='')}"
    return path if version is None else f"{path}/versions/{version}"


def infer_body(x: np.ndarray, input_name: str, body: str) -> bytes:
    """One infer request of the float32 batch `x`: a JSON header and the tensor's bytes
    (binary, the logits asked for as binary too), or all JSON."""
    x = np.ascontiguousarray(x, dtype="<f4")
    spec: dict[str, Any] = {"name": input_name, "datatype": FP32, "shape": list(x.shape)}
    if body == "json":
        spec["data"] = x.reshape(-1).tolist()
        return json.dumps({"inputs": [spec]}).encode()
    raw = x.tobytes()
    spec["parameters"] = {"binary_data_size": len(raw)}
    return json.dumps({"inputs": [spec], "parameters": {"binary_data_output": True}}).encode() + raw


def classify_body(pngs: Sequence[bytes]) -> bytes:
    parts = [
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}.png\"\r\n"
        "Content-Type: image/png\r\n\r\n".encode() + png + b"\r\n"
        for i, png in enumerate(pngs)
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def header_length(payload: bytes) -> int | None:
    """The length of an infer body's JSON header when binary data follows it, else None."""
    _, end = json.JSONDecoder().raw_decode(payload.decode("latin-1"))
    return end if end < len(payload) else None


class HttpCall:
    """`await call(payload, timeout=..., metadata=...)`, as a gRPC unary-unary callable is
    awaited; the headers of each distinct payload are worked out once."""

    def __init__(self, session: aiohttp.ClientSession, url: str, api: str, token: str | None) -> None:
        self._session = session
        self._url = url
        self._api = api
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._headers: dict[int, dict[str, str]] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _headers_of(self, payload: bytes) -> dict[str, str]:
        headers = self._headers.get(id(payload))
        if headers is None:
            if self._api == "classify":
                headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
            elif (n := header_length(payload)) is not None:
                headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(n)}
            else:
                headers = {"Content-Type": "application/json"}
            headers = {**headers, **self._auth}
            self._headers[id(payload)] = headers
        return headers

    async def __call__(self, payload: bytes, timeout: float, metadata: Any = ()) -> bytes:
        limit = self._timeouts.get(timeout)
        if limit is None:
            limit = self._timeouts[timeout] = aiohttp.ClientTimeout(total=timeout)
        try:
            async with self._session.post(self._url, data=payload, headers=self._headers_of(payload), timeout=limit) as response:
                body = await response.read()
                if response.status != 200:
                    raise RequestFailed(f"HTTP_{response.status}")
                return body
        except TimeoutError:
            raise RequestFailed("DEADLINE_EXCEEDED") from None
        except aiohttp.ClientError:
            raise RequestFailed("UNAVAILABLE") from None


@contextlib.asynccontextmanager
async def http_call(target: Any) -> AsyncIterator[HttpCall]:
    """An HttpCall to `target`'s infer or classify endpoint (target: workload.Target over http)."""
    from edgecnn.client.http_client import parse_url

    scheme, host, port = parse_url(target.server)
    context = ssl_context(target.tls_ca, target.tls_cert, target.tls_key) if scheme == "https" else False
    connector = aiohttp.TCPConnector(limit=0, ssl=context)
    endpoint = "infer" if target.api == "infer" else "classify"
    url = f"{scheme}://{host}:{port}{model_path(target.model, target.version)}/{endpoint}"
    async with aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",)) as session:
        yield HttpCall(session, url, target.api, target.token)
        await asyncio.sleep(0)  # let closed connections finish before the session goes
