"""deploy/: Dockerfiles, compose + Prometheus + Grafana, Kubernetes manifests, without a
container engine.

Static checks parse every file and hold them to each other and to the real `edgecnn serve`
command line; Kubernetes objects (plain and kustomize-rendered) validate against the bundled
schemas of kubernetes-validate. The kustomize overlays are rendered by a small renderer below
for the subset deploy/k8s uses (resources, strategic-merge and JSON6902 patches, images),
cross-checked against `kubectl kustomize` wherever kubectl is installed. Live checks run the
real server: the dashboard's metric names against a real scrape, `edgecnn health`, and the
Dockerfile's ENTRYPOINT/CMD in a fresh virtualenv holding only the serving install.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import grpc
import kubernetes_validate
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from edgecnn.protos import inference_pb2, inference_pb2_grpc
from tests.child_process import ServeProcess
from tests.servers import edgecnn_exe, serve_argv

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERFILE_GPU = DEPLOY / "docker" / "Dockerfile.gpu"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu")
# The oldest and newest Kubernetes minor releases the manifests are meant for (gRPC probes are GA
# since 1.27).
K8S_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
GRPC_PORT, METRICS_PORT = 8001, 8002


# --- Dockerfile ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[list[Instruction]]]:
    """(global ARG defaults, stages): line continuations joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: ends inside a line continuation"
    args: dict[str, str] = {}
    stages: list[list[Instruction]] = []
    for line in logical:
        keyword, _, value = line.partition(" ")
        ins = Instruction(keyword.upper(), value.strip())
        if ins.keyword == "FROM":
            stages.append([])
        if not stages:
            assert ins.keyword == "ARG", f"{path}: {ins.keyword} before the first FROM"
            name, _, default = ins.value.partition("=")
            args[name] = default
            continue
        stages[-1].append(ins)
    return args, stages


def _expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], value)


def _last(stage: list[Instruction], keyword: str) -> Instruction:
    found = [ins for ins in stage if ins.keyword == keyword]
    assert found, f"no {keyword} in the final stage"
    return found[-1]


def _exec_form(value: str) -> list[str]:
    """ENTRYPOINT/CMD must be JSON exec form so signals (SIGTERM: drain) reach the server."""
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(x, str) for x in parsed), value
    return parsed


def serve_command(path: Path) -> list[str]:
    _, stages = parse_dockerfile(path)
    final = stages[-1]
    return _exec_form(_last(final, "ENTRYPOINT").value) + _exec_form(_last(final, "CMD").value)


def healthcheck_command(path: Path) -> list[str]:
    value = _last(parse_dockerfile(path)[1][-1], "HEALTHCHECK").value
    options, sep, command = value.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {value}"
    assert all(opt.startswith("--") for opt in options.split()), options
    return _exec_form(command)


def serve_parser() -> argparse.ArgumentParser:
    from edgecnn.server import cmd_serve

    parser = argparse.ArgumentParser(prog="edgecnn serve", exit_on_error=False)
    cmd_serve.configure(parser)
    return parser


def parse_serve_args(argv: list[str]):
    """The real `edgecnn serve` parser's reading of argv (fails on any unknown flag)."""
    return serve_parser().parse_args(argv)


@pytest.mark.parametrize("path", [DOCKERFILE, DOCKERFILE_GPU], ids=["cpu", "gpu"])
def test_dockerfile_serving_image(path: Path):
    args, stages = parse_dockerfile(path)
    assert len(stages) >= 2, "multi-stage: build the venv in one stage, copy it into the runtime one"
    final = stages[-1]
    user = _last(final, "USER").value.split(":")[0]
    assert user not in ("root", "0", ""), f"final USER is {user!r}"
    installs = [ins.value for stage in stages for ins in stage if ins.keyword == "RUN" and "pip install" in ins.value]
    assert installs, "no pip install line"
    for line in installs:
        assert "torch" not in line.split("python -c")[0], line
        assert re.search(r"pip install \.(\s|$)", line), f"expected the plain serving install `pip install .`: {line}"
        assert "[" not in line.split("pip install")[1].split("&&")[0], f"no extras in the image: {line}"
    assert any(ins.keyword == "COPY" and ins.value.startswith("--from=") for ins in final)
    assert set(_last(final, "EXPOSE").value.split()) == {str(GRPC_PORT), str(METRICS_PORT)}
    assert _exec_form(_last(final, "VOLUME").value) == ["/models"]
    assert healthcheck_command(path) == ["edgecnn", "health", "--server", f"127.0.0.1:{GRPC_PORT}", "--timeout", "4"]
    opts = parse_serve_args(serve_command(path)[2:])
    assert serve_command(path)[:2] == ["edgecnn", "serve"]
    assert (str(opts.repository), opts.port, opts.metrics_port, opts.host) == ("/models", GRPC_PORT, METRICS_PORT, "0.0.0.0")
    base = _expand(_from_image(final), args)
    if path == DOCKERFILE:
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    else:
        assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-cudnn-runtime-ubuntu24\.04", base), base
        assert opts.device == "cuda"


def _from_image(stage: list[Instruction]) -> str:
    return stage[0].value.split()[0]


def test_healthcheck_timeout_fits_docker_timeout():
    value = _last(parse_dockerfile(DOCKERFILE)[1][-1], "HEALTHCHECK").value
    docker_timeout = float(re.search(r"--timeout=(\d+)s", value).group(1))
    cmd = healthcheck_command(DOCKERFILE)
    assert float(cmd[cmd.index("--timeout") + 1]) < docker_timeout


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob (Go filepath.Match plus **), for the patterns used here."""
    out, i = "", 0
    pattern = pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_keeps(ignore_file: Path, path: str) -> bool:
    """Whether `path` (relative to the build context) goes into the context: the last pattern
    matching the path or one of its parents decides, `!` re-includes."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    keep = True
    for line in ignore_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _dockerignore_regex(line[1:] if negate else line)
        if any(regex.fullmatch(c) for c in candidates):
            keep = negate
    return keep


def _package_dirs() -> list[str]:
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return sorted(set(setuptools_cfg["package-dir"].values()))


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, DOCKERFILE_GPU], ids=["cpu", "gpu"])
def test_dockerignore_sends_only_the_package(dockerfile: Path):
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore} (BuildKit's per-Dockerfile ignore file)"
    kept = ["pyproject.toml", "README.md"] + [f"{d}/__init__.py" for d in _package_dirs()]
    for path in kept:
        assert dockerignore_keeps(ignore, path), path
    for path in [".venv/bin/python", "runs/lenet5/model.pt", "tests/test_deploy.py", ".git/HEAD",
                 "edgecnn/__pycache__/cli.cpython-311.pyc", "model_repository/lenet5/1/model.onnx"]:  # fmt: skip
        assert not dockerignore_keeps(ignore, path), path
    for d in _package_dirs():
        assert (ROOT / d / "__init__.py").is_file(), f"pyproject's package dir {d} has no __init__.py"


def test_dockerignore_matcher_follows_docker_rules(tmp_path):
    ignore = tmp_path / "x.dockerignore"
    ignore.write_text("*\n!src/\n**/*.pyc\n!src/keep.pyc\n")
    assert dockerignore_keeps(ignore, "src/a/b.py")
    assert not dockerignore_keeps(ignore, "src/a/b.pyc")
    assert dockerignore_keeps(ignore, "src/keep.pyc")
    assert not dockerignore_keeps(ignore, "other/file")


# --- compose, Prometheus, Grafana ---------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


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
    assert set(server["ports"]) == {f"{GRPC_PORT}:{GRPC_PORT}", f"{METRICS_PORT}:{METRICS_PORT}"}
    models = next(v for v in server["volumes"] if v["target"] == "/models")
    assert models["read_only"] is True
    assert models["source"].startswith("${EDGECNN_MODELS:-")
    # compose's command replaces the image CMD: it must be the same serve flags.
    assert ["edgecnn", "serve", *server["command"]] == serve_command(DOCKERFILE)
    assert server["read_only"] is True and server["user"].split(":")[0] not in ("0", "root")
    grace = parse_serve_args(server["command"]).grace
    assert float(server["stop_grace_period"].rstrip("s")) > grace


def test_compose_prometheus_scrapes_the_server(compose):
    prometheus = compose["services"]["prometheus"]
    mounts = _mounts(prometheus)
    config_path = _host_path(mounts["/etc/prometheus/prometheus.yml"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = load_yaml(config_path)
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"server:{METRICS_PORT}"], "scrape the compose service 'server' on its metrics port"
    assert config["scrape_configs"][0].get("metrics_path", "/metrics") == "/metrics"
    assert re.fullmatch(r"\d+[smh]", config["global"]["scrape_interval"])


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
    dashboard = json.loads(dashboard_file.read_text())
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{dashboard_file.name}"
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {prom["uid"]}


def _dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "edgecnn.json").read_text())


def dashboard_queries() -> list[str]:
    dash = _dashboard()
    queries = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    queries += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return queries


def test_dashboard_panels():
    dash = _dashboard()
    panels = {p["title"]: [t["expr"] for t in p["targets"]] for p in dash["panels"]}
    ids = [p["id"] for p in dash["panels"]]
    assert len(set(ids)) == len(ids)

    def panel(word: str) -> list[str]:
        (title,) = [t for t in panels if word.lower() in t.lower()]
        return panels[title]

    assert any("rate(edgecnn_requests_total" in q for q in panel("request rate"))
    latency = panel("latency")
    for q in ("0.5", "0.95", "0.99"):
        assert any(
            re.search(rf"histogram_quantile\({q}, sum by \(le[,)].*rate\(edgecnn_request_duration_seconds_bucket", e)
            for e in latency
        ), q
    queue_compute = " ".join(panel("queue wait vs compute"))
    assert "edgecnn_queue_wait_seconds_bucket" in queue_compute
    assert "edgecnn_inference_duration_seconds_bucket" in queue_compute
    assert any("edgecnn_batch_size" in q for q in panel("batch size"))
    assert any("edgecnn_inflight_requests" in q for q in panel("in-flight"))
    per_model = " ".join(panel("parameters"))
    assert "by (model, version) (edgecnn_model_parameters" in per_model
    assert "by (model, version) (edgecnn_model_onnx_bytes" in per_model
    for q in dashboard_queries():
        assert q.count("(") == q.count(")"), q


# --- Kubernetes ---------------------------------------------------------------------------------

# Strategic-merge keys of the list fields deploy/k8s patches; other lists are replaced whole.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name", "volumeMounts": "mountPath"}


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        merged_list = [copy.deepcopy(x) for x in base]
        for item in patch:
            match = next((i for i, x in enumerate(merged_list) if x.get(key) == item.get(key)), None)
            if match is None:
                merged_list.append(copy.deepcopy(item))
            else:
                merged_list[match] = strategic_merge(merged_list[match], item)
        return merged_list
    return copy.deepcopy(patch)


def json6902(doc: dict, ops: list[dict]) -> dict:
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] == "add" and isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), copy.deepcopy(op["value"]))
        elif op["op"] in ("add", "replace"):
            if op["op"] == "replace":
                assert (int(last) < len(node)) if isinstance(node, list) else last in node, op
            node[int(last) if isinstance(node, list) else last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        else:
            raise AssertionError(f"JSON6902 op {op['op']!r} is outside this renderer's subset")
    return doc


def _ident(doc: dict) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def _matches(doc: dict, target: dict) -> bool:
    return all(doc.get(k) == v if k != "name" else doc["metadata"]["name"] == v for k, v in target.items())


def _set_images(node: Any, images: list[dict]) -> None:
    if isinstance(node, dict):
        for field in ("containers", "initContainers"):
            for container in node.get(field, []) if isinstance(node.get(field), list) else []:
                name = re.split(r"[@]|:(?=[^/]*$)", container["image"])[0]
                for image in images:
                    if image["name"] == name:
                        new = image.get("newName", name)
                        container["image"] = f"{new}:{image['newTag']}" if "newTag" in image else new
        for value in node.values():
            _set_images(value, images)
    elif isinstance(node, list):
        for value in node:
            _set_images(value, images)


KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "patches", "images"}


def render_kustomization(folder: Path) -> list[dict]:
    """kustomize build for resources, patches (strategic merge or JSON6902, by path or inline,
    optionally with a target) and images. Anything else in a kustomization.yaml fails loudly."""
    kustomization = load_yaml(folder / "kustomization.yaml")
    unknown = set(kustomization) - KUSTOMIZE_FIELDS
    assert not unknown, f"{folder}: fields outside the test renderer's subset: {sorted(unknown)}"
    docs: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = (folder / entry).resolve()
        docs += render_kustomization(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    idents = [_ident(d) for d in docs]
    assert len(set(idents)) == len(idents), f"{folder}: duplicate resources {idents}"
    for entry in kustomization.get("patches", []):
        patch = yaml.safe_load((folder / entry["path"]).read_text() if "path" in entry else entry["patch"])
        if isinstance(patch, list):
            targets = [i for i, d in enumerate(docs) if _matches(d, entry["target"])]
            assert targets, f"{folder}: patch target {entry['target']} matches nothing"
            for i in targets:
                docs[i] = json6902(docs[i], patch)
        else:
            found = [i for i, d in enumerate(docs) if _ident(d) == _ident(patch)]
            assert found, f"{folder}: patch {entry} matches no resource"
            docs[found[0]] = strategic_merge(docs[found[0]], patch)
    _set_images(docs, kustomization.get("images", []))
    return docs


def _by_kind(docs: list[dict]) -> dict[str, dict]:
    kinds = [d["kind"] for d in docs]
    assert len(set(kinds)) == len(kinds), kinds
    return {d["kind"]: d for d in docs}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render_kustomization(K8S / "overlays" / name) for name in OVERLAYS} | {
        "base": render_kustomization(K8S / "base")
    }


def test_renderer_patch_semantics():
    base = {"spec": {"containers": [{"name": "a", "args": ["x"], "image": "i"}, {"name": "b"}], "keep": 1, "drop": 2}}
    merged = strategic_merge(base, {"spec": {"containers": [{"name": "a", "args": ["y"]}], "drop": None}})
    assert merged == {"spec": {"containers": [{"name": "a", "args": ["y"], "image": "i"}, {"name": "b"}], "keep": 1}}
    patched = json6902(base, [{"op": "add", "path": "/spec/containers/0/args/-", "value": "z"}])
    assert patched["spec"]["containers"][0]["args"] == ["x", "z"] and base["spec"]["containers"][0]["args"] == ["x"]
    with pytest.raises(AssertionError):
        json6902(base, [{"op": "replace", "path": "/spec/missing", "value": 1}])


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
@pytest.mark.parametrize("folder", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_renderer_agrees_with_kubectl_kustomize(folder: str, rendered):
    argv = ["kubectl", "kustomize", str(K8S / folder)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    real = {_ident(d): d for d in yaml.safe_load_all(out.stdout) if d}
    ours = {_ident(d): d for d in rendered[folder.split("/")[-1]]}
    assert real == ours


def _referenced(folder: Path) -> tuple[set[Path], set[Path]]:
    """(resource files, patch files) that folder's kustomization names, following bases."""
    kustomization = load_yaml(folder / "kustomization.yaml")
    resources: set[Path] = set()
    patches = {(folder / p["path"]).resolve() for p in kustomization.get("patches", []) if "path" in p}
    for entry in kustomization.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            more_resources, more_patches = _referenced(path)
            resources |= more_resources
            patches |= more_patches
        else:
            resources.add(path)
    return resources, patches


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates(version: str):
    """Every object file validates alone (strict: no unknown fields); patch files are fragments,
    checked inside the rendered overlays. No file under deploy/k8s is left unused."""
    resources, patches = set(), set()
    for folder in [K8S / "base", *(K8S / "overlays" / o for o in OVERLAYS)]:
        more_resources, more_patches = _referenced(folder)
        resources |= more_resources
        patches |= more_patches
    files = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert files == resources | patches, f"not used by any kustomization: {sorted(files - resources - patches)}"
    assert len(resources) == 5
    for path in sorted(resources):
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_rendered_output_validates(name: str, version: str, rendered):
    for doc in rendered[name]:
        kubernetes_validate.validate(doc, version, strict=True)


def _server_container(docs: list[dict]) -> dict:
    (container,) = _by_kind(docs)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("name", OVERLAYS)
def test_deployment(name: str, rendered):
    kinds = _by_kind(rendered[name])
    assert set(kinds) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "PersistentVolumeClaim"}
    deployment = kinds["Deployment"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = _server_container(rendered[name])
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["grpc"] == {"port": GRPC_PORT}, probe  # service "": the whole server
    assert {p["containerPort"] for p in container["ports"]} == {GRPC_PORT, METRICS_PORT}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    pod_security = pod["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] != 0

    opts = parse_serve_args(container["args"])
    assert (str(opts.repository), opts.port, opts.metrics_port) == ("/models", GRPC_PORT, METRICS_PORT)
    assert opts.device == name if name == "cpu" else opts.device == "cuda"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and float(pre_stop[1]) >= 1, "endpoints need time to drop the pod before SIGTERM"
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(pre_stop[1]) + opts.grace, "the kubelet must not SIGKILL a draining server"

    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/models"]
    assert mount["readOnly"] is True
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    claim = volumes[mount["name"]]["persistentVolumeClaim"]
    assert claim["claimName"] == kinds["PersistentVolumeClaim"]["metadata"]["name"] and claim["readOnly"] is True
    # readOnlyRootFilesystem: anything writing temp files gets an emptyDir at /tmp.
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]]


@pytest.mark.parametrize("name", OVERLAYS)
def test_service_hpa_pdb(name: str, rendered):
    kinds = _by_kind(rendered[name])
    deployment, service = kinds["Deployment"], kinds["Service"]
    pod = deployment["spec"]["template"]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert (ports["grpc"]["port"], ports["metrics"]["port"]) == (GRPC_PORT, METRICS_PORT)
    container_ports = {p["name"] for p in _server_container(rendered[name])["ports"]}
    assert {p["targetPort"] for p in ports.values()} <= container_ports
    for annotations in (service["metadata"]["annotations"], pod["metadata"]["annotations"]):
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()

    hpa = kinds["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    pdb = kinds["PodDisruptionBudget"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    # A budget that forbids every eviction would block node drains at minReplicas.
    budget = pdb["spec"]
    assert ("minAvailable" in budget) != ("maxUnavailable" in budget), budget  # policy/v1: exactly one
    if "minAvailable" in budget:
        assert budget["minAvailable"] < hpa["spec"]["minReplicas"]
    else:
        allowed = budget["maxUnavailable"]  # a count, or a percentage (rounded up)
        assert (int(allowed.rstrip("%")) if isinstance(allowed, str) else allowed) >= 1, budget


def test_overlays_pick_their_image_and_device(rendered):
    cpu, gpu = _server_container(rendered["cpu"]), _server_container(rendered["gpu"])
    assert cpu["image"] == "edgecnn-server:cpu" and gpu["image"] == "edgecnn-server:gpu"
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    gpu_pod = _by_kind(rendered["gpu"])["Deployment"]["spec"]["template"]["spec"]
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu_pod["tolerations"])
    # The README's build commands produce exactly these tags from the matching Dockerfile.
    readme = (DEPLOY / "README.md").read_text()
    assert "docker build -f deploy/docker/Dockerfile -t edgecnn-server:cpu ." in readme
    assert "docker build -f deploy/docker/Dockerfile.gpu -t edgecnn-server:gpu ." in readme


def test_readme_commands_match_files():
    readme = (DEPLOY / "README.md").read_text()
    for overlay in OVERLAYS:
        assert f"kubectl apply -k deploy/k8s/overlays/{overlay}" in readme
    assert "docker compose -f deploy/compose.yaml up" in readme
    runs = [line.strip() for line in readme.splitlines() if line.strip().startswith("docker run")]
    assert runs, "no docker run example"
    for line in runs:
        words = shlex.split(line.rstrip("\\"))
        assert any(w.endswith(":/models:ro") for w in words), line
        assert f"{GRPC_PORT}:{GRPC_PORT}" in words and f"{METRICS_PORT}:{METRICS_PORT}" in words, line


# --- live: the real server ----------------------------------------------------------------------


def model_infer(address: str, model: str, x: np.ndarray) -> np.ndarray:
    request = inference_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f4").tobytes())
    with grpc.insecure_channel(address) as channel:
        reply = inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    (output,) = reply.outputs
    assert output.name == "logits" and list(output.shape) == [x.shape[0], 10]
    return np.frombuffer(reply.raw_output_contents[0], dtype="<f4").reshape(x.shape[0], 10)


def scrape(metrics_port: int) -> dict[str, list[dict[str, str]]]:
    """Sample name -> label sets of its samples, from a real GET /metrics."""
    with urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels) | {"__value__": str(sample.value)})
    return samples


MODEL = "lenet5"


@pytest.fixture(scope="module")
def model_repository(tmp_path_factory, fashion_mnist_dir) -> Path:
    """What a deployment mounts at /models: a fixed-seed LeNet-5 run, through the real exporter."""
    from edgecnn.export.onnx_export import export_run
    from tests.conftest_server import write_checkpoint

    root = tmp_path_factory.mktemp("deploy-models")
    run = write_checkpoint(root / "run", seed=0)
    export_run(run, root / "repository", name=MODEL, version=1, verify=False)
    return root / "repository"


def _image_argv(command: list[str], repository: Path) -> list[str]:
    """The image's command line for a test: its repository mount, loopback, any free ports."""
    swap = {"/models": str(repository), "0.0.0.0": "127.0.0.1", str(GRPC_PORT): "0", str(METRICS_PORT): "0"}
    return [swap.get(word, word) for word in command]


@pytest.fixture(scope="module")
def live_server(model_repository):
    argv = [edgecnn_exe(), *_image_argv(serve_command(DOCKERFILE), model_repository)[1:]]
    served = ServeProcess(argv + ["--device", "cpu"])
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    model_infer(served.address, MODEL, x)
    yield served
    served.stop()


def _labels_used(query: str) -> set[str]:
    labels = set()
    for group in re.findall(r"\bby \(([^)]*)\)", query):
        labels |= {name.strip() for name in group.split(",") if name.strip()}
    for matchers in re.findall(r"edgecnn_\w+\{([^}]*)\}", query):
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    labels |= set(re.findall(r"label_values\(\w+,\s*(\w+)\)", query))
    return labels


def test_dashboard_queries_match_a_real_scrape(live_server):
    samples = scrape(live_server.metrics_port)
    for query in dashboard_queries():
        names = set(re.findall(r"\bedgecnn_\w+", query))
        assert names, query
        missing = names - set(samples)
        assert not missing, f"{query}: not in the server's /metrics: {sorted(missing)}"
        labels = {label for name in names for sample in samples[name] for label in sample}
        assert _labels_used(query) <= labels, f"{query}: labels {sorted(_labels_used(query) - labels)} not on {names}"
        for name in names:
            if name.endswith(("_bucket", "_count", "_sum")):
                # Counted, not summed: a request served inline waits 0 s in the queue.
                count = name.rsplit("_", 1)[0] + "_count"
                values = [float(s["__value__"]) for s in samples[count] if s.get("model") == MODEL]
                assert values and max(values) > 0, f"{name}: no observation after a request"
    params = [s for s in samples["edgecnn_model_parameters"] if s["model"] == MODEL]
    assert [float(s["__value__"]) for s in params] == [44_426.0]


def test_health_command_live_and_stopped(model_repository):
    exe = edgecnn_exe()
    served = ServeProcess(serve_argv(model_repository, "--metrics-port", "-1", "--grace", "1"))

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


def build_context(dockerfile: Path, dest: Path) -> Path:
    """Copy what `docker build` would send: the repository filtered by the Dockerfile's ignore file."""
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    negated = [line.strip()[1:].strip("/") for line in ignore.read_text().splitlines() if line.strip().startswith("!")]
    for folder, dirs, files in os.walk(ROOT):
        rel = Path(folder).relative_to(ROOT)
        kept = [(d, (rel / d).as_posix()) for d in dirs]
        dirs[:] = [
            d for d, path in kept if dockerignore_keeps(ignore, path) or any(n.startswith(f"{path}/") for n in negated)
        ]
        for name in files:
            path = (rel / name).as_posix()
            if dockerignore_keeps(ignore, path):
                (dest / path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / path, dest / path)
    return dest


NOT_SERVING_PACKAGES = {"torch", "torchvision", "onnx", "onnxscript", "matplotlib", "tqdm", "hdrhistogram", "tritonclient"}


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory) -> Path:
    """A clean virtualenv with the image's install: `pip install .` of the Docker build context."""
    root = tmp_path_factory.mktemp("serving-venv")
    context = build_context(DOCKERFILE, root / "context")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    started = time.monotonic()
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "."],
                          cwd=context, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    print(f"serving install into a clean venv: {time.monotonic() - started:.0f} s")
    return venv


def test_image_command_serves_from_a_serving_only_install(serving_venv, model_repository):
    from tests.conftest_server import reference_logits

    bin_dir = serving_venv / "bin"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "HOME": str(serving_venv)}
    run = {"capture_output": True, "text": True, "env": env, "cwd": serving_venv, "timeout": 60}
    no_torch = subprocess.run([str(bin_dir / "python"), "-c", "import torch"], **run)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr, no_torch
    listed = subprocess.run([str(bin_dir / "python"), "-m", "pip", "list", "--format=json"], **run)
    installed = {package["name"].lower() for package in json.loads(listed.stdout)}
    # The serving side carries ONNX Runtime, grpc, numpy and pillow (and what they need): no
    # training, export, plotting or load-testing packages.
    assert not installed & NOT_SERVING_PACKAGES, installed & NOT_SERVING_PACKAGES

    # As the image runs it: ENTRYPOINT + CMD resolved through PATH, /models and ports swapped.
    served = ServeProcess(_image_argv(serve_command(DOCKERFILE), model_repository), env=env, cwd=serving_venv)
    try:
        healthcheck = [served.address if w == f"127.0.0.1:{GRPC_PORT}" else w for w in healthcheck_command(DOCKERFILE)]
        done = subprocess.run(healthcheck, **run)
        assert done.returncode == 0 and done.stdout.strip().endswith(": SERVING"), done
        x = np.random.default_rng(1).random((2, 1, 28, 28), dtype=np.float32)
        expected = reference_logits(model_repository / MODEL / "1" / "model.onnx", x)
        np.testing.assert_allclose(model_infer(served.address, MODEL, x), expected, rtol=1e-4, atol=1e-5)
        probe = "import sys, edgecnn.server, edgecnn.client.health; print('torch' in sys.modules)"
        loaded = subprocess.run([str(bin_dir / "python"), "-c", probe], **run)
        assert loaded.stdout.strip() == "False", loaded
    finally:
        assert served.stop() == 0, "".join(served.output)
