"""`make bench`'s report (scripts/bench.py): the goals judged met or not met from the measured
numbers, and the markdown, plot and results file written from a run's results (--render rewrites
them from a saved results file). Timing goals are reported, never asserted."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from edgecnn.atomic_files import write_text_atomic
from edgecnn.server.settings import DEFAULT_INLINE_IDLE_MAX_US, DEFAULT_INLINE_MAX_US

from .process_cpu import cpu_text
from .report import ms_text

# floor-inline runs every batch-1 call of the three CPU models on the event loop (MobileNetV2's too,
# over edgecnn's first budget): the faster floor at concurrency 1 for each of them.
FLOOR_INLINE_MAX_US = 1000

SERVERS = {
    "floor": "bare grpc.aio floor server, ONNX Runtime on an executor thread",
    "floor-inline": "bare grpc.aio floor server, batch-1 calls of small models inline on the event loop",
    "batching-off": "edgecnn serve, batching off",
    "batching-on": "edgecnn serve, batching on",
}
FLOORS = ("floor", "floor-inline")  # edgecnn is judged against the faster (results before floor-inline: floor alone)
# Issue 14: the batching-off process over HTTP/REST too (its own HTTP port), measured beside its gRPC.
HTTP_TARGETS = {
    "http-binary": "edgecnn serve, batching off (the batching-off process) over HTTP/REST, binary tensor data",
    "http-json": "edgecnn serve, batching off (the batching-off process) over HTTP/REST, JSON tensors",
}
GRPC_OF_HTTP = "batching-off"  # the HTTP targets' process, over gRPC
HTTP_SHARE = 0.8  # HTTP binary's req/s at c=64 >= this share of gRPC's
# Issue 15: `edgecnn serve --workers 1` and `--workers N` (batching off), over several client connections.
WORKERS_PREFIX = "workers-"  # the kinds' names: workers-1, workers-N
WORKERS_COUNT = 2  # N where a results file does not say (those before --workers-count)
# Per N, --workers N's req/s at c=64 against --workers 1's and the faster floor's (None: no goal):
# the 2-core machine (client on the same cores) and 16-CPU machine.
WORKERS_GOALS: dict[int, tuple[float, float | None]] = {2: (1.3, 1.2), 8: (4.0, None)}
WORKERS_JUDGED_MODES = ("sync",)  # perf_analyzer's modes with >= 4 connections at c=64 (sync: 11; --async: 3)
# One client connection reaches one worker: at c=1 perf_analyzer calls over one connection, and
# --workers 2 should give it what --workers 1 does (within the noise of these runs).
WORKERS_ONE_CONNECTION, WORKERS_ONE_CONNECTION_SHARE = 1, 0.95
LOADTEST = "edgecnn loadtest"
# perf_analyzer's goals (issue 15): tighter than the load tester's, whose client costs more per request.
PA_SHARE, PA_LATENCY = 0.9, 1.05
SERVER_PARTS = ("request", "overhead", "queue", "compute_input", "compute_infer", "compute_output")  # perf_analyzer's breakdown
CUDA_SUFFIX = "@cuda"  # result keys of the --device cuda legs: "floor@cuda", "lenet5@cuda", ...
TOP_CONCURRENCY, BOTTOM_CONCURRENCY = 64, 1  # where the throughput and latency goals are set
# What a results file of this version holds; one without them was written by an older scripts/bench.py.
RESULTS_KEYS = ("created", "machine", "settings", "notes", "models", "onnxruntime", "servers", "wall_s")
SETTINGS_KEYS = ("quick", "duration", "warmup", "concurrency", "threads", "processes", "batch_delay_us", "callers", "rounds",
                 "slices", "devices")  # fmt: skip


def workers_kinds(count: int) -> dict[str, str]:
    """The workers servers of a run (`edgecnn serve --workers 1` and `--workers count`) and what each is."""
    return {
        f"{WORKERS_PREFIX}1": "edgecnn serve --workers 1, batching off",
        f"{WORKERS_PREFIX}{count}": f"edgecnn serve --workers {count} ({count} processes on one port, SO_REUSEPORT), batching off",
    }


def _workers_count(workers: dict) -> int:
    return int(workers.get("count", WORKERS_COUNT))


def by_concurrency(report: dict) -> dict[int, dict]:
    return {step["concurrency"]: step for step in report["steps"]}


def targets(results: dict) -> list[tuple[str, str, bool]]:
    """(goal, measured, met) rows."""
    rows = []
    for model, servers in results["servers"].items():
        for device in results["settings"]["devices"]:
            pa_servers = results.get("perf_analyzer", {}).get(model, {})
            rows += _server_targets(model, device, servers)
            rows += _perf_analyzer_targets(model, device, pa_servers)
            rows += _http_targets(model, device, servers, pa_servers, results["settings"].get("http"))
            rows += _workers_targets(model, device, servers, pa_servers, results["settings"].get("workers"))
    errors = sum(sum(s["errors"].values()) for servers in results["servers"].values() for r in servers.values() for s in r["steps"])
    pa_errors = sum(sum(s["errors"].values()) for s in _perf_analyzer_steps(results))
    pa_text = f" ({LOADTEST}), {pa_errors} failed perf_analyzer runs" if _perf_analyzer_steps(results) else ""
    rows.append(("zero errors", f"{errors} failed requests{pa_text}", errors + pa_errors == 0))
    return rows


def _perf_analyzer_steps(results: dict) -> list[dict]:
    return [s for servers in results.get("perf_analyzer", {}).values() for by_mode in servers.values()
            for report in by_mode.values() for s in report["steps"]]  # fmt: skip


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None where a step had no successful request to measure."""
    return a / b if a and b else None


def _server_targets(model: str, device: str, servers: dict[str, dict]) -> list[tuple[str, str, bool]]:
    """One model's rows on one device; the GPU's are marked with the model's `@cuda` key. A goal
    set at a concurrency the sweep lacks, or a step with nothing measured, is not met."""
    suffix = "" if device == "cpu" else CUDA_SUFFIX
    name = model + suffix
    floors = {k: by_concurrency(servers[k + suffix]) for k in FLOORS if k + suffix in servers}
    off, on = (by_concurrency(servers[k + suffix]) for k in ("batching-off", "batching-on"))
    top = TOP_CONCURRENCY
    ratios = {c: _ratio(on[c]["req_per_s"], off[c]["req_per_s"]) for c in sorted(off)}
    known = {c: r for c, r in ratios.items() if r is not None}
    worst = min(known, key=known.get) if known else None
    rows = [
        *_floor_goals(f"{name} [{LOADTEST}]", floors, off, 0.9, 1.1),
        (f"{name} [{LOADTEST}]: batching on never > 5% below batching off in req/s",
         "on/off " + ", ".join(f"c={c}: {_times(r, '')}" for c, r in ratios.items()) + f" (worst c={worst})",
         worst is not None and len(known) == len(ratios) and known[worst] >= 0.95),
    ]  # fmt: skip
    if model == "mobilenet-v2" or device == "cuda":
        goal = f"{name} [{LOADTEST}]: batching on is faster where compute dominates (c={top})"
        if top in off:
            rows.append((goal, f"on/off = {_times(ratios[top])}", ratios[top] is not None and ratios[top] > 1.0))
        else:
            rows.append((goal, f"not measured (the sweep lacks c={top})", False))
    return rows


def _perf_analyzer_targets(model: str, device: str, servers: dict[str, dict]) -> list[tuple[str, str, bool]]:
    """perf_analyzer's goals per mode it measured: batching off against the faster floor."""
    suffix = "" if device == "cpu" else CUDA_SUFFIX
    name = model + suffix
    if "batching-off" + suffix not in servers:
        return []
    rows = []
    for mode, report in servers["batching-off" + suffix].items():
        floors = {k: by_concurrency(servers[k + suffix][mode]) for k in FLOORS if mode in servers.get(k + suffix, {})}
        rows += _floor_goals(f"{name} [{report.get('client', mode)}]", floors, by_concurrency(report), PA_SHARE, PA_LATENCY)
    return rows


def _floor_goals(label: str, floors: dict[str, dict[int, dict]], off: dict[int, dict], share: float, latency_ratio: float) -> list[tuple[str, str, bool]]:
    """Batching off's req/s at TOP_CONCURRENCY >= share of the faster floor's (the one with more
    req/s there) and its p50 at BOTTOM_CONCURRENCY <= latency_ratio x the faster floor's (the one
    with the lower p50 there)."""
    top, bottom = TOP_CONCURRENCY, BOTTOM_CONCURRENCY
    rows = []
    goal = f"{label}: batching off reaches >= {share:.0%} of the faster floor's req/s at c={top}"
    measured = {k: steps[top] for k, steps in floors.items() if top in steps}
    if not measured or top not in off:
        rows.append((goal, f"not measured (the sweep lacks c={top})", False))
    else:
        fastest = max(measured, key=lambda k: measured[k]["req_per_s"] or 0.0)
        mine, base = off[top]["req_per_s"], measured[fastest]["req_per_s"]
        ratio = _ratio(mine, base)
        rows.append((goal, f"{mine:.0f} vs {base:.0f} req/s ({fastest}) = {_pct(ratio)}", ratio is not None and ratio >= share))
    goal = f"{label}: batching off p50 at c={bottom} <= {latency_ratio:g}x the faster floor's"
    measured = {k: steps[bottom] for k, steps in floors.items() if bottom in steps}
    if not measured or bottom not in off:
        rows.append((goal, f"not measured (the sweep lacks c={bottom})", False))
    else:
        known = {k: s["latency_ms"]["p50"] for k, s in measured.items() if s["latency_ms"]["p50"]}
        fastest = min(known, key=known.get) if known else next(iter(measured))
        mine, base = off[bottom]["latency_ms"]["p50"], measured[fastest]["latency_ms"]["p50"]
        ratio = _ratio(mine, base)
        rows.append((goal, f"{ms_text(mine)} vs {ms_text(base)} ms ({fastest}) = {_times(ratio)}",
                     ratio is not None and ratio <= latency_ratio))  # fmt: skip
    return rows


def _clients(servers: dict[str, dict], pa_servers: dict[str, dict], kind: str, modes: tuple[str, ...] | None = None) -> list[tuple[str, dict]]:
    """(client, {server kind: report}) for the load tester and each perf_analyzer mode that
    measured `kind` (of `modes`, None: all)."""
    out = [(LOADTEST, servers)]
    for mode, report in pa_servers.get(kind, {}).items():
        if modes is None or mode in modes:
            out.append((report.get("client", mode), {k: by_mode[mode] for k, by_mode in pa_servers.items() if mode in by_mode}))
    return out


def _req_per_s_at(report: dict | None, concurrency: int) -> float | None:
    step = by_concurrency(report).get(concurrency) if report else None
    return step["req_per_s"] if step else None


def _http_targets(model: str, device: str, servers: dict, pa_servers: dict, http: dict | None) -> list[tuple[str, str, bool]]:
    """Issue 14: HTTP binary's req/s at c=64 >= HTTP_SHARE of gRPC's (the same process), per client."""
    if not http or model not in http.get("models", []):
        return []
    suffix = "" if device == "cpu" else CUDA_SUFFIX
    name, top = model + suffix, TOP_CONCURRENCY
    rows = []
    for client, reports in _clients(servers, pa_servers, "http-binary" + suffix):
        goal = f"{name} [{client}]: HTTP binary reaches >= {HTTP_SHARE:.0%} of gRPC's req/s at c={top}"
        mine, base = (_req_per_s_at(reports.get(k + suffix), top) for k in ("http-binary", GRPC_OF_HTTP))
        if mine is None or base is None:
            rows.append((goal, f"not measured ({'no HTTP rows' if 'http-binary' + suffix not in reports else f'no c={top}'})", False))
            continue
        ratio = _ratio(mine, base)
        rows.append((goal, f"{mine:.0f} vs {base:.0f} req/s (gRPC, {GRPC_OF_HTTP}) = {_pct(ratio)}", ratio is not None and ratio >= HTTP_SHARE))
    return rows


def _workers_targets(model: str, device: str, servers: dict, pa_servers: dict, workers: dict | None) -> list[tuple[str, str, bool]]:
    """Issue 15: at c=64 over several connections, --workers N against --workers 1 and the faster
    floor (the one with more req/s there) as WORKERS_GOALS sets for N, per client with enough
    connections (the load tester; perf_analyzer sync); and perf_analyzer's one connection at c=1
    gets >= WORKERS_ONE_CONNECTION_SHARE of --workers 1's req/s."""
    if not workers or model not in workers.get("models", []) or device != "cpu":
        return []
    top, n = TOP_CONCURRENCY, _workers_count(workers)
    many = f"{WORKERS_PREFIX}{n}"
    over_one, over_floor = WORKERS_GOALS.get(n, (None, None))
    goals = [(f"{model} [{{client}}]: --workers {n} >= {share:g}x {label}'s req/s at c={top}{{over}}", base, share)
             for share, label, base in ((over_one, "--workers 1", "workers-1"), (over_floor, "the faster floor", None))
             if share is not None]  # fmt: skip
    if workers.get("missing"):
        return [(goal.format(client=LOADTEST, over=""), f"not measured ({workers['missing']})", False) for goal, _, _ in goals]
    rows = []
    for client, reports in _clients(servers, pa_servers, many, WORKERS_JUDGED_MODES):
        over = f" ({workers['connections']} client connections)" if client == LOADTEST else ""
        mine = _req_per_s_at(reports.get(many), top)
        floors = {k: v for k in FLOORS if (v := _req_per_s_at(reports.get(k), top))}
        fastest = max(floors, key=floors.get) if floors else None
        for goal, base_kind, share in goals:
            goal = goal.format(client=client, over=over)
            label = base_kind or fastest
            base = _req_per_s_at(reports.get(base_kind), top) if base_kind else floors.get(fastest)
            if mine is None or base is None:
                rows.append((goal, f"not measured (no c={top} figures)", False))
                continue
            ratio = _ratio(mine, base)
            rows.append((goal, f"{mine:.0f} vs {base:.0f} req/s ({label}) = {_times(ratio)}", ratio is not None and ratio >= share))
    c = WORKERS_ONE_CONNECTION
    if c not in workers.get("concurrency", []):
        return rows
    for client, reports in _clients(servers, pa_servers, many):
        if client == LOADTEST:  # it spreads even one caller's requests over its connections
            continue
        goal = f"{model} [{client}]: one client connection (c={c}) to --workers {n} gets >= {WORKERS_ONE_CONNECTION_SHARE:.0%} of --workers 1's req/s"
        mine, one = (_req_per_s_at(reports.get(k), c) for k in (many, "workers-1"))
        if mine is None or one is None:
            rows.append((goal, f"not measured (no c={c} figures)", False))
            continue
        ratio = _ratio(mine, one)
        rows.append((goal, f"{mine:.0f} vs {one:.0f} req/s (workers-1) = {_times(ratio)}", ratio is not None and ratio >= WORKERS_ONE_CONNECTION_SHARE))
    return rows


def _pct(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.1%}"


def _times(ratio: float | None, unit: str = "x") -> str:
    return "n/a" if ratio is None else f"{ratio:.3f}{unit}"


def _weights_note(models: list[dict]) -> str:
    """Which models serve untrained weights (scripts/bench.py says where each model's come from)."""
    untrained = [f"`{m['name']}`" for m in models if str(m.get("weights", "")).startswith("fixed-seed")]
    if not untrained:
        return "Every model serves trained weights."
    return (
        f"Fixed-seed untrained weights (no trained run here): {', '.join(untrained)}; "
        "speed does not depend on the weights' values."
    )


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _client_method(s: dict) -> list[str]:
    """How the servers were loaded: side by side, in alternating slices (edgecnn/loadtest/side_by_side.py)."""
    return [
        f"- Client: the `edgecnn loadtest` library, {s['processes']} client processes, closed loop at concurrency "
        f"{s['concurrency']}, batch 1, random float32 tensors (KServe V2 ModelInfer, raw_input_contents). Latencies "
        "are end to end at the client, from HDR histograms.",
        f"- {s['rounds']} round(s). Each starts a fresh process of every server, up together (idle but for the "
        f"one measured), and measures every concurrency step for {s['duration']} s per server in {s['slices']} "
        f"slice(s) of {s['duration'] / s['slices']:g} s, each after a {s['warmup']} s warm-up, that alternate "
        "between the servers (and targets) measured at that step, the order rotating each slice: drift of the "
        "machine over a step hits them all alike. A table row pools every slice of every round (requests over total "
        "time, percentiles of the merged histograms) and lists each round's req/s, which shows the run-to-run noise.",
        "- **server CPU**: user + system CPU of the server's process and its descendants (a supervisor's workers), "
        "read from /proc around each slice and each perf_analyzer run, as cores (CPU seconds per second of load: a "
        "slice's warm-up and window, a perf_analyzer run's whole time) and per request (cores over req/s); "
        "perf_analyzer's own CPU comes from its process's usage.",
    ]


def write_markdown(results: dict, path: Path, plot_name: str | None) -> None:
    m, s = results["machine"], results["settings"]
    out = [
        "# Benchmarks",
        "",
        f"Written by `scripts/bench.py` (`make bench`) on {results['created']}; do not edit by hand, rerun it. "
        f"Run time {results['wall_s']:.0f} s{' (--quick)' if s['quick'] else ''}.",
        *(f"\n**Note:** {note}" for note in results["notes"]),
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
        "- Every server runs as its own process on 127.0.0.1, loads only the model under test, runs on the same "
        f"event loop ({s.get('event_loop', 'asyncio')}: edgecnn serve's and the floor's `--event-loop auto`) and uses the same "
        f"ONNX Runtime settings: CPU provider, ORT_ENABLE_ALL, {s['threads']} intra-op thread(s), 1 inter-op thread; "
        "the floor server runs ONNX Runtime on an executor thread pool (loop.run_in_executor; edgecnn hands "
        "batches over its inline budget to as many worker threads of its own, server/compute_threads.py), "
        "or (floor-inline) batch-1 calls of small models on the event loop. Legs marked "
        f"`{CUDA_SUFFIX}` use the CUDA provider instead (run only where a GPU is usable: devices here "
        f"{', '.join(s['devices'])}).",
        "- (a) **onnxruntime**: the session called in-process, batch 1 back-to-back (one caller, then "
        f"{s['callers']} parallel callers), and batch 64: the compute limit, no gRPC.",
        "- (b) **floor**: `scripts/bench_floor_server.py`, a bare grpc.aio KServe V2 server that only decodes the "
        "tensor, runs ONNX Runtime and encodes the logits (no validation, metrics, auth or batching). Two "
        "variants: **floor** hands every call to an executor thread; **floor-inline** runs a batch-1 call on the "
        f"event loop itself when the model's warm batch-1 time is within {FLOOR_INLINE_MAX_US} us (all three models "
        "here; larger batches still go to the executor; on CUDA it is the executor variant). The goals judge edgecnn against the faster of the two at each goal's concurrency.",
        f"- (c) **batching-off** / (d) **batching-on**: `edgecnn serve` with `--max-queue-delay-us 0` (every "
        f"request its own ONNX Runtime call) / `--max-queue-delay-us {s['batch_delay_us']}` (max batch 64: a "
        "work-conserving batcher merges what is pending), otherwise its defaults: validation and metrics; on "
        f"the CPU provider calls estimated within {DEFAULT_INLINE_MAX_US} us (LeNet-5 and the CIFAR CNN) run on the "
        f"event loop thread instead of a worker thread, and a slower one within {DEFAULT_INLINE_IDLE_MAX_US} us "
        "(MobileNetV2) while it is the only call open (server/inline.py); on the CUDA provider every call runs on a worker thread, a "
        "batching model keeps at most two batches in flight, and batches are padded to a batch size bucket "
        "with a session of its own (server/shapes.py).",
        *_client_method(s),
        *_perf_analyzer_method(results),
        *_http_method(s),
        *_workers_method(s),
        "",
        "## Models",
        "",
        _md_table(
            ["model", "parameters", "input", "ONNX bytes", "weights"],
            [[b["name"], f"{b['params']:,}", "x".join(map(str, b["input_shape"])), f"{b['onnx_bytes']:,}", b["weights"]]
             for b in results["models"]],
        ),  # fmt: skip
        "",
        _weights_note(results["models"]),
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
        f"## (b)-(d) Servers under `{LOADTEST}`",
        "",
        f"Client: the `{LOADTEST}` library (Python, gRPC).",
        "",
    ]
    for name, servers in results["servers"].items():
        rows = []
        for kind, report in servers.items():
            for step in report["steps"]:
                lat = step["latency_ms"]
                rounds = " / ".join(f"{run['req_per_s']:.0f}" for run in step["runs"])
                rows.append([kind, str(step["concurrency"]), f"{step['req_per_s']:.0f}", rounds, ms_text(lat["p50"]), ms_text(lat["p90"]),
                             ms_text(lat["p99"]), ms_text(lat["max"]), str(sum(step["errors"].values())),
                             cpu_text(step.get("cpu"), "server_s", step["req_per_s"]),
                             "/".join(f"{c:.0%}" for c in step["client_cpu"]) + (" saturated" if step["client_saturated"] else "")])  # fmt: skip
        out += [f"### {name}", "", _md_table(["server", "concurrency", "req/s", "req/s per round", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors",
                                              "server CPU", "client CPU per process"], rows), ""]  # fmt: skip
    out += _perf_analyzer_sections(results)
    out += _http_section(results)
    out += _workers_section(results)
    out += ["## Targets", "", f"Measured, not asserted. The client of each goal is in brackets: [{LOADTEST}] or "
            "[perf_analyzer (sync|async)].", ""]
    out.append(_md_table(["goal", "measured", "met"], [[g, v, "met" if ok else "**not met**"] for g, v, ok in results["targets"]]))
    saturated = [f"{name} {kind} c={s['concurrency']}" for name, servers in results["servers"].items()
                 for kind, r in servers.items() for s in r["steps"] if s["client_saturated"]]  # fmt: skip
    out += ["", "Client CPU saturation (a client process at >= 90% of a core): " + (", ".join(saturated) if saturated else "none") + "."]
    if plot_name:
        out += ["", f"![throughput and latency per server]({plot_name})", "", f"The plot shows the `{LOADTEST}` figures."]
    path.write_text("\n".join(out) + "\n")


def _http_method(s: dict) -> list[str]:
    http = s.get("http")
    if not http or not http.get("models"):
        return []
    return [
        f"- **HTTP/REST** (issue 14; {', '.join(http['models'])}): the batching-off process is also measured through its "
        "HTTP port (`--http-port 0`), as **http-binary** (KServe V2 REST with the binary tensor data extension: "
        "`edgecnn loadtest --protocol http --http-body binary`; perf_analyzer `-i http --input-tensor-format binary "
        "--output-tensor-format binary`) and **http-json** (JSON tensors both ways: `--http-body json`; perf_analyzer's "
        f"`json` formats), at concurrency {', '.join(map(str, http['concurrency']))}, in the same alternating slices as "
        "the servers (an HTTP target's requests are its own REST bodies, made once). Its gRPC figures are batching-off's "
        "own rows: one process, one copy of the model, three ways in. aiohttp's client opens a keep-alive connection "
        "per request in flight.",
    ]


def _workers_method(s: dict) -> list[str]:
    workers = s.get("workers")
    if not workers or not workers.get("models"):
        return []
    if workers.get("missing"):
        return [f"- **--workers** (issue 15): not measured in this run ({workers['missing']})."]
    n = _workers_count(workers)
    return [
        f"- **workers-1** / **workers-{n}** (issue 15; {', '.join(workers['models'])}, CPU only): `edgecnn serve --workers 1` / "
        f"`--workers {n}` (batching off, otherwise as batching-off): worker processes sharing the port through "
        "SO_REUSEPORT, which balances connections, not requests. Measured at concurrency "
        f"{', '.join(map(str, workers['concurrency']))} only, each client process over "
        f"{workers['connections_per_process']} gRPC connections of its own ({workers['connections']} in all), its "
        "requests in turn over them; in the same alternating slices. perf_analyzer (sync) opens a gRPC connection per "
        "6 concurrent contexts (11 at c=64, counted with `ss` here), `--async` about 3 in all: the workers goals are "
        "judged with the load tester and perf_analyzer (sync).",
    ]


def _perf_analyzer_method(results: dict) -> list[str]:
    pa = results["settings"].get("perf_analyzer")
    missing = results.get("perf_analyzer_missing")
    if pa is None:  # results of a run before perf_analyzer was part of the bench
        return []
    if missing or not results.get("perf_analyzer"):
        return [f"- perf_analyzer: not measured in this run ({missing or 'no figures'})."]
    return [
        f"- Client 2: Triton's **perf_analyzer** ({pa.get('version', 'version unknown')}; C++, from the tritonclient "
        f"wheel), modes {', '.join(pa['modes'])}, its default random input data (raw bytes that hold NaN and "
        "infinite float32 patterns, which edgecnn accepts as Triton does), batch 1, over the same sweep. In the "
        f"first {pa['rounds']} round(s), after the load tester's sweep and against the same server processes, "
        f"one perf_analyzer run per server, concurrency and mode with {pa['interval_ms']} ms measurement windows "
        f"(--stability-percentage {pa['stability_percent']:g}: its figures are the mean of its last three "
        "windows), the servers in an order that rotates each run. A row is the mean of its rounds (perf_analyzer "
        "keeps no histogram to merge). perf_analyzer stops at a failed request: such a run counts as one error. "
        "Its server-side breakdown comes from the server's ModelStatistics (Triton's statistics extension), which "
        "edgecnn answers and the floor servers do not.",
    ]


def _perf_analyzer_sections(results: dict) -> list[str]:
    by_model = results.get("perf_analyzer") or {}
    if not any(by_model.values()):
        return []
    out = ["## (b)-(d) Servers under perf_analyzer", "", "Client: Triton's perf_analyzer (C++), sync and `--async` modes.", ""]
    breakdown = []
    for name, servers in by_model.items():
        rows = []
        for kind, by_mode in servers.items():
            for mode, report in by_mode.items():
                for step in report["steps"]:
                    lat = step["latency_ms"]
                    rounds = " / ".join(f"{run['req_per_s']:.0f}" for run in step.get("runs", []))
                    rows.append([kind, report.get("client", mode), str(step["concurrency"]), f"{step['req_per_s']:.0f}", rounds,
                                 ms_text(lat.get("p50")), ms_text(lat.get("p90")), ms_text(lat.get("p95")), ms_text(lat.get("p99")),
                                 str(sum(step["errors"].values())), cpu_text(step.get("cpu"), "server_s", step["req_per_s"]),
                                 cpu_text(step.get("cpu"), "client_s", step["req_per_s"])])  # fmt: skip
                    server = step.get("server_us")
                    if server:
                        breakdown.append([name, kind, report.get("client", mode), str(step["concurrency"]), f"{step['req_per_s']:.0f}",
                                          ms_text(lat.get("p50")), *(f"{server[k]:.0f}" for k in SERVER_PARTS)])  # fmt: skip
        out += [f"### {name}", "", _md_table(["server", "client", "concurrency", "req/s", "req/s per round", "p50 ms", "p90 ms",
                                              "p95 ms", "p99 ms", "errors", "server CPU", "perf_analyzer CPU"], rows), ""]  # fmt: skip
        errors = sorted({message for kind, by_mode in servers.items() for report in by_mode.values()
                         for step in report["steps"] for message in step["errors"]})  # fmt: skip
        if errors:
            out += ["Errors: " + "; ".join(errors), ""]
    if breakdown:
        out += [
            "## edgecnn's server-side breakdown (perf_analyzer, from ModelStatistics)",
            "",
            "Per request, in microseconds, as perf_analyzer prints it from edgecnn's ModelStatistics "
            "(server/statistics.py): the whole request in the server = overhead + queue + compute input (decode "
            "and validate) + compute infer (the ONNX Runtime call of its batch) + compute output (encode); overhead "
            "is the event loop's time between those steps. The client's p50 beside it shows how much of a request "
            "is outside the server's own work (gRPC, the network stack, the client).",
            "",
            _md_table(["model", "server", "client", "concurrency", "req/s", "client p50 ms", "server request us", "overhead us",
                       "queue us", "compute input us", "compute infer us", "compute output us"], breakdown),  # fmt: skip
            "",
        ]
    return out


def _http_section(results: dict) -> list[str]:
    """gRPC vs HTTP binary vs HTTP JSON per model, device and client: req/s (and its share of gRPC's), p50, p99."""
    http = results["settings"].get("http")
    if not http or not http.get("models"):
        return []
    rows = []
    for model in http["models"]:
        servers = results["servers"].get(model, {})
        pa_servers = results.get("perf_analyzer", {}).get(model, {})
        for device in results["settings"]["devices"]:
            suffix = "" if device == "cpu" else CUDA_SUFFIX
            for client, reports in _clients(servers, pa_servers, "http-binary" + suffix):
                if not any(kind + suffix in reports for kind in HTTP_TARGETS):
                    continue
                grpc = by_concurrency(reports[GRPC_OF_HTTP + suffix]) if GRPC_OF_HTTP + suffix in reports else {}
                for c in http["concurrency"]:
                    for kind, label in ((GRPC_OF_HTTP, "gRPC"), ("http-binary", "HTTP binary"), ("http-json", "HTTP JSON")):
                        step = by_concurrency(reports[kind + suffix]).get(c) if kind + suffix in reports else None
                        if step is None:
                            continue
                        share = _pct(_ratio(step["req_per_s"], grpc[c]["req_per_s"])) if c in grpc else "n/a"
                        lat = step["latency_ms"]
                        rows.append([model + suffix, client, str(c), label, f"{step['req_per_s']:.0f}", share, ms_text(lat.get("p50")),
                                     ms_text(lat.get("p99")), str(sum(step["errors"].values()))])  # fmt: skip
    if not rows:
        return []
    return [
        "## edgecnn over gRPC and HTTP/REST (issue 14)",
        "",
        f"The batching-off process over gRPC (its own rows above) and over HTTP: binary tensor data and JSON tensors. "
        f"Target: HTTP binary at c={TOP_CONCURRENCY} >= {HTTP_SHARE:.0%} of gRPC's req/s.",
        "",
        _md_table(["model", "client", "concurrency", "protocol", "req/s", "of gRPC's req/s", "p50 ms", "p99 ms", "errors"], rows),
        "",
    ]


def _workers_section(results: dict) -> list[str]:
    """--workers N vs --workers 1 vs the floors at the workers' concurrency, per client."""
    workers = results["settings"].get("workers")
    if not workers or not workers.get("models") or workers.get("missing"):
        return []
    n = _workers_count(workers)
    kinds = workers_kinds(n)
    rows = []
    for model in workers["models"]:
        servers = results["servers"].get(model, {})
        pa_servers = results.get("perf_analyzer", {}).get(model, {})
        for client, reports in _clients(servers, pa_servers, f"{WORKERS_PREFIX}{n}"):
            one = by_concurrency(reports["workers-1"]) if "workers-1" in reports else {}
            for c in workers["concurrency"]:
                floors = {k: by_concurrency(reports[k])[c]["req_per_s"] for k in FLOORS if k in reports and c in by_concurrency(reports[k])}
                fastest = max(floors, key=floors.get) if floors else None
                for kind in (*FLOORS, "batching-off", *kinds):
                    step = by_concurrency(reports[kind]).get(c) if kind in reports else None
                    if step is None:
                        continue
                    over_one = _times(_ratio(step["req_per_s"], one[c]["req_per_s"])) if c in one else "n/a"
                    over_floor = _times(_ratio(step["req_per_s"], floors[fastest])) if fastest else "n/a"
                    lat = step["latency_ms"]
                    rows.append([model, client, kind, str(c), f"{step['req_per_s']:.0f}", over_one, over_floor, ms_text(lat.get("p50")),
                                 ms_text(lat.get("p99")), str(sum(step["errors"].values())),
                                 cpu_text(step.get("cpu"), "server_s", step["req_per_s"]), _client_cores(step)])  # fmt: skip
    if not rows:
        return []
    return [
        "## edgecnn serve --workers (issue 15)",
        "",
        f"At c={', '.join(map(str, workers['concurrency']))}: the load tester over {workers['connections']} client "
        f"connections ({workers['connections_per_process']} per client process), perf_analyzer over its own (sync: 11, "
        f"--async: about 3; at c=1 one). Targets: {_workers_goals_text(n)}, and one connection (perf_analyzer at "
        f"c={WORKERS_ONE_CONNECTION}) no worse than --workers 1, client and servers on the same CPUs.",
        "",
        _md_table(["model", "client", "server", "concurrency", "req/s", "x workers-1", "x faster floor", "p50 ms", "p99 ms", "errors",
                   "server CPU", "client CPU"], rows),  # fmt: skip
        "",
        f"Server and client CPU show where the machine's cores went: a row whose two add up to about "
        f"{results['machine'].get('usable_cpus', 'all')} cores was bound by the machine, not by the server's processes.",
        "",
    ]


def _workers_goals_text(n: int) -> str:
    over_one, over_floor = WORKERS_GOALS.get(n, (None, None))
    goals = [f">= {over_one:g}x --workers 1"] if over_one is not None else []
    goals += [f">= {over_floor:g}x the faster floor"] if over_floor is not None else []
    return f"--workers {n} {' and '.join(goals)} at c={TOP_CONCURRENCY}" if goals else f"none for --workers {n} at c={TOP_CONCURRENCY}"


def _client_cores(step: dict) -> str:
    """The client's CPU of a step: perf_analyzer's over its run, or the load tester's processes' shares added up."""
    use = step.get("cpu")
    if use and use.get("client_s") is not None:
        return cpu_text(use, "client_s", step["req_per_s"])
    shares = step.get("client_cpu")
    return f"{sum(shares):.2f} cores" if shares else "n/a"


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


def read_results(path: Path) -> dict:
    """A results file of this version; ValueError for anything else (an older version's, say)."""
    results = json.loads(path.read_text())
    missing = [k for k in RESULTS_KEYS if k not in results]
    missing += [f"settings.{k}" for k in SETTINGS_KEYS if k not in results.get("settings", {})]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)}: not the results of this version of scripts/bench.py; rerun it")
    return results


def render(results_path: Path, out: Path, notes: list[str], log: Callable[[str], None]) -> None:
    """--render: the report, plot and results rewritten from a saved results file, `notes` added
    to its notes (kept in the results beside the report, for the next render)."""
    results = read_results(results_path)
    results["notes"] = [*results["notes"], *notes]
    write_report(results, out, log)


def write_results(results: dict, path: Path) -> None:
    """Whole or not at all: a crash while writing leaves the previous file."""
    write_text_atomic(path, json.dumps(results, indent=2) + "\n")


def write_report(results: dict, out: Path, log: Callable[[str], None]) -> None:
    """out (markdown), its plot (.png) and the results it was made from (.json, for --render)."""
    results["targets"] = targets(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = out.with_suffix(".json")
    write_results(results, data)
    plot = out.with_suffix(".png")
    write_markdown(results, out, plot.name if write_plot(results, plot) else None)
    for goal, measured, met in results["targets"]:
        log(f"{'met    ' if met else 'NOT MET'}  {goal}: {measured}")
    log(f"wrote {out}, {plot} and {data}")

