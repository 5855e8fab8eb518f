"""`make bench`: where the time goes, side by side, on this machine.

For LeNet-5, the CIFAR CNN and MobileNetV2 it measures
  (a) ONNX Runtime in-process (the compute limit),
  (b) scripts/bench_floor_server.py, a bare grpc.aio Open Inference Protocol server (the floor
      of a Python gRPC service: decode, run, encode; nothing else),
  (c) `edgecnn serve` with dynamic batching off, and (d) on,
with the same client (the `edgecnn loadtest` library, KServe V2 ModelInfer, batch 1) over the
same concurrency sweep, and writes docs/benchmarks.md and docs/benchmarks.png. Every server
loads only the model under test (one repository per model). The three servers of a model run
side by side, fresh processes each round, and every step is measured in short slices that
alternate between them (measure_servers), so a neighbour's burst or a drift of the machine hits
all three alike; each step pools its slices and rounds.
Where a CUDA GPU is usable (nvidia-smi and ONNX Runtime's CUDAExecutionProvider), every leg runs
again with --device cuda. Timing goals are reported as met / not met, never asserted.

    python scripts/bench.py            # ~23 minutes on 2 cores
    python scripts/bench.py --quick    # ~2 minutes: one round of 1 s steps
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without an install too

from edgecnn.checks import is_non_negative, is_positive  # noqa: E402
from edgecnn.atomic_files import write_text_atomic  # noqa: E402
from edgecnn.loadtest.cmd_loadtest import positive_ints  # noqa: E402
from edgecnn.loadtest.runner import Plan, run_plan  # noqa: E402
from edgecnn.loadtest.stats import new_histogram, pool_steps, record_seconds  # noqa: E402
from edgecnn.loadtest.worker import WorkerPool  # noqa: E402
from edgecnn.loadtest.workload import Target, make_payloads  # noqa: E402
from edgecnn.repository import INPUT_NAME  # noqa: E402
from tests.child_process import ChildProcess  # noqa: E402
from edgecnn.server.cmd_serve import READY_LINE  # noqa: E402
from edgecnn.server.device import cuda_usable, providers_for  # noqa: E402
from edgecnn.server.sessions import open_session  # noqa: E402
from edgecnn.server.settings import DEFAULT_INLINE_MAX_US  # noqa: E402
from machine import cpu_model, memory_gib  # noqa: E402  (scripts/machine.py)

MODELS = ("lenet5", "cifar-cnn", "mobilenet-v2")
SERVERS = {
    "floor": "bare grpc.aio floor server",
    "batching-off": "edgecnn serve, batching off",
    "batching-on": "edgecnn serve, batching on",
}
CUDA_SUFFIX = "@cuda"  # result keys of the --device cuda legs: "floor@cuda", "lenet5@cuda", ...
TRAINED_LENET5 = ROOT / "runs" / "lenet5-fashion-mnist"
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


def prepare_models(workdir: Path, names: list[str], log) -> list[BenchModel]:
    """Export each model into its own fresh repository under workdir (torch is needed only here)."""
    from edgecnn.export.onnx_export import export_run
    from edgecnn.export.untrained import fixed_seed_run
    from edgecnn.training.checkpoint import load_checkpoint

    shutil.rmtree(workdir / "repos", ignore_errors=True)
    models = []
    for name in names:
        repository = workdir / "repos" / name
        if name == "lenet5":
            run_dir, weights = _lenet5_run(workdir, log)
        else:
            run_dir, weights = fixed_seed_run(workdir / "runs" / name, name, "cifar10"), "fixed-seed random weights (no CIFAR-10 data here)"
        log(f"exporting {name}")
        entry = export_run(run_dir, repository, name=name, version=1, verify=False)
        _, meta = load_checkpoint(run_dir)
        models.append(BenchModel(name, repository, entry.onnx_path, int(meta["params"]), tuple(meta["input_shape"]), weights))
    return models


# --- (a) in-process ONNX Runtime ---------------------------------------------------------------


def _ort_loop(session, x: np.ndarray, duration_s: float, callers: int) -> tuple[float, dict[str, float]]:
    """Runs per second and batch latency (ms) with `callers` threads calling back-to-back."""
    name = session.get_inputs()[0].name
    histogram = new_histogram()
    lock = threading.Lock()
    counts = []

    def caller() -> None:
        n = 0
        while (start := time.perf_counter()) < end:
            session.run(None, {name: x})
            with lock:
                record_seconds(histogram, time.perf_counter() - start)
            n += 1
        counts.append(n)

    session.run(None, {name: x})  # warm-up (on CUDA the first call of a shape can take seconds)
    t0 = time.perf_counter()
    end = t0 + duration_s
    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    latency = {"p50": histogram.get_value_at_percentile(50) / 1000, "p99": histogram.get_value_at_percentile(99) / 1000}
    return sum(counts) / elapsed, latency


def bench_onnxruntime(model: BenchModel, threads: int, duration_s: float, callers: int, device: str) -> dict:
    session = open_session(model.onnx, threads, providers_for(device))
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, *model.input_shape), dtype=np.float32)
    big = rng.standard_normal((64, *model.input_shape), dtype=np.float32)
    rps, latency = _ort_loop(session, one, duration_s, 1)
    parallel_rps, _ = _ort_loop(session, one, duration_s, callers)
    batches_per_s, _ = _ort_loop(session, big, duration_s, callers)
    return {
        "batch1_req_per_s": rps, "batch1_p50_ms": latency["p50"], "batch1_p99_ms": latency["p99"],
        "batch1_parallel_req_per_s": parallel_rps, "batch64_images_per_s": 64 * batches_per_s,
    }  # fmt: skip


# --- (b)-(d) servers under the load tester -----------------------------------------------------


def server_command(kind: str, model: BenchModel, threads: int, delay_us: int, device: str) -> tuple[list[str], str]:
    """The command line of one server kind, and the regex of its ready line (group 2: port)."""
    if kind == "floor":
        cmd = [sys.executable, str(ROOT / "scripts" / "bench_floor_server.py"), "--model", str(model.onnx),
               "--name", model.name, "--port", "0", "--threads", str(threads), "--device", device]  # fmt: skip
        return cmd, r"listening on (\S+):(\d+)"
    delay = 0 if kind == "batching-off" else delay_us
    cmd = [sys.executable, "-m", "edgecnn.cli", "serve", "--repository", str(model.repository), "--host", "127.0.0.1",
           "--port", "0", "--metrics-port", "-1", "--device", device, "--threads", str(threads),
           "--max-batch-size", "64", "--max-queue-delay-us", str(delay), "--log-level", "WARNING"]  # fmt: skip
    return cmd, READY_LINE.pattern


@contextmanager
def running(cmd: list[str], ready: str, log_path: Path) -> Iterator[str]:
    with open(log_path, "w") as stderr, ChildProcess(cmd, ready, READY_TIMEOUT_S, cwd=ROOT, stderr=stderr) as child:
        yield f"127.0.0.1:{child.match.group(2)}"


def rotated(kinds: list[str], turn: int) -> list[str]:
    return kinds[turn % len(kinds) :] + kinds[: turn % len(kinds)]


def measure_servers(model: BenchModel, device: str, args: argparse.Namespace, log) -> dict[str, dict]:
    """`args.rounds` rounds. Each starts a fresh process of every server kind, all up together
    (idle but for the one measured), and measures every step of the sweep in `args.slices`
    slices per server that alternate between the servers, the order rotating each slice: the
    machine's drift over a step hits the three alike. (Measured one after another, a whole sweep
    each, the servers of one round were compared a minute apart, and two identical
    configurations read 7% apart.) A step pools all its slices; its `runs` are the rounds."""
    kinds, sweep = list(SERVERS), positive_ints(args.concurrency)
    # Random float32 tensors of batch 1 (KServe V2 ModelInfer, raw_input_contents), for every server.
    payloads = make_payloads(Target("", model.name), INPUT_NAME, model.input_shape, batch_size=1)
    rounds: dict[str, dict[int, list[dict]]] = {kind: {c: [] for c in sweep} for kind in kinds}
    with WorkerPool(args.processes) as pool:
        for r in range(args.rounds):
            log(f"{model.name}: {', '.join(SERVERS[k] for k in kinds)} ({device}), round {r + 1}/{args.rounds}")
            with ExitStack() as stack:
                plans = {}
                for kind in kinds:
                    cmd, ready = server_command(kind, model, args.threads, args.batch_delay_us, device)
                    address = stack.enter_context(running(cmd, ready, args.workdir / f"{model.name}-{kind}-{device}-round{r + 1}.log"))
                    plans[kind] = Plan(Target(address, model.name), payloads, 1, duration_s=args.duration / args.slices,
                                       warmup_s=args.warmup, processes=args.processes)  # fmt: skip
                for c in sweep:
                    for kind, step in measure_step(plans, c, r, args.slices, pool).items():
                        rounds[kind][c].append(step)
                    log(f"  c={c}: " + ", ".join(f"{kind} {rounds[kind][c][-1]['req_per_s']:.0f} req/s" for kind in kinds))
    return {kind: {"tool": "edgecnn loadtest", "steps": [pool_steps(rounds[kind][c]) for c in sweep]} for kind in kinds}


def measure_step(plans: dict[str, Plan], concurrency: int, round_index: int, slices: int, pool: WorkerPool) -> dict[str, dict]:
    """One step of one round for every server: its slices, alternating, pooled per server."""
    kinds = list(plans)
    measured: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for s in range(slices):
        for kind in rotated(kinds, round_index * slices + s):
            measured[kind].append(run_slice(plans[kind], concurrency, pool))
    return {kind: pool_steps(steps) for kind, steps in measured.items()}


def run_slice(plan: Plan, concurrency: int, pool: WorkerPool) -> dict:
    run = run_plan(replace(plan, concurrency=(concurrency,)), progress=None, pool=pool)
    if run.stopped_by is not None:
        raise RuntimeError(f"load test against {plan.target.server} stopped: {run.stop_reason}")
    return run.steps[0].to_dict()


# --- the report ----------------------------------------------------------------------------------


def _first_line(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return ""


def machine() -> dict:
    import grpc
    import onnxruntime

    from edgecnn import __version__

    return {
        "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
        "ram_gib": round(memory_gib() or 0.0, 1), "os": platform.platform(), "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__, "grpcio": grpc.__version__, "numpy": np.__version__,
        "edgecnn": __version__, "gpu": _first_line(["nvidia-smi", "-L"]) or "none",
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }  # fmt: skip


def by_concurrency(report: dict) -> dict[int, dict]:
    return {step["concurrency"]: step for step in report["steps"]}


TOP_CONCURRENCY, BOTTOM_CONCURRENCY = 64, 1  # where the throughput and latency goals are set


def result_devices(results: dict) -> list[str]:
    """The devices a run measured (results from before --devices: read off the server keys)."""
    if "devices" in results["settings"]:
        return results["settings"]["devices"]
    keys = {key for servers in results["servers"].values() for key in servers}
    return ["cpu", *(["cuda"] if any(k.endswith(CUDA_SUFFIX) for k in keys) else [])]


def targets(results: dict) -> list[tuple[str, str, bool]]:
    """(goal, measured, met) rows."""
    rows = []
    for model, servers in results["servers"].items():
        for device in result_devices(results):
            rows += _server_targets(model, device, servers)
    errors = sum(sum(s["errors"].values()) for servers in results["servers"].values() for r in servers.values() for s in r["steps"])
    rows.append(("zero errors", f"{errors} failed requests", errors == 0))
    return rows


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None where a step had no successful request to measure."""
    return a / b if a and b else None


def _server_targets(model: str, device: str, servers: dict[str, dict]) -> list[tuple[str, str, bool]]:
    """One model's rows on one device; the GPU's are marked with the model's `@cuda` key. A goal
    set at a concurrency the sweep lacks, or a step with nothing measured, is not met."""
    suffix = "" if device == "cpu" else CUDA_SUFFIX
    name = model + suffix
    floor, off, on = (by_concurrency(servers[k + suffix]) for k in ("floor", "batching-off", "batching-on"))
    top, bottom = TOP_CONCURRENCY, BOTTOM_CONCURRENCY

    def row(goal: str, concurrency: int, measure) -> tuple[str, str, bool]:
        if concurrency not in floor:
            return goal, f"not measured (the sweep lacks c={concurrency})", False
        text, met = measure()
        return goal, text, met

    def throughput() -> tuple[str, bool]:
        ratio = _ratio(off[top]["req_per_s"], floor[top]["req_per_s"])
        return f"{off[top]['req_per_s']:.0f} vs {floor[top]['req_per_s']:.0f} req/s = {_pct(ratio)}", ratio is not None and ratio >= 0.9

    def latency() -> tuple[str, bool]:
        mine, base = off[bottom]["latency_ms"]["p50"], floor[bottom]["latency_ms"]["p50"]
        ratio = _ratio(mine, base)
        return f"{_ms(mine)} vs {_ms(base)} ms = {_times(ratio)}", ratio is not None and ratio <= 1.1

    ratios = {c: _ratio(on[c]["req_per_s"], off[c]["req_per_s"]) for c in sorted(off)}
    known = {c: r for c, r in ratios.items() if r is not None}
    worst = min(known, key=known.get) if known else None
    rows = [
        row(f"{name}: batching off reaches >= 90% of the floor's req/s at c={top}", top, throughput),
        row(f"{name}: batching off p50 at c={bottom} <= 1.1x the floor's", bottom, latency),
        (f"{name}: batching on never > 5% below batching off in req/s",
         "on/off " + ", ".join(f"c={c}: {_times(r, '')}" for c, r in ratios.items()) + f" (worst c={worst})",
         worst is not None and len(known) == len(ratios) and known[worst] >= 0.95),
    ]  # fmt: skip
    if model == "mobilenet-v2" or device == "cuda":
        rows.append(row(f"{name}: batching on is faster where compute dominates (c={top})", top,
                        lambda: (f"on/off = {_times(ratios[top])}", ratios[top] is not None and ratios[top] > 1.0)))  # fmt: skip
    return rows


def _pct(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.1%}"


def _times(ratio: float | None, unit: str = "x") -> str:
    return "n/a" if ratio is None else f"{ratio:.3f}{unit}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _client_method(s: dict) -> list[str]:
    """How the servers were loaded: alternating slices (`slices` in the settings), or, in
    results written before, one whole sweep per server and round."""
    if "slices" not in s:
        return [
            f"- Client: `edgecnn loadtest --api infer --batch-size 1 --concurrency {s['concurrency']} --duration "
            f"{s['duration']} --warmup {s['warmup']} --processes {s['processes']}` (closed loop, random float32 tensors, "
            "raw_input_contents). Latencies are end to end at the client, from HDR histograms.",
            f"- The three servers of a model are measured in {s['rounds']} interleaved round(s), the order rotating "
            "each round and each round starting a fresh server process; a table row pools its rounds (requests over "
            "total time, percentiles of the merged histograms) and lists each round's req/s, which shows the "
            "run-to-run noise.",
        ]
    return [
        f"- Client: the `edgecnn loadtest` library, {s['processes']} client processes, closed loop at concurrency "
        f"{s['concurrency']}, batch 1, random float32 tensors (KServe V2 ModelInfer, raw_input_contents). Latencies "
        "are end to end at the client, from HDR histograms.",
        f"- {s['rounds']} round(s). Each starts a fresh process of all three servers, up together (idle but for the "
        f"one measured), and measures every concurrency step for {s['duration']} s per server in {s['slices']} "
        f"slice(s) of {s['duration'] / s['slices']:g} s, each after a {s['warmup']} s warm-up, that alternate "
        "between the servers, the order rotating each slice: drift of the machine over a step hits the three "
        "alike. A table row pools every slice of every round (requests over total time, percentiles of the merged "
        "histograms) and lists each round's req/s, which shows the run-to-run noise.",
    ]


def write_markdown(results: dict, path: Path, plot_name: str | None) -> None:
    m, s = results["machine"], results["settings"]
    out = [
        "# Benchmarks",
        "",
        f"Written by `scripts/bench.py` (`make bench`) on {results['created']}; do not edit by hand, rerun it. "
        f"Run time {results['wall_s']:.0f} s{' (--quick)' if s['quick'] else ''}.",
        *(f"\n**Note:** {note}" for note in results.get("notes", [])),
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable by this process); GPU: {m['gpu']}",
        f"- RAM: {m['ram_gib']} GiB; OS: {m['os']}",
        f"- Python {m['python']}, ONNX Runtime {m['onnxruntime']}, grpcio {m['grpcio']}, numpy {m['numpy']}, edgecnn {m['edgecnn']}",
        f"- Load average when the run started: {', '.join(map(str, m['load_average_at_start']))}. Client and servers share "
        "these CPUs; on a busy machine the numbers say more about the neighbours than about the server.",
        "",
        "## Method",
        "",
        "- Every server runs as its own process on 127.0.0.1, loads only the model under test, and uses the same "
        f"ONNX Runtime settings: CPU provider, ORT_ENABLE_ALL, {s['threads']} intra-op thread(s), 1 inter-op thread; "
        "the floor server runs ONNX Runtime on an executor thread pool, as edgecnn does for batches over its "
        "inline budget. Legs marked "
        f"`{CUDA_SUFFIX}` use the CUDA provider instead (run only where a GPU is usable: devices here "
        f"{', '.join(result_devices(results))}).",
        "- (a) **onnxruntime**: the session called in-process, batch 1 back-to-back (one caller, then "
        f"{s['callers']} parallel callers), and batch 64: the compute limit, no gRPC.",
        "- (b) **floor**: `scripts/bench_floor_server.py`, a bare grpc.aio KServe V2 server that only decodes the "
        "tensor, runs ONNX Runtime and encodes the logits (no validation, metrics, auth or batching).",
        f"- (c) **batching-off** / (d) **batching-on**: `edgecnn serve` with `--max-queue-delay-us 0` (every "
        f"request its own ONNX Runtime call) / `--max-queue-delay-us {s['batch_delay_us']}` (max batch 64: a "
        "work-conserving batcher merges what is pending), otherwise its defaults: validation and metrics; on "
        f"the CPU provider calls estimated within {DEFAULT_INLINE_MAX_US} us run on the event loop thread instead "
        "of a worker thread (server/inline.py); on the CUDA provider every call runs on a worker thread, a "
        "batching model keeps at most two batches in flight, and batches are padded to a batch size bucket "
        "with a session of its own (server/shapes.py).",
        *_client_method(s),
        "",
        "## Models",
        "",
        _md_table(
            ["model", "parameters", "input", "ONNX bytes", "weights"],
            [[b["name"], f"{b['params']:,}", "x".join(map(str, b["input_shape"])), f"{b['onnx_bytes']:,}", b["weights"]]
             for b in results["models"]],
        ),  # fmt: skip
        "",
        "The CIFAR CNN and MobileNetV2 use fixed-seed untrained weights (there is no CIFAR-10 data on this "
        "machine); speed does not depend on the weights' values.",
        "",
        "## (a) ONNX Runtime in-process",
        "",
        _md_table(
            ["model", "batch 1 req/s", "batch 1 p50 ms", "batch 1 p99 ms", f"batch 1 req/s, {s['callers']} callers", "batch 64 images/s"],
            [[name, f"{o['batch1_req_per_s']:.0f}", f"{o['batch1_p50_ms']:.3f}", f"{o['batch1_p99_ms']:.3f}",
              f"{o['batch1_parallel_req_per_s']:.0f}", f"{o['batch64_images_per_s']:.0f}"]
             for name, o in results["onnxruntime"].items()],
        ),  # fmt: skip
        "",
        "## (b)-(d) Servers under `edgecnn loadtest`",
        "",
    ]
    for name, servers in results["servers"].items():
        rows = []
        for kind, report in servers.items():
            for step in report["steps"]:
                lat = step["latency_ms"]
                rounds = " / ".join(f"{run['req_per_s']:.0f}" for run in step.get("runs", []))
                rows.append([kind, str(step["concurrency"]), f"{step['req_per_s']:.0f}", rounds, _ms(lat["p50"]), _ms(lat["p90"]),
                             _ms(lat["p99"]), _ms(lat["max"]), str(sum(step["errors"].values())),
                             "/".join(f"{c:.0%}" for c in step["client_cpu"]) + (" saturated" if step["client_saturated"] else "")])  # fmt: skip
        out += [f"### {name}", "", _md_table(["server", "concurrency", "req/s", "req/s per round", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors", "client CPU per process"], rows), ""]
    out += ["## Targets", "", "Measured, not asserted.", ""]
    out.append(_md_table(["goal", "measured", "met"], [[g, v, "met" if ok else "**not met**"] for g, v, ok in results["targets"]]))
    saturated = [f"{name} {kind} c={s['concurrency']}" for name, servers in results["servers"].items()
                 for kind, r in servers.items() for s in r["steps"] if s["client_saturated"]]  # fmt: skip
    out += ["", "Client CPU saturation (a client process at >= 90% of a core): " + (", ".join(saturated) if saturated else "none") + "."]
    if plot_name:
        out += ["", f"![throughput and latency per server]({plot_name})"]
    path.write_text("\n".join(out) + "\n")


def write_plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: no plot written: needs matplotlib", file=sys.stderr)
        return False
    names = list(results["servers"])
    fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 8), squeeze=False)
    for col, name in enumerate(names):
        top, bottom = axes[0][col], axes[1][col]
        for color, (kind, report) in enumerate(results["servers"][name].items()):
            steps = report["steps"]
            conc = [st["concurrency"] for st in steps]
            top.plot(conc, [st["req_per_s"] for st in steps], marker="o", color=f"C{color}", label=kind)
            bottom.plot(conc, [st["latency_ms"]["p50"] for st in steps], marker="o", color=f"C{color}", label=f"{kind} p50")
            bottom.plot(conc, [st["latency_ms"]["p99"] for st in steps], marker="x", linestyle=":", color=f"C{color}", label=f"{kind} p99")
        for style, key in (("--", name), (":", name + CUDA_SUFFIX)):
            if key in results["onnxruntime"]:
                top.axhline(results["onnxruntime"][key]["batch1_parallel_req_per_s"], color="grey", linestyle=style,
                            label=f"onnxruntime in-process, batch 1{key[len(name):]}")  # fmt: skip
        top.set_title(f"{name}: throughput")
        bottom.set_title(f"{name}: latency")
        for ax, ylabel in ((top, "requests/s"), (bottom, "ms")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
        top.set_yscale("log")  # in-process ONNX Runtime can be 10x the servers
        bottom.set_yscale("log")
        top.legend(fontsize=7)
        bottom.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --- main ----------------------------------------------------------------------------------------


def _concurrency(text: str) -> str:
    """Checked by the load test's own parser, before anything runs; kept as text for its command line."""
    return ",".join(map(str, positive_ints(text)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of 1 s steps, 0.5 s warm-up")
    parser.add_argument("--rounds", type=int, default=6, help="rounds, each with fresh server processes; pooled")
    parser.add_argument("--duration", type=float, default=4.0,
                        help="measured seconds per step, server and round (at 2 s, rounds of one server varied by up to 20%%)")
    parser.add_argument("--slices", type=int, default=2,
                        help="a step's duration is measured in this many slices per server, alternating between the servers")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds before each slice")
    parser.add_argument("--concurrency", type=_concurrency, default="1,4,16,64", help="the load test's sweep")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--devices", help="comma-separated: cpu, cuda (default: cpu, and cuda where a GPU is usable)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads for every server")
    parser.add_argument("--processes", type=int, default=2, help="load-test client processes")
    parser.add_argument("--batch-delay-us", type=int, default=500, help="edgecnn's max queue delay with batching on")
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
    for option in ("rounds", "slices", "processes"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} {getattr(args, option)}: expected >= 1")
    if not (is_positive(args.duration) and is_non_negative(args.warmup)):
        parser.error(f"--duration {args.duration} / --warmup {args.warmup}: expected seconds > 0 / >= 0")
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
        results = json.loads(args.render.read_text())
        results["notes"] = results.get("notes", []) + args.note
        write_report(results, args.out, log)
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
            "quick": args.quick, "duration": args.duration, "warmup": args.warmup, "concurrency": args.concurrency,
            "threads": args.threads, "processes": args.processes, "batch_delay_us": args.batch_delay_us, "callers": callers,
            "rounds": args.rounds, "slices": args.slices,
            "devices": devices,
        },  # fmt: skip
        "notes": args.note,
        "models": [],
        "onnxruntime": {},
        "servers": {},
    }
    saved = args.workdir / "results.json"
    models = prepare_models(args.workdir, args.models.split(","), log)
    for model in models:
        results["models"].append({"name": model.name, "params": model.params, "input_shape": list(model.input_shape),
                                  "onnx_bytes": model.onnx.stat().st_size, "weights": model.weights})  # fmt: skip
        results["servers"][model.name] = {}
        for device in devices:
            suffix = "" if device == "cpu" else CUDA_SUFFIX
            log(f"{model.name}: ONNX Runtime in-process ({device})")
            results["onnxruntime"][model.name + suffix] = bench_onnxruntime(model, args.threads, args.duration, callers, device)
            for kind, report in measure_servers(model, device, args, log).items():
                results["servers"][model.name][kind + suffix] = report
            results["wall_s"] = time.monotonic() - started
            write_json(results, saved)  # after every leg: a later leg's failure keeps what was measured
            log(f"{model.name} ({device}) saved in {saved}")
    write_report(results, args.out, log)
    return 0


def write_json(results: dict, path: Path) -> None:
    """Whole or not at all: a crash while writing leaves the previous file."""
    write_text_atomic(path, json.dumps(results, indent=2) + "\n")


def write_report(results: dict, out: Path, log) -> None:
    """out (markdown), its plot (.png) and the results it was made from (.json, for --render)."""
    results["targets"] = targets(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = out.with_suffix(".json")
    write_json(results, data)
    plot = out.with_suffix(".png")
    write_markdown(results, out, plot.name if write_plot(results, plot) else None)
    for goal, measured, met in results["targets"]:
        log(f"{'met    ' if met else 'NOT MET'}  {goal}: {measured}")
    log(f"wrote {out}, {plot} and {data}")


if __name__ == "__main__":
    sys.exit(main())
