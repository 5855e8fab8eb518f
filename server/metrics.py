"""Prometheus metrics of one server, served at http://HOST:METRICS_PORT/metrics.

Every server owns its CollectorRegistry (several servers can live in one process, e.g. tests).
Metric names (labels in braces); the Grafana dashboard in deploy/ is built on these:

    edgecnn_requests_total{model,version,api,code,protocol}   counter: finished requests; api is the
        RPC name (ModelInfer, Classify, ModelInfo, ModelMetadata, ...; an HTTP endpoint counts
        under the RPC it stands for), code the gRPC status name for both protocols (OK,
        INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, CANCELLED,
        UNAVAILABLE, UNAUTHENTICATED, INTERNAL), protocol grpc or http; model/version are ""
        when the model is unknown
    edgecnn_request_duration_seconds{model,version,api,protocol}  histogram: end-to-end time in the server
    edgecnn_queue_wait_seconds{model,version}                 histogram: enqueue -> batch start
    edgecnn_inference_duration_seconds{model,version}         histogram: one ONNX Runtime call
    edgecnn_batch_size{model,version}                         histogram: rows per ONNX Runtime call
    edgecnn_nonfinite_inputs_total{model,version}             counter: ModelInfer requests whose input held
        NaN or infinite values (accepted, as Triton does; refused with INVALID_ARGUMENT under
        `edgecnn serve --reject-nonfinite`; counted either way)
    edgecnn_inflight_requests                                 gauge: RPCs being handled now
    edgecnn_queue_depth{model,version}                        gauge: requests waiting for a batch
    edgecnn_model_parameters{model,version}                   gauge: trainable parameters
    edgecnn_model_onnx_bytes{model,version}                   gauge: model.onnx file size
    edgecnn_model_info{model,version,architecture,provider,opset,quantization,dataset}
                                                              info (value 1): how a version runs
    edgecnn_server_ready                                      gauge: 1 serving, 0 loading/draining
    edgecnn_model_load_failures_total{model,version}          counter: version loads that failed
        (version "" when the model's config could not be read); the version did not serve

plus the process (process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
process_max_fds, ...), interpreter (python_info) and garbage collector (python_gc_*) metrics of
prometheus_client's collectors, in the same registry.

Buckets (why they are what they are; deploy/grafana and deploy/prometheus/rules.yml rely on it):
- time histograms start at 5 us: an inline LeNet-5 call takes 20-100 us, and with a first bucket
  at 100 us every quantile of such work read as an interpolation inside (0, 100 us];
- queue wait has an exact 0 bucket (le="0.0"): a request run at once (nothing pending, inline)
  observes 0.0, which lands there, and histogram_quantile answers 0 for a quantile that falls in
  a bucket whose bound is <= 0, so requests that never waited keep the quantiles true instead of
  reading as waits inside the first bucket; the le="0.0" count is also the number of such requests;
- batch size counts rows: every size from 1 to 8 is its own bucket (le="1.0" counts exactly the
  one-row calls), so ceil(histogram_quantile(...)) is the exact quantile up to 8 rows (a bucket
  (k-1, k] interpolates into it, and ceil gives k); wider buckets above that.
The `_created` series (one more per counter and histogram child, in the OpenMetrics format) are
off: nothing reads them, and they doubled the series of every counter.

`edgecnn serve --workers N` (server/workers.py): each worker's Metrics(multiprocess=True) writes
its values to prometheus_client's files in PROMETHEUS_MULTIPROC_DIR, and the supervisor serves
one /metrics over all of them with the same names and labels (server/worker_metrics.py):
counters and histograms summed over every worker that ever ran (a dead worker's counts stay),
gauges kept per process ("liveall", dropped when a worker dies: mark_process_dead) and combined
there: in-flight and queue depth summed, edgecnn_server_ready the minimum (1 only while every
worker serves), the per-version gauges and edgecnn_model_info the maximum. prometheus_client's
Info has no multiprocess mode: a worker keeps edgecnn_model_info as a gauge of value 1, served
as an info metric again. Files cannot drop a series, so a worker marks a removed version's
gauges NaN and the supervisor leaves NaN samples out. The process_* metrics sum the supervisor
and its workers (CPU seconds also count the workers that have exited); python_info and
python_gc_* are the supervisor's own.
"""

from __future__ import annotations

import math

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import start_http_server

from .model_version import ModelVersion

# Process-wide in prometheus_client (it applies to every registry).
disable_created_metrics()

# Seconds, 5 us to 10 s.
LATENCY_BUCKETS = (
    0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
QUEUE_WAIT_BUCKETS = (0.0, *LATENCY_BUCKETS)
BATCH_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512, 1024)
INFO_LABELS = ("architecture", "provider", "opset", "quantization", "dataset")  # edgecnn_model_info's, after model and version


class ModelMetrics:
    """The per-version children, bound once so the hot path skips label lookups."""

    def __init__(self, metrics: Metrics, mv: ModelVersion) -> None:
        labels = (mv.name, mv.version_str)
        self.queue_wait = metrics.queue_wait.labels(*labels)
        self.inference = metrics.inference.labels(*labels)
        self.batch_size = metrics.batch_size.labels(*labels)
        self.queue_depth = metrics.queue_depth.labels(*labels)


class Metrics:
    def __init__(self, multiprocess: bool = False) -> None:
        """multiprocess: a worker of `edgecnn serve --workers N` (see the module's docstring)."""
        self.multiprocess = multiprocess
        self.registry = CollectorRegistry()
        r = self.registry
        per_process = {"multiprocess_mode": "liveall"} if multiprocess else {}
        ProcessCollector(registry=r)  # CPU seconds, resident memory, open and max fds, start time
        PlatformCollector(registry=r)  # python_info
        GCCollector(registry=r)  # collections, collected and uncollectable objects per generation
        self.requests = Counter(
            "edgecnn_requests", "Finished RPCs by model, version, API and gRPC status code",
            ["model", "version", "api", "code", "protocol"], registry=r,
        )
        self.request_duration = Histogram(
            "edgecnn_request_duration_seconds", "End-to-end RPC time inside the server",
            ["model", "version", "api", "protocol"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            "edgecnn_queue_wait_seconds", "Time a request waited for its batch to start",
            ["model", "version"], buckets=QUEUE_WAIT_BUCKETS, registry=r,
        )
        self.inference = Histogram(
            "edgecnn_inference_duration_seconds", "Time of one ONNX Runtime call",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "edgecnn_batch_size", "Rows (images) per ONNX Runtime call",
            ["model", "version"], buckets=BATCH_BUCKETS, registry=r,
        )
        self.inflight = Gauge("edgecnn_inflight_requests", "RPCs being handled now", registry=r, **per_process)
        self.queue_depth = Gauge(
            "edgecnn_queue_depth", "Requests waiting for a batch", ["model", "version"], registry=r, **per_process
        )
        self.parameters = Gauge(
            "edgecnn_model_parameters", "Trainable parameters of the model", ["model", "version"], registry=r, **per_process
        )
        self.onnx_bytes = Gauge(
            "edgecnn_model_onnx_bytes", "Size of the model.onnx file", ["model", "version"], registry=r, **per_process
        )
        if multiprocess:
            self.model_info: Info | Gauge = Gauge(
                "edgecnn_model_info", "How a model version runs", ["model", "version", *INFO_LABELS],
                registry=r, **per_process,
            )
        else:
            self.model_info = Info("edgecnn_model", "How a model version runs", ["model", "version"], registry=r)
        self._info_labels: dict[tuple[str, str], tuple[str, ...]] = {}  # multiprocess: the info gauge's labels
        self._removed: set[tuple[str, str]] = set()  # multiprocess: versions whose gauges read NaN
        self.ready = Gauge(
            "edgecnn_server_ready", "1 while serving, 0 while loading or draining", registry=r, **per_process
        )
        self.nonfinite_inputs = Counter(
            "edgecnn_nonfinite_inputs", "ModelInfer requests whose input held NaN or infinite values",
            ["model", "version"], registry=r,
        )
        self.model_load_failures = Counter(
            "edgecnn_model_load_failures", "Loads of a model version that failed (the version did not serve)",
            ["model", "version"], registry=r,
        )
        self._nonfinite_children: dict[tuple[str, str], Counter] = {}
        self._request_children: dict[tuple[str, str, str, str, str], tuple[Counter, Histogram]] = {}
        self._http = None

    def add_model(self, mv: ModelVersion) -> ModelMetrics:
        self.parameters.labels(mv.name, mv.version_str).set(mv.params)
        self.onnx_bytes.labels(mv.name, mv.version_str).set(mv.onnx_bytes)
        info = {
            "architecture": mv.architecture,
            "provider": mv.provider,
            "opset": str(mv.opset),
            "quantization": mv.quantization,
            "dataset": mv.dataset,
        }
        if isinstance(self.model_info, Info):
            self.model_info.labels(mv.name, mv.version_str).info(info)
        else:
            key = (mv.name, mv.version_str)
            if key in self._removed:  # back after an unload: its queue depth counts from 0 again, not from NaN
                self._removed.discard(key)
                self.queue_depth.labels(*key).set(0)
            labels = (*key, *(info[name] for name in INFO_LABELS))
            if self._info_labels.get(key, labels) != labels:  # a reload that runs otherwise
                self._drop(self.model_info, self._info_labels[key])
            self._info_labels[key] = labels
            self.model_info.labels(*labels).set(1)
        return ModelMetrics(self, mv)

    def remove_model(self, mv: ModelVersion) -> None:
        """Drop the per-version series of an unloaded version (the counters stay: they count what happened)."""
        labels = (mv.name, mv.version_str)
        for metric in (self.parameters, self.onnx_bytes, self.queue_depth):
            self._drop(metric, labels)
        if self.multiprocess:
            self._removed.add(labels)
        if isinstance(self.model_info, Info):
            self._drop(self.model_info, labels)
        elif labels in self._info_labels:
            self._drop(self.model_info, self._info_labels.pop(labels))

    def _drop(self, metric: Gauge | Info, labels: tuple[str, ...]) -> None:
        if self.multiprocess and isinstance(metric, Gauge):
            metric.labels(*labels).set(math.nan)  # the files keep the series: NaN tells the supervisor it is gone
        try:
            metric.remove(*labels)
        except KeyError:
            pass

    def count_nonfinite(self, mv: ModelVersion) -> None:
        """One more request of mv whose input held NaN or infinite values (perf_analyzer's random
        data does in nearly every request: the child is looked up once)."""
        key = (mv.name, mv.version_str)
        child = self._nonfinite_children.get(key)
        if child is None:
            child = self._nonfinite_children[key] = self.nonfinite_inputs.labels(*key)
        child.inc()

    def observe_request(self, model: str, version: str, api: str, code: str, seconds: float, *, protocol: str) -> None:
        key = (model, version, api, code, protocol)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(*key), self.request_duration.labels(model, version, api, protocol))
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
