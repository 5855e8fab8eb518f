"""How many CPUs this process may really use: its affinity mask, capped by its cgroup's CPU
quota (a container's CPU limit). os.cpu_count() reports the node's cores, so a pod limited to 2
CPUs on a 64-core node would start 64 worker threads and be throttled."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _v2_limit(text: str | None) -> float | None:
    """cpu.max: "<quota> <period>" in microseconds, "max" for none."""
    try:
        quota, period = (text or "").split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except ValueError:
        return None


def _v1_limit(quota: str | None, period: str | None) -> float | None:
    """cpu.cfs_quota_us / cpu.cfs_period_us; a quota of -1 is none."""
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _own_cgroup_dirs(root: Path, proc_cgroup: str, v1: bool) -> list[Path]:
    """The process's cgroup folder and its parents up to the root (a limit may sit on any of
    them), from /proc/self/cgroup's "0::<path>" (v2) or "N:...cpu...:<path>" (v1) line."""
    for line in proc_cgroup.splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if (v1 and "cpu" in controllers.split(",")) or (not v1 and controllers == ""):
            base = root / "cpu" if v1 else root
            own = base / path.strip().lstrip("/")
            return [own, *[p for p in own.parents if p.is_relative_to(base)]]
    return [root / "cpu" if v1 else root]


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The smallest CPU quota on the process's cgroup path (v2 cpu.max, or v1 CFS quota), if any."""
    text = _read(proc_cgroup) or ""
    limits = [_v2_limit(_read(d / "cpu.max")) for d in _own_cgroup_dirs(root, text, v1=False)]
    limits += [
        _v1_limit(_read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")) for d in _own_cgroup_dirs(root, text, v1=True)
    ]
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def usable_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None and limit > 0:
        available = min(available, math.ceil(limit))
    return max(1, available)
