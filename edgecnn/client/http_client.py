"""A synchronous client for one model over an edgecnn server's HTTP/REST front end (KServe V2
REST with the binary tensor data extension, and /classify for PNG/JPEG images), with the
methods of the gRPC EdgeClient that a caller needs; the standard library only.

    client = HttpEdgeClient("http://127.0.0.1:8000", model="lenet5")
    client.classify([open("shirt.png", "rb").read()], top_k=3)
    client.infer(batch_of_float32_nchw)

Float32 [C, H, W] tensors to classify go through infer with Triton's classification extension
(every class's logit and label), then a softmax here: the scores Classify computes server-side.
"""

from __future__ import annotations

import http.client
import json
import ssl
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import grpc
import numpy as np

from .channel import PathLike
from .client import ClientError, check_options
from .health import DEFAULT_TIMEOUT_S
from .messages import FP32, ImageInput, Prediction, as_batch

HEADER_LENGTH = "Inference-Header-Content-Length"
SCHEMES = ("http", "https")
# HTTP statuses as the gRPC codes a ClientError carries (what the server maps them from).
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def is_http_url(server: str) -> bool:
    return urlsplit(server).scheme in SCHEMES and "://" in server


def parse_url(server: str) -> tuple[str, str, int]:
    """(scheme, host, port) of http[s]://HOST:PORT (port default 80/443); ValueError otherwise."""
    parts = urlsplit(server)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in SCHEMES or not parts.hostname or port == -1 or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"server {server!r}: expected http://HOST:PORT or https://HOST:PORT, e.g. http://127.0.0.1:8000")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def ssl_context(tls_ca: PathLike | None, tls_cert: PathLike | None, tls_key: PathLike | None) -> ssl.SSLContext:
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("a client certificate needs both --tls-cert and --tls-key")
    try:
        context = ssl.create_default_context(cafile=str(tls_ca) if tls_ca is not None else None)
        if tls_cert is not None:
            context.load_cert_chain(str(tls_cert), str(tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"TLS files: cannot use them ({exc})") from None
    return context


def multipart_body(files: Sequence[bytes]) -> tuple[bytes, str]:
    """multipart/form-data of image files; the body and its Content-Type."""
    boundary = uuid.uuid4().hex
    parts = [
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n".encode() + bytes(data) + b"\r\n"
        for i, data in enumerate(files)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def softmax_top_k(logits: np.ndarray, labels: Sequence[str], k: int) -> list[list[Prediction]]:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    scores = shifted / shifted.sum(axis=1, keepdims=True)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[Prediction(labels[i], int(i), float(row[i])) for i in indices] for row, indices in zip(scores, order)]


class HttpEdgeClient:
    def __init__(
        self,
        server: str = "http://127.0.0.1:8000",
        model: str = "",
        version: int | None = None,
        tls_ca: PathLike | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        tls_cert: PathLike | None = None,
        tls_key: PathLike | None = None,
    ) -> None:
        """`server`: http://HOST:PORT, or https://HOST:PORT (trusting `tls_ca`, else the system's
        roots; `tls_cert`/`tls_key`: a client certificate); `token`: bearer token."""
        check_options(timeout, version)
        scheme, self.host, self.port = parse_url(server)
        if scheme == "http" and (tls_ca is not None or tls_cert is not None):
            raise ValueError(f"server {server!r}: TLS files given for plain http; use https://")
        self._context = ssl_context(tls_ca, tls_cert, tls_key) if scheme == "https" else None
        self.server = server
        self.model = model
        self.version = version
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._conn: http.client.HTTPConnection | None = None
        self._metadata: dict | None = None

    def __enter__(self) -> HttpEdgeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._context is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            else:
                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._context)
        return self._conn

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None):
        """(status, headers, body); ClientError (UNAVAILABLE) when no answer came back. The
        connection is kept alive, and opened again once if the server had closed it."""
        sent = {**self._headers, **(headers or {})}
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=sent)
                response = conn.getresponse()
                return response.status, response.headers, response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt == 2:
                    raise ClientError(grpc.StatusCode.UNAVAILABLE, f"{self.server}: {exc}") from None
            except TimeoutError:
                self.close()
                raise ClientError(grpc.StatusCode.DEADLINE_EXCEEDED, f"{self.server}: no answer within {self.timeout:g} s") from None
            except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
                self.close()
                raise ClientError(grpc.StatusCode.UNAVAILABLE, f"{self.server}: {exc}") from None
        raise AssertionError("unreachable")

    def _call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None):
        status, response_headers, data = self.request(method, path, body, headers)
        if status != 200:
            try:
                message = json.loads(data)["error"]
            except (ValueError, KeyError, TypeError):
                message = data.decode(errors="replace").strip() or f"HTTP {status}"
            error = ClientError(CODES.get(status, grpc.StatusCode.UNKNOWN), message)
            error.http_status = status  # type: ignore[attr-defined]
            raise error
        return response_headers, data

    def _get_json(self, path: str) -> Any:
        return json.loads(self._call("GET", path)[1])

    def _model_path(self) -> str:
        if not self.model:
            raise ValueError("no model chosen; pass model= to HttpEdgeClient")
        path = f"/v2/models/{quote(self.model, safe='')}"
        return path if self.version is None else f"{path}/versions/{self.version}"

    # --- the calls ---

    def infer(self, array: np.ndarray) -> np.ndarray:
        """Raw logits (N, classes) for a preprocessed float32 [C, H, W] or [N, C, H, W] array."""
        return self._infer(as_batch(array), {"binary_data": True})[0]

    def _infer(self, x: np.ndarray, output_parameters: dict) -> tuple[np.ndarray, dict]:
        raw = x.tobytes()
        head = json.dumps({
            "inputs": [{"name": self._input_name(), "datatype": FP32, "shape": list(x.shape), "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": self._output_name(), "parameters": output_parameters}],
        }).encode()  # fmt: skip
        headers = {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}
        response_headers, data = self._call("POST", f"{self._model_path()}/infer", head + raw, headers)
        n = int(response_headers.get(HEADER_LENGTH, len(data)))
        output = json.loads(data[:n])["outputs"][0]
        shape = tuple(output["shape"])
        if "data" in output:
            return np.asarray(output["data"]).reshape(shape), output
        if output["datatype"] == FP32:
            return np.frombuffer(data[n:], dtype="<f4").reshape(shape).astype(np.float32), output
        elements, rest = [], memoryview(data)[n:]
        while rest:  # a BYTES tensor: 4-byte little-endian lengths, each followed by its bytes
            size = int.from_bytes(rest[:4], "little")
            elements.append(bytes(rest[4 : 4 + size]).decode())
            rest = rest[4 + size :]
        return np.asarray(elements, dtype=object).reshape(shape), output

    def model_metadata(self) -> dict:
        """The model's KServe V2 metadata (name, versions, platform, inputs, outputs)."""
        if self._metadata is None:
            self._metadata = self._get_json(self._model_path())
        return self._metadata

    def _input_name(self) -> str:
        return self.model_metadata()["inputs"][0]["name"]

    def _output_name(self) -> str:
        return self.model_metadata()["outputs"][0]["name"]

    def model_config(self) -> dict:
        return self._get_json(f"{self._model_path()}/config")

    def max_batch_size(self) -> int:
        return int(self.model_config().get("max_batch_size", 0))

    def classify(self, images: Sequence[ImageInput], top_k: int = 1) -> list[list[Prediction]]:
        """Top-k predictions per image (best first): encoded PNG/JPEG files through /classify
        (one request), float32 [C, H, W] tensors through infer."""
        if top_k < 1:
            raise ValueError(f"top_k {top_k}: expected a positive number of classes")
        if not images:
            raise ValueError("no images to classify; expected at least one")
        encoded = [i for i, image in enumerate(images) if isinstance(image, bytes | bytearray | memoryview)]
        tensors = [i for i in range(len(images)) if i not in set(encoded)]
        results: dict[int, list[Prediction]] = {}
        if encoded:
            body, content_type = multipart_body([images[i] for i in encoded])  # type: ignore[misc]
            _, data = self._call("POST", f"{self._model_path()}/classify?top_k={top_k}", body, {"Content-Type": content_type})
            answer = json.loads(data)["results"]
            for i, predictions in zip(encoded, answer):
                results[i] = [Prediction(p["label"], int(p["index"]), float(p["score"])) for p in predictions]
        if tensors:
            for i, predictions in zip(tensors, self._classify_tensors([images[i] for i in tensors], top_k)):  # type: ignore[misc]
                results[i] = predictions
        return [results[i] for i in range(len(images))]

    def _classify_tensors(self, tensors: Sequence[np.ndarray], top_k: int) -> list[list[Prediction]]:
        for image in tensors:
            if not isinstance(image, np.ndarray) or not np.issubdtype(image.dtype, np.floating) or image.ndim != 3:
                raise ValueError("image: expected encoded PNG/JPEG bytes or a float32 [C, H, W] preprocessed tensor")
        x = np.ascontiguousarray(np.stack(tensors), dtype="<f4")
        classes = int(self.model_metadata()["outputs"][0]["shape"][-1])
        top, _ = self._infer(x, {"binary_data": True, "classification": classes})
        logits = np.zeros((len(x), classes), dtype=np.float32)
        labels = [str(i) for i in range(classes)]
        for row, elements in enumerate(top):
            for element in elements:  # "value:index:label" (no label for an unlabeled model)
                value, index, *label = element.split(":", 2)
                logits[row, int(index)] = float(value)
                labels[int(index)] = label[0] if label else str(index)
        return softmax_top_k(logits, labels, top_k)

    def health(self, service: str | None = None) -> str:
        """SERVING, NOT_SERVING or SERVICE_UNKNOWN for this client's model (service None) or
        the server (service "")."""
        model = self.model if service is None else service
        path = "/v2/health/ready" if not model else f"/v2/models/{quote(model, safe='')}/ready"
        status, _, _ = self.request("GET", path)
        return {200: "SERVING", 404: "SERVICE_UNKNOWN"}.get(status, "NOT_SERVING")
