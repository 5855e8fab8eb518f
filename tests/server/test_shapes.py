"""Batch size buckets (server/shapes.py) on the CPU provider, and the CUDA provider where a GPU is present."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from edgecnn.protos import classifier_pb2, classifier_pb2_grpc, inference_pb2_grpc
from edgecnn.server import ServerThread, Settings, StartupError
from edgecnn.server.device import CPU, CUDA, gpu_present, with_options
from edgecnn.server.model_version import ModelLoader
from edgecnn.server.serving_config import resolve_serving
from edgecnn.server.shapes import bucket_sizes

from edgecnn import repository as repo
from tests.onnx_models import reference_logits
from tests.server.grpc_helpers import (
    TIMEOUT,
    infer_request,
    logits_of,
)


@pytest.mark.cuda
@pytest.mark.skipif(not gpu_present(), reason="needs an NVIDIA GPU")
def test_cuda_provider_serves_the_same_results(repository, samples):
    settings = Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cuda")
    with ServerThread(settings) as running, grpc.insecure_channel(running.address) as ch:
        info = classifier_pb2_grpc.ClassifierStub(ch).ModelInfo(classifier_pb2.ModelInfoRequest(model="lenet5"), timeout=TIMEOUT)
        assert info.execution_provider == "CUDAExecutionProvider"
        response = inference_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(infer_request("lenet5", samples["x"][:8]), timeout=TIMEOUT)
        np.testing.assert_allclose(logits_of(response), reference_logits(repository["v2"], samples["x"][:8]), rtol=1e-3, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not gpu_present(), reason="needs an NVIDIA GPU")
def test_cuda_batches_of_mixed_sizes_give_the_same_results(repository, samples):
    settings = Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cuda")
    with ServerThread(settings) as running, grpc.insecure_channel(running.address) as ch:
        batched, single = (running.server.plane.batcher(name, 1) for name in ("lenet5-batched", "lenet5"))
        assert (batched.slots, batched.inline_max_s) == (1, 0.0), "on a GPU: one slot to batch into, never inline"
        assert single.slots >= 2 and single.inline_max_s == 0.0
        assert batched.mv.shape_buckets.sizes == [1, 2, 4, 8, 16, 32, 64] and single.mv.shape_buckets.sizes == [1, 2, 4, 8]
        session = batched.mv.session
        assert session.get_provider_options()[CUDA]["cudnn_conv_algo_search"] == "HEURISTIC"
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(ch)
        bounds = np.cumsum([0, 1, 3, 5, 2, 8, 1, 4, 7])
        xs = [samples["x"][a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        futures = [stub.ModelInfer.future(infer_request("lenet5-batched", x), timeout=TIMEOUT) for x in xs]
        for future, x in zip(futures, xs):
            np.testing.assert_allclose(logits_of(future.result()), reference_logits(repository["batched"], x), rtol=1e-3, atol=1e-4)


def test_bucket_sizes():
    assert bucket_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert bucket_sizes(48) == [1, 2, 4, 8, 16, 32, 48]
    assert bucket_sizes(2) == [1, 2]
    assert bucket_sizes(1) == bucket_sizes(0) == [1]


def test_batch_buckets_pad_batches_and_keep_each_session_to_one_shape(repository, samples):
    """What the CUDA provider gets by default (shapes.py), switched on here for the CPU provider."""
    settings = Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cpu", batch_buckets="on", inline_max_us=0)
    with ServerThread(settings) as running, grpc.insecure_channel(running.address) as ch:
        plane = running.server.plane
        assert sorted(plane.batcher("lenet5", 1).mv.shape_buckets.sessions) == [1, 2, 4, 8]  # max batch 8
        buckets = plane.batcher("lenet5-batched", 1).mv.shape_buckets
        assert sorted(buckets.sessions) == [1, 2, 4, 8, 16, 32, 64] and buckets.sessions[1] is plane.batcher("lenet5-batched", 1).mv.session
        seen: dict[int, set[int]] = {}
        for size, session in buckets.sessions.items():
            # InferenceSession is a Python class: record the batch sizes each one is called with.
            rows = seen.setdefault(size, set())
            session.run = lambda outputs, feeds, _run=session.run, _rows=rows: (_rows.add(len(next(iter(feeds.values())))), _run(outputs, feeds))[1]
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(ch)
        for sizes in ([1, 3, 2, 5], [9, 1, 4, 7, 2], [16], [6]):
            bounds = np.cumsum([0, *sizes])
            xs = [samples["x"][a:b] for a, b in zip(bounds[:-1], bounds[1:])]
            futures = [stub.ModelInfer.future(infer_request("lenet5-batched", x), timeout=TIMEOUT) for x in xs]
            for future, x in zip(futures, xs):
                np.testing.assert_allclose(logits_of(future.result()), reference_logits(repository["batched"], x), rtol=1e-5, atol=1e-6)
    assert all(shapes <= {size} for size, shapes in seen.items()), seen
    assert len(set().union(*seen.values())) >= 3, f"too few bucket sizes exercised: {seen}"


def load_batched_with_buckets(repository: dict, max_batch_size: int):
    """lenet5-batched loaded on the CPU provider with a session per batch size bucket."""
    entry = next(e for e in repo.list_models(repository["dir"]) if e.name == "lenet5-batched")
    settings = Settings(repository=repository["dir"], threads=1, max_batch_size=max_batch_size, max_queue_delay_us=0, batch_buckets="on")
    return ModelLoader(settings, [CPU], workers=2).load(entry, repo.read_config(entry.model_dir))


def test_batch_buckets_run_more_rows_than_the_largest_bucket_in_pieces(repository, samples):
    mv = load_batched_with_buckets(repository, max_batch_size=4)
    assert mv.shape_buckets.sizes == [1, 2, 4] and mv.shape_buckets.bucket(3) == 4 and mv.shape_buckets.bucket(5) is None
    x = samples["x"][:11]
    np.testing.assert_allclose(mv.run(x), reference_logits(repository["batched"], x), rtol=1e-5, atol=1e-6)


def test_a_bucket_session_that_cannot_open_is_a_startup_error(repository, monkeypatch):
    from edgecnn.server import model_version

    opened = []

    def open_once(*args):
        if opened:
            raise RuntimeError("CUDA failure 2: out of memory")
        opened.append(args)
        return real_open(*args)

    real_open = model_version.open_session
    monkeypatch.setattr(model_version, "open_session", open_once)
    with pytest.raises(StartupError, match="cannot open a session per batch size bucket.*out of memory"):
        load_batched_with_buckets(repository, max_batch_size=4)


def test_batch_buckets_off_and_auto_on_the_cpu(repository):
    config = repo.read_config(repository["dir"] / "lenet5-batched")
    for buckets, provider, expected in (("auto", CPU, False), ("auto", CUDA, True), ("off", CUDA, False), ("on", CPU, True)):
        serving = resolve_serving(config, Settings(repository=repository["dir"], batch_buckets=buckets), provider, workers=2)
        assert serving.batch_buckets is expected, (buckets, provider)
    with pytest.raises(ValueError, match="batch_buckets must be auto, on or off"):
        Settings(repository=repository["dir"], batch_buckets="always")  # type: ignore[arg-type]
    settings = Settings(repository=repository["dir"], host="127.0.0.1", port=0, metrics_port=None, device="cpu")
    with ServerThread(settings) as running:
        assert all(b.mv.shape_buckets is None for b in running.server.plane.batchers())


def test_cuda_sessions_pick_convolution_kernels_by_heuristic():
    assert with_options([CUDA, CPU]) == [(CUDA, {"cudnn_conv_algo_search": "HEURISTIC"}), CPU]
    assert with_options([CPU]) == [CPU]
