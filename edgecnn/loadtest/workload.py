"""What a load test sends: the target server and a few pre-serialized requests.

Requests are serialized once and sent as bytes (and replies kept as bytes) so the client
spends its CPU on the wire, not on protobuf, and saturates later than the server. Over HTTP
(protocol "http") the bytes are KServe V2 REST bodies (http_requests.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np

from edgecnn.auth_token import auth_metadata
from edgecnn.client.channel import open_aio_channel
from edgecnn.client.client import EdgeClient, open_client
from edgecnn.client.image_files import encode_png
from edgecnn.client.messages import CLASSIFY_METHOD, INFER_METHOD, classify_request, infer_request

from .http_requests import HTTP_BODIES, classify_body, infer_body

APIS = ("infer", "classify")
PROTOCOLS = ("grpc", "http")
DISTINCT_PAYLOADS = 8


@dataclass(frozen=True)
class Target:
    server: str
    model: str
    version: int | None = None
    api: str = "infer"
    tls_ca: str | None = None
    token: str | None = None
    timeout_s: float = 10.0
    tls_cert: str | None = None  # client certificate (and its key) for --tls-client-ca servers
    tls_key: str | None = None
    protocol: str = "grpc"  # http: `server` is an http[s]://HOST:PORT URL
    http_body: str = "binary"
    # gRPC: the channels (TCP connections) each client process opens, its requests spread over
    # them in turn: a server of several processes sharing a port (SO_REUSEPORT) balances
    # connections, not requests. Over HTTP every request in flight has a keep-alive connection.
    connections: int = 1

    def __post_init__(self) -> None:
        if self.api not in APIS:
            raise ValueError(f"api {self.api!r}: expected one of {', '.join(APIS)}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        if self.http_body not in HTTP_BODIES:
            raise ValueError(f"HTTP body {self.http_body!r}: expected one of {', '.join(HTTP_BODIES)}")
        if self.connections < 1:
            raise ValueError(f"connections {self.connections}: expected >= 1")

    @property
    def method(self) -> str:
        return INFER_METHOD if self.api == "infer" else CLASSIFY_METHOD

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return auth_metadata(self.token)

    def aio_channel(self, own_connection: bool = False) -> grpc.aio.Channel:
        """A channel to the target; with own_connection, over a TCP connection of its own (gRPC
        otherwise shares one between a process's channels of equal settings)."""
        options = (("grpc.use_local_subchannel_pool", 1),) if own_connection else ()
        return open_aio_channel(self.server, self.tls_ca, self.tls_cert, self.tls_key, options)

    def client(self) -> EdgeClient:
        """A synchronous client of the target (HttpEdgeClient over http)."""
        return open_client(
            self.server, self.model, self.version, tls_ca=self.tls_ca, token=self.token, timeout=self.timeout_s,
            tls_cert=self.tls_cert, tls_key=self.tls_key,
        )  # fmt: skip


def model_input(target: Target) -> tuple[str, tuple[int, int, int]]:
    """The model's input tensor name and [C, H, W], from the server's ModelMetadata."""
    with target.client() as client:
        metadata = client.model_metadata()
    if isinstance(metadata, dict):  # over HTTP: KServe V2 REST metadata
        inputs = [(i["name"], list(i["shape"])) for i in metadata["inputs"]]
    else:
        inputs = [(i.name, list(i.shape)) for i in metadata.inputs]
    if len(inputs) != 1 or len(inputs[0][1]) != 4:
        raise ValueError(f"model {target.model!r} declares inputs {[shape for _, shape in inputs]}; expected one [N, C, H, W] input")
    c, h, w = (int(d) for d in inputs[0][1][1:])
    return inputs[0][0], (c, h, w)


def make_payloads(
    target: Target, input_name: str, shape: tuple[int, int, int], batch_size: int, seed: int = 0, count: int = DISTINCT_PAYLOADS
) -> list[bytes]:
    """Serialized requests of `batch_size` samples each: random standard-normal tensors for
    infer; PNG-encoded random images for classify (tensors when C is not 1 or 3)."""
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size}: expected >= 1")
    rng = np.random.default_rng(seed)
    payloads = []
    for _ in range(count):
        if target.api == "infer":
            x = rng.standard_normal((batch_size, *shape), dtype=np.float32)
            if target.protocol == "http":
                payloads.append(infer_body(x, input_name, target.http_body))
                continue
            request = infer_request(target.model, target.version, x, input_name)
        else:
            if shape[0] in (1, 3):
                images = [encode_png(rng.integers(0, 256, size=shape, dtype=np.uint8)) for _ in range(batch_size)]
            elif target.protocol == "http":
                raise ValueError(f"classify over HTTP takes PNG images; the model's {shape[0]} channels are neither grey nor RGB")
            else:
                images = list(rng.standard_normal((batch_size, *shape), dtype=np.float32))
            if target.protocol == "http":
                payloads.append(classify_body(images))
                continue
            request = classify_request(target.model, target.version, images)
        payloads.append(request.SerializeToString())
    return payloads
