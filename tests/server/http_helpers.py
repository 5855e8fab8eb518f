"""Helpers of the HTTP/REST front end's tests: raw requests with http.client (any body, any
headers, what curl would send), KServe V2 bodies, and multipart bodies."""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass

import numpy as np

TIMEOUT = 10.0
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    context: ssl.SSLContext | None = None,
) -> Reply:
    if context is None:
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    else:
        conn = http.client.HTTPSConnection(host, port, timeout=TIMEOUT, context=context)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def json_infer_body(x: np.ndarray, outputs: list[dict] | None = None, nested: bool = False) -> bytes:
    data = x.tolist() if nested else x.reshape(-1).tolist()
    body: dict = {"id": "t", "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": data}]}
    if outputs is not None:
        body["outputs"] = outputs
    return json.dumps(body).encode()


def binary_infer_body(x: np.ndarray, binary_output: bool = True) -> tuple[bytes, dict[str, str]]:
    raw = np.ascontiguousarray(x, dtype="<f4").tobytes()
    head = json.dumps({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": binary_output},
    }).encode()  # fmt: skip
    return head + raw, {HEADER_LENGTH: str(len(head)), "Content-Type": "application/octet-stream"}


def binary_logits(reply: Reply) -> np.ndarray:
    n = int(reply.headers[HEADER_LENGTH])
    head = json.loads(reply.body[:n])
    out = head["outputs"][0]
    assert out["parameters"]["binary_data_size"] == len(reply.body) - n
    return np.frombuffer(reply.body[n:], dtype="<f4").reshape(out["shape"])


def json_logits(reply: Reply) -> np.ndarray:
    out = reply.json()["outputs"][0]
    assert (out["name"], out["datatype"]) == ("logits", "FP32")
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def multipart(files: list[bytes], boundary: str = "edgecnn-test-boundary") -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body of PNG files, as `curl -F image=@a.png -F image=@b.png` sends."""
    parts = []
    for i, data in enumerate(files):
        parts.append(
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}.png\"\r\n"
            "Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
