"""What a load test sends: the target server and a few pre-serialized requests.

Requests are serialized once and sent as bytes (and replies kept as bytes) so the client
spends its CPU on the wire, not on protobuf, and saturates later than the server.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np

from edgecnn.auth_token import auth_metadata
from edgecnn.client.channel import open_aio_channel
from edgecnn.client.client import EdgeClient
from edgecnn.client.image_files import encode_png
from edgecnn.client.messages import CLASSIFY_METHOD, INFER_METHOD, classify_request, infer_request

APIS = ("infer", "classify")
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

    def __post_init__(self) -> None:
        if self.api not in APIS:
            raise ValueError(f"api {self.api!r}: expected one of {', '.join(APIS)}")

    @property
    def method(self) -> str:
        return INFER_METHOD if self.api == "infer" else CLASSIFY_METHOD

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return auth_metadata(self.token)

    def aio_channel(self) -> grpc.aio.Channel:
        return open_aio_channel(self.server, self.tls_ca, self.tls_cert, self.tls_key)

    def client(self) -> EdgeClient:
        return EdgeClient(
            self.server, self.model, self.version, tls_ca=self.tls_ca, token=self.token, timeout=self.timeout_s,
            tls_cert=self.tls_cert, tls_key=self.tls_key,
        )  # fmt: skip


def model_input(target: Target) -> tuple[str, tuple[int, int, int]]:
    """The model's input tensor name and [C, H, W], from the server's ModelMetadata."""
    with target.client() as client:
        metadata = client.model_metadata()
    if len(metadata.inputs) != 1 or len(metadata.inputs[0].shape) != 4:
        shapes = [list(i.shape) for i in metadata.inputs]
        raise ValueError(f"model {target.model!r} declares inputs {shapes}; expected one [N, C, H, W] input")
    c, h, w = (int(d) for d in metadata.inputs[0].shape[1:])
    return metadata.inputs[0].name, (c, h, w)


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
            request = infer_request(target.model, target.version, x, input_name)
        else:
            if shape[0] in (1, 3):
                images = [encode_png(rng.integers(0, 256, size=shape, dtype=np.uint8)) for _ in range(batch_size)]
            else:
                images = list(rng.standard_normal((batch_size, *shape), dtype=np.float32))
            request = classify_request(target.model, target.version, images)
        payloads.append(request.SerializeToString())
    return payloads
