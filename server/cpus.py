"""How many CPUs this process may really use: its affinity mask, capped by a cgroup v2 CPU
quota (a container's CPU limit). os.cpu_count() reports the node's cores, so a pod limited to 2
CPUs on a 64-core node would start 64 worker threads and be throttled."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpu_limit(path: Path = CGROUP_CPU_MAX) -> float | None:
    """CPUs allowed by the cgroup's quota ("<quota> <period>" in microseconds; "max" is none)."""
    try:
        quota, period = path.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit(cpu_max)
    if limit is not None and limit > 0:
        available = min(available, math.ceil(limit))
    return max(1, available)
