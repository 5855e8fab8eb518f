"""deploy/kserve: the edgecnn ServingRuntime / ClusterServingRuntimes and InferenceService examples.

Every object validates against KServe's own CRD (the openAPIV3Schema of
../shared/kserve/serving.kserve.io_*.yaml, KServe at commit aaac4e2) with jsonschema, strictly:
a field the schema does not know fails, as `kubectl apply --validate=strict` would. The runtimes'
command lines are read by the real `edgecnn serve` parser and run against a real repository at
their /mnt/models. Without ../shared/kserve the schema checks skip; the rest still runs.
"""

from __future__ import annotations

import copy
import os
import re
from functools import cache
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from tests.child_process import ServeProcess
from tests.deploy.files import (
    GRPC_PORT,
    K8S,
    KSERVE,
    METRICS_PORT,
    MODEL,
    OVERLAYS,
    ROOT,
    load_yaml,
    load_yaml_all,
    local_argv,
    model_infer,
    parse_serve_args,
    reference_logits,
)
from tests.deploy.kustomize import render_kustomization
from tests.servers import edgecnn_exe

CRDS = Path(os.environ.get("EDGECNN_KSERVE_CRDS", ROOT.parent / "shared" / "kserve"))
CRD_FILES = {
    "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
    "ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml",
    "InferenceService": "serving.kserve.io_inferenceservices.yaml",
}
TRITON_RUNTIME = "kserve-tritonserver.yaml"
RUNTIME_KINDS = ("ServingRuntime", "ClusterServingRuntime")
MODELS_DIR = "/mnt/models"  # where KServe's storage initializer (or a pvc:// mount) puts the model
# KServe's protocol names (constants.ProtocolV1, ProtocolV2, ProtocolGRPCV1, ProtocolGRPCV2).
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
STORAGE_SCHEMES = {"pvc", "s3", "gs", "https", "http", "hdfs", "webhdfs", "oci", "hf"}
DNS_1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

needs_crds = pytest.mark.skipif(
    not all((CRDS / name).is_file() for name in CRD_FILES.values()),
    reason=f"KServe CRDs not found in {CRDS} (CI has them at ../shared/kserve; EDGECNN_KSERVE_CRDS overrides)",
)


def documents() -> list[tuple[Path, dict]]:
    docs = [(path, doc) for path in sorted(KSERVE.glob("*.yaml")) for doc in load_yaml_all(path)]
    assert docs, f"no manifests in {KSERVE}"
    return docs


def of_kind(*kinds: str) -> list[dict]:
    return [doc for _, doc in documents() if doc["kind"] in kinds]


def runtimes() -> dict[str, dict]:
    found = {doc["metadata"]["name"]: doc for doc in of_kind(*RUNTIME_KINDS)}
    assert len(found) == len(of_kind(*RUNTIME_KINDS)), "runtime names must be unique"
    return found


# --- schema validation ---------------------------------------------------------------------------


def strict(schema: object) -> object:
    """The schema with `additionalProperties: false` wherever it lists properties and allows no
    others (x-kubernetes-preserve-unknown-fields, additionalProperties): unknown fields fail."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) if key != "properties" else {k: strict(v) for k, v in value.items()} for key, value in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@cache
def crd_validator(kind: str, api_version: str) -> jsonschema.Validator:
    crd = load_yaml(CRDS / CRD_FILES[kind])
    group, _, version = api_version.partition("/")
    assert crd["spec"]["names"]["kind"] == kind and crd["spec"]["group"] == group, (kind, api_version)
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    assert version in served, f"{kind}: {api_version} is not served by the CRD (served: {sorted(served)})"
    schema = strict(served[version]["schema"]["openAPIV3Schema"])
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def validate(doc: dict) -> None:
    """KServe's CRD schema for doc's kind and apiVersion (strict), and the ObjectMeta basics the
    CRD leaves to the API server."""
    errors = sorted(crd_validator(doc["kind"], doc["apiVersion"]).iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{doc['kind']} {doc['metadata'].get('name')}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    meta = doc["metadata"]
    assert set(meta) <= {"name", "namespace", "labels", "annotations"}, sorted(meta)
    assert DNS_1123.fullmatch(meta["name"]) and len(meta["name"]) <= 63, meta["name"]
    for field in ("labels", "annotations"):
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.get(field, {}).items()), meta[field]
    if doc["kind"] == "ClusterServingRuntime":
        assert "namespace" not in meta, "cluster-scoped"


@needs_crds
@pytest.mark.parametrize("index", range(len(documents())), ids=[f"{p.name}:{d['metadata']['name']}" for p, d in documents()])
def test_manifest_validates_against_the_kserve_crd(index: int):
    _, doc = documents()[index]
    assert doc["kind"] in CRD_FILES, doc["kind"]
    validate(doc)


@needs_crds
def test_strict_validation_catches_mistakes():
    """The validator is not vacuous: KServe's own Triton runtime passes, typos and wrong types fail."""
    validate(load_yaml(CRDS / TRITON_RUNTIME))
    runtime = runtimes()["edgecnn"]
    for mutate in (
        lambda d: d["spec"]["containers"][0].__setitem__("argz", ["serve"]),  # unknown field
        lambda d: d["spec"].__setitem__("supportedModelFormat", [{"name": "onnx"}]),  # singular: unknown
        lambda d: d["spec"]["containers"][0]["ports"][0].__setitem__("containerPort", "8001"),  # string, not integer
        lambda d: d["spec"]["supportedModelFormats"][0].__setitem__("priority", 0),  # minimum 1
        lambda d: d["spec"].pop("containers"),  # required
    ):
        broken = copy.deepcopy(runtime)
        mutate(broken)
        with pytest.raises(AssertionError):
            validate(broken)
    isvc = copy.deepcopy(of_kind("InferenceService")[0])
    isvc["spec"]["predictor"]["model"]["storageURI"] = isvc["spec"]["predictor"]["model"].pop("storageUri")
    with pytest.raises(AssertionError):
        validate(isvc)


# --- the runtimes --------------------------------------------------------------------------------


def _container(runtime: dict) -> dict:
    (container,) = runtime["spec"]["containers"]
    return container


def _serve_argv(container: dict) -> list[str]:
    argv = [*container["command"], *container["args"]]
    assert argv[:2] == ["edgecnn", "serve"], argv
    return argv


def test_runtimes_and_examples_are_present():
    kinds = sorted(doc["kind"] for _, doc in documents())
    assert kinds.count("ServingRuntime") >= 1 and kinds.count("ClusterServingRuntime") >= 1
    assert kinds.count("InferenceService") >= 2
    schemes = {m["storageUri"].split("://")[0] for m in (d["spec"]["predictor"]["model"] for d in of_kind("InferenceService"))}
    assert "pvc" in schemes and schemes - {"pvc"}, f"examples of a PersistentVolumeClaim and of a storage URI: {schemes}"


@pytest.mark.parametrize("name", sorted(runtimes()))
def test_runtime_serves_onnx_over_grpc_v2_from_mnt_models(name: str):
    runtime = runtimes()[name]
    spec = runtime["spec"]
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert [f["name"] for f in spec["supportedModelFormats"]] == ["onnx"]
    # grpc-v2 only: `v2` (REST) is for once the server has an HTTP front end; it has none yet.
    assert spec["protocolVersions"] == ["grpc-v2"] and set(spec["protocolVersions"]) <= PROTOCOLS
    assert spec.get("multiModel", False) is False
    container = _container(runtime)
    assert container["name"] == "kserve-container", "KServe finds the serving container by this name"
    opts = parse_serve_args(_serve_argv(container)[2:])
    assert str(opts.repository) == MODELS_DIR and opts.host == "0.0.0.0"
    assert (opts.port, opts.metrics_port) == (GRPC_PORT, METRICS_PORT)
    # Knative allows one container port: gRPC, named h2c so the queue proxy speaks HTTP/2 cleartext.
    assert container["ports"] == [{"name": "h2c", "containerPort": opts.port, "protocol": "TCP"}]
    # Metrics through KServe's Prometheus annotations (the same keys as KServe's Triton runtime).
    assert spec["annotations"] == {"prometheus.kserve.io/port": str(opts.metrics_port), "prometheus.kserve.io/path": "/metrics"}
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # The image the k8s overlay of the same device uses, with the matching --device.
    device = "cuda" if container["image"].endswith(":gpu") else "cpu"
    assert opts.device == device
    assert container["image"] in _overlay_images(), container["image"]


@cache
def _overlay_images() -> frozenset[str]:
    """The images the deploy/k8s overlays run."""
    return frozenset(
        container["image"]
        for overlay in OVERLAYS
        for doc in render_kustomization(K8S / "overlays" / overlay)
        if doc["kind"] == "Deployment"
        for container in doc["spec"]["template"]["spec"]["containers"]
    )


@needs_crds
def test_runtime_keys_match_kserves_triton_runtime():
    """What KServe reads from a runtime, as its own Triton runtime spells it."""
    triton = load_yaml(CRDS / TRITON_RUNTIME)
    for runtime in runtimes().values():
        assert set(runtime["spec"]["annotations"]) == set(triton["spec"]["annotations"])
        assert _container(runtime)["name"] == _container(triton)["name"]
        assert set(runtime["spec"]["protocolVersions"]) <= set(triton["spec"]["protocolVersions"])


def test_inference_services_use_a_runtime_here():
    for isvc in of_kind("InferenceService"):
        name = isvc["metadata"]["name"]
        assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
        predictor = isvc["spec"]["predictor"]
        model = predictor["model"]
        runtime = runtimes()[model["runtime"]]
        formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
        assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats, name
        assert model["protocolVersion"] in runtime["spec"]["protocolVersions"], name
        scheme, sep, rest = model["storageUri"].partition("://")
        assert sep and scheme in STORAGE_SCHEMES and rest, model["storageUri"]
        if scheme == "pvc":
            claim, _, path = rest.partition("/")
            assert DNS_1123.fullmatch(claim) and path, f"{name}: pvc://CLAIM/PATH of a Triton-layout repository"
        assert isvc["metadata"]["annotations"]["serving.kserve.io/enable-prometheus-scraping"] == "true"
        grace = parse_serve_args(_serve_argv(_container(runtime))[2:]).grace
        assert predictor["terminationGracePeriodSeconds"] > grace, "the kubelet must not SIGKILL a draining server"
        wants_gpu = "nvidia.com/gpu" in model.get("resources", {}).get("limits", {})
        assert wants_gpu == (_container(runtime)["image"].endswith(":gpu")), name
        assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]


def test_runtime_command_serves_a_repository_at_mnt_models(served_repository):
    """The CPU runtime's command line, with /mnt/models swapped for a real repository written as
    `edgecnn export` writes it, serves ModelInfer as in-process ONNX Runtime does."""
    argv = local_argv(_serve_argv(_container(runtimes()["edgecnn"])), served_repository.dir, MODELS_DIR)
    served = ServeProcess([edgecnn_exe(), *argv[1:]])
    try:
        x = np.random.default_rng(3).random((2, 1, 28, 28), dtype=np.float32)
        np.testing.assert_allclose(model_infer(served.address, MODEL, x), reference_logits(served_repository.onnx, x), rtol=1e-4, atol=1e-5)
    finally:
        assert served.stop() == 0, "".join(served.output)
