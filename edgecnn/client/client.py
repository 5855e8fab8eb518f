"""A synchronous client for one model on an edgecnn server, over both of its APIs:
the Open Inference Protocol (KServe V2 ModelInfer, raw tensors in and logits out) and
edgecnn.v1.Classifier (images in, labels and softmax scores out)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import grpc
import numpy as np

from edgecnn.protos import classifier_pb2, classifier_pb2_grpc, inference_pb2, inference_pb2_grpc

from edgecnn.auth_token import auth_metadata

from .channel import PathLike, open_channel
from .health import DEFAULT_TIMEOUT_S, health_status
from .messages import ImageInput, Prediction, classify_request, infer_request, read_logits, read_predictions

T = TypeVar("T")


class ClientError(RuntimeError):
    """A call failed; ``code`` is the gRPC status (None when no call was made)."""

    def __init__(self, code: grpc.StatusCode | None, message: str) -> None:
        super().__init__(f"{code.name}: {message}" if code is not None else message)
        self.code = code
        self.details = message


def check_options(timeout: float, version: int | None) -> None:
    """ValueError for a client's timeout or model version that cannot be (both protocols' clients)."""
    if timeout <= 0:
        raise ValueError(f"timeout {timeout}: expected a positive number of seconds")
    if version is not None and version < 1:
        raise ValueError(f"version {version}: expected a positive model version")


class EdgeClient:
    def __init__(
        self,
        server: str = "127.0.0.1:8001",
        model: str = "",
        version: int | None = None,
        tls_ca: PathLike | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        tls_cert: PathLike | None = None,
        tls_key: PathLike | None = None,
    ) -> None:
        """`tls_ca`: PEM CA to trust (enables TLS); `tls_cert`/`tls_key`: a client certificate
        for servers that require one (--tls-client-ca); `token`: bearer token."""
        check_options(timeout, version)
        self.server = server
        self.model = model
        self.version = version
        self.timeout = timeout
        self._metadata = auth_metadata(token)
        self._channel = open_channel(server, tls_ca, tls_cert, tls_key)
        self._kserve = inference_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self._classifier = classifier_pb2_grpc.ClassifierStub(self._channel)

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Callable[..., T], request: object) -> T:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise ClientError(exc.code(), exc.details() or "no details") from None

    def _need_model(self) -> str:
        if not self.model:
            raise ValueError("no model chosen; pass model= to EdgeClient")
        return self.model

    def infer(self, array: np.ndarray) -> np.ndarray:
        """Raw logits (N, classes) for a preprocessed float32 [C, H, W] or [N, C, H, W] array."""
        request = infer_request(self._need_model(), self.version, array)
        return read_logits(self._call(self._kserve.ModelInfer, request))

    def classify(self, images: Sequence[ImageInput], top_k: int = 1) -> list[list[Prediction]]:
        """Top-k predictions per image (best first), in one Classify call."""
        request = classify_request(self._need_model(), self.version, images, top_k)
        return read_predictions(self._call(self._classifier.Classify, request))

    def model_info(self) -> classifier_pb2.ModelInfoResponse:
        request = classifier_pb2.ModelInfoRequest(model=self._need_model())
        if self.version is not None:
            request.version = self.version
        return self._call(self._classifier.ModelInfo, request)

    def max_batch_size(self) -> int:
        """The model's max batch size (0: unbatched), from ModelInfo."""
        return self.model_info().max_batch_size

    def model_metadata(self) -> inference_pb2.ModelMetadataResponse:
        version = "" if self.version is None else str(self.version)
        request = inference_pb2.ModelMetadataRequest(name=self._need_model(), version=version)
        return self._call(self._kserve.ModelMetadata, request)

    def health(self, service: str | None = None) -> str:
        """SERVING, NOT_SERVING, UNKNOWN or SERVICE_UNKNOWN for `service`: by default this
        client's model ("" = the whole server when no model was chosen)."""
        return health_status(self._channel, self.model if service is None else service, self.timeout, self._metadata)


def open_client(server: str, model: str = "", version: int | None = None, **options):
    """A client of `server`: the HTTP/REST one (edgecnn.client.http_client) for http:// or
    https:// URLs, else the gRPC EdgeClient for HOST:PORT; `options` as EdgeClient takes them."""
    from .http_client import HttpEdgeClient, is_http_url

    if is_http_url(server):
        return HttpEdgeClient(server, model, version, **options)
    return EdgeClient(server, model, version, **options)
