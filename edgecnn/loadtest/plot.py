"""Latency percentiles against throughput, one point per step (needs matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOTTED = ("p50", "p90", "p99", "p99.9")


class PlotUnavailable(RuntimeError):
    pass


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("the plot needs matplotlib (pip install matplotlib)") from None
    return plt


def check_plot_path(path: Path) -> None:
    """ValueError unless matplotlib can write a file of this name's extension (PlotUnavailable
    without matplotlib); savefig would fail only after the whole load test."""
    _pyplot()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    formats = FigureCanvasAgg.get_supported_filetypes()
    extension = Path(path).suffix.lower().lstrip(".")
    if extension not in formats:
        raise ValueError(f"{path}: the plot's file name must end in one of {', '.join('.' + f for f in sorted(formats))}")


def plot_latency(report: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    steps = [s for s in report["steps"] if s["ok"] > 0]
    config = report["config"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [s["req_per_s"] for s in steps]
    for key in PLOTTED:
        ax.plot(x, [s["latency_ms"][key] for s in steps], marker="o", label=key)
    for s in steps:
        label = f"c={s['concurrency']}" if s["mode"] == "closed" else f"{s['rate']:g}/s"
        ax.annotate(label, (s["req_per_s"], s["latency_ms"]["p50"]), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{config['model']} via {config['api']} (batch {config['batch_size']}) at {config['server']}")
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
