"""`edgecnn repository index|load|unload`: the model repository extension for people without
tritonclient (RepositoryIndex, RepositoryModelLoad, RepositoryModelUnload over gRPC).

Exit codes: 0 done, 1 the server refused or failed it (the message says why), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys

import grpc

from edgecnn.auth_token import auth_metadata, token_file_option
from edgecnn.client.channel import add_connection_args, open_channel
from edgecnn.protos import inference_pb2, inference_pb2_grpc

PROG = "edgecnn repository"
# Loading opens, warms up and self-tests every version: it may take a while.
DEFAULT_TIMEOUT_S = 300.0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["index", "load", "unload"], help="list the repository, load (or reload) or unload a model")
    parser.add_argument("model", nargs="?", default="", help="the model to load or unload")
    parser.add_argument("--server", default="127.0.0.1:8001", help="HOST:PORT of the gRPC endpoint")
    parser.add_argument("--config", default=None, metavar="JSON", help="load: a JSON model configuration used instead of config.pbtxt")
    parser.add_argument("--ready", action="store_true", help="index: only the versions ready to serve")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help=f"seconds to wait for the answer (default {DEFAULT_TIMEOUT_S:g})")
    add_connection_args(parser)


def format_index(response: inference_pb2.RepositoryIndexResponse) -> str:
    rows = [("MODEL", "VERSION", "STATE", "REASON")]
    rows += [(m.name, m.version or "-", m.state or "-", m.reason) for m in response.models]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(" ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + (f" {row[3]}" if row[3] else "") for row in rows)


def run(args: argparse.Namespace) -> int:
    if args.action in ("load", "unload") and not args.model:
        print(f"{PROG} {args.action}: name the model", file=sys.stderr)
        return 2
    if args.config is not None:
        if args.action != "load":
            print(f"{PROG}: --config goes with load", file=sys.stderr)
            return 2
        try:
            json.loads(args.config)
        except json.JSONDecodeError as exc:
            print(f"{PROG} load: --config is not JSON: {exc}", file=sys.stderr)
            return 2
    try:
        metadata = auth_metadata(token_file_option(args.auth_token_file))
        channel = open_channel(args.server, args.tls_ca, args.tls_cert, args.tls_key)
    except (ValueError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    with channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            if args.action == "index":
                response = stub.RepositoryIndex(inference_pb2.RepositoryIndexRequest(ready=args.ready), timeout=args.timeout, metadata=metadata)
                print(format_index(response))
            elif args.action == "load":
                request = inference_pb2.RepositoryModelLoadRequest(model_name=args.model)
                if args.config is not None:
                    request.parameters["config"].string_param = args.config
                stub.RepositoryModelLoad(request, timeout=args.timeout, metadata=metadata)
                print(f"loaded {args.model}")
            else:
                stub.RepositoryModelUnload(inference_pb2.RepositoryModelUnloadRequest(model_name=args.model), timeout=args.timeout, metadata=metadata)
                print(f"unloaded {args.model}")
        except grpc.RpcError as exc:
            print(f"{PROG} {args.action}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0
