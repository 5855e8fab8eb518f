"""The real server as the CPU image starts it (its ENTRYPOINT/CMD, run locally): every metric and
label the dashboard queries is in a real scrape, with the process metrics, no `_created` series and
the histogram buckets the dashboard's quantiles rely on; `edgecnn health` (the HEALTHCHECK and the
probes' command) against a live and a stopped server."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from tests.child_process import ServeProcess
from tests.deploy.files import (
    DOCKERFILE,
    MODEL,
    dashboard_queries,
    local_argv,
    model_infer,
    no_http,
    scrape,
    scrape_text,
    serve_command,
)
from tests.servers import edgecnn_exe, serve_argv

# Series Prometheus makes itself, not the server.
PROMETHEUS_MADE = {"up"}


@pytest.fixture(scope="module")
def live_server(served_repository):
    served = ServeProcess([edgecnn_exe(), *local_argv(serve_command(DOCKERFILE), served_repository.dir)[1:]])
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    model_infer(served.address, MODEL, x)
    model_infer(served.address, MODEL, x[:1])
    yield served
    assert served.stop() == 0, "".join(served.output)


def _labels_used(query: str) -> set[str]:
    labels = set()
    for group in re.findall(r"\bby \(([^)]*)\)", query):
        labels |= {name.strip() for name in group.split(",") if name.strip()}
    for matchers in re.findall(r"\b[a-z_]+\{([^}]*)\}", query):
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    labels |= set(re.findall(r"label_values\([^,]+,\s*(\w+)\)", query))
    return labels - {"job", "instance"}  # Prometheus adds them at scrape time


def _declared_only(metrics_port: int) -> set[str]:
    """Counters the server declares (HELP and TYPE) with no series yet: a labelled counter's first
    series appears with its first event (a model load failure, a non-finite input)."""
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(scrape_text(metrics_port))
    return {f"{f.name}_total" for f in families if f.type == "counter" and not f.samples}


def test_dashboard_queries_match_a_real_scrape(live_server):
    samples = scrape(live_server.metrics_port)
    declared_only = _declared_only(live_server.metrics_port)
    for query in dashboard_queries():
        names = set(re.findall(r"\b(?:edgecnn|process|python)_\w+", query)) | (PROMETHEUS_MADE & set(re.findall(r"\b(\w+)\{", query)))
        assert names, query
        names -= PROMETHEUS_MADE | declared_only  # the latter: series checked by test_prometheus.py
        missing = names - set(samples)
        assert not missing, f"{query}: not in the server's /metrics: {sorted(missing)}"
        if not names:
            continue
        labels = {label for name in names for sample in samples[name] for label in sample}
        assert _labels_used(query) <= labels | {"le"}, f"{query}: labels {sorted(_labels_used(query) - labels)} not on {names}"
        for name in names:
            if name.startswith("edgecnn_") and name.endswith(("_bucket", "_count", "_sum")):
                count = name.rsplit("_", 1)[0] + "_count"
                values = [float(s["__value__"]) for s in samples[count] if s.get("model") == MODEL]
                assert values and max(values) > 0, f"{name}: no observation after a request"
    params = [s for s in samples["edgecnn_model_parameters"] if s["model"] == MODEL]
    assert [float(s["__value__"]) for s in params] == [44_426.0]


def test_scrape_has_process_metrics_and_no_created_series(live_server):
    text = scrape_text(live_server.metrics_port)
    samples = scrape(live_server.metrics_port)
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_max_fds",
                 "process_start_time_seconds", "python_gc_collections_total", "python_info"):  # fmt: skip
        assert name in samples, name
    assert float(samples["process_resident_memory_bytes"][0]["__value__"]) > 10e6
    assert "_created" not in text, [line for line in text.splitlines() if "_created" in line][:3]


def _bounds(samples: dict, name: str) -> list[str]:
    return [s["le"] for s in samples[f"{name}_bucket"] if s.get("model") == MODEL and s.get("version") == "1"]


def test_histogram_buckets_start_where_the_work_is(live_server):
    samples = scrape(live_server.metrics_port)
    for name in ("edgecnn_inference_duration_seconds", "edgecnn_queue_wait_seconds"):
        bounds = _bounds(samples, name)
        assert "5e-06" in bounds and "2.5e-05" in bounds and bounds[-2:] == ["10.0", "+Inf"], (name, bounds)
    # Queue wait: an exact-zero bucket (requests run at once); these requests all ran inline.
    assert _bounds(samples, "edgecnn_queue_wait_seconds")[0] == "0.0"
    wait = {s["le"]: float(s["__value__"]) for s in samples["edgecnn_queue_wait_seconds_bucket"] if s.get("model") == MODEL}
    count = [float(s["__value__"]) for s in samples["edgecnn_queue_wait_seconds_count"] if s.get("model") == MODEL]
    assert wait["0.0"] == count[0] >= 2, (wait, count)
    assert _bounds(samples, "edgecnn_inference_duration_seconds")[0] == "5e-06"
    # Batch size: whole rows from 1, each size up to 8 its own bucket.
    batch = _bounds(samples, "edgecnn_batch_size")
    assert batch[:8] == [f"{n}.0" for n in range(1, 9)], batch
    rows = {s["le"]: float(s["__value__"]) for s in samples["edgecnn_batch_size_bucket"] if s.get("model") == MODEL}
    assert (rows["1.0"], rows["2.0"], rows["3.0"]) == (1, 1, 2), rows  # one call of 1 row, one of 3
    request = [s["le"] for s in samples["edgecnn_request_duration_seconds_bucket"] if s.get("api") == "ModelInfer" and s.get("model") == MODEL]
    assert request[0] == "5e-06", request


def test_health_command_live_and_stopped(served_repository):
    exe = edgecnn_exe()
    served = ServeProcess(serve_argv(served_repository.dir, "--metrics-port", "-1", "--grace", "1", *no_http()))

    def health(*extra: str) -> subprocess.CompletedProcess:
        argv = [exe, "health", "--server", served.address, "--timeout", "5", *extra]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    try:
        for extra, code, status in [((), 0, "SERVING"), (("--model", MODEL), 0, "SERVING"),
                                    (("--model", "no-such-model"), 1, "SERVICE_UNKNOWN")]:  # fmt: skip
            done = health(*extra)
            assert done.returncode == code and done.stdout.strip().endswith(f": {status}"), (extra, done)
    finally:
        assert served.stop() == 0, "".join(served.output)
    done = health()
    assert done.returncode == 1 and "UNREACHABLE" in done.stdout, done
