"""deploy/k8s: every object and the kustomize-rendered overlays validate against the Kubernetes
schemas bundled in kubernetes-validate (offline, strict), and hold to each other and to the real
`edgecnn serve` command line (probes, ports, drain timing, security, scraping)."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from tests.deploy.files import DEPLOY, GRPC_PORT, HTTP_PORT, K8S, METRICS_PORT, OVERLAYS, parse_serve_args
from tests.deploy.kustomize import by_kind, ident, json6902, referenced, render_kustomization, strategic_merge

# The oldest and newest Kubernetes minor releases the manifests are meant for (gRPC probes are GA
# since 1.27).
K8S_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())


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
    real = {ident(d): d for d in yaml.safe_load_all(out.stdout) if d}
    ours = {ident(d): d for d in rendered[folder.split("/")[-1]]}
    assert real == ours


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates(version: str):
    """Every object file validates alone (strict: no unknown fields); patch files are fragments,
    checked inside the rendered overlays. No file under deploy/k8s is left unused."""
    resources, patches = set(), set()
    for folder in [K8S / "base", *(K8S / "overlays" / o for o in OVERLAYS)]:
        more_resources, more_patches = referenced(folder)
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
    (container,) = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("name", OVERLAYS)
def test_deployment(name: str, rendered):
    kinds = by_kind(rendered[name])
    assert set(kinds) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "PersistentVolumeClaim"}
    deployment = kinds["Deployment"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = _server_container(rendered[name])
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["grpc"] == {"port": GRPC_PORT}, probe  # service "": the whole server
    assert {p["containerPort"] for p in container["ports"]} == {HTTP_PORT, GRPC_PORT, METRICS_PORT}
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
    kinds = by_kind(rendered[name])
    deployment, service = kinds["Deployment"], kinds["Service"]
    pod = deployment["spec"]["template"]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert (ports["grpc"]["port"], ports["metrics"]["port"]) == (GRPC_PORT, METRICS_PORT)
    container_ports = {p["name"] for p in _server_container(rendered[name])["ports"]}
    assert {p["targetPort"] for p in ports.values()} <= container_ports
    # Scraped once per pod: the annotations are on the pods only. On the Service as well, the
    # usual annotation-driven jobs (kubernetes-pods and kubernetes-service-endpoints) would both
    # scrape every pod, and every series would be counted twice on the dashboard.
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT) and annotations["prometheus.io/path"] == "/metrics"
    assert not any(key.startswith("prometheus.io/") for key in service["metadata"].get("annotations", {})), "double scraping"
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
    gpu_pod = by_kind(rendered["gpu"])["Deployment"]["spec"]["template"]["spec"]
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


