"""The supervisor's /metrics under `edgecnn serve --workers N`: one view of every worker, with
the names and labels of a single server (server/metrics.py's docstring says how each metric
combines; server/workers.py runs the workers).

The workers write prometheus_client's multiprocess files into one folder; WorkerMetrics reads
them with MultiProcessCollector (counters and histograms summed over every file) and combines
the per-process gauges itself, leaving out the series a worker marked removed (NaN).
WorkersProcess sums the process_* metrics of the supervisor and its live workers.
"""

from __future__ import annotations

import glob
import math
import os
import resource
from collections import defaultdict
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample

# How a gauge combines over the workers (the rest: the maximum, e.g. a version's parameter count).
_COMBINE: dict[str, Callable[[list[float]], float]] = {
    "edgecnn_inflight_requests": sum,
    "edgecnn_queue_depth": sum,
    "edgecnn_server_ready": min,
}
INFO_GAUGE = "edgecnn_model_info"  # a worker's stand-in for the Info edgecnn_model (metrics.py)


class WorkerMetrics:
    """The edgecnn_* metrics of every worker that wrote into `path`."""

    def __init__(self, path: str) -> None:
        self._path = path

    def collect(self) -> Iterable[Metric]:
        files = glob.glob(os.path.join(self._path, "*.db"))
        for metric in MultiProcessCollector.merge(files, accumulate=True):
            if metric.type == "gauge":
                metric = _combined_gauge(metric)
            if metric.samples:
                yield metric


def _combined_gauge(metric: Metric) -> Metric:
    values: dict[tuple[str, tuple], list[float]] = defaultdict(list)
    for s in metric.samples:
        if not math.isnan(s.value):  # NaN: the worker removed the series
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "pid"))
            values[(s.name, labels)].append(s.value)
    combine = _COMBINE.get(metric.name, max)
    if metric.name == INFO_GAUGE:
        out = Metric("edgecnn_model", metric.documentation, "info")
    else:
        out = Metric(metric.name, metric.documentation, "gauge")
    out.samples = [Sample(name, dict(labels), combine(vs)) for (name, labels), vs in values.items()]
    return out


class WorkersProcess:
    """process_* of the supervisor and its live workers together: memory and file descriptors
    summed, CPU seconds too (plus those of the workers that have exited and been waited for:
    the counter never goes back), start time and max fds the supervisor's."""

    def __init__(self, worker_pids: Callable[[], list[int]]) -> None:
        self._worker_pids = worker_pids

    def collect(self) -> Iterable[Metric]:
        own = {m.name: m for m in ProcessCollector(registry=None).collect()}
        totals: dict[str, float] = defaultdict(float)
        for pid in self._worker_pids():
            for m in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                totals[m.name] += m.samples[0].value
        exited = resource.getrusage(resource.RUSAGE_CHILDREN)
        totals["process_cpu_seconds"] += exited.ru_utime + exited.ru_stime
        for name, metric in own.items():
            if name in ("process_virtual_memory_bytes", "process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds"):
                s = metric.samples[0]
                metric.samples = [Sample(s.name, s.labels, s.value + totals[name])]
            yield metric


def supervisor_registry(path: str, worker_pids: Callable[[], list[int]]) -> CollectorRegistry:
    """What the supervisor's /metrics serves."""
    registry = CollectorRegistry()
    registry.register(WorkerMetrics(path))
    registry.register(WorkersProcess(worker_pids))
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
