"""Histogram observations taken on the request path as one list append each, and added to their
prometheus_client histogram in bulk when the metrics are read (metrics.py says when).

prometheus_client's Histogram.observe takes a lock per value and walks the bucket bounds in
Python; several of them per request were a measurable share of a small model's request cost.
A bulk add places a whole list with one numpy search and increments each bucket once, with the
same result as observing the values one by one (tests/server/test_metric_buffers.py checks
that against prometheus_client itself, since this reads its histogram child's bucket values).

Thread safety: `observe` is list.append, which any thread may call (the worker threads observe
their ONNX Runtime calls); `flush` takes the first n values and deletes exactly those, so a
value appended meanwhile waits for the next flush instead of being lost (taken()). One flusher at a time
(the caller holds a lock).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from prometheus_client import Counter, Histogram


def add_observations(child: Histogram, values: Sequence[float]) -> None:
    """child.observe(v) for every v, in bulk (child: a labelled histogram's child)."""
    if not values:
        return
    bounds = child._upper_bounds  # the last one is +Inf
    array = np.asarray(values, dtype=np.float64)
    # A value v counts in the first bucket whose bound is >= v, as in Histogram.observe; NaN in none.
    counts = np.bincount(np.searchsorted(bounds, array, side="left"), minlength=len(bounds))[: len(bounds)]
    for i in np.flatnonzero(counts):
        child._buckets[i].inc(int(counts[i]))
    child._sum.inc(float(array.sum()))


def taken(pending: list) -> list:
    """The values appended to pending so far, removed from it (values appended meanwhile stay)."""
    n = len(pending)
    values = pending[:n]
    del pending[:n]
    return values


class HistogramBuffer:
    """A histogram child's observations, held until flush()."""

    __slots__ = ("_child", "_values", "observe")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._values: list[float] = []
        self.observe = self._values.append

    def flush(self) -> None:
        add_observations(self._child, taken(self._values))


class CounterBuffer:
    """A counter child's increments by one, held until flush()."""

    __slots__ = ("_child", "_ones")

    def __init__(self, child: Counter) -> None:
        self._child = child
        self._ones: list[int] = []

    def inc(self) -> None:
        self._ones.append(1)

    def flush(self) -> None:
        if n := len(taken(self._ones)):
            self._child.inc(n)
