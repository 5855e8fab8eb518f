"""Prometheus metrics of one server, served at http://HOST:METRICS_PORT/metrics.

Every server owns its CollectorRegistry (several servers can live in one process, e.g. tests).
Metric names (labels in braces); the Grafana dashboard in deploy/ is built on these:

    edgecnn_requests_total{model,version,api,code}            counter: finished RPCs; api is the
        RPC name (ModelInfer, Classify, ModelInfo, ModelMetadata, ...), code the gRPC status
        name (OK, INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED,
        CANCELLED, UNAVAILABLE, INTERNAL); model/version are "" when the model is unknown
    edgecnn_request_duration_seconds{model,version,api}       histogram: end-to-end time in the server
    edgecnn_queue_wait_seconds{model,version}                 histogram: enqueue -> batch start
    edgecnn_inference_duration_seconds{model,version}         histogram: one ONNX Runtime call
    edgecnn_batch_size{model,version}                         histogram: rows per ONNX Runtime call
    edgecnn_inflight_requests                                 gauge: RPCs being handled now
    edgecnn_queue_depth{model,version}                        gauge: requests waiting for a batch
    edgecnn_model_parameters{model,version}                   gauge: trainable parameters
    edgecnn_model_onnx_bytes{model,version}                   gauge: model.onnx file size
    edgecnn_model_info{model,version,architecture,provider,opset,quantization,dataset}
                                                              info (value 1): how a version runs
    edgecnn_server_ready                                      gauge: 1 serving, 0 loading/draining
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import start_http_server

from .runtime import ModelVersion

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ModelMetrics:
    """The per-version children, bound once so the hot path skips label lookups."""

    def __init__(self, metrics: Metrics, mv: ModelVersion) -> None:
        labels = (mv.name, mv.version_str)
        self.queue_wait = metrics.queue_wait.labels(*labels)
        self.inference = metrics.inference.labels(*labels)
        self.batch_size = metrics.batch_size.labels(*labels)
        self.queue_depth = metrics.queue_depth.labels(*labels)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "edgecnn_requests", "Finished RPCs by model, version, API and gRPC status code",
            ["model", "version", "api", "code"], registry=r,
        )
        self.request_duration = Histogram(
            "edgecnn_request_duration_seconds", "End-to-end RPC time inside the server",
            ["model", "version", "api"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            "edgecnn_queue_wait_seconds", "Time a request waited for its batch to start",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.inference = Histogram(
            "edgecnn_inference_duration_seconds", "Time of one ONNX Runtime call",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "edgecnn_batch_size", "Rows (images) per ONNX Runtime call",
            ["model", "version"], buckets=BATCH_BUCKETS, registry=r,
        )
        self.inflight = Gauge("edgecnn_inflight_requests", "RPCs being handled now", registry=r)
        self.queue_depth = Gauge(
            "edgecnn_queue_depth", "Requests waiting for a batch", ["model", "version"], registry=r
        )
        self.parameters = Gauge(
            "edgecnn_model_parameters", "Trainable parameters of the model", ["model", "version"], registry=r
        )
        self.onnx_bytes = Gauge(
            "edgecnn_model_onnx_bytes", "Size of the model.onnx file", ["model", "version"], registry=r
        )
        self.model_info = Info(
            "edgecnn_model", "How a model version runs", ["model", "version"], registry=r
        )
        self.ready = Gauge("edgecnn_server_ready", "1 while serving, 0 while loading or draining", registry=r)
        self._request_children: dict[tuple[str, str, str, str], tuple[Counter, Histogram]] = {}
        self._http = None

    def add_model(self, mv: ModelVersion) -> ModelMetrics:
        self.parameters.labels(mv.name, mv.version_str).set(mv.params)
        self.onnx_bytes.labels(mv.name, mv.version_str).set(mv.onnx_bytes)
        self.model_info.labels(mv.name, mv.version_str).info(
            {
                "architecture": mv.architecture,
                "provider": mv.provider,
                "opset": str(mv.opset),
                "quantization": mv.quantization,
                "dataset": mv.dataset,
            }
        )
        return ModelMetrics(self, mv)

    def observe_request(self, model: str, version: str, api: str, code: str, seconds: float) -> None:
        key = (model, version, api, code)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(*key), self.request_duration.labels(model, version, api))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def serve_http(self, host: str, port: int) -> int:
        """Start the /metrics endpoint on a daemon thread; returns the bound port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
