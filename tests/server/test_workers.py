"""`edgecnn serve --workers 2` as real processes: two workers answer on one port (gRPC and HTTP),
one /metrics sums them, a killed worker is replaced, a port in use (or held by a running
supervisor) fails the start with exit 2, and SIGTERM drains both workers with no CANCELLED
answer and exit 0 (server/workers.py)."""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from edgecnn.protos import inference_pb2, inference_pb2_grpc
from edgecnn.server.cpus import usable_cpus
from edgecnn.server.errors import StartupError
from edgecnn.server.settings import Settings
from edgecnn.server.worker_metrics import supervisor_registry
from edgecnn.server.workers import serve_workers, worker_count, worker_settings
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.child_process import ServeProcess
from tests.onnx_models import PARAMS_LENET5
from tests.server.grpc_helpers import TIMEOUT, infer_request, sample, scrape, wait_until
from tests.server.http_helpers import json_infer_body, request
from tests.servers import make_repository, serve_argv

X = np.zeros((1, 1, 28, 28), np.float32)
READY = re.compile(r"worker (\d+) ready \(pid (\d+)\)")
OK_INFER = {"model": "lenet5", "version": "1", "api": "ModelInfer", "code": "OK"}


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory) -> Path:
    return make_repository(tmp_path_factory.mktemp("workers")).dir


@pytest.fixture(scope="module")
def two_workers(repo_dir):
    served = ServeProcess(serve_argv(repo_dir, "--workers", "2", "--grace", "5"), timeout_s=90)
    try:
        yield served
    finally:
        assert served.stop() == 0, "".join(served.output)


def connection(address: str) -> grpc.Channel:
    """A channel with a TCP connection of its own (grpc shares one per target in a process)."""
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


def workers_behind(address: str, connections: int = 16, requests: int = 2) -> collections.Counter:
    """`requests` ModelInfer calls on each of `connections` new connections, then ModelStatistics
    on each: connections that reached the same worker read the same (inference_count, success
    ns), so the keys are the workers reached and the values their connections."""
    seen: collections.Counter = collections.Counter()
    channels = [connection(address) for _ in range(connections)]
    try:
        stubs = [inference_pb2_grpc.GRPCInferenceServiceStub(ch) for ch in channels]
        for stub in stubs:
            for _ in range(requests):
                stub.ModelInfer(infer_request("lenet5", X), timeout=TIMEOUT)
        for stub in stubs:
            stats = stub.ModelStatistics(inference_pb2.ModelStatisticsRequest(name="lenet5", version="1"), timeout=TIMEOUT)
            version = stats.model_stats[0]
            seen[(version.inference_count, version.inference_stats.success.ns)] += 1
    finally:
        for ch in channels:
            ch.close()
    return seen


def ready_workers(served: ServeProcess) -> dict[int, int]:
    """{worker index: pid} of the latest ready line of each worker."""
    return {int(i): int(pid) for line in list(served.output) for i, pid in READY.findall(line)}


def test_two_workers_answer_on_one_port_and_metrics_sum_them(two_workers):
    ready_line = next(line for line in two_workers.output if line.startswith("edgecnn serving on"))
    assert ready_line.rstrip().endswith(", 2 workers"), ready_line
    assert sorted(ready_workers(two_workers)) == [0, 1]
    before = scrape(two_workers)
    seen = workers_behind(two_workers.address, connections=16, requests=2)
    assert len(seen) == 2, f"16 connections reached {len(seen)} worker(s): {seen}"
    assert sum(count for count, _ in seen) == 32  # ModelStatistics of the two add up to what was sent
    for _ in range(6):  # one connection each: both workers' HTTP listeners share the port too
        reply = request(two_workers.http_port, "POST", "/v2/models/lenet5/infer", json_infer_body(X), {"Content-Type": "application/json"})
        assert reply.status == 200, reply.body

    def delta(name: str, **labels) -> float:
        return sample(scrape(two_workers), name, **labels) - sample(before, name, **labels)

    wait_until(lambda: delta("edgecnn_requests_total", **OK_INFER, protocol="http") == 6, "the HTTP count")
    wait_until(lambda: delta("edgecnn_requests_total", **OK_INFER, protocol="grpc") == 32, "the gRPC count")
    after = scrape(two_workers)
    mv = {"model": "lenet5", "version": "1"}
    assert sample(after, "edgecnn_batch_size_count", **mv) - sample(before, "edgecnn_batch_size_count", **mv) == 38
    assert sample(after, "edgecnn_request_duration_seconds_count", **{k: v for k, v in OK_INFER.items() if k != "code"}, protocol="grpc") >= 32
    assert sample(after, "edgecnn_model_parameters", **mv) == PARAMS_LENET5  # one model, not one per worker
    assert sample(after, "edgecnn_server_ready") == 1 and sample(after, "edgecnn_inflight_requests") == 0
    info = [dict(labels) for name, labels in after if name == "edgecnn_model_info"]
    assert len(info) == 1 and info[0]["provider"] == "CPUExecutionProvider", info
    assert sample(after, "process_cpu_seconds_total") > 0 and sample(after, "process_resident_memory_bytes") > 0


def _serve_exit(argv: list[str]) -> tuple[int, str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def test_a_port_in_use_fails_the_start(two_workers, repo_dir):
    """Exit 2 with today's message: a foreign listener, and the ports a running supervisor holds
    (a second `edgecnn serve` of any --workers fails its own check: no silent sharing)."""
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        code, output = _serve_exit(serve_argv(repo_dir, "--workers", "2", "--port", str(port)))
        assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in output, output
    held = str(two_workers.port)
    for workers in ("2", "1"):
        code, output = _serve_exit(serve_argv(repo_dir, "--workers", workers, "--port", held))
        assert code == 2 and f"cannot listen on 127.0.0.1:{held}" in output, output
    code, output = _serve_exit(serve_argv(repo_dir, "--workers", "2", "--http-port", str(two_workers.http_port)))
    assert code == 2 and "cannot listen for HTTP" in output, output


def test_a_killed_worker_is_replaced(two_workers):
    before = scrape(two_workers)
    killed = ready_workers(two_workers)[1]
    subprocess.run(["kill", "-KILL", str(killed)], check=True)
    wait_until(lambda: f"worker 1 (pid {killed}) was killed by SIGKILL" in "".join(two_workers.output), "the supervisor to see the death")
    for _ in range(8):  # meanwhile the other worker takes every new connection
        with connection(two_workers.address) as ch:
            inference_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(infer_request("lenet5", X), timeout=TIMEOUT)
    deadline = time.monotonic() + 60
    while ready_workers(two_workers)[1] == killed:
        assert time.monotonic() < deadline, "".join(two_workers.output)
        time.sleep(0.05)
    assert len(workers_behind(two_workers.address)) == 2
    ok = {**OK_INFER, "protocol": "grpc"}
    counted = sample(before, "edgecnn_requests_total", **ok) + 8 + 32  # the dead worker's counts stay
    # A worker adds its requests to its files every WORKER_FLUSH_S (server/metrics.py).
    wait_until(lambda: sample(scrape(two_workers), "edgecnn_requests_total", **ok) >= counted, "the requests counted")
    after = scrape(two_workers)
    assert sample(after, "edgecnn_server_ready") == 1 and sample(after, "edgecnn_model_parameters", model="lenet5", version="1") == PARAMS_LENET5


def test_sigterm_drains_both_workers(repo_dir):
    """32 closed-loop callers, each on its own connection (so both workers have some), sending
    from grpc's threads (a call is classified as sent before or after the signal as it leaves; 32
    Python threads would wait for the GIL in between): the requests sent before the signal get
    their result, none is CANCELLED, both workers drain and exit 0, and so does the supervisor."""
    served = ServeProcess(serve_argv(repo_dir, "--workers", "2", "--grace", "10"), timeout_s=90)
    assert len(workers_behind(served.address)) == 2
    codes: dict[bool, collections.Counter] = {False: collections.Counter(), True: collections.Counter()}
    lock = threading.Lock()
    signalled, stopped = threading.Event(), threading.Event()
    message = infer_request("lenet5", X)
    channels = [connection(served.address) for _ in range(32)]
    running = [len(channels)]

    def send(stub) -> None:
        sent_after = signalled.is_set()
        stub.ModelInfer.future(message, timeout=30).add_done_callback(lambda f: answered(stub, f, sent_after))

    def answered(stub, future: grpc.Future, sent_after: bool) -> None:
        try:
            future.result()
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
        with lock:
            codes[sent_after][code] += 1
            again = code == "OK" or not sent_after  # refused after the signal: a client that fails over goes elsewhere
            running[0] -= not again
            if not running[0]:
                stopped.set()
        if again:
            send(stub)

    try:
        for ch in channels:
            send(inference_pb2_grpc.GRPCInferenceServiceStub(ch))
        time.sleep(1.5)
        signalled.set()
        served.proc.send_signal(signal.SIGTERM)
        code = served.proc.wait(60)
        assert stopped.wait(TIMEOUT), codes
    finally:
        for ch in channels:
            ch.close()
        served.kill()
    output = "".join(served.output)
    before, after = codes[False], codes[True]
    assert code == 0, output
    assert set(before) == {"OK"} and before["OK"] >= 32, before
    assert "CANCELLED" not in after and set(after) <= {"OK", "UNAVAILABLE"}, after
    for index in (0, 1):
        assert re.search(rf"worker {index} \(pid \d+\) \S+: signal received: draining", output), output
        assert re.search(rf"worker {index} \(pid \d+\) \S+: stopped", output), output
    assert len(re.findall(r"worker \d \(pid \d+\) exited with code 0", output)) == 2, output


def test_worker_settings_share_the_cpus(repo_dir):
    cpus = usable_cpus()
    assert worker_count("auto") == cpus and worker_count("3") == 3
    for bad in ("0", "-1", "many"):
        with pytest.raises(ValueError):
            worker_count(bad)
    share = max(1, cpus // 2)
    s = worker_settings(Settings(repository=repo_dir, metrics_port=8002), 2, 4321, None)
    assert (s.threads, s.cpus, s.port, s.http_port, s.metrics_port, s.worker) == (share, share, 4321, None, None, True)
    assert worker_settings(Settings(repository=repo_dir, threads=3), 2, 1, 2).threads == 3  # --threads given: kept
    with pytest.raises(StartupError, match="explicit needs --workers 1"):
        asyncio.run(serve_workers(Settings(repository=repo_dir, model_control_mode="explicit"), 2, "INFO"))


WRITE_METRICS = """
import sys, types
from edgecnn.server.metrics import Metrics
m = Metrics(multiprocess=True)
def mv(version):
    return types.SimpleNamespace(name="lenet5", version_str=version, params=44426, onnx_bytes=1000, architecture="lenet5",
                                 provider="CPUExecutionProvider", opset=17, quantization="none", dataset="fashion-mnist")
for version in sys.argv[1].split(","):
    m.add_model(mv(version))
for version in sys.argv[2].split(",") if sys.argv[2] else []:
    m.remove_model(mv(version))
for version in sys.argv[5].split(",") if sys.argv[5] else []:  # loaded again: its queue depth counts from 0
    m.add_model(mv(version)).queue_depth.inc()
m.inflight.inc(int(sys.argv[3]))
m.ready.set(int(sys.argv[4]))
m.observe_request("lenet5", "1", "ModelInfer", "OK", 0.001, protocol="grpc")
m.flush()  # as a worker does periodically and before it exits
"""


def test_the_supervisor_combines_the_workers_metric_files(tmp_path):
    """Two workers' files: counters summed, in-flight summed, ready the minimum, a version's
    gauges once, a version one worker removed stays while the other serves it, and one removed
    and loaded again counts its queue from 0."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for kept, removed, inflight, ready, again in (("1,2,4", "2,4", 2, 1, "4"), ("1,2,3", "3", 3, 0, "")):
        subprocess.run([sys.executable, "-c", WRITE_METRICS, kept, removed, str(inflight), str(ready), again], env=env, check=True)
    text = generate_latest(supervisor_registry(str(tmp_path), lambda: [])).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert sample(samples, "edgecnn_requests_total", **OK_INFER, protocol="grpc") == 2
    assert sample(samples, "edgecnn_inflight_requests") == 5 and sample(samples, "edgecnn_server_ready") == 0
    params = {dict(labels)["version"]: value for (name, labels), value in samples.items() if name == "edgecnn_model_parameters"}
    assert params == {"1": PARAMS_LENET5, "2": PARAMS_LENET5, "4": PARAMS_LENET5}  # 2: the second worker still has it; 3: gone from both
    info = sorted(dict(labels)["version"] for name, labels in samples if name == "edgecnn_model_info")
    assert info == ["1", "2", "4"] and "# TYPE edgecnn_model_info gauge" in text
    assert sample(samples, "edgecnn_queue_depth", model="lenet5", version="4") == 1
