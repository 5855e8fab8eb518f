"""How the HTTP front end's library was chosen (issue 14): req/s of batch-1 LeNet-5 over the KServe
V2 binary tensor extension, the same handler on aiohttp and on starlette + uvicorn (h11, and
httptools when installed), each server alone in its own process, one client process (aiohttp's
client, keep-alive) at concurrency 1 and 16, rounds alternating between the servers. Besides
req/s (which a busy machine moves a lot), each row gives the server process's CPU time per
request (user + system, from /proc), which other load on the machine hardly moves.

    .venv/bin/python scripts/http_library_choice.py [--rounds 3] [--seconds 3]

Needs onnx (the dev extra) for the torch-free LeNet-5 of tests/onnx_models.py, and aiohttp,
starlette and uvicorn. Not part of `make bench`: it measured a choice once (README, HTTP/REST).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HEADER = "Inference-Header-Content-Length"


def _session():
    import onnxruntime as ort

    from tests.onnx_models import lenet5_onnx

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(lenet5_onnx().SerializeToString(), options, providers=["CPUExecutionProvider"])


def _handle(session, body: bytes, header_length: int) -> tuple[bytes, int]:
    """The work both servers do per request: split the JSON header from the binary tensor,
    run the model, answer a JSON header and the logits' bytes."""
    request = json.loads(body[:header_length])
    spec = request["inputs"][0]
    x = np.frombuffer(body[header_length:], dtype="<f4").reshape(spec["shape"])
    logits = session.run(None, {spec["name"]: x})[0]
    raw = logits.astype("<f4").tobytes()
    head = json.dumps(
        {"model_name": "lenet5", "outputs": [{"name": "logits", "datatype": "FP32", "shape": list(logits.shape),
                                              "parameters": {"binary_data_size": len(raw)}}]}
    ).encode()  # fmt: skip
    return head + raw, len(head)


def serve_aiohttp(port: int) -> None:
    from aiohttp import web

    session = _session()

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        payload, n = _handle(session, body, int(request.headers[HEADER]))
        return web.Response(body=payload, headers={HEADER: str(n)}, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", infer)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def serve_starlette(port: int, http: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    session = _session()

    async def infer(request) -> Response:
        body = await request.body()
        payload, n = _handle(session, body, int(request.headers[HEADER]))
        return Response(payload, headers={HEADER: str(n)}, media_type="application/octet-stream")

    app = Starlette(routes=[Route("/v2/models/{model}/infer", infer, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, http=http, loop="asyncio", log_level="error", access_log=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _body() -> tuple[bytes, int]:
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28), dtype=np.float32)
    raw = x.tobytes()
    head = json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "parameters": {"binary_data_size": len(raw)}}],
         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}
    ).encode()  # fmt: skip
    return head + raw, len(head)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def _load(port: int, concurrency: int, seconds: float, pid: int) -> tuple[float, float]:
    import aiohttp

    body, n = _body()
    url = f"http://127.0.0.1:{port}/v2/models/lenet5/infer"
    headers = {HEADER: str(n), "Content-Type": "application/octet-stream"}
    done = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as client:
        for _ in range(50):  # warm-up, and the server is up
            async with client.post(url, data=body, headers=headers) as r:
                await r.read()
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < end:
                async with client.post(url, data=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 200, r.status
                done += 1

        start, cpu = time.perf_counter(), _cpu_s(pid)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - start), (_cpu_s(pid) - cpu) / done


def _wait_listening(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no server on port {port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    servers = {"aiohttp": (serve_aiohttp, ()), "starlette+uvicorn(h11)": (serve_starlette, ("h11",))}
    try:
        import httptools  # noqa: F401

        servers["starlette+uvicorn(httptools)"] = (serve_starlette, ("httptools",))
    except ImportError:
        pass
    ctx = mp.get_context("spawn")
    ports, procs, pids = {}, [], {}
    for name, (target, extra) in servers.items():
        ports[name] = _free_port()
        proc = ctx.Process(target=target, args=(ports[name], *extra), daemon=True)
        proc.start()
        procs.append(proc)
        pids[name] = proc.pid
    try:
        for port in ports.values():
            _wait_listening(port)
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for r in range(args.rounds):
            order = list(servers)[r % len(servers):] + list(servers)[: r % len(servers)]
            for concurrency in (1, 16):
                for name in order:
                    rate, cpu = asyncio.run(_load(ports[name], concurrency, args.seconds, pids[name]))
                    results.setdefault((name, concurrency), []).append((rate, cpu))
                    print(f"round {r + 1} c={concurrency:<2} {name:30} {rate:8.0f} req/s {cpu * 1e6:6.0f} us CPU/req", flush=True)
        print("\nmedians over the rounds: req/s, server CPU per request")
        for (name, concurrency), rows in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            rate, cpu = statistics.median(r for r, _ in rows), statistics.median(c for _, c in rows)
            print(f"  c={concurrency:<2} {name:30} {rate:8.0f} req/s {cpu * 1e6:6.0f} us")
    finally:
        for proc in procs:
            proc.terminate()
            proc.join(5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
