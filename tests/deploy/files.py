"""What the deploy tests share: deploy/'s paths, a Dockerfile parser, the real `edgecnn serve`
argument parser, YAML loading, the dashboard's queries, a /metrics scrape and a ModelInfer call."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERFILE_GPU = DEPLOY / "docker" / "Dockerfile.gpu"
K8S = DEPLOY / "k8s"
KSERVE = DEPLOY / "kserve"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "edgecnn.json"
OVERLAYS = ("cpu", "gpu")
GRPC_PORT, METRICS_PORT, HTTP_PORT = 8001, 8002, 8000
MODEL = "lenet5"  # the model of the `served_repository` fixture (tests/servers.py)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


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


def expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], value)


def last(stage: list[Instruction], keyword: str) -> Instruction:
    found = [ins for ins in stage if ins.keyword == keyword]
    assert found, f"no {keyword} in the final stage"
    return found[-1]


def exec_form(value: str) -> list[str]:
    """ENTRYPOINT/CMD must be JSON exec form so signals (SIGTERM: drain) reach the server."""
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(x, str) for x in parsed), value
    return parsed


def serve_command(path: Path) -> list[str]:
    _, stages = parse_dockerfile(path)
    final = stages[-1]
    return exec_form(last(final, "ENTRYPOINT").value) + exec_form(last(final, "CMD").value)


def healthcheck(path: Path) -> tuple[str, list[str]]:
    """(options, exec-form command) of the final stage's HEALTHCHECK."""
    value = last(parse_dockerfile(path)[1][-1], "HEALTHCHECK").value
    options, sep, command = value.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {value}"
    assert all(opt.startswith("--") for opt in options.split()), options
    return options, exec_form(command)


def healthcheck_command(path: Path) -> list[str]:
    return healthcheck(path)[1]


def serve_parser() -> argparse.ArgumentParser:
    from edgecnn.server import cmd_serve

    parser = argparse.ArgumentParser(prog="edgecnn serve", exit_on_error=False)
    cmd_serve.configure(parser)
    return parser


def parse_serve_args(argv: list[str]) -> argparse.Namespace:
    """The real `edgecnn serve` parser's reading of argv (fails on any unknown flag)."""
    return serve_parser().parse_args(argv)


def no_http() -> list[str]:
    """Flags that keep a test server off the HTTP front end's fixed default port (8000), where the
    server has one (the REST front end is landing; tests run side by side)."""
    options = {option for action in serve_parser()._actions for option in action.option_strings}
    return ["--http-port", "-1"] if "--http-port" in options else []


def local_argv(command: list[str], repository: Path, models_dir: str = "/models") -> list[str]:
    """An image's (or runtime's) serve command line for a test: the repository it mounts at
    `models_dir` swapped for a local one, loopback, any free ports."""
    swap = {models_dir: str(repository), "0.0.0.0": "127.0.0.1", str(HTTP_PORT): "0", str(GRPC_PORT): "0", str(METRICS_PORT): "0"}
    out = []
    for word in command:
        flag, eq, value = word.partition("=")
        out.append(f"{flag}={swap.get(value, value)}" if eq and flag.startswith("--") else swap.get(word, word))
    # A command that leaves the HTTP port to its default would take the fixed 8000.
    return out if any(w.split("=")[0] in ("--http-port", "--no-http") for w in out) else out + no_http()


# --- Grafana ------------------------------------------------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict | None = None) -> list[dict]:
    """Every panel, rows' collapsed panels included."""
    out = []
    for panel in (dash or dashboard())["panels"]:
        out.append(panel)
        out += panel.get("panels", [])
    return out


def dashboard_queries(dash: dict | None = None) -> list[str]:
    dash = dash or dashboard()
    queries = [t["expr"] for p in panels(dash) for t in p.get("targets", [])]
    queries += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return queries


# --- a live server ------------------------------------------------------------------------------


def scrape_text(metrics_port: int, host: str = "127.0.0.1") -> str:
    with urlopen(f"http://{host}:{metrics_port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def scrape(metrics_port: int, host: str = "127.0.0.1") -> dict[str, list[dict[str, str]]]:
    """Sample name -> label sets of its samples (value under "__value__"), from a real GET /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(scrape_text(metrics_port, host)):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels) | {"__value__": str(sample.value)})
    return samples


def model_infer(address: str, model: str, x: np.ndarray, timeout: float = 30) -> np.ndarray:
    import grpc

    from edgecnn.protos import inference_pb2, inference_pb2_grpc

    request = inference_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f4").tobytes())
    with grpc.insecure_channel(address) as channel:
        reply = inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=timeout)
    (output,) = reply.outputs
    assert output.name == "logits" and list(output.shape) == [x.shape[0], 10]
    return np.frombuffer(reply.raw_output_contents[0], dtype="<f4").reshape(x.shape[0], 10)


def reference_logits(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    """In-process ONNX Runtime on the CPU: what every server must answer."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]
