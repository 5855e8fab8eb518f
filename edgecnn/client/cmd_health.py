"""`edgecnn health`: exit 0 when the server (or one model) is SERVING, 1 otherwise."""

from __future__ import annotations

import argparse
import sys

from edgecnn.auth_token import token_file_option
from edgecnn.client.channel import add_connection_args
from edgecnn.client.health import DEFAULT_TIMEOUT_S, SERVING, HealthCheckError, check_health


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default="127.0.0.1:8001", help="HOST:PORT of the gRPC endpoint")
    parser.add_argument("--model", default="", help="check this model's health service instead of the server's")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait for the answer")
    add_connection_args(parser)


def run(args: argparse.Namespace) -> int:
    what = f"model {args.model}" if args.model else "server"
    try:
        token = token_file_option(args.auth_token_file)
        status = check_health(
            args.server, args.model, timeout=args.timeout, tls_ca=args.tls_ca, auth_token=token,
            tls_cert=args.tls_cert, tls_key=args.tls_key,
        )  # fmt: skip
    except ValueError as exc:
        print(f"edgecnn health: {exc}", file=sys.stderr)
        return 1
    except HealthCheckError as exc:
        print(f"{what} at {args.server}: UNREACHABLE ({exc})")
        return 1
    print(f"{what} at {args.server}: {status}")
    return 0 if status == SERVING else 1
