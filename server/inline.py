"""When a batch runs on the event loop thread instead of a worker thread (compute_threads.py).

Handing an ONNX Runtime call to a worker thread costs a round trip between the threads (100-200
us on a small VM through the executor that compute_threads.py replaced; less now) and, worse,
makes the worker and the event loop take turns at the GIL: on the 2-core machine of
docs/benchmarks.md the CIFAR CNN (about 0.3 ms a call) served about 12% more requests per second
inline than on workers (at concurrency 16). A batch runs inline when its
estimated time (rows x the model's warm batch-1 time, measured at load) is within the budget
(`--inline-max-us`) and no batch of the model is on a worker thread (so results stay in order of
arrival and a slow batch is never overtaken by the loop). Inline calls block the loop, which
then serves one batch after another on one core while gRPC queues the requests that arrive;
models slower than the budget (MobileNetV2) keep the worker threads and the batcher. On a
many-core host with remote clients, a lower budget spreads small models over the cores.

A second budget (`--inline-idle-max-us`) covers those slower models while the server is idle: a
request that is the only call open runs inline when its estimate is within it. With nothing else
to do, the loop would only wait for the worker thread, and the hop costs the request its latency
(MobileNetV2 at 0.6 ms a call: 1.68 against 1.96 ms p50 at concurrency 1 in docs/benchmarks.md);
under load the worker threads win, since ONNX Runtime then computes on one core while the loop
serves gRPC on the other (1031 against 791 req/s at concurrency 64). A request arriving during
such a call waits at most its estimate.

"Alone" has to be seen before it is believed: while an inline call blocks the loop, requests
that have arrived on other connections are not yet counted open. gRPC's core takes them in on
threads of its own, but the HTTP front end reads them on the loop, so under load each HTTP
request would find itself alone and run inline, one after another on one core. A call that fits
only the idle budget therefore gives the loop one turn first (Batcher._still_alone), in which
what has arrived is taken (MobileNetV2 over HTTP at concurrency 64 ran in that serial mode
before: docs/benchmarks.md since b05247e).
"""

from __future__ import annotations

from collections.abc import Callable


def runs_inline(
    estimate_s: float,
    max_s: float,
    running: int,
    idle_max_s: float = 0.0,
    calls_open: Callable[[], int] | None = None,
    alone_at: int = 1,
) -> bool:
    """estimate_s: the batch's expected compute time (NaN: unknown); max_s: the budget (0:
    never); running: the model's batches now on (or queued for) worker threads; idle_max_s: the
    budget while calls_open() (the calls the server has open) is at most alone_at (1 when the
    request's own call is counted in it, 0 before it is)."""
    if running:
        return False
    return within_budget(estimate_s, max_s) or (estimate_s <= idle_max_s and calls_open is not None and calls_open() <= alone_at)


def within_budget(estimate_s: float, max_s: float) -> bool:
    """The batch fits the inline budget itself, whatever the server is doing (NaN: unknown, no)."""
    return estimate_s <= max_s


def inline_rows(batch1_s: float, max_s: float) -> int:
    """The most rows a batch may have and still fit the budget (0 when no row does or the
    batch-1 time is unknown)."""
    return int(max_s / batch1_s) if batch1_s > 0 else 0
