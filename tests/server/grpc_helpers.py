"""Helpers of the server tests: ModelInfer requests, metric scrapes, waiting, and holding a
batcher's ONNX Runtime calls to fill its queue."""

from __future__ import annotations

import shutil
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from edgecnn.protos import inference_pb2, inference_pb2_grpc
from edgecnn.server import ServerThread, Settings
from prometheus_client.parser import text_string_to_metric_families

from edgecnn import repository as repo

MARGIN = 1e-3  # logits closer than this may swap places between two float paths
BATCHED_DELAY_US = 100_000  # long enough that concurrent requests always meet in one batch
TIMEOUT = 10.0


def infer_request(model: str, x: np.ndarray, version: str = "") -> inference_pb2.ModelInferRequest:
    request = inference_pb2.ModelInferRequest(model_name=model, model_version=version, id="t")
    request.inputs.add(name="input", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f4").tobytes())
    return request


def logits_of(response: inference_pb2.ModelInferResponse) -> np.ndarray:
    out = response.outputs[0]
    assert (out.name, out.datatype) == ("logits", "FP32")
    return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(tuple(out.shape))


def scrape(server) -> dict:
    """{(name, labels as sorted tuple): value} of every sample."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=TIMEOUT) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class Gate:
    """Holds a batcher's ONNX Runtime calls until .open is set; .held counts the calls held.
    Its batches run on worker threads (never inline: a held call must not block the event loop)."""

    def __init__(self, batcher, monkeypatch) -> None:
        self.open = threading.Event()
        self.held = 0
        lock = threading.Lock()
        run = batcher.mv.run

        def held_run(x: np.ndarray) -> np.ndarray:
            with lock:
                self.held += 1
            self.open.wait(TIMEOUT)
            return run(x)

        monkeypatch.setattr(batcher.mv, "run", held_run)
        monkeypatch.setattr(batcher, "inline_max_s", 0.0)
        monkeypatch.setattr(batcher, "inline_idle_max_s", 0.0)


@dataclass
class HeldServer:
    running: ServerThread
    stub: inference_pb2_grpc.GRPCInferenceServiceStub
    request: inference_pb2.ModelInferRequest
    batcher: object
    gate: Gate
    blockers: list


@contextmanager
def held_server(repository, samples, monkeypatch, **overrides):
    """A server whose lenet5 v1 batcher (dynamic batching on) has every in-flight place taken by
    a held batch, so the next request waits in the queue; the gate opens when the block ends."""
    fields = {"max_queue_delay_us": 300_000, "max_batch_size": 64, **overrides}
    settings = Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cpu", **fields)
    with ServerThread(settings) as running, grpc.insecure_channel(running.address) as ch:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(ch)
        request = infer_request("lenet5", samples["x"][:1], version="1")
        batcher = running.server.plane.batcher("lenet5", 1)
        gate = Gate(batcher, monkeypatch)
        try:
            blockers = []
            for i in range(batcher.max_in_flight):  # one at a time: two in one event-loop tick would merge
                blockers.append(stub.ModelInfer.future(request, timeout=TIMEOUT))
                wait_until(lambda: running.server.plane.inflight == i + 1, f"blocker {i + 1} in the server")
            wait_until(lambda: gate.held == batcher.slots, "every compute slot to hold a batch")
            yield HeldServer(running, stub, request, batcher, gate, blockers)
        finally:
            gate.open.set()


def threads_that_ran(batcher, monkeypatch) -> list[str]:
    names: list[str] = []
    run = batcher.mv.run

    def recording_run(x: np.ndarray) -> np.ndarray:
        names.append(threading.current_thread().name)
        return run(x)

    monkeypatch.setattr(batcher.mv, "run", recording_run)
    return names


def copy_lenet5(repository: dict, target: Path, **config_fields) -> Path:
    """lenet5 (versions 1 and 2) in a repository of its own, with config.pbtxt fields changed."""
    shutil.copytree(repository["dir"] / "lenet5", target / "lenet5")
    config = repo.read_config(target / "lenet5")
    for field, value in config_fields.items():
        if value is None:
            config.ClearField(field)
        else:
            setattr(config, field, value)
    return config


def write_config(model_dir: Path, config) -> None:
    (model_dir / repo.CONFIG_NAME).write_text(repo.config_to_text(config))


def serve_repository(repository: Path) -> ServerThread:
    return ServerThread(Settings(repository=repository, host="127.0.0.1", port=0, metrics_port=None, device="cpu"))
