"""`edgecnn health`: exit 0 when the server (or one model) is SERVING, 1 otherwise."""

from __future__ import annotations

import argparse
import sys

from edgecnn.auth_token import read_token
from edgecnn.client.health import DEFAULT_TIMEOUT_S, SERVING, HealthCheckError, check_health


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default="127.0.0.1:8001", help="HOST:PORT of the gRPC endpoint")
    parser.add_argument("--model", default="", help="check this model's health service instead of the server's")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait for the answer")
    parser.add_argument("--tls-ca", default=None, help="PEM file of the CA to trust (enables TLS)")
    parser.add_argument("--tls-cert", default=None, help="PEM client certificate, for servers started with --tls-client-ca")
    parser.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    parser.add_argument("--auth-token-file", default=None, help="file holding a bearer token")


def run(args: argparse.Namespace) -> int:
    what = f"model {args.model}" if args.model else "server"
    try:
        token = read_token(args.auth_token_file) if args.auth_token_file else None
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
