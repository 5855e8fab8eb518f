"""Latency histograms (HDR, microseconds) and the per-step numbers merged across processes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 120_000_000  # two minutes: anything slower is clamped
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
# A client process above this share of one core may be measuring itself, not the server.
SATURATION_CPU = 0.9


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_seconds(histogram: HdrHistogram, seconds: float) -> None:
    histogram.record_value(min(max(int(seconds * 1e6), LOWEST_US), HIGHEST_US))


def step_label(concurrency: int | None, rate: float | None) -> str:
    return f"c={concurrency}" if rate is None else f"rate={rate:g}/s"


def percentile_key(p: float) -> str:
    return f"p{p:g}"


def latency_ms(h: HdrHistogram) -> dict[str, float | None]:
    keys = [percentile_key(p) for p in PERCENTILES] + ["max", "mean", "min"]
    if h.get_total_count() == 0:
        return dict.fromkeys(keys)
    values = {percentile_key(p): h.get_value_at_percentile(p) for p in PERCENTILES}
    values.update(max=h.get_max_value(), mean=h.get_mean_value(), min=h.get_min_value())
    return {k: round(v / 1000.0, 4) for k, v in values.items()}


def pool_steps(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """One closed-loop step measured several times (the `steps` entries of loadtest JSON
    reports) as one: counts and durations added, latencies from the merged histograms, the
    busiest client process per slot, and each run's req/s and p50 under `runs`."""
    if not steps:
        raise ValueError("no steps to pool")
    first = steps[0]
    if any(s["mode"] != "closed" or s["concurrency"] != first["concurrency"] for s in steps):
        raise ValueError("can pool only closed-loop steps of one concurrency")
    histogram = new_histogram()
    errors: Counter[str] = Counter()
    for step in steps:
        histogram.decode_and_add(step["histogram"].encode("ascii"))
        errors.update(step["errors"])
    window_ok = sum(s["window_ok"] for s in steps)
    duration = sum(s["duration_s"] for s in steps)
    req_per_s = window_ok / duration if duration > 0 else 0.0
    batch_size = first["batch_size"]
    client_cpu = [max(cpu) for cpu in zip(*(s["client_cpu"] for s in steps))]
    return {
        "mode": "closed",
        "concurrency": first["concurrency"],
        "rate": None,
        "batch_size": batch_size,
        "requests": sum(s["requests"] for s in steps),
        "ok": sum(s["ok"] for s in steps),
        "errors": dict(sorted(errors.items())),
        "window_ok": window_ok,
        "duration_s": round(duration, 4),
        "req_per_s": round(req_per_s, 2),
        "images_per_s": round(req_per_s * batch_size, 2),
        "latency_ms": latency_ms(histogram),
        "client_cpu": client_cpu,
        "client_saturated": any(s["client_saturated"] for s in steps),
        "histogram": histogram.encode().decode("ascii"),
        "runs": [{"req_per_s": s["req_per_s"], "p50_ms": s["latency_ms"]["p50"]} for s in steps],
    }


@dataclass
class WorkerResult:
    """What one client process measured in one step (picklable; the histogram travels encoded)."""

    histogram: bytes
    ok: int  # measured requests (by start or scheduled time) that succeeded
    errors: dict[str, int]
    # The measured window: from the start of measurement to its end (--duration) or to the
    # last measured completion (--requests), and the successes that completed inside it.
    window_s: float
    window_ok: int
    cpu_s: float
    wall_s: float
    # Open loop only: arrivals scheduled in the measured window and the window's length (up to
    # the last arrival with --requests); measured requests really sent in the send window and
    # its length; the worst lag of a real send behind its scheduled time.
    scheduled: int = 0
    arrival_window_s: float = 0.0
    sent: int = 0
    send_window_s: float = 0.0
    max_send_lag_s: float = 0.0

    @property
    def cpu_share(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class StepResult:
    mode: str  # "closed" or "open"
    concurrency: int | None
    rate: float | None
    batch_size: int
    workers: list[WorkerResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.histogram = new_histogram()
        for worker in self.workers:
            self.histogram.decode_and_add(worker.histogram)

    @property
    def label(self) -> str:
        return step_label(self.concurrency, self.rate)

    @property
    def ok(self) -> int:
        return sum(w.ok for w in self.workers)

    @property
    def errors(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for w in self.workers:
            total.update(w.errors)
        return dict(sorted(total.items()))

    @property
    def requests(self) -> int:
        return self.ok + sum(self.errors.values())

    @property
    def window_s(self) -> float:
        return max((w.window_s for w in self.workers), default=0.0)

    @property
    def window_ok(self) -> int:
        return sum(w.window_ok for w in self.workers)

    @property
    def req_per_s(self) -> float:
        return self.window_ok / self.window_s if self.window_s > 0 else 0.0

    @property
    def client_cpu(self) -> list[float]:
        return [round(w.cpu_share, 3) for w in self.workers]

    @property
    def client_saturated(self) -> bool:
        return any(share >= SATURATION_CPU for share in self.client_cpu)

    def latency_ms(self) -> dict[str, float | None]:
        return latency_ms(self.histogram)

    def to_dict(self) -> dict[str, Any]:
        """requests, ok, errors and the latencies count the requests started (or scheduled) in
        the measured window; req_per_s is window_ok / duration_s: the successes that completed
        in the window over its length."""
        result: dict[str, Any] = {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "batch_size": self.batch_size,
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "window_ok": self.window_ok,
            "duration_s": round(self.window_s, 4),
            "req_per_s": round(self.req_per_s, 2),
            "images_per_s": round(self.req_per_s * self.batch_size, 2),
            "latency_ms": self.latency_ms(),
            "client_cpu": self.client_cpu,
            "client_saturated": self.client_saturated,
            "histogram": self.histogram.encode().decode("ascii"),
        }
        if self.mode == "open":
            window = max((w.arrival_window_s for w in self.workers), default=0.0)
            send_window = max((w.send_window_s for w in self.workers), default=0.0)
            scheduled = sum(w.scheduled for w in self.workers)
            sent = sum(w.sent for w in self.workers)
            result["window_s"] = round(window, 4)
            result["scheduled"] = scheduled
            result["scheduled_per_s"] = round(scheduled / window, 2) if window > 0 else 0.0
            result["sent"] = sent
            result["sent_per_s"] = round(sent / send_window, 2) if send_window > 0 else 0.0
            result["max_send_lag_ms"] = round(1000 * max((w.max_send_lag_s for w in self.workers), default=0.0), 3)
        return result
