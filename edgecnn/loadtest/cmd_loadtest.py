"""`edgecnn loadtest`: a concurrency sweep (closed loop) or a fixed arrival rate (open loop)
against one model; prints a table and writes JSON / CSV / a latency plot.

Exit codes: 0 every request succeeded, 1 some failed (counted by gRPC status code), a client
process failed or an output could not be written, 2 the test could not start (bad arguments,
model metadata unavailable), 130 stopped by Ctrl-C. Stopped early, it still reports and writes
the steps it finished.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edgecnn.auth_token import token_file_option
from edgecnn.client.channel import add_connection_args, channel_credentials, parse_server
from edgecnn.client.client import ClientError
from edgecnn.client.http_client import is_http_url, parse_url, ssl_context
from edgecnn.client.messages import INPUT_NAME
from edgecnn.number_args import NON_NEGATIVE_SECONDS, POSITIVE_RATE, POSITIVE_SECONDS, float_arg, is_non_negative, is_positive, positive_ints

from .plot import PlotUnavailable, check_plot_path, plot_latency
from .report import build_report, format_table, saturation_warnings, write_csv, write_json
from .runner import Plan, run_plan
from .workload import APIS, HTTP_BODIES, PROTOCOLS, Target, make_payloads, model_input

PROG = "edgecnn loadtest"


def _shape(text: str) -> tuple[int, int, int]:
    values = positive_ints(text)
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected C,H,W, e.g. 1,28,28")
    return values  # type: ignore[return-value]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", default=None,
        help="HOST:PORT of the gRPC endpoint (default 127.0.0.1:8001), or http[s]://HOST:PORT of the HTTP/REST one "
        "(default with --protocol http: http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, default=None,
        help="grpc, or http (KServe V2 REST); default: http for an http[s]:// --server, else grpc",
    )
    parser.add_argument(
        "--http-body", choices=HTTP_BODIES, default="binary",
        help="infer over HTTP: the binary tensor data extension (default) or JSON tensors",
    )
    parser.add_argument("--model", required=True, help="model name")
    parser.add_argument("--version", type=int, default=None, help="model version (default: the latest)")
    parser.add_argument("--api", choices=APIS, default="infer", help="KServe V2 ModelInfer tensors, or Classifier with PNG images")
    parser.add_argument("--batch-size", type=int, default=1, help="images per request")
    parser.add_argument("--concurrency", type=positive_ints, default=(1, 4, 16, 64), help="closed-loop sweep: workers per step")
    parser.add_argument("--rate", type=float_arg(is_positive, POSITIVE_RATE), default=None, help="open loop instead: Poisson arrivals per second")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--duration", type=float_arg(is_positive, POSITIVE_SECONDS), default=None, help="seconds measured per step (default 5)")
    length.add_argument("--requests", type=int, default=None, help="measured requests per step instead of a duration")
    parser.add_argument("--warmup", type=float_arg(is_non_negative, NON_NEGATIVE_SECONDS), default=1.0, help="unmeasured seconds before each step")
    parser.add_argument("--processes", type=int, default=1, help="client processes sharing the load")
    parser.add_argument("--timeout", type=float_arg(is_positive, POSITIVE_SECONDS), default=10.0, help="deadline per request in seconds")
    parser.add_argument("--input-shape", type=_shape, default=None, help="C,H,W: skip asking the server's ModelMetadata")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs and arrival times")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--csv", type=Path, default=None, help="write one CSV row per step here")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG of latency percentiles vs throughput")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_connection_args(parser)


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def _check_outputs(args: argparse.Namespace) -> None:
    """ValueError for an output file that could not be written, before the run rather than after it."""
    for option in ("out", "csv", "plot"):
        path = getattr(args, option)
        if path is None:
            continue
        if not path.parent.is_dir():
            raise ValueError(f"--{option} {path}: no folder {path.parent}")
        if path.is_dir():
            raise ValueError(f"--{option} {path}: a folder; expected a file name")
    if args.plot is not None:
        try:
            check_plot_path(args.plot)
        except PlotUnavailable:
            pass  # said after the run: the measurement is worth having without its plot
        except ValueError as exc:
            raise ValueError(f"--plot {exc}") from None


def run(args: argparse.Namespace) -> int:
    try:
        _check_outputs(args)
        protocol, args.server = _protocol_and_server(args)
        # Every TLS file readable, before any process starts.
        if protocol == "grpc":
            parse_server(args.server)
            credentials = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
        else:
            https = parse_url(args.server)[0] == "https"
            credentials = ssl_context(args.tls_ca, args.tls_cert, args.tls_key) if https else None
            if not https and (args.tls_ca or args.tls_cert):
                raise ValueError(f"--server {args.server}: TLS files given for plain http; use https://")
        token = token_file_option(args.auth_token_file)
        target = Target(
            args.server, args.model, args.version, args.api, args.tls_ca, token, args.timeout, args.tls_cert, args.tls_key,
            protocol=protocol, http_body=args.http_body,
        )
        duration = 5.0 if args.duration is None and args.requests is None else args.duration
        if args.input_shape is not None:
            input_name, shape = INPUT_NAME, args.input_shape
        else:
            input_name, shape = model_input(target)
        payloads = make_payloads(target, input_name, shape, args.batch_size, seed=args.seed)
        plan = Plan(
            target, payloads, args.batch_size, args.concurrency, args.rate, duration, args.requests,
            args.warmup, args.processes, args.seed,
        )  # fmt: skip
    except ClientError as exc:
        return _fail(f"cannot read the metadata of model {args.model!r} at {args.server}: {exc} "
                     "(pass --input-shape C,H,W to send requests anyway)")  # fmt: skip
    except ValueError as exc:
        return _fail(str(exc))

    config = {
        "server": args.server, "protocol": target.protocol, "http_body": target.http_body if target.protocol == "http" else None,
        "model": args.model, "version": args.version, "api": args.api,
        "batch_size": args.batch_size, "mode": plan.mode, "concurrency": list(args.concurrency) if plan.mode == "closed" else None,
        "rate": args.rate, "duration_s": duration, "requests": args.requests, "warmup_s": args.warmup,
        "processes": args.processes, "timeout_s": args.timeout, "input_shape": [args.batch_size, *shape],
        "input": _input_text(target),
        "tls": credentials is not None,
        "client_certificate": args.tls_cert is not None, "auth": token is not None, "seed": args.seed,
    }  # fmt: skip
    plan_run = run_plan(plan, progress=None if args.quiet else sys.stderr)
    report = build_report(config, plan_run.steps, plan_run.stop_reason)
    print(format_table(report))
    for warning in saturation_warnings(report):
        print(warning, file=sys.stderr)
    unwritten = _write_outputs(report, args)
    failed = sum(sum(step["errors"].values()) for step in report["steps"])
    if failed:
        print(f"{PROG}: {failed} requests failed", file=sys.stderr)
    if plan_run.stop_reason is not None:
        print(f"{PROG}: stopped early, reporting the {len(plan_run.steps)} finished steps: "
              f"{_one_line(plan_run.stop_reason)}", file=sys.stderr)  # fmt: skip
    if isinstance(plan_run.stopped_by, KeyboardInterrupt):
        return 130
    return 1 if failed or unwritten or plan_run.stopped_by else 0


def _protocol_and_server(args: argparse.Namespace) -> tuple[str, str]:
    """The protocol (--protocol, else the --server's scheme) and the server, an http[s]:// URL over HTTP."""
    url = args.server is not None and is_http_url(args.server)
    protocol = args.protocol or ("http" if url else "grpc")
    if protocol == "grpc" and url:
        raise ValueError(f"--server {args.server}: an HTTP URL with --protocol grpc; expected HOST:PORT")
    if args.server is None:
        return protocol, "http://127.0.0.1:8000" if protocol == "http" else "127.0.0.1:8001"
    return protocol, args.server if protocol == "grpc" or url else f"http://{args.server}"


def _input_text(target: Target) -> str:
    if target.api == "classify":
        return "PNG-encoded random images" + (" (multipart/form-data)" if target.protocol == "http" else "")
    if target.protocol == "http":
        return f"random float32 tensors ({'binary tensor data' if target.http_body == 'binary' else 'JSON'})"
    return "random float32 tensors"


def _write_outputs(report: dict[str, Any], args: argparse.Namespace) -> int:
    """Every output asked for, each on its own so that one failing does not stop the others;
    how many could not be written."""
    unwritten = 0
    for path, write in ((args.out, write_json), (args.csv, write_csv), (args.plot, plot_latency)):
        if path is None:
            continue
        try:
            write(report, path)
        except PlotUnavailable as exc:
            print(f"{PROG}: no plot written: {exc}", file=sys.stderr)
        except OSError as exc:
            print(f"{PROG}: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
            unwritten += 1
    return unwritten


def _one_line(text: str) -> str:
    """A multi-line reason (a client process's traceback) as its first and last lines."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "no reason given"
    return lines[0] if len(lines) == 1 else f"{lines[0].rstrip(':')}: {lines[-1]}"
