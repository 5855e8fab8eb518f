"""deploy/prometheus and the dashboard against a real Prometheus (Debian's `prometheus` package
gives both binaries; each test skips where its binary is missing).

promtool checks rules.yml and the compose configuration and runs rules.test.yml. Then a real
Prometheus scrapes a live `edgecnn serve` under a little load (every API the dashboard splits
on, and errors), evaluates rules.yml, and answers every dashboard expression through its HTTP
API, with Grafana's template variables resolved the way Grafana does (their own queries, "All"
as the values found, or the variable's allValue): any expression that errors, returns no series
or only NaN fails (the repository holds a model that fails to load, for the load-failure panel and
alert). The load is sequential single-row requests, all run inline, so the quantiles
the issue found false are checked for their true values: queue wait p95 exactly 0, batch size
p95 exactly 1 row.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml

from edgecnn.protos import classifier_pb2, classifier_pb2_grpc, inference_pb2, inference_pb2_grpc
from tests.child_process import ChildProcess, ServeProcess
from tests.deploy.files import MODEL, PROMETHEUS, dashboard, dashboard_queries, load_yaml, no_http
from tests.servers import free_port, serve_argv

PROMTOOL, PROMETHEUS_BIN = shutil.which("promtool"), shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
needs_prometheus = pytest.mark.skipif(PROMETHEUS_BIN is None, reason="prometheus not installed (apt-get install prometheus)")
JOB = "edgecnn-test"
SCRAPE_S = 1
RATE_INTERVAL = "10s"  # Grafana's $__rate_interval: at least 4 scrape intervals
LOAD_S = 12.0


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120)


@needs_promtool
def test_rules_pass_promtool_check():
    done = promtool("check", "rules", "rules.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    done = promtool("check", "config", "prometheus.yml")  # loads rules.yml through rule_files
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_rules_unit_tests():
    done = promtool("test", "rules", "rules.test.yml")
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_every_alert_has_a_firing_unit_test():
    groups = load_yaml(PROMETHEUS / "rules.yml")["groups"]
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    records = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    assert {"EdgecnnHighErrorRatio", "EdgecnnLatencyP99OverSLO", "EdgecnnQueueFull", "EdgecnnServerNotReady",
            "EdgecnnServerDown", "EdgecnnModelLoadFailures"} <= alerts  # fmt: skip
    tests = load_yaml(PROMETHEUS / "rules.test.yml")
    assert tests["rule_files"] == ["rules.yml"]
    fired = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", []) if t["exp_alerts"]}
    quiet = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", []) if not t["exp_alerts"]}
    assert alerts <= fired, f"alerts never shown firing: {sorted(alerts - fired)}"
    assert alerts <= quiet | {"EdgecnnQueueFull"}, f"alerts never shown quiet: {sorted(alerts - quiet)}"
    tested = {e["expr"] for case in tests["tests"] for e in case.get("promql_expr_test", [])}
    assert {"edgecnn:request_errors:ratio_rate5m", "edgecnn:request_duration_seconds:p99_rate5m"} <= tested & records
    for group in groups:
        for rule in group["rules"]:
            if "alert" in rule:
                assert {"summary", "description"} <= set(rule["annotations"]) and rule["labels"]["severity"], rule["alert"]


# --- a real Prometheus --------------------------------------------------------------------------


class Prometheus:
    def __init__(self, folder: Path, target: str) -> None:
        config = {
            "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
            "rule_files": [str(PROMETHEUS / "rules.yml")],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        argv = [PROMETHEUS_BIN, f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}", "--log.level=info"]  # fmt: skip
        self.process = ChildProcess(argv, r"Server is ready to receive web requests", timeout_s=60, stderr=subprocess.STDOUT)

    def get(self, path: str, **params: str) -> dict:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as reply:
                return json.load(reply)
        except urllib.error.HTTPError as exc:  # 400/422: a bad query; the body says why
            return json.load(exc)

    def query(self, expr: str) -> list[dict]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", f"{expr}\n  -> {answer.get('errorType')}: {answer.get('error')}"
        assert answer["data"]["resultType"] == "vector", (expr, answer["data"]["resultType"])
        return answer["data"]["result"]

    def stop(self) -> None:
        self.process.stop(timeout_s=30)


def _load(address: str, stop: threading.Event, counts: dict[str, int]) -> None:
    """Sequential single-row calls: ModelInfer, Classify (PNG), metadata, health of the
    dashboard's APIs, and the errors its error panels split on (NOT_FOUND, INVALID_ARGUMENT)."""
    from tests.onnx_models import png_bytes, sample_images

    png = png_bytes(sample_images(1)[0])
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    with grpc.insecure_channel(address) as channel:
        infer = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        classify = classifier_pb2_grpc.ClassifierStub(channel)

        def request(model: str, array: np.ndarray) -> inference_pb2.ModelInferRequest:
            r = inference_pb2.ModelInferRequest(model_name=model)
            r.inputs.add(name="input", datatype="FP32", shape=list(array.shape))
            r.raw_input_contents.append(array.tobytes())
            return r

        calls = [
            lambda: infer.ModelInfer(request(MODEL, x), timeout=10),
            lambda: classify.Classify(classifier_pb2.ClassifyRequest(model=MODEL, images=[classifier_pb2.Image(encoded=png)], top_k=3), timeout=10),
            lambda: infer.ModelMetadata(inference_pb2.ModelMetadataRequest(name=MODEL), timeout=10),
            lambda: infer.ModelInfer(request("no-such-model", x), timeout=10),
            lambda: infer.ModelInfer(request(MODEL, x[:, :, :14]), timeout=10),
        ]
        i = 0
        while not stop.is_set():
            call = calls[0] if i % 10 > 4 else calls[i % 10]  # mostly ModelInfer
            try:
                call()
                counts["ok"] += 1
            except grpc.RpcError as exc:
                counts[exc.code().name] = counts.get(exc.code().name, 0) + 1
            i += 1
            time.sleep(0.002)


def grafana_escape(value: str) -> str:
    """A label value in a Prometheus regex inside a PromQL string, as Grafana's Prometheus data
    source writes a multi-value or All variable."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", value)


def resolve_variables(prometheus: Prometheus) -> dict[str, str]:
    """Each dashboard variable's value with everything selected ("All"), in dashboard order."""
    values: dict[str, str] = {}
    for var in dashboard()["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", substitute(var["query"]["query"], values))
        assert match, var["query"]["query"]
        selector, label = match.groups()
        found = sorted({s["metric"].get(label, "") for s in prometheus.query(f"group by ({label}) ({selector})")} - {""})
        assert found, f"variable {var['name']}: {var['query']['query']} found no values"
        values[var["name"]] = var.get("allValue") or "(" + "|".join(grafana_escape(v) for v in found) + ")"
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(f"${name}", values[name])
    return expr


BROKEN = "broken"  # a model whose only version cannot load: edgecnn_model_load_failures_total


def repository_with_a_broken_model(source: Path, dest: Path) -> Path:
    """The served repository plus a model whose model.onnx is not ONNX."""
    shutil.copytree(source, dest)
    config = (source / MODEL / "config.pbtxt").read_text().replace(f'name: "{MODEL}"', f'name: "{BROKEN}"')
    (dest / BROKEN / "1").mkdir(parents=True)
    (dest / BROKEN / "config.pbtxt").write_text(config)
    shutil.copy(source / MODEL / "labels.txt", dest / BROKEN / "labels.txt")
    (dest / BROKEN / "1" / "model.onnx").write_bytes(b"not an ONNX file")
    return dest


@pytest.fixture(scope="module")
def prometheus_under_load(served_repository, tmp_path_factory):
    if PROMETHEUS_BIN is None:
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    repository = repository_with_a_broken_model(served_repository.dir, tmp_path_factory.mktemp("repository") / "repo")
    served = ServeProcess(serve_argv(repository, "--exit-on-error", "false", *no_http()))
    counts: dict[str, int] = {"ok": 0}
    stop = threading.Event()
    load = threading.Thread(target=_load, args=(served.address, stop, counts), daemon=True)
    prometheus = None
    try:
        prometheus = Prometheus(tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{served.metrics_port}")
        load.start()
        time.sleep(LOAD_S)  # several scrapes and rule evaluations while the load runs
        yield prometheus, counts
    finally:
        stop.set()
        load.join(timeout=30)
        if prometheus is not None:
            prometheus.stop()
        assert served.stop() == 0, "".join(served.output)


@needs_prometheus
def test_every_dashboard_expression_returns_series_from_a_real_prometheus(prometheus_under_load):
    prometheus, counts = prometheus_under_load
    assert counts["ok"] > 50 and counts.get("NOT_FOUND") and counts.get("INVALID_ARGUMENT"), counts
    (target,) = prometheus.get("/api/v1/targets")["data"]["activeTargets"]
    assert target["health"] == "up", target
    values = resolve_variables(prometheus)
    failures = []
    for query in dashboard_queries():
        if query.startswith("label_values("):
            continue  # the variables, resolved above
        expr = substitute(query, values)
        assert "$" not in expr, f"unresolved variable in {expr}"
        try:
            result = prometheus.query(expr)
        except AssertionError as exc:
            failures.append(f"error: {exc}")
            continue
        finite = [s for s in result if np.isfinite(float(s["value"][1]))]
        if not finite:
            failures.append(f"{'no series' if not result else 'only NaN'}: {expr}")
    assert not failures, "\n".join(failures)


@needs_prometheus
def test_rules_evaluate_on_live_data(prometheus_under_load):
    prometheus, _ = prometheus_under_load
    groups = prometheus.get("/api/v1/rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == sum(len(g["rules"]) for g in load_yaml(PROMETHEUS / "rules.yml")["groups"])
    assert all(rule["health"] == "ok" for rule in rules), [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    for record in ("edgecnn:requests:rate5m", "edgecnn:request_errors:ratio_rate5m", "edgecnn:request_duration_seconds:p99_rate5m"):
        assert prometheus.query(record), f"{record}: no series on live data"
    firing = {r["name"]: r["alerts"] for r in rules if r.get("state") == "firing"}
    # The broken model's failed load fires; NOT_FOUND and INVALID_ARGUMENT are the client's, so no
    # error-ratio alert; nothing else is wrong.
    assert set(firing) == {"EdgecnnModelLoadFailures"}, firing
    (alert,) = firing["EdgecnnModelLoadFailures"]
    assert (alert["labels"]["model"], alert["labels"]["version"], alert["labels"]["job"]) == (BROKEN, "1", JOB), alert


@needs_prometheus
def test_quantiles_are_true_when_nothing_waited(prometheus_under_load):
    """Every request ran at once on one row: the queue-wait p95 is exactly 0 (not ~95 us inside
    the first bucket) and the batch-size p95 exactly 1 row (not 0.95); compute is microseconds."""
    prometheus, _ = prometheus_under_load
    sel = f'job="{JOB}", model="{MODEL}"'

    def value(expr: str) -> float:
        (sample,) = prometheus.query(expr)
        return float(sample["value"][1])

    quantile = "histogram_quantile({q}, sum by (le) (rate({m}_bucket{{{sel}}}[{r}])))"
    assert value(quantile.format(q=0.95, m="edgecnn_queue_wait_seconds", sel=sel, r=RATE_INTERVAL)) == 0.0
    assert value(quantile.format(q=0.99, m="edgecnn_queue_wait_seconds", sel=sel, r=RATE_INTERVAL)) == 0.0
    assert value(f"ceil({quantile.format(q=0.95, m='edgecnn_batch_size', sel=sel, r=RATE_INTERVAL)})") == 1.0
    compute = value(quantile.format(q=0.95, m="edgecnn_inference_duration_seconds", sel=sel, r=RATE_INTERVAL))
    assert 0 < compute < 0.01, compute
    not_queued = value(f'sum(rate(edgecnn_queue_wait_seconds_bucket{{{sel}, le="0.0"}}[{RATE_INTERVAL}])) / sum(rate(edgecnn_queue_wait_seconds_count{{{sel}}}[{RATE_INTERVAL}]))')
    assert not_queued == 1.0
