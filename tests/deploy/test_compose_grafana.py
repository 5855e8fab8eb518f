"""deploy/compose.yaml, deploy/prometheus/prometheus.yml and deploy/grafana, read as files: the
compose services hold to each other and to the image, and the dashboard covers what an operator
needs (health, errors, per-version and per-instance views, latency per API, model info, the
process) in the right units. tests/deploy/test_prometheus.py runs every expression against a
real Prometheus; tests/deploy/test_live.py checks the names against a real scrape."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.deploy.files import (
    DEPLOY,
    DOCKERFILE,
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    ROOT,
    dashboard,
    dashboard_queries,
    load_yaml,
    panels,
    parse_serve_args,
    serve_command,
)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(DEPLOY / "compose.yaml")


def _host_path(spec: str) -> Path:
    return (DEPLOY / spec).resolve()


def _mounts(service: dict) -> dict[str, str]:
    """target -> source for short ('src:dst[:ro]') and long volume syntax."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
        else:
            source, target = v["source"], v["target"]
        out[target] = source
    return out


def test_compose_server(compose):
    server = compose["services"]["server"]
    build = server["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    assert set(server["ports"]) == {f"{HTTP_PORT}:{HTTP_PORT}", f"{GRPC_PORT}:{GRPC_PORT}", f"{METRICS_PORT}:{METRICS_PORT}"}
    models = next(v for v in server["volumes"] if v["target"] == "/models")
    assert models["read_only"] is True
    assert models["source"].startswith("${EDGECNN_MODELS:-")
    # compose's command replaces the image CMD: it must be the same serve flags.
    assert ["edgecnn", "serve", *server["command"]] == serve_command(DOCKERFILE)
    assert server["read_only"] is True and server["user"].split(":")[0] not in ("0", "root")
    grace = parse_serve_args(server["command"]).grace
    assert float(server["stop_grace_period"].rstrip("s")) > grace


def test_compose_prometheus_scrapes_the_server_and_loads_the_rules(compose):
    prometheus = compose["services"]["prometheus"]
    mounts = _mounts(prometheus)
    config_path = _host_path(mounts["/etc/prometheus/prometheus.yml"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = load_yaml(config_path)
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"server:{METRICS_PORT}"], "scrape the compose service 'server' on its metrics port"
    assert config["scrape_configs"][0].get("metrics_path", "/metrics") == "/metrics"
    assert re.fullmatch(r"\d+[smh]", config["global"]["scrape_interval"])
    # rule_files are relative to the config file: each must be mounted beside it.
    for rule_file in config["rule_files"]:
        source = _host_path(mounts[f"/etc/prometheus/{rule_file}"])
        assert source == (config_path.parent / rule_file).resolve() and source.is_file()


def test_compose_grafana_provisioning(compose):
    grafana = compose["services"]["grafana"]
    mounts = _mounts(grafana)
    provisioning = _host_path(mounts["/etc/grafana/provisioning"])
    datasources = [d for f in sorted((provisioning / "datasources").glob("*.yaml")) for d in load_yaml(f)["datasources"]]
    (prom,) = datasources
    assert prom["type"] == "prometheus"
    assert prom["url"] == "http://prometheus:9090" and "9090:9090" in compose["services"]["prometheus"]["ports"]
    providers = [p for f in sorted((provisioning / "dashboards").glob("*.yaml")) for p in load_yaml(f)["providers"]]
    (provider,) = providers
    dashboards_dir = _host_path(mounts[provider["options"]["path"]])
    (dashboard_file,) = dashboards_dir.glob("*.json")
    dash = json.loads(dashboard_file.read_text())
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{dashboard_file.name}"
    uids = {t["datasource"]["uid"] for p in panels(dash) for t in p.get("targets", [])}
    uids |= {v["datasource"]["uid"] for v in dash["templating"]["list"]}
    assert uids == {prom["uid"]}


# --- the dashboard ------------------------------------------------------------------------------


def _graphs() -> list[dict]:
    return [p for p in panels() if p["type"] != "row"]


def _exprs(panel: dict) -> list[str]:
    return [t["expr"] for t in panel["targets"]]


def _find(word: str) -> dict:
    (found,) = [p for p in _graphs() if word.lower() in p["title"].lower()]
    return found


def expected_unit(expr: str) -> str | None:
    """The unit an expression's values are in, where it can be told from the expression."""
    if "_bytes" in expr:
        return "bytes"
    if " / " in expr and ('code!="OK"' in expr or 'le="' in expr):
        return "percentunit"
    if re.search(r"_seconds(_bucket|_sum)\{", expr) and "process_cpu" not in expr:
        return "s"
    if expr.startswith("sum by") and "rate(edgecnn_requests_total" in expr:
        return "reqps"
    return None


def test_dashboard_layout_and_variables():
    dash = dashboard()
    ids = [p["id"] for p in panels(dash)]
    assert len(set(ids)) == len(ids)
    cells = set()
    for p in panels(dash):
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names == ["job", "instance", "model", "version"]
    for query in dashboard_queries(dash):
        assert query.count("(") == query.count(")") and query.count("{") == query.count("}"), query
        used = set(re.findall(r"\$(\w+)", query)) - {"__rate_interval"}
        assert used <= set(names), f"{query}: undefined variables {used - set(names)}"
    for p in _graphs():
        assert p["targets"], p["title"]
        for expr in _exprs(p):
            # Every series is filtered to the selected jobs and instances (per-instance views).
            assert 'job=~"$job"' in expr and 'instance=~"$instance"' in expr, f"{p['title']}: {expr}"
            if "edgecnn_" in expr and "edgecnn_server_ready" not in expr and "edgecnn_inflight" not in expr:
                assert 'model=~"$model"' in expr and 'version=~"$version"' in expr, f"{p['title']}: {expr}"


def test_dashboard_units_match_the_expressions():
    for p in _graphs():
        unit = p["fieldConfig"]["defaults"]["unit"]
        for expr in _exprs(p):
            wanted = expected_unit(expr)
            assert wanted in (None, unit), f"{p['title']}: unit {unit!r}, but {expr} is in {wanted!r}"


def test_dashboard_panels_an_operator_needs():
    everything = " ".join(dashboard_queries())
    # Scrape health and readiness, per instance.
    assert "up{" in everything and "by (instance) (up{" in everything
    assert "by (instance) (edgecnn_server_ready{" in everything
    # Errors: a ratio, and counts by code.
    ratio = _find("error ratio by model")
    assert all('code!="OK"' in e and " / " in e for e in _exprs(ratio)) and ratio["fieldConfig"]["defaults"]["unit"] == "percentunit"
    by_code = _find("errors by code")
    assert any(re.search(r"by \(api, code\) \(rate\(edgecnn_requests_total\{[^}]*code!=\"OK\"", e) for e in _exprs(by_code))
    # Latency: one line per API and protocol, never ModelInfer, Classify and metadata mixed.
    quantiles = [e for e in everything.split("histogram_quantile(")[1:] if "edgecnn_request_duration_seconds_bucket" in e]
    assert quantiles and all(re.match(r"[\d.]+, sum by \(le, [^)]*\bapi\b", q) for q in quantiles)
    latency = _find("request latency")
    for q in ("0.5", "0.95", "0.99"):
        assert any(e.startswith(f"histogram_quantile({q}, sum by (le, model, api, protocol)") for e in _exprs(latency)), q
    # Per-version views (canaries).
    canaries = [p for p in _graphs() if "canar" in p["title"].lower()]
    assert canaries and all(all("version" in re.search(r"by \(([^)]*)\)", e).group(1) for e in _exprs(p)) for p in canaries)
    # Model info: provider and quantization, per version.
    info = _find("model versions")
    assert info["type"] == "table" and all(t.get("format") == "table" and t.get("instant") for t in info["targets"])
    (info_expr,) = _exprs(info)
    assert "edgecnn_model_info{" in info_expr
    assert {"provider", "quantization", "version", "model"} <= set(re.search(r"by \(([^)]*)\)", info_expr).group(1).replace(" ", "").split(","))
    assert _find("model.onnx size")["fieldConfig"]["defaults"]["unit"] == "bytes"
    # Queue wait against compute; batch sizes; the process.
    queue = " ".join(_exprs(_find("queue wait vs")))
    assert "edgecnn_queue_wait_seconds_bucket" in queue and "edgecnn_inference_duration_seconds_bucket" in queue
    assert any(e.startswith("ceil(histogram_quantile(") and "edgecnn_batch_size_bucket" in e for e in _exprs(_find("batch size")))
    for metric in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_max_fds", "python_gc_collections_total"):
        assert f"{metric}{{" in everything, metric
    assert _find("resident memory")["fieldConfig"]["defaults"]["unit"] == "bytes"
