"""The floor of a Python gRPC inference service, for `make bench`.

A bare grpc.aio Open Inference Protocol server for one ONNX model: ModelInfer decodes the raw
input tensor, runs ONNX Runtime and returns the raw logits. No validation, metrics, auth or
batching; ServerMetadata, ModelMetadata and ModelConfig exist only so that clients (the load tester,
perf_analyzer) can ask for the input shape and max batch size. It prints "listening on HOST:PORT"
once it accepts calls, after its warm-up. ONNX Runtime gets edgecnn serve's session options, so
the two differ only in the service around it; it runs on the event loop edgecnn serve picks
(--event-loop, server/event_loop.py: uvloop where installed).

Two variants (`make bench` measures both and judges edgecnn against the faster one):
- executor (the default, --inline-max-us 0): every call runs on an executor thread;
- inline (--inline-max-us U): a batch-1 call runs on the event loop thread itself, without the
  executor hop, when the model's warm batch-1 time (the median of timed warm-up calls) is at most
  U microseconds, as edgecnn serve's inline budget (server/inline.py) decides for its small
  models; larger models and batches still go to the executor.

    python scripts/bench_floor_server.py --model repo/lenet5/1/model.onnx --name lenet5 --port 0
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without an install too

from edgecnn.protos import inference_pb2, inference_pb2_grpc, model_config_pb2  # noqa: E402
from edgecnn.server import event_loop  # noqa: E402
from edgecnn.server.device import providers_for  # noqa: E402
from edgecnn.server.sessions import open_session  # noqa: E402


MAX_BATCH_SIZE = 64  # what ModelConfig says (the floor runs any batch it is sent)


class FloorServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, name: str, session: ort.InferenceSession, executor: ThreadPoolExecutor, inline: bool = False) -> None:
        self.name = name
        self.session = session
        self.executor = executor
        self.inline = inline  # batch-1 calls run on the event loop thread
        self.input = session.get_inputs()[0]
        self.output = session.get_outputs()[0]

    async def ModelMetadata(self, request, context):
        response = inference_pb2.ModelMetadataResponse(name=self.name, versions=["1"], platform="onnxruntime_onnx")
        response.inputs.add(name=self.input.name, datatype="FP32", shape=[-1, *self.input.shape[1:]])
        response.outputs.add(name=self.output.name, datatype="FP32", shape=[-1, *self.output.shape[1:]])
        return response

    async def ServerMetadata(self, request, context):
        return inference_pb2.ServerMetadataResponse(name="bench-floor", version="1")

    async def ModelConfig(self, request, context):
        config = model_config_pb2.ModelConfig(name=self.name, platform="onnxruntime_onnx", max_batch_size=MAX_BATCH_SIZE)
        config.input.add(name=self.input.name, data_type=model_config_pb2.TYPE_FP32, dims=self.input.shape[1:])
        config.output.add(name=self.output.name, data_type=model_config_pb2.TYPE_FP32, dims=self.output.shape[1:])
        return inference_pb2.ModelConfigResponse(config=config)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output.name], {self.input.name: x})[0]

    async def ModelInfer(self, request, context):
        tensor = request.inputs[0]
        x = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(tuple(tensor.shape))
        if self.inline and len(x) == 1:
            logits = self._run(x)
        else:
            logits = await asyncio.get_running_loop().run_in_executor(self.executor, self._run, x)
        response = inference_pb2.ModelInferResponse(model_name=self.name, model_version="1", id=request.id)
        response.outputs.add(name=self.output.name, datatype="FP32", shape=logits.shape)
        response.raw_output_contents.append(logits.tobytes())
        return response


async def serve(args: argparse.Namespace) -> None:
    session = open_session(args.model, args.threads, providers_for(args.device))
    # Warm up as edgecnn serve does at load: on CUDA a session's first call of a shape sets up
    # its kernels (1.6 s for MobileNetV2 on an H100), longer than a short benchmark step.
    spec = session.get_inputs()[0]
    x = np.zeros((1, *spec.shape[1:]), dtype=np.float32)
    session.run(None, {spec.name: x})
    batch1_us = warm_batch1_us(session, x)
    inline = args.inline_max_us > 0 and batch1_us <= args.inline_max_us
    server = grpc.aio.server()
    with ThreadPoolExecutor(max_workers=args.executor_threads) as executor:
        inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(FloorServicer(args.name, session, executor, inline), server)
        port = server.add_insecure_port(f"{args.host}:{args.port}")
        await server.start()
        where = "inline on the event loop" if inline else "on an executor thread"
        print(f"batch 1 takes {batch1_us:.0f} us warm: batch-1 calls run {where}", file=sys.stderr, flush=True)
        print(f"listening on {args.host}:{port}", flush=True)
        await server.wait_for_termination()


def warm_batch1_us(session: ort.InferenceSession, x: np.ndarray, runs: int = 20) -> float:
    """The median of `runs` warm batch-1 calls, in microseconds (as edgecnn serve's warm-up)."""
    name = session.get_inputs()[0].name
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the model.onnx file")
    parser.add_argument("--name", required=True, help="the model name clients ask for")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="ONNX Runtime execution provider")
    parser.add_argument("--executor-threads", type=int, default=max(2, os.cpu_count() or 1), help="threads that run ONNX Runtime (as edgecnn serve)")
    parser.add_argument("--inline-max-us", type=float, default=0.0,
                        help="run batch-1 calls on the event loop thread when the warm batch-1 time is at most this "
                        "(0: always an executor thread, the default)")
    parser.add_argument("--event-loop", choices=event_loop.EVENT_LOOPS, default="auto", help="as edgecnn serve's (default auto)")
    args = parser.parse_args()
    try:
        event_loop.run(serve(args), args.event_loop)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
