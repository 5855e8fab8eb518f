"""`make bench`: where the time goes, side by side, on this machine.

For LeNet-5, the CIFAR CNN and MobileNetV2 it measures
  (a) ONNX Runtime in-process (the compute limit),
  (b) scripts/bench_floor_server.py, a bare grpc.aio Open Inference Protocol server (the floor
      of a Python gRPC service: decode, run, encode; nothing else), in two variants: ONNX Runtime
      on an executor thread (floor) and, for batch-1 calls of models within edgecnn's inline
      budget, inline on the event loop (floor-inline); edgecnn is judged against the faster,
  (c) `edgecnn serve` with dynamic batching off, and (d) on,
with the same two clients over the same concurrency sweep: the `edgecnn loadtest` library (KServe
V2 ModelInfer, batch 1) and Triton's perf_analyzer (C++, sync and --async, its default random
data; edgecnn/loadtest/perf_analyzer.py), and writes docs/benchmarks.md and docs/benchmarks.png.
Every server loads only the model under test (one repository per model). The four servers of a
model run side by side, fresh processes each round, and every step is measured in short slices
that alternate between them (edgecnn/loadtest/side_by_side.py), so a neighbour's burst or a drift
of the machine hits all four alike; each step pools its slices and rounds. perf_analyzer then
measures the same servers in the first --pa-rounds rounds, one run per server, concurrency and
mode, alternating between the servers too; it also reads edgecnn's own breakdown of a request
(ModelStatistics) into the report. Without perf_analyzer or its libraries (libb64-0d,
nvidia-cuda-runtime-cu12: `make bench` installs them) those columns say why they are missing.
Beside the four servers, in the same slices (each target with its own requests and steps,
side_by_side.Measured): for --http-models the batching-off process over HTTP/REST too, binary
tensor data and JSON (issue 14: c=1, 16, 64; perf_analyzer -i http), and for --workers-models
`edgecnn serve --workers 1` and `--workers N` (--workers-count, 2 by default; issue 15: c=1 and 64, each client process over
--workers-connections gRPC connections, since SO_REUSEPORT balances connections; CPU only).
Where a CUDA GPU is usable (nvidia-smi and ONNX Runtime's CUDAExecutionProvider), every leg runs
again with --device cuda. Timing goals are reported as met / not met, never asserted
(edgecnn/loadtest/bench_report.py). This script starts the servers and writes their model
repositories; the measuring and the report are the package's.

    python scripts/bench.py            # ~45 minutes on 2 cores (5 rounds; perf_analyzer in 3)
    python scripts/bench.py --quick    # ~6 minutes: one round of 1 s steps
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from collections.abc import Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without an install too

from edgecnn.loadtest.bench_report import (  # noqa: E402
    CUDA_SUFFIX, HTTP_TARGETS, SERVERS, WORKERS_COUNT, WORKERS_PREFIX, render, workers_kinds, write_report, write_results,
)
from edgecnn.loadtest import perf_analyzer as pa  # noqa: E402
from edgecnn.loadtest.onnxruntime_in_process import bench_onnxruntime  # noqa: E402
from edgecnn.loadtest.side_by_side import Measured, SliceSchedule, measure_side_by_side  # noqa: E402
from edgecnn.loadtest.workload import Target, make_payloads  # noqa: E402
from edgecnn.number_args import (  # noqa: E402
    NON_NEGATIVE_SECONDS, POSITIVE_SECONDS, float_arg, int_at_least, is_non_negative, is_positive, positive_ints,
)  # fmt: skip
from edgecnn.repository import INPUT_NAME  # noqa: E402
from edgecnn.server.cmd_serve import READY_LINE  # noqa: E402
from edgecnn.server import event_loop  # noqa: E402
from edgecnn.server.device import cuda_usable  # noqa: E402
from edgecnn.loadtest.bench_report import FLOOR_INLINE_MAX_US  # noqa: E402
from machine import cpu_model, memory_gib  # noqa: E402  (scripts/machine.py)
from tests.child_process import ChildProcess  # noqa: E402

MODELS = ("lenet5", "cifar-cnn", "mobilenet-v2")
TRAINED_LENET5 = ROOT / "runs" / "lenet5-fashion-mnist"
TRAINED_MOBILENET = ROOT / "runs" / "mobilenet-v2-fashion-mnist"  # `make results` trains it (width 0.5)
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class BenchModel:
    name: str
    repository: Path  # holds this model only, so every server loads the same one model
    onnx: Path
    params: int
    input_shape: tuple[int, int, int]
    weights: str  # where the weights come from, for the report


# --- models --------------------------------------------------------------------------------------


def _lenet5_run(workdir: Path, log) -> tuple[Path, str]:
    if (TRAINED_LENET5 / "model.pt").is_file():
        return TRAINED_LENET5, f"trained on Fashion-MNIST ({TRAINED_LENET5.relative_to(ROOT)})"
    run_dir = workdir / "runs" / "lenet5"
    if not (run_dir / "model.pt").is_file():
        log(f"no {TRAINED_LENET5.relative_to(ROOT)}: training LeNet-5 briefly (1 epoch, 10,000 images)")
        subprocess.run(
            [sys.executable, "-m", "edgecnn.cli", "train", "lenet5", "--dataset", "fashion-mnist", "--epochs", "1",
             "--limit", "10000", "--out", str(run_dir), "--no-progress"],
            check=True, cwd=ROOT,
        )  # fmt: skip
    return run_dir, "briefly trained on Fashion-MNIST (1 epoch, 10,000 images)"


def prepare_models(workdir: Path, names: list[str], log, mobilenet_run: Path | None = TRAINED_MOBILENET) -> list[BenchModel]:
    """Export each model into its own fresh repository under workdir (torch is needed only here).
    MobileNetV2 serves the trained run at mobilenet_run when it holds a model.pt, else fixed-seed weights."""
    from edgecnn.export.onnx_export import export_run
    from edgecnn.export.untrained import fixed_seed_run
    from edgecnn.training.checkpoint import load_checkpoint

    shutil.rmtree(workdir / "repos", ignore_errors=True)
    models = []
    for name in names:
        repository = workdir / "repos" / name
        if name == "lenet5":
            run_dir, weights = _lenet5_run(workdir, log)
        elif name == "mobilenet-v2" and mobilenet_run is not None and (mobilenet_run / "model.pt").is_file():
            shown = mobilenet_run.relative_to(ROOT) if mobilenet_run.is_relative_to(ROOT) else mobilenet_run
            run_dir, weights = mobilenet_run, f"trained on Fashion-MNIST ({shown})"
        else:
            run_dir, weights = fixed_seed_run(workdir / "runs" / name, name, "cifar10"), "fixed-seed random weights (no CIFAR-10 data here)"
        log(f"exporting {name}")
        entry = export_run(run_dir, repository, name=name, version=1, verify=False)
        _, meta = load_checkpoint(run_dir)
        models.append(BenchModel(name, repository, entry.onnx_path, int(meta["params"]), tuple(meta["input_shape"]), weights))
    return models


# --- (b)-(d) servers under the load tester -----------------------------------------------------


def server_command(kind: str, model: BenchModel, threads: int, delay_us: int, device: str) -> tuple[list[str], str]:
    """The command line of one server kind (SERVERS, workers_kinds), and the regex of its ready line
    (group 2: the gRPC port; edgecnn's group 4: its HTTP port)."""
    if kind in ("floor", "floor-inline"):
        cmd = [sys.executable, str(ROOT / "scripts" / "bench_floor_server.py"), "--model", str(model.onnx),
               "--name", model.name, "--port", "0", "--threads", str(threads), "--device", device]  # fmt: skip
        if kind == "floor-inline" and device == "cpu":  # edgecnn runs nothing inline on CUDA either
            cmd += ["--inline-max-us", str(FLOOR_INLINE_MAX_US)]
        return cmd, r"listening on (\S+):(\d+)"
    delay = 0 if kind == "batching-off" else delay_us
    cmd = [sys.executable, "-m", "edgecnn.cli", "serve", "--repository", str(model.repository), "--host", "127.0.0.1",
           "--port", "0", "--metrics-port", "-1", "--http-port", "0", "--device", device, "--threads", str(threads),
           "--max-batch-size", "64", "--max-queue-delay-us", str(delay), "--log-level", "WARNING"]  # fmt: skip
    if kind.startswith(WORKERS_PREFIX):
        cmd += ["--workers", kind.removeprefix(WORKERS_PREFIX)]
    return cmd, READY_LINE.pattern


@dataclass(frozen=True)
class Listening:
    grpc: str  # HOST:PORT
    http: str | None  # http://HOST:PORT, for a server with an HTTP front end
    pid: int  # the server's process (the supervisor of --workers): the bench reports its CPU


@contextmanager
def running(cmd: list[str], ready: str, log_path: Path) -> Iterator[Listening]:
    with open(log_path, "w") as stderr, ChildProcess(cmd, ready, READY_TIMEOUT_S, cwd=ROOT, stderr=stderr) as child:
        groups = child.match.groups()
        http = groups[3] if len(groups) >= 4 else None
        yield Listening(f"127.0.0.1:{child.match.group(2)}", f"http://127.0.0.1:{http}" if http else None, child.proc.pid)


def server_kinds(model: BenchModel, device: str, args: argparse.Namespace) -> list[str]:
    """The servers of one model's rounds: SERVERS, and the workers servers where asked for (CPU only)."""
    workers = model.name in args.workers_models and device == "cpu" and bool(args.workers_sweep) and args.workers_missing is None
    return [*SERVERS, *(workers_kinds(args.workers_count) if workers else ())]


def measure_servers(
    model: BenchModel, device: str, args: argparse.Namespace, log, perf_analyzer_reports: dict | None = None
) -> dict[str, dict]:
    """`args.rounds` rounds, each with a fresh process of every server kind, all up together
    (idle but for the one measured), measured side by side in alternating slices; a report per
    server kind. With args.perf_analyzer, perf_analyzer measures them too in the first
    args.pa_rounds rounds: perf_analyzer_reports gets {kind: {mode: report}}."""
    schedule = SliceSchedule(args.concurrency, args.duration, args.warmup, args.slices, args.processes)
    # Random float32 tensors of batch 1 (KServe V2 ModelInfer, raw_input_contents), for every gRPC target;
    # the same tensors as KServe V2 REST bodies for the HTTP targets.
    payloads = make_payloads(Target("", model.name), INPUT_NAME, model.input_shape, batch_size=1)
    http = model.name in args.http_models and bool(args.http_sweep)
    http_payloads = {
        kind: make_payloads(Target("http://h:1", model.name, protocol="http", http_body=kind.removeprefix("http-")), INPUT_NAME,
                            model.input_shape, batch_size=1)
        for kind in (HTTP_TARGETS if http else ())
    }  # fmt: skip
    kinds = server_kinds(model, device, args)

    @contextmanager
    def fresh_servers(r: int) -> Iterator[dict[str, Measured]]:
        log(f"{model.name}: {', '.join(kinds)}{' (+ HTTP)' if http else ''} ({device}), round {r + 1}/{args.rounds}")
        with ExitStack() as stack:
            targets = {}
            for kind in kinds:
                cmd, ready = server_command(kind, model, args.threads, args.batch_delay_us, device)
                listening = stack.enter_context(running(cmd, ready, args.workdir / f"{model.name}-{kind}-{device}-round{r + 1}.log"))
                if kind.startswith(WORKERS_PREFIX):  # over several connections per client process: the kernel balances connections
                    targets[kind] = Measured(Target(listening.grpc, model.name, connections=args.workers_connections), sweep=args.workers_sweep,
                                             pid=listening.pid)  # fmt: skip
                else:
                    targets[kind] = Measured(Target(listening.grpc, model.name), pid=listening.pid)
                if kind == "batching-off" and http:  # the same process through its HTTP port
                    if listening.http is None:
                        raise RuntimeError(f"{model.name} {kind}: no HTTP port in its ready line")
                    for http_kind, bodies in http_payloads.items():
                        target = Target(listening.http, model.name, protocol="http", http_body=http_kind.removeprefix("http-"))
                        targets[http_kind] = Measured(target, bodies, args.http_sweep, listening.pid)
            yield targets

    measured: dict[str, dict[str, dict[int, list[dict]]]] = {}

    def with_perf_analyzer(r: int, targets: Mapping[str, Measured]) -> None:
        if args.perf_analyzer is None or r >= args.pa_rounds:
            return
        log(f"{model.name}: perf_analyzer ({', '.join(args.pa_modes)}) ({device}), round {r + 1}/{min(args.pa_rounds, args.rounds)}")
        by_server = pa.measure_round(args.perf_analyzer, targets, args.concurrency, r, args.pa_modes, args.pa_interval_ms,
                                     args.pa_stability, log)  # fmt: skip
        for kind, by_mode in by_server.items():
            for mode, by_c in by_mode.items():
                for c, row in by_c.items():
                    measured.setdefault(kind, {}).setdefault(mode, {}).setdefault(c, []).append(row)

    reports = measure_side_by_side(fresh_servers, args.rounds, schedule, payloads, log, with_perf_analyzer)
    if perf_analyzer_reports is not None:
        for kind, by_mode in measured.items():
            perf_analyzer_reports[kind] = {
                mode: {"tool": pa.TOOL, "client": pa.client_name(mode), "steps": [pa.pool_rows(by_c[c]) for c in args.concurrency if c in by_c]}
                for mode, by_c in by_mode.items()
            }
    return reports


def serve_lacks_workers() -> str | None:
    """Why `edgecnn serve --workers N` cannot be measured here, or None when it can."""
    try:
        done = subprocess.run([sys.executable, "-m", "edgecnn.cli", "serve", "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"edgecnn serve --help did not run: {exc}"
    return None if "--workers" in done.stdout else "edgecnn serve has no --workers option"


# --- the machine ---------------------------------------------------------------------------------


def _first_line(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return ""


def machine() -> dict:
    import grpc
    import numpy as np
    import onnxruntime

    from edgecnn import __version__

    return {
        "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
        "ram_gib": round(memory_gib() or 0.0, 1), "os": platform.platform(), "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__, "grpcio": grpc.__version__, "numpy": np.__version__,
        "edgecnn": __version__, "gpu": _first_line(["nvidia-smi", "-L"]) or "none",
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }  # fmt: skip


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of 1 s steps, 0.5 s warm-up")
    parser.add_argument("--rounds", type=int_at_least(1), default=5,
                        help="rounds, each with fresh server processes; pooled (5: the whole run ~45 minutes on 2 cores)")
    parser.add_argument("--duration", type=float_arg(is_positive, POSITIVE_SECONDS), default=4.0,
                        help="measured seconds per step, server and round (at 2 s, rounds of one server varied by up to 20%%)")
    parser.add_argument("--slices", type=int_at_least(1), default=2,
                        help="a step's duration is measured in this many slices per server, alternating between the servers")
    parser.add_argument("--warmup", type=float_arg(is_non_negative, NON_NEGATIVE_SECONDS), default=0.5, help="warm-up seconds before each slice")
    parser.add_argument("--concurrency", type=positive_ints, default="1,4,16,64", help="the load test's sweep")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--mobilenet-run", type=Path, default=TRAINED_MOBILENET, metavar="RUN_DIR",
                        help="the trained MobileNetV2 to serve (default: `make results`' runs/mobilenet-v2-fashion-mnist; "
                        "fixed-seed random weights when it holds no model.pt)")
    parser.add_argument("--devices", help="comma-separated: cpu, cuda (default: cpu, and cuda where a GPU is usable)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads for every server")
    parser.add_argument("--processes", type=int_at_least(1), default=2, help="load-test client processes")
    parser.add_argument("--batch-delay-us", type=int, default=500, help="edgecnn's max queue delay with batching on")
    parser.add_argument("--http-models", default="lenet5,mobilenet-v2",
                        help="models whose batching-off process is measured over HTTP/REST too, binary and JSON ('': none)")
    parser.add_argument("--http-concurrency", type=positive_ints, default="1,16,64",
                        help="the HTTP targets' steps (those of --concurrency)")
    parser.add_argument("--workers-models", default="lenet5",
                        help="models served by `edgecnn serve --workers 1` and `--workers N` (--workers-count) too, CPU only ('': none)")
    parser.add_argument("--workers-count", type=int_at_least(2), default=WORKERS_COUNT,
                        help=f"N of the --workers N server (default {WORKERS_COUNT}; the issue's 16-CPU goal is set for 8)")
    parser.add_argument("--workers-concurrency", type=positive_ints, default="1,64",
                        help="the workers servers' steps (those of --concurrency; at 1 perf_analyzer calls over one connection)")
    parser.add_argument("--workers-connections", type=int_at_least(1), default=4,
                        help="gRPC connections per client process to the workers servers (SO_REUSEPORT balances connections)")
    parser.add_argument("--pa-rounds", type=int_at_least(0), default=3, help="rounds in which perf_analyzer measures every server too "
                        "(the first ones; 0: no perf_analyzer)")
    parser.add_argument("--pa-modes", default="sync,async", help="perf_analyzer's modes: sync and/or async")
    parser.add_argument("--pa-interval-ms", type=int_at_least(50), default=500,
                        help="perf_analyzer's measurement window; a step takes about three of them")
    parser.add_argument("--pa-stability", type=float_arg(is_positive, "a positive percentage"), default=100.0,
                        help="perf_analyzer's --stability-percentage (100: any three windows; the servers alternate instead)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--out", type=Path, help="the report; its plot and results go beside it as .png and .json "
                        "(default docs/benchmarks.md; with --render, the results file's name with .md)")
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                        help="measure nothing: rewrite the report and its plot from an earlier run's results")
    parser.add_argument("--note", action="append", default=[], help="a line for the report's header (repeatable)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = args.render.with_suffix(".md") if args.render else ROOT / "docs" / "benchmarks.md"
    if args.quick:
        args.duration, args.warmup, args.rounds, args.slices = 1.0, 0.5, 1, 1
        args.pa_interval_ms = 250
    args.pa_modes = args.pa_modes.split(",")
    if set(args.pa_modes) - set(pa.MODES) or not args.pa_modes:
        parser.error(f"--pa-modes {','.join(args.pa_modes)}: expected sync and/or async")
    args.perf_analyzer = None  # main() locates it
    args.workers_missing = None  # main() says why when `edgecnn serve` has no --workers
    for flag in ("http_models", "workers_models"):
        names = [name for name in getattr(args, flag).split(",") if name]
        if set(names) - set(MODELS):
            parser.error(f"--{flag.replace('_', '-')}: unknown models {sorted(set(names) - set(MODELS))}")
        setattr(args, flag, names)
    # The extra targets' steps: those of the sweep (a sweep without them measures none).
    args.http_sweep = tuple(c for c in args.concurrency if c in args.http_concurrency)
    args.workers_sweep = tuple(c for c in args.concurrency if c in args.workers_concurrency)
    args.devices = args.devices.split(",") if args.devices else ["cpu", "cuda"] if cuda_usable() else ["cpu"]
    if set(args.devices) - {"cpu", "cuda"} or not args.devices:
        parser.error(f"--devices {','.join(args.devices)}: expected cpu and/or cuda")
    if "cuda" in args.devices and not cuda_usable():
        parser.error("--devices cuda: no usable CUDA GPU (nvidia-smi and ONNX Runtime's CUDAExecutionProvider)")
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; expected some of {', '.join(MODELS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[bench {time.monotonic() - started:6.1f}s] {message}", flush=True)

    if args.render:
        try:
            render(args.render, args.out, args.note, log)
        except ValueError as exc:  # not JSON, or not this version's results
            print(f"bench: --render {exc}", file=sys.stderr)
            return 2
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    callers = min(2, os.cpu_count() or 1)
    devices = args.devices
    if "cuda" not in devices and not cuda_usable():
        log("no usable CUDA GPU (nvidia-smi and CUDAExecutionProvider): CPU legs only")
    results: dict = {
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "settings": {
            "quick": args.quick, "duration": args.duration, "warmup": args.warmup, "concurrency": ",".join(map(str, args.concurrency)),
            "threads": args.threads, "processes": args.processes, "batch_delay_us": args.batch_delay_us, "callers": callers,
            "rounds": args.rounds, "slices": args.slices,
            "devices": devices, "event_loop": event_loop.resolve("auto"),
            "http": {"models": [m for m in args.http_models if m in args.models.split(",")] if args.http_sweep else [],
                     "concurrency": list(args.http_sweep)},
            "workers": {"models": [m for m in args.workers_models if m in args.models.split(",")] if args.workers_sweep and "cpu" in devices else [],
                        "count": args.workers_count, "concurrency": list(args.workers_sweep), "connections_per_process": args.workers_connections,
                        "connections": args.workers_connections * args.processes, "missing": None},
            "perf_analyzer": {"rounds": min(args.pa_rounds, args.rounds), "modes": args.pa_modes,
                              "interval_ms": args.pa_interval_ms, "stability_percent": args.pa_stability},
        },  # fmt: skip
        "notes": args.note,
        "models": [],
        "onnxruntime": {},
        "servers": {},
        "perf_analyzer": {},
        "perf_analyzer_missing": None,
    }
    if args.pa_rounds > 0:
        try:
            args.perf_analyzer = pa.locate()
            results["settings"]["perf_analyzer"]["version"] = args.perf_analyzer.version
            log(f"perf_analyzer: {args.perf_analyzer.binary} ({args.perf_analyzer.version})")
        except pa.PerfAnalyzerMissing as exc:
            results["perf_analyzer_missing"] = str(exc)
            log(f"no perf_analyzer figures: {exc}")
    else:
        results["perf_analyzer_missing"] = "not asked for (--pa-rounds 0)"
    if results["settings"]["workers"]["models"]:
        args.workers_missing = results["settings"]["workers"]["missing"] = serve_lacks_workers()
        if args.workers_missing:
            log(f"no --workers rows: {args.workers_missing}")
    saved = args.workdir / "results.json"
    models = prepare_models(args.workdir, args.models.split(","), log, mobilenet_run=args.mobilenet_run)
    for model in models:
        results["models"].append({"name": model.name, "params": model.params, "input_shape": list(model.input_shape),
                                  "onnx_bytes": model.onnx.stat().st_size, "weights": model.weights})  # fmt: skip
        results["servers"][model.name] = {}
        results["perf_analyzer"][model.name] = {}
        for device in devices:
            suffix = "" if device == "cpu" else CUDA_SUFFIX
            log(f"{model.name}: ONNX Runtime in-process ({device})")
            results["onnxruntime"][model.name + suffix] = bench_onnxruntime(model.onnx, model.input_shape, args.threads, args.duration, callers, device)
            by_perf_analyzer: dict[str, dict] = {}
            for kind, report in measure_servers(model, device, args, log, by_perf_analyzer).items():
                results["servers"][model.name][kind + suffix] = report
            for kind, by_mode in by_perf_analyzer.items():
                results["perf_analyzer"][model.name][kind + suffix] = by_mode
            results["wall_s"] = time.monotonic() - started
            write_results(results, saved)  # after every leg: a later leg's failure keeps what was measured
            log(f"{model.name} ({device}) saved in {saved}")
    write_report(results, args.out, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
