"""The floor of a Python gRPC inference service, for `make bench`.

A bare grpc.aio Open Inference Protocol server for one ONNX model: ModelInfer decodes the raw
input tensor, runs ONNX Runtime on an executor thread and returns the raw logits. No
validation, metrics, auth or batching; ModelMetadata exists only so the load tester can ask
for the input shape. It prints "listening on HOST:PORT" once it accepts calls, after one warm-up
call. ONNX Runtime gets edgecnn serve's session options, so the two differ only in the service
around it.

    python scripts/bench_floor_server.py --model repo/lenet5/1/model.onnx --name lenet5 --port 0
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without an install too

from edgecnn.protos import inference_pb2, inference_pb2_grpc  # noqa: E402
from edgecnn.server.device import providers_for  # noqa: E402
from edgecnn.server.sessions import open_session  # noqa: E402


class FloorServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, name: str, session: ort.InferenceSession, executor: ThreadPoolExecutor) -> None:
        self.name = name
        self.session = session
        self.executor = executor
        self.input = session.get_inputs()[0]
        self.output = session.get_outputs()[0]

    async def ModelMetadata(self, request, context):
        response = inference_pb2.ModelMetadataResponse(name=self.name, versions=["1"], platform="onnxruntime_onnx")
        response.inputs.add(name=self.input.name, datatype="FP32", shape=[-1, *self.input.shape[1:]])
        response.outputs.add(name=self.output.name, datatype="FP32", shape=[-1, *self.output.shape[1:]])
        return response

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self.output.name], {self.input.name: x})[0]

    async def ModelInfer(self, request, context):
        tensor = request.inputs[0]
        x = np.frombuffer(request.raw_input_contents[0], dtype="<f4").reshape(tuple(tensor.shape))
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
    session.run(None, {spec.name: np.zeros((1, *spec.shape[1:]), dtype=np.float32)})
    server = grpc.aio.server()
    with ThreadPoolExecutor(max_workers=args.executor_threads) as executor:
        inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(FloorServicer(args.name, session, executor), server)
        port = server.add_insecure_port(f"{args.host}:{args.port}")
        await server.start()
        print(f"listening on {args.host}:{port}", flush=True)
        await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the model.onnx file")
    parser.add_argument("--name", required=True, help="the model name clients ask for")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="ONNX Runtime execution provider")
    parser.add_argument("--executor-threads", type=int, default=max(2, os.cpu_count() or 1), help="threads that run ONNX Runtime (as edgecnn serve)")
    try:
        asyncio.run(serve(parser.parse_args()))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
