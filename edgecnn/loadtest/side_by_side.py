"""Servers measured side by side (`make bench`): servers already running, all up together, and
every step of a closed-loop sweep measured in short slices that alternate between them, the order
rotating each slice, so that a neighbour's burst or a drift of the machine hits them all alike.
(Measured one after another, a whole sweep each, two identical configurations read 7% apart.)
One pool of client processes loads every server; a step pools its slices, and a report's step
pools its rounds (its `runs`). Each measured target may carry its own requests (an HTTP target
its REST bodies beside gRPC's ModelInfer messages) and its own part of the sweep (Measured)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace

from .process_cpu import cpu_use, pool_cpu
from .runner import Plan, run_plan
from .stats import pool_steps
from .worker import WorkerPool
from .workload import Target

TOOL = "edgecnn loadtest"


@dataclass(frozen=True)
class Measured:
    """One measured target: where it is and how it is called (its protocol: Target), the
    requests it is sent (None: measure_side_by_side's shared ones), the concurrencies of the
    schedule's sweep it is measured at (None: all of them) and the server's process, whose CPU
    (with its descendants') each step reports under "cpu" (None: not measured)."""

    target: Target
    payloads: list[bytes] | None = None
    sweep: tuple[int, ...] | None = None
    pid: int | None = None

    def at(self, concurrency: int) -> bool:
        return self.sweep is None or concurrency in self.sweep


# Round r's servers, brought up (fresh processes, say) for the round and stopped after it, as
# their targets by name (a bare Target: measured with the shared requests over the whole sweep);
# every round names the same targets.
RoundServers = Callable[[int], AbstractContextManager[Mapping[str, Target | Measured]]]


@dataclass(frozen=True)
class SliceSchedule:
    """How a sweep is measured: each step `duration_s` per server and round, in `slices` slices
    per server, each after a `warmup_s` warm-up; batch-`batch_size` requests from `processes`
    client processes."""

    sweep: tuple[int, ...]
    duration_s: float
    warmup_s: float
    slices: int = 2
    processes: int = 2
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.slices < 1:
            raise ValueError(f"slices {self.slices}: expected >= 1")
        self.plan(Target("", ""), [])  # the plan's own checks: sweep, durations, processes

    def plan(self, target: Target, payloads: list[bytes]) -> Plan:
        """The plan of one server's slices (run_slice gives it the step's concurrency)."""
        return Plan(target, payloads, self.batch_size, self.sweep, duration_s=self.duration_s / self.slices,
                    warmup_s=self.warmup_s, processes=self.processes)  # fmt: skip


def as_measured(targets: Mapping[str, Target | Measured], schedule: SliceSchedule, payloads: list[bytes] | None) -> dict[str, Measured]:
    """Every target as a Measured with its requests; ValueError for one without requests or
    with concurrencies the schedule's sweep lacks."""
    out = {}
    for name, target in targets.items():
        m = target if isinstance(target, Measured) else Measured(target)
        if m.payloads is None:
            if payloads is None:
                raise ValueError(f"{name}: no requests of its own and none shared")
            m = replace(m, payloads=payloads)
        if m.sweep is not None and (not m.sweep or set(m.sweep) - set(schedule.sweep)):
            raise ValueError(f"{name}: concurrency {list(m.sweep)}: expected some of the sweep's {list(schedule.sweep)}")
        out[name] = m
    return out


def measure_side_by_side(
    servers: RoundServers,
    rounds: int,
    schedule: SliceSchedule,
    payloads: list[bytes] | None = None,
    log: Callable[[str], None] | None = None,
    each_round: Callable[[int, Mapping[str, Measured]], None] | None = None,
) -> dict[str, dict]:
    """`rounds` rounds, each over the targets that `servers(r)` gives for it, every step measured
    in alternating slices between the targets measured at its concurrency (measure_step); a
    target is sent its own requests, or else `payloads`. Per target a report like `edgecnn
    loadtest`'s: a step per concurrency it is measured at, pooled over its slices and rounds, with
    each round's req/s and p50 in `runs`. `log` gets a line per step and round;
    `each_round(r, targets)` runs after round r's sweep while its servers are still up (the bench
    measures them with perf_analyzer there), given every target as a Measured."""
    if rounds < 1:
        raise ValueError(f"rounds {rounds}: expected >= 1")
    measured: dict[str, dict[int, list[dict]]] = {}
    first: dict[str, tuple[int, ...] | None] = {}
    with WorkerPool(schedule.processes) as pool:
        for r in range(rounds):
            with servers(r) as targets:
                if first and set(targets) != set(first):
                    raise ValueError(f"round {r + 1} has servers {sorted(targets)}; round 1 had {sorted(first)}")
                round_targets = as_measured(targets, schedule, payloads)
                for name, m in round_targets.items():
                    if first.setdefault(name, m.sweep) != m.sweep:
                        raise ValueError(f"round {r + 1} measures {name} at {m.sweep}; round 1 at {first[name]}")
                plans = {name: schedule.plan(m.target, m.payloads) for name, m in round_targets.items()}
                for c in schedule.sweep:
                    at_c = {name: plan for name, plan in plans.items() if round_targets[name].at(c)}
                    if not at_c:
                        continue
                    pids = {name: round_targets[name].pid for name in at_c}
                    for name, step in measure_step(at_c, c, r, schedule.slices, pool, pids).items():
                        measured.setdefault(name, {}).setdefault(c, []).append(step)
                    if log:
                        log(f"  c={c}: " + ", ".join(f"{name} {measured[name][c][-1]['req_per_s']:.0f} req/s" for name in at_c))
                if each_round is not None:
                    each_round(r, round_targets)
    return {
        name: {"tool": TOOL, "steps": [pooled(measured[name][c]) for c in schedule.sweep if c in measured.get(name, {})]}
        for name in first
    }


def rotated(names: list[str], turn: int) -> list[str]:
    """`names` starting at the turn-th (modulo their count)."""
    return names[turn % len(names) :] + names[: turn % len(names)]


def measure_step(
    plans: Mapping[str, Plan], concurrency: int, round_index: int, slices: int, pool: WorkerPool, pids: Mapping[str, int | None] | None = None
) -> dict[str, dict]:
    """One step of one round for every server: `slices` slices each, alternating between the
    servers, the order rotating each slice and going on from the round before; pooled per server.
    A server with a pid in `pids` has its CPU over its slices under "cpu" (process_cpu.cpu_use)."""
    names = list(plans)
    steps: dict[str, list[dict]] = {name: [] for name in names}
    for s in range(slices):
        for name in rotated(names, round_index * slices + s):
            with cpu_use((pids or {}).get(name)) as use:
                step = run_slice(plans[name], concurrency, pool)
            # Per second of load: the slice's warm-up and window, not the client processes' start and stop around them.
            loaded_s = plans[name].warmup_s + plans[name].duration_s
            steps[name].append({**step, "cpu": {**use, "wall_s": min(use["wall_s"], loaded_s)} if use["server_s"] is not None else None})
    return {name: pooled(measured) for name, measured in steps.items()}


def pooled(steps: list[dict]) -> dict:
    """pool_steps, and the steps' CPU (process_cpu.pool_cpu)."""
    return {**pool_steps(steps), "cpu": pool_cpu([s.get("cpu") for s in steps])}


def run_slice(plan: Plan, concurrency: int, pool: WorkerPool) -> dict:
    """One slice: the plan at one concurrency in the shared pool, as its step's dict.
    RuntimeError when it could not finish (a failed client process, say)."""
    run = run_plan(replace(plan, concurrency=(concurrency,)), progress=None, pool=pool)
    if run.stopped_by is not None:
        raise RuntimeError(f"load test against {plan.target.server} stopped: {run.stop_reason}")
    return run.steps[0].to_dict()
