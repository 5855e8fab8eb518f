"""A load test's results as JSON, CSV and a printed table."""

from __future__ import annotations

import csv
import json
import platform
import time
from pathlib import Path
from typing import Any

import grpc

from edgecnn import __version__

from .stats import PERCENTILES, SATURATION_CPU, StepResult, percentile_key, step_label

LATENCY_KEYS = [percentile_key(p) for p in PERCENTILES] + ["max"]
CSV_FIELDS = [
    "mode", "concurrency", "rate", "requests", "ok", "errors", "window_ok", "duration_s", "req_per_s", "images_per_s",
    *(f"{k}_ms" for k in LATENCY_KEYS), "mean_ms", "client_cpu_max", "client_saturated",
]  # fmt: skip


def build_report(config: dict[str, Any], steps: list[StepResult], stop_reason: str | None = None) -> dict[str, Any]:
    """`stop_reason`: what ended the run before its last step (the steps are those it finished)."""
    report = {
        "tool": "edgecnn loadtest",
        "edgecnn_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "client": {"host": platform.node(), "python": platform.python_version(), "grpcio": grpc.__version__},
        "config": config,
        "interrupted": stop_reason is not None,
        "steps": [step.to_dict() for step in steps],
    }
    if stop_reason is not None:
        report["interrupted_reason"] = stop_reason
    return report


def write_json(report: dict[str, Any], path: Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def errors_text(errors: dict[str, int]) -> str:
    return " ".join(f"{code}:{n}" for code, n in errors.items()) or "0"


def csv_row(step: dict[str, Any]) -> dict[str, Any]:
    latency = step["latency_ms"]
    row = {k: step[k] for k in ("mode", "concurrency", "rate", "requests", "ok", "window_ok", "duration_s", "req_per_s", "images_per_s")}
    row["errors"] = errors_text(step["errors"])
    row.update({f"{k}_ms": latency[k] for k in LATENCY_KEYS})
    row["mean_ms"] = latency["mean"]
    row["client_cpu_max"] = max(step["client_cpu"], default=0.0)
    row["client_saturated"] = step["client_saturated"]
    return row


def write_csv(report: dict[str, Any], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for step in report["steps"]:
            writer.writerow(csv_row(step))


def ms_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(report: dict[str, Any]) -> str:
    header = ["step", "requests", "errors", "req/s", "img/s", *(f"{k} ms" for k in LATENCY_KEYS), "client cpu"]
    rows = [header]
    for step in report["steps"]:
        label = step_label(step["concurrency"], step["rate"])
        latency = step["latency_ms"]
        cpu = "/".join(f"{share:.0%}" for share in step["client_cpu"]) + (" SATURATED" if step["client_saturated"] else "")
        rows.append([
            label, str(step["requests"]), errors_text(step["errors"]), f"{step['req_per_s']:.1f}",
            f"{step['images_per_s']:.1f}", *(ms_text(latency[k]) for k in LATENCY_KEYS), cpu,
        ])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


def saturation_warnings(report: dict[str, Any]) -> list[str]:
    warnings = []
    for step in report["steps"]:
        if step["client_saturated"]:
            label = step_label(step["concurrency"], step["rate"])
            busiest = max(step["client_cpu"])
            warnings.append(
                f"warning: {label}: a client process used {busiest:.0%} of a CPU core (>= {SATURATION_CPU:.0%}); "
                "the client may be the bottleneck: add --processes or run the client on another machine"
            )
    return warnings
