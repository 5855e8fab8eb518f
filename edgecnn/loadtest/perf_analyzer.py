"""Triton's perf_analyzer, the field's reference load tester (C++), run against any KServe V2 gRPC
server (or over HTTP/REST, `-i http`, binary or JSON tensors) and read into the rows of
`edgecnn loadtest`'s reports.

The `tritonclient` wheel installs `perf_analyzer` beside the interpreter (the venv's bin/). On
Debian it also needs `libb64.so.0d` (package `libb64-0d`) and `libcudart.so.12` (PyPI
`nvidia-cuda-runtime-cu12`, whose `nvidia/cuda_runtime/lib` goes on LD_LIBRARY_PATH); `make bench`
installs both. locate() finds the binary, builds that environment and checks that it starts,
else raises PerfAnalyzerMissing saying what is missing.

A run measures a closed loop at each concurrency of a range (sync calls, or `--async`), with
perf_analyzer's own data: random bytes by default, which hold NaN and infinite float32 bit
patterns (edgecnn accepts them as Triton does). Each concurrency is measured in windows of
`interval_ms` until three in a row agree within `stability_percent` (perf_analyzer's
stabilization; the figures are the last three windows'). perf_analyzer stops at a failed request:
such a run raises PerfAnalyzerError with its message, so a row it returns had no error.
Where the server answers ModelStatistics (Triton's statistics extension), a row also holds the
server's own breakdown of a request (`server_us`: overhead, queue, compute input/infer/output).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .process_cpu import cpu_use, pool_cpu
from .side_by_side import Measured, rotated
from .workload import Target

TOOL = "perf_analyzer"
MODES = ("sync", "async")
PROTOCOLS = ("grpc", "http")
TENSOR_FORMATS = ("binary", "json")  # over HTTP: as the load tester's --http-body
BINARY = "perf_analyzer"
CUDART_PACKAGE = "nvidia-cuda-runtime-cu12"
LIBB64_PACKAGE = "libb64-0d"
_CLIENT_COLUMNS = {"p50 latency": "p50", "p90 latency": "p90", "p95 latency": "p95", "p99 latency": "p99"}
# Server-side columns of its CSV (microseconds per request), with ModelStatistics only.
_SERVER_COLUMNS = {
    "Server Queue": "queue", "Server Compute Input": "compute_input", "Server Compute Infer": "compute_infer",
    "Server Compute Output": "compute_output",
}  # fmt: skip
_CONCURRENCY = re.compile(r"^Request concurrency: (\d+)", re.M)
_SERVER_LINE = re.compile(
    r"Avg request latency: (\d+) usec \(overhead (\d+) usec \+ queue (\d+) usec \+ compute input (\d+) usec "
    r"\+ compute infer (\d+) usec \+ compute output (\d+) usec\)"
)
_COUNTS = {
    "requests": re.compile(r"Client:\s*\n\s*Request count: (\d+)"),
    "mean_us": re.compile(r"Client:[\s\S]*?Avg latency: (\d+) usec"),
    "server_inference_count": re.compile(r"Server:\s*\n\s*Inference count: (\d+)"),
    "server_execution_count": re.compile(r"Server:[\s\S]*?Execution count: (\d+)"),
    "server_success_count": re.compile(r"Server:[\s\S]*?Successful request count: (\d+)"),
}
UNSTABLE = "Failed to obtain stable measurement"


class PerfAnalyzerMissing(RuntimeError):
    """perf_analyzer, or a library it needs, is not installed here (the message says which)."""


class PerfAnalyzerError(RuntimeError):
    """A run that did not finish: a failed request, a server it could not use, or no stable
    measurement (`unstable`)."""

    def __init__(self, message: str, unstable: bool = False) -> None:
        super().__init__(message)
        self.unstable = unstable


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    env: dict[str, str]  # the environment to run it in (LD_LIBRARY_PATH with libcudart's folder)
    version: str


def cuda_runtime_lib() -> Path | None:
    """nvidia-cuda-runtime-cu12's library folder, when that wheel is installed."""
    try:
        spec = importlib.util.find_spec("nvidia.cuda_runtime")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        lib = Path(location) / "lib"
        if (lib / "libcudart.so.12").exists():
            return lib
    return None


def locate(binary: Path | None = None) -> PerfAnalyzer:
    """The perf_analyzer beside this interpreter (or on PATH), in an environment where it starts;
    PerfAnalyzerMissing says what is missing."""
    if binary is None:
        beside = Path(sys.executable).parent / BINARY
        found = beside if beside.is_file() else shutil.which(BINARY)
        if not found:
            raise PerfAnalyzerMissing(f"no {BINARY} beside {sys.executable} or on PATH (pip install tritonclient)")
        binary = Path(found)
    env = dict(os.environ)
    lib = cuda_runtime_lib()
    if lib is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib), env.get("LD_LIBRARY_PATH", "")) if p)
    try:
        done = subprocess.run([str(binary), "--version"], env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise PerfAnalyzerMissing(f"{binary} does not start: {exc}") from None
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        hint = ""
        if "libb64" in output:
            hint = f" (Debian package {LIBB64_PACKAGE}; make bench installs it)"
        elif "libcudart" in output:
            hint = f" (pip install {CUDART_PACKAGE}; make bench installs it)"
        raise PerfAnalyzerMissing(f"{binary} does not start: {output.splitlines()[-1] if output else done.returncode}{hint}")
    return PerfAnalyzer(binary, env, output.splitlines()[-1] if output else "")


def command(
    pa: PerfAnalyzer,
    model: str,
    server: str,
    concurrency: tuple[int, int],
    interval_ms: int,
    csv_path: Path,
    mode: str = "sync",
    batch_size: int = 1,
    stability_percent: float | None = None,
    max_trials: int | None = None,
    extra: Sequence[str] = (),
    protocol: str = "grpc",
    tensor_format: str = "binary",
) -> list[str]:
    """The command line of one run. `server`: HOST:PORT, or over HTTP also an http:// URL;
    `tensor_format` (HTTP only): binary tensor data or JSON, for inputs and outputs alike."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    if tensor_format not in TENSOR_FORMATS:
        raise ValueError(f"tensor format {tensor_format!r}: expected one of {', '.join(TENSOR_FORMATS)}")
    low, high = concurrency
    if not 1 <= low <= high:
        raise ValueError(f"concurrency range {low}:{high}: expected 1 <= A <= B")
    if protocol == "http":
        if server.startswith("https://"):
            raise ValueError(f"server {server}: the bench's perf_analyzer runs speak plain HTTP only")
        server = server.removeprefix("http://")
    cmd = [str(pa.binary), "-m", model, "-i", protocol, "-u", server, "-b", str(batch_size),
           "--concurrency-range", f"{low}:{high}", "--measurement-interval", str(interval_ms), "-f", str(csv_path)]  # fmt: skip
    if protocol == "http":
        cmd += ["--input-tensor-format", tensor_format, "--output-tensor-format", tensor_format]
    if mode == "async":
        cmd.append("--async")
    else:
        cmd.append("--sync")
    if stability_percent is not None:
        cmd += ["--stability-percentage", f"{stability_percent:g}"]
    if max_trials is not None:
        cmd += ["--max-trials", str(max_trials)]
    return cmd + list(extra)


def run(
    pa: PerfAnalyzer,
    model: str,
    server: str,
    concurrency: tuple[int, int],
    interval_ms: int = 1000,
    mode: str = "sync",
    batch_size: int = 1,
    stability_percent: float | None = None,
    max_trials: int | None = None,
    timeout_s: float | None = None,
    extra: Sequence[str] = (),
    protocol: str = "grpc",
    tensor_format: str = "binary",
) -> list[dict]:
    """One perf_analyzer run over `concurrency` (A, B: every level from A to B); a row per level
    in `edgecnn loadtest`'s step format. PerfAnalyzerError when it did not finish."""
    with tempfile.TemporaryDirectory(prefix="perf_analyzer-") as tmp:
        csv_path = Path(tmp) / "results.csv"
        cmd = command(pa, model, server, concurrency, interval_ms, csv_path, mode, batch_size, stability_percent, max_trials, extra,
                      protocol, tensor_format)  # fmt: skip
        try:
            done = subprocess.run(cmd, env=pa.env, cwd=tmp, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise PerfAnalyzerError(f"perf_analyzer against {server} ran past {timeout_s:g} s") from None
        output = done.stdout + done.stderr
        if done.returncode != 0 or not csv_path.exists():
            raise PerfAnalyzerError(f"perf_analyzer against {server} ({mode}) failed (exit {done.returncode}): {_failure(output)}",
                                    unstable=UNSTABLE in output)  # fmt: skip
        return rows(csv_path.read_text(), done.stdout, mode, batch_size)


def _failure(output: str) -> str:
    """The lines of perf_analyzer's output that say why it stopped."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    # An abort prints "terminate called ... std::runtime_error" and then the reason after "what():".
    said = [line for line in lines if any(word in line.lower() for word in ("error", "failed", "what():"))]
    return " | ".join(said[-3:] or lines[-3:]) or "no output"


def client_name(mode: str) -> str:
    """How a report names the client of a perf_analyzer row."""
    return f"{TOOL} ({mode})"


def rows(csv_text: str, stdout: str, mode: str, batch_size: int = 1) -> list[dict]:
    """perf_analyzer's CSV (`-f`) and console output as rows like `edgecnn loadtest`'s steps: per
    concurrency req/s, latencies (client side, ms), no errors, and the server's breakdown (us per
    request) when the server reported ModelStatistics."""
    lines = [line for line in csv_text.splitlines() if line.strip()]
    if not lines:
        raise PerfAnalyzerError("perf_analyzer wrote an empty CSV")
    header = [h.strip() for h in lines[0].split(",")]
    sections = _sections(stdout)
    out = []
    for line in lines[1:]:
        cells = dict(zip(header, (c.strip() for c in line.split(","))))
        if not cells.get("Concurrency", "").isdigit():
            continue  # perf_analyzer adds other tables below the first with some flags
        concurrency = int(cells["Concurrency"])
        inferences = float(cells["Inferences/Second"])
        section = sections.get(concurrency, {})
        latency = {key: int(cells[col]) / 1000.0 for col, key in _CLIENT_COLUMNS.items() if col in cells}
        latency["mean"] = section["mean_us"] / 1000.0 if "mean_us" in section else None
        requests = section.get("requests")
        out.append({
            "tool": TOOL,
            "client": client_name(mode),
            "mode": "closed",
            "concurrency": concurrency,
            "rate": None,
            "batch_size": batch_size,
            "requests": requests,
            "ok": requests,
            "errors": {},
            "req_per_s": round(inferences / batch_size, 2),
            "images_per_s": round(inferences, 2),
            "latency_ms": latency,
            "server_us": _server_breakdown(cells, section),
            "server_counts": {k[len("server_"):]: v for k, v in section.items() if k.startswith("server_")} or None,
        })  # fmt: skip
    if not out:
        raise PerfAnalyzerError("perf_analyzer's CSV holds no measurement")
    return sorted(out, key=lambda row: row["concurrency"])  # its CSV is in order of throughput


def _server_breakdown(cells: dict[str, str], section: dict) -> dict[str, int] | None:
    if "server" in section:
        return section["server"]
    if all(col in cells for col in _SERVER_COLUMNS):  # no console line: the CSV's columns alone
        return {key: int(cells[col]) for col, key in _SERVER_COLUMNS.items()}
    return None


def _sections(stdout: str) -> dict[int, dict]:
    """Per concurrency, what its console section says: client request count and mean latency,
    and the server's breakdown and counts."""
    starts = [(m.start(), int(m.group(1))) for m in _CONCURRENCY.finditer(stdout)]
    found: dict[int, dict] = {}
    for i, (start, concurrency) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(stdout)
        text = stdout[start:end]
        section: dict = {key: int(m.group(1)) for key, pattern in _COUNTS.items() if (m := pattern.search(text))}
        if m := _SERVER_LINE.search(text):
            request, overhead, queue, compute_input, compute_infer, compute_output = map(int, m.groups())
            section["server"] = {"request": request, "overhead": overhead, "queue": queue, "compute_input": compute_input,
                                 "compute_infer": compute_infer, "compute_output": compute_output}  # fmt: skip
        found[concurrency] = section
    return found


# --- side by side (`make bench`) ----------------------------------------------------------------


def failed_row(concurrency: int, mode: str, message: str, batch_size: int = 1) -> dict:
    """The row of a step perf_analyzer could not measure: its message counted as one error."""
    return {
        "tool": TOOL, "client": client_name(mode), "mode": "closed", "concurrency": concurrency, "rate": None,
        "batch_size": batch_size, "requests": None, "ok": 0, "errors": {message: 1}, "req_per_s": 0.0, "images_per_s": 0.0,
        "latency_ms": dict.fromkeys(("p50", "p90", "p95", "p99", "mean")), "server_us": None, "server_counts": None,
    }  # fmt: skip


def _mean(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def pool_rows(rows: list[dict]) -> dict:
    """One step measured in several rounds (perf_analyzer runs of equal length) as one row: the
    rounds' mean req/s, latency percentiles and server breakdown over the rounds that measured
    (perf_analyzer keeps no histogram to merge), errors added up, and each round's req/s and p50
    under `runs`."""
    if not rows:
        raise ValueError("no rows to pool")
    first = rows[0]
    measured = [r for r in rows if not r["errors"]]
    errors: dict[str, int] = {}
    for r in rows:
        for message, n in r["errors"].items():
            errors[message] = errors.get(message, 0) + n
    pooled = dict(first)
    pooled.update(
        requests=sum(r["requests"] or 0 for r in rows),
        ok=sum(r["ok"] or 0 for r in rows),
        errors=errors,
        req_per_s=round(sum(r["req_per_s"] for r in rows) / len(rows), 2),
        images_per_s=round(sum(r["images_per_s"] for r in rows) / len(rows), 2),
        latency_ms={k: _mean([r["latency_ms"].get(k) for r in measured]) for k in first["latency_ms"]},
        server_us=None,
        runs=[{"req_per_s": r["req_per_s"], "p50_ms": r["latency_ms"].get("p50")} for r in rows],
    )
    breakdowns = [r["server_us"] for r in measured if r["server_us"]]
    if breakdowns:
        pooled["server_us"] = {k: round(_mean([b[k] for b in breakdowns]), 1) for k in breakdowns[0]}
    pooled.pop("server_counts", None)
    pooled["cpu"] = pool_cpu([r.get("cpu") for r in measured])
    return pooled


def measure_round(
    pa: PerfAnalyzer,
    targets: Mapping[str, Target | Measured],
    sweep: Sequence[int],
    round_index: int,
    modes: Sequence[str] = MODES,
    interval_ms: int = 500,
    stability_percent: float | None = 100.0,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, dict[int, dict]]]:
    """One round of perf_analyzer over servers that are up together: per concurrency and mode one
    run per target measured there (a Measured's own sweep; over its protocol: gRPC, or HTTP with
    its body's tensor format), the targets in an order that rotates each time (as the load
    tester's slices: side_by_side.py), so drift of the machine hits them alike.
    {target: {mode: {concurrency: row}}}; a run that fails is a row with its message as an error
    (failed_row). A row's "cpu" is the server's (a Measured's pid) and perf_analyzer's CPU over
    its whole run (process_cpu.cpu_use)."""
    measured_at = {name: t if isinstance(t, Measured) else Measured(t) for name, t in targets.items()}
    measured: dict[str, dict[str, dict[int, dict]]] = {name: {mode: {} for mode in modes} for name in targets}
    turn = round_index * len(sweep) * len(modes)
    # Per run: about 3 windows (perf_analyzer's stabilization with the default stability), and time to start.
    timeout_s = 60 + 20 * interval_ms / 1000
    for c in sweep:
        names = [name for name, m in measured_at.items() if m.at(c)]
        if not names:
            continue
        for mode in modes:
            for name in rotated(names, turn):
                target = measured_at[name].target
                try:
                    with cpu_use(measured_at[name].pid, client_children=True) as use:
                        (row,) = run(pa, target.model, target.server, (c, c), interval_ms, mode, stability_percent=stability_percent,
                                     timeout_s=timeout_s, protocol=target.protocol, tensor_format=target.http_body)  # fmt: skip
                    row["cpu"] = use
                except PerfAnalyzerError as exc:
                    row = failed_row(c, mode, str(exc))
                measured[name][mode][c] = row
            turn += 1
            if log:
                log(f"  perf_analyzer {mode} c={c}: " + ", ".join(f"{n} {measured[n][mode][c]['req_per_s']:.0f} req/s" for n in names))
    return measured
