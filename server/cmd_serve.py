"""`edgecnn serve`: serve a model repository over gRPC (Open Inference Protocol + Classifier)."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from edgecnn.auth_token import token_file_option
from edgecnn.number_args import positive_float, true_or_false

from . import event_loop
from .app import InferenceServer, serve_until_signal
from .errors import StartupError
from .workers import serve_workers, worker_count
from .settings import (
    DEFAULT_INLINE_IDLE_MAX_US,
    DEFAULT_INLINE_MAX_US,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    DEFAULT_PORT,
    Settings,
)


# What `edgecnn serve` prints on stdout once it accepts calls (scripts and tests wait for it);
# groups: host, gRPC port, metrics port (None: no metrics), HTTP port (None: no HTTP).
READY_LINE = re.compile(r"edgecnn serving on (\S+):(\d+) \((?:metrics :(\d+)|no metrics)\)(?:, http :(\d+))?")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", type=Path, required=True, help="model repository folder (Triton layout)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"gRPC port, 0 for any free one (default {DEFAULT_PORT})")
    parser.add_argument(
        "--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
        help=f"Prometheus /metrics port, 0 for any free one, -1 for none (default {DEFAULT_METRICS_PORT})",
    )
    parser.add_argument(
        "--http-port", type=int, default=DEFAULT_HTTP_PORT,
        help=f"HTTP/REST (KServe V2) port, 0 for any free one, -1 for none (default {DEFAULT_HTTP_PORT})",
    )
    parser.add_argument("--no-http", action="store_true", help="no HTTP/REST front end (as --http-port -1)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="ONNX Runtime execution provider")
    parser.add_argument(
        "--workers", default="1", metavar="N|auto",
        help="serving processes sharing the gRPC and HTTP ports (SO_REUSEPORT), each with its own copy of the models, "
        "under one supervisor that restarts them and serves /metrics for all; auto: one per usable CPU; the kernel "
        "balances connections, not requests (default 1: one process, no supervisor; see server/workers.py)",
    )
    parser.add_argument(
        "--threads", type=int, default=0,
        help="ONNX Runtime intra-op threads per session (0: its default; with --workers N, the usable CPUs // N)",
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=None,
        help="override every config.pbtxt max_batch_size (0 or 1 turns batching off)",
    )
    parser.add_argument(
        "--max-queue-delay-us", type=int, default=None,
        help="override every config.pbtxt dynamic_batching max_queue_delay_microseconds (0 turns batching off)",
    )
    parser.add_argument(
        "--max-queue", type=int, default=DEFAULT_MAX_QUEUE,
        help=f"requests waiting per model version before RESOURCE_EXHAUSTED (default {DEFAULT_MAX_QUEUE})",
    )
    parser.add_argument(
        "--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
        help=f"largest width x height of a PNG/JPEG sent to Classify, checked before decoding (default {DEFAULT_MAX_IMAGE_PIXELS})",
    )
    parser.add_argument(
        "--inline-max-us", type=int, default=DEFAULT_INLINE_MAX_US,
        help="run a batch on the event loop thread instead of a worker thread when its estimated time (rows x the "
        "model's warm batch-1 time) is at most this and none of the model's batches is on a worker thread; "
        f"0: never (default {DEFAULT_INLINE_MAX_US} microseconds; see server/inline.py)",
    )
    parser.add_argument(
        "--inline-idle-max-us", type=int, default=DEFAULT_INLINE_IDLE_MAX_US,
        help="the same for a request that is the only call the server has open (the event loop would otherwise "
        "wait for the worker thread idle): it runs inline when its estimate is at most this; 0: only "
        f"--inline-max-us applies, which at 0 turns this off too (default {DEFAULT_INLINE_IDLE_MAX_US} microseconds)",
    )
    parser.add_argument(
        "--batch-buckets", choices=["auto", "on", "off"], default="auto",
        help="one ONNX Runtime session per batch size bucket (1, 2, 4, ... max batch), batches padded up to it, so "
        "no session sees its input shape change; auto: on the CUDA provider, where a new shape costs a kernel "
        "set-up (default auto; see server/shapes.py)",
    )
    parser.add_argument(
        "--reject-nonfinite", action="store_true",
        help="ModelInfer refuses inputs holding NaN or infinite values with INVALID_ARGUMENT (default: accept "
        "them as Triton does, e.g. perf_analyzer's random data, counted in edgecnn_nonfinite_inputs_total); "
        "Classify always refuses them",
    )
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain (enables TLS)")
    parser.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    parser.add_argument("--tls-client-ca", type=Path, help="PEM CA bundle: require client certificates signed by it")
    parser.add_argument("--auth-token-file", type=Path, help="file holding the bearer token clients must send")
    control = parser.add_argument_group("live model repository (Triton's flags)")
    control.add_argument(
        "--model-control-mode", choices=["none", "poll", "explicit"], default="none",
        help="none: the repository's models, fixed at start-up; poll: rescan it every --repository-poll-secs and "
        "load, reload or unload what changed; explicit: only --load-model at start-up, then RepositoryModelLoad/"
        "Unload (default none)",
    )
    control.add_argument("--repository-poll-secs", type=positive_float, default=15.0, help="poll mode's interval (default 15)")
    control.add_argument(
        "--load-model", action="append", default=[], metavar="NAME",
        help="explicit mode: a model to load at start-up (repeatable; * for all)",
    )
    control.add_argument(
        "--exit-on-error", type=true_or_false, default=True, metavar="true|false",
        help="a model that fails to load at start-up stops the start (default true; false: it is reported and the rest serve)",
    )
    control.add_argument(
        "--strict-readiness", type=true_or_false, default=True, metavar="true|false",
        help="ServerReady only while every model that should serve does (default true; false: once the server serves)",
    )
    parser.add_argument(
        "--event-loop", choices=event_loop.EVENT_LOOPS, default="auto",
        help="the asyncio event loop: uvloop (faster per request), asyncio's own, or auto: uvloop where installed (default)",
    )  # fmt: skip
    parser.add_argument("--grace", type=float, default=10.0, help="seconds in-flight requests get on SIGTERM (default 10)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def settings_from_args(args: argparse.Namespace) -> Settings:
    token = token_file_option(args.auth_token_file)
    return Settings(
        repository=args.repository,
        host=args.host,
        port=args.port,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        http_port=None if args.no_http or args.http_port < 0 else args.http_port,
        device=args.device,
        threads=args.threads,
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        max_queue=args.max_queue,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        auth_token=token,
        grace_s=args.grace,
        max_image_pixels=args.max_image_pixels,
        inline_max_us=args.inline_max_us,
        inline_idle_max_us=args.inline_idle_max_us,
        batch_buckets=args.batch_buckets,
        reject_nonfinite=args.reject_nonfinite,
        model_control_mode=args.model_control_mode,
        repository_poll_secs=args.repository_poll_secs,
        load_models=tuple(args.load_model),
        exit_on_error=args.exit_on_error,
        strict_readiness=args.strict_readiness,
        event_loop=event_loop.resolve(args.event_loop),
    )


def _announce_ports(host: str, port: int, metrics_port: int | None, http_port: int | None, workers: int = 1) -> None:
    metrics = f"metrics :{metrics_port}" if metrics_port is not None else "no metrics"
    http = f", http :{http_port}" if http_port is not None else ""
    processes = f", {workers} workers" if workers > 1 else ""
    print(f"edgecnn serving on {host}:{port} ({metrics}){http}{processes}", flush=True)


def _announce(server: InferenceServer) -> None:
    _announce_ports(server.settings.host, server.port, server.metrics_port, server.http_port)  # type: ignore[arg-type]


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args)
        workers = worker_count(args.workers)
        if workers > 1:
            announce = lambda *ports: _announce_ports(*ports, workers=workers)  # noqa: E731
            return event_loop.run(serve_workers(settings, workers, args.log_level, on_ready=announce), settings.event_loop)
        return event_loop.run(serve_until_signal(settings, on_ready=_announce), settings.event_loop)
    except (StartupError, ValueError, OSError) as exc:
        print(f"edgecnn serve: {exc}", file=sys.stderr)
        return 2
