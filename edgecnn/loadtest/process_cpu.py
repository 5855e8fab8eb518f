"""CPU time a measured server and its client spend, for the bench's CPU columns: on a machine
whose CPUs the client shares, they tell whether a server is bound by its own process or by the
machine (`edgecnn serve --workers 2` against one process, say). Read from /proc (Linux)."""

from __future__ import annotations

import os
import resource
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PROC = Path("/proc")


def tree_cpu_seconds(pid: int, proc: Path = PROC) -> float | None:
    """User + system CPU seconds so far of pid and its living descendants (a supervisor's
    workers); None where /proc has no such process."""
    ticks: dict[int, int] = {}
    children: dict[int, list[int]] = defaultdict(list)
    try:
        entries = list(proc.iterdir())
    except OSError:
        return None
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone since the listing
        # After "pid (comm)": state, ppid, ... utime and stime are the 14th and 15th fields of the line.
        ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
        children[int(fields[1])].append(int(entry.name))
    if pid not in ticks:
        return None
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += ticks[p]
        todo += children.get(p, [])
    return total / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def cpu_use(server_pid: int | None, client_children: bool = False) -> Iterator[dict[str, Any]]:
    """A dict that, after the with-block, holds its wall_s, the server_s of server_pid's process
    tree (None: no pid, or a process of it ended meanwhile, a restarted worker say) and, with
    client_children, client_s: the CPU of this process's children that ended and were waited
    for inside the block (a perf_analyzer run)."""
    use: dict[str, Any] = {}
    server0 = tree_cpu_seconds(server_pid) if server_pid is not None else None
    client0 = _children_cpu_seconds()
    start = time.perf_counter()
    yield use
    use["wall_s"] = time.perf_counter() - start
    server1 = tree_cpu_seconds(server_pid) if server0 is not None else None  # type: ignore[arg-type]
    use["server_s"] = server1 - server0 if server0 is not None and server1 is not None and server1 >= server0 else None
    use["client_s"] = _children_cpu_seconds() - client0 if client_children else None


def pool_cpu(uses: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Several measurements of one step as one: wall and CPU seconds added (a part is None unless
    every measurement has it); None when one has none."""
    if not uses or any(u is None for u in uses):
        return None
    pooled: dict[str, Any] = {"wall_s": round(sum(u["wall_s"] for u in uses), 4)}  # type: ignore[index]
    for part in ("server_s", "client_s"):
        values = [u.get(part) for u in uses]  # type: ignore[union-attr]
        pooled[part] = round(sum(values), 4) if all(v is not None for v in values) else None
    return pooled


def cpu_text(use: dict[str, Any] | None, part: str, req_per_s: float) -> str:
    """'1.17 cores, 430 us/req' for the server_s or client_s of a step's pooled use, or 'n/a'."""
    seconds = use.get(part) if use else None
    if seconds is None or not use or use["wall_s"] <= 0:  # type: ignore[index]
        return "n/a"
    cores = seconds / use["wall_s"]  # type: ignore[index]
    per_request = f", {cores / req_per_s * 1e6:.0f} us/req" if req_per_s > 0 else ""
    return f"{cores:.2f} cores{per_request}"
