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

The request path does not update these metrics itself: a request's counter and durations, and
the queue-wait, inference and batch-size histograms, are appended to buffers that are added to
their metrics in bulk whenever the registry is read (every scrape; server/metric_buffers.py), and
edgecnn_inflight_requests reads the data plane's count when scraped. A scrape therefore shows
every request answered before it, as it would with per-request updates, at a fraction of the
cost per request. With nothing scraping, the server adds them every FLUSH_UNSCRAPED_S (app.py),
so the buffers never hold more than that long's requests.

`edgecnn serve --workers N` (server/workers.py): each worker's Metrics(multiprocess=True) writes
its values to prometheus_client's files in PROMETHEUS_MULTIPROC_DIR, and the supervisor serves
one /metrics over all of them with the same names and labels (server/worker_metrics.py):
counters and histograms summed over every worker that ever ran (a dead worker's counts stay),
gauges kept per process ("liveall", dropped when a worker dies: mark_process_dead) and combined
there: in-flight and queue depth summed, edgecnn_server_ready the minimum (1 only while every
worker serves), the per-version gauges and edgecnn_model_info the maximum. prometheus_client's
Info has no multiprocess mode: a worker keeps edgecnn_model_info as a gauge of value 1, served
as an info metric again. A worker adds its buffers to its files every WORKER_FLUSH_S (app.py) and before it exits, so
the supervisor's /metrics lags a worker's requests by up to that. Files cannot drop a series, so a worker marks a removed version's
gauges NaN and the supervisor leaves NaN samples out. The process_* metrics sum the supervisor
and its workers (CPU seconds also count the workers that have exited); python_info and
python_gc_* are the supervisor's own.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

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

from .metric_buffers import CounterBuffer, HistogramBuffer, add_observations, taken
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
    """The per-version children, bound once so the hot path skips label lookups; the histograms
    buffered (metric_buffers.py)."""

    def __init__(self, metrics: Metrics, mv: ModelVersion) -> None:
        labels = (mv.name, mv.version_str)
        self.queue_wait = HistogramBuffer(metrics.queue_wait.labels(*labels))
        self.inference = HistogramBuffer(metrics.inference.labels(*labels))
        self.batch_size = HistogramBuffer(metrics.batch_size.labels(*labels))
        self.queue_depth = metrics.queue_depth.labels(*labels)

    def flush(self) -> None:
        self.queue_wait.flush()
        self.inference.flush()
        self.batch_size.flush()


class _FlushFirst:
    """The registry's first collector: the buffered observations reach their metrics before any
    metric is read."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> list:
        self._metrics.flush()
        return []


class Metrics:
    def __init__(self, multiprocess: bool = False) -> None:
        """multiprocess: a worker of `edgecnn serve --workers N` (see the module's docstring)."""
        self.multiprocess = multiprocess
        self.registry = CollectorRegistry()
        r = self.registry
        self._flush_lock = threading.Lock()
        self._model_metrics: dict[tuple[str, str], ModelMetrics] = {}  # by (model, version)
        # Per (model, version, api, code, protocol): its counter and duration children and the
        # durations observed since the last flush.
        self._request_series: dict[tuple[str, str, str, str, str], tuple[Counter, Histogram, list[float]]] = {}
        self._inflight_now: Callable[[], int] | None = None
        r.register(_FlushFirst(self))
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
        self._nonfinite_pending: dict[tuple[str, str], CounterBuffer] = {}
        self._http = None

    def track_inflight(self, now: Callable[[], int]) -> None:
        """edgecnn_inflight_requests reads now() (the data plane's count) instead of being
        incremented per request: when scraped, or in a worker at every flush (its files are read
        by the supervisor)."""
        self._inflight_now = now
        if not self.multiprocess:
            self.inflight.set_function(now)

    def flush(self) -> None:
        """Add the buffered observations to their metrics: before every scrape and read of the
        registry (_FlushFirst), and in a worker periodically (app.py), since the supervisor reads
        its files. The requests first: a request's batch observations precede its own, so a
        request counted has its batch counted too."""
        with self._flush_lock:
            for counter, duration, pending in list(self._request_series.values()):
                if seconds := taken(pending):
                    counter.inc(len(seconds))
                    add_observations(duration, seconds)
            for nonfinite in list(self._nonfinite_pending.values()):
                nonfinite.flush()
            for model in list(self._model_metrics.values()):
                model.flush()
            if self.multiprocess and self._inflight_now is not None:
                self.inflight.set(self._inflight_now())

    def add_model(self, mv: ModelVersion) -> ModelMetrics:
        key = (mv.name, mv.version_str)
        self.parameters.labels(*key).set(mv.params)
        self.onnx_bytes.labels(*key).set(mv.onnx_bytes)
        info = {
            "architecture": mv.architecture,
            "provider": mv.provider,
            "opset": str(mv.opset),
            "quantization": mv.quantization,
            "dataset": mv.dataset,
        }
        if isinstance(self.model_info, Info):
            self.model_info.labels(*key).info(info)
        else:
            if key in self._removed:  # back after an unload: its queue depth counts from 0 again, not from NaN
                self._removed.discard(key)
                self.queue_depth.labels(*key).set(0)
            labels = (*key, *(info[name] for name in INFO_LABELS))
            if self._info_labels.get(key, labels) != labels:  # a reload that runs otherwise
                self._drop(self.model_info, self._info_labels[key])
            self._info_labels[key] = labels
            self.model_info.labels(*labels).set(1)
        # A version reloaded while its predecessor retires shares its buffers (and children).
        model = self._model_metrics.get(key)
        if model is None:
            model = self._model_metrics[key] = ModelMetrics(self, mv)
        return model

    def remove_model(self, mv: ModelVersion) -> None:
        """Drop the per-version series of an unloaded version (the counters and histograms stay:
        they count what happened)."""
        self.flush()
        labels = (mv.name, mv.version_str)
        self._model_metrics.pop(labels, None)
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
        data does in nearly every request; buffered until the next flush)."""
        key = (mv.name, mv.version_str)
        pending = self._nonfinite_pending.get(key)
        if pending is None:
            pending = self._nonfinite_pending[key] = CounterBuffer(self.nonfinite_inputs.labels(*key))
        pending.inc()

    def observe_request(self, model: str, version: str, api: str, code: str, seconds: float, *, protocol: str) -> None:
        """One finished request (buffered until the next flush)."""
        key = (model, version, api, code, protocol)
        series = self._request_series.get(key)
        if series is None:
            series = (self.requests.labels(*key), self.request_duration.labels(model, version, api, protocol), [])
            self._request_series[key] = series
        series[2].append(seconds)

    def serve_http(self, host: str, port: int) -> int:
        """Start the /metrics endpoint on a daemon thread; returns the bound port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_port)

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
