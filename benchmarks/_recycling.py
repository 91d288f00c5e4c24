"""The recycling part of lifecycle.py: what `--max-tasks-per-worker` costs, against the fork floor.

Two orchestrators for the quickstart app, one plain and one recycling its workers, are up at once
and measured in alternating rounds (as in dispatch.py), in two phases: bursts of no-op tasks
(recycling as often as it can happen) and bursts of `--task-ms` tasks (`sleep`, the throughput
target's workload). Recycles are counted from the recycling orchestrator's log; its "ready!" lines
for workers beyond the initial pool time the replacements (fork request to `WorkerReady`).

CPU per recycled worker is measured, not inferred from throughput: around every burst, the CPU
time of each orchestrator's whole process tree (orchestrator, zygote, live workers, and the
workers the zygote reaped: its cutime) is read from /proc; the recycling tree's CPU minus the
plain tree's for the same tasks, over the recycles in that burst, is what one recycle cost
(median of the rounds), split by process. The benchmark's own client is not part of it. The
minor page faults of the same processes are counted the same way: copy-on-write faults are most
of what a recycle costs, and unlike CPU time their count does not change with the machine's load.

The floor under any recycling ratio: a replacement costs at least one fork and one exit of a
process the zygote's size (`_fork_control.py churn`, f ms of CPU), measured before, between and
after the phases (the median counts), so that load from elsewhere falls on it as on the bursts.
With the plain orchestrator keeping every core busy at P tasks/s, recycling every N tasks can at
best reach
1 / (1 + f * P / (cores * N)); `fork_floor.ratio_bound` reports it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _neutrino import log_problems
from _procs import Processes, children_of, log, session_members
from _systems import System, alternate, neutrino_system

# The targets (issue 11): a recycle costs at most this many bare forks of the zygote; the
# replacement is ready this fast during a burst; with tasks of `--task-ms`, recycling keeps this
# share of the plain throughput.
CPU_PER_RECYCLE_MAX_FLOORS = 2.5
READY_P50_MAX_MS = 10.0
READY_P99_MAX_MS = 30.0
TASK_MS_RATIO_MIN = 0.95
BURST_TIMEOUT_S = 30.0
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
CATALOG_LINE = "Task catalog received"
CATALOG_TIMEOUT_S = 30.0

REPO = Path(__file__).resolve().parent.parent
RECYCLE_APP_WORKERS = 2
RECYCLE_FLAG = "--max-tasks-per-worker"
RECYCLE_LINE = "Recycling worker"
# The end of a recycling line when a ready standby took the worker's place at once; without it, a
# replacement was forked and the worker's slot waits for it.
STANDBY_TOOK_OVER = "takes its place"
READY_LINE = re.compile(r"Worker worker-(\d+) ready! \(([\d.]+) ms from fork request\)")


def flag_missing(binary: Path, flag: str) -> str | None:
    """Why `binary` cannot run with `flag`, with the fix; None when its --help lists the flag."""
    if not binary.is_file():
        return f"{binary} not found: build it with `cargo build --release`"
    helptext = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10).stdout
    if flag not in helptext:
        return f"flag missing: {binary.name} --help has no {flag} (rebuild with `cargo build --release` once it lands)"
    return None


def nearest_rank(ordered: list[float], p: float) -> float:
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def replacement_starts(text: str, initial_workers: int) -> dict[str, Any]:
    """Fork-request-to-ready times of the workers started after the initial pool, from log `text`."""
    values = sorted(float(ms) for wid, ms in READY_LINE.findall(text) if int(wid) > initial_workers)
    if not values:
        return {"n": 0, "error": f"no 'Worker worker-NNN ready!' line with NNN > {initial_workers} in the log"}
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 2),
        "p90": nearest_rank(values, 90),
        "p99": nearest_rank(values, 99),
        "max": values[-1],
        "min": values[0],
    }


def churn_floor(forks: int = 300) -> dict[str, Any]:
    """One run of `_fork_control.py churn`: CPU and faults of a bare fork + exit of the app's process."""
    argv = [
        sys.executable,
        str(REPO / "benchmarks" / "_fork_control.py"),
        "churn",
        "--zygote",
        "--children",
        str(forks),
    ]
    done = subprocess.run([*argv, "examples.quickstart.app"], cwd=REPO, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return {"error": f"_fork_control.py churn exited {done.returncode}: {done.stderr.strip()[-500:]}"}
    run: dict[str, Any] = json.loads(done.stdout)
    return run


FLOOR_FIGURES = (
    "cpu_ms_per_fork",
    "parent_cpu_ms",
    "child_cpu_ms",
    "parent_faults_per_fork",
    "child_faults_per_fork",
    "wall_ms_per_fork",
)


def fork_floor(runs: list[dict[str, Any]], tasks_per_s: float | None, max_tasks_per_worker: int) -> dict[str, Any]:
    """The floor from `runs` of churn_floor taken before, between and after the phases (so load from
    elsewhere on the machine falls on it as on the bursts): the median of each figure, every run's
    CPU, and the recycling ratio the floor allows at best."""
    good = [run for run in runs if "error" not in run]
    if not good:
        return runs[-1] if runs else {"error": "the fork floor was not measured"}
    floor: dict[str, Any] = {key: round(statistics.median(run[key] for run in good), 3) for key in FLOOR_FIGURES}
    floor["cpu_ms_per_fork_runs"] = [run["cpu_ms_per_fork"] for run in good]
    floor["forks_per_run"] = good[0]["forks"]
    floor["parent_rss_kb"] = good[-1]["parent_rss_kb"]
    cores = os.cpu_count() or 1
    if tasks_per_s:
        fork_share = floor["cpu_ms_per_fork"] / 1000 * tasks_per_s / (cores * max_tasks_per_worker)
        floor["ratio_bound"] = round(1 / (1 + fork_share), 3)
        floor["cores"] = cores
    return floor


def session_usage(sid: int) -> tuple[dict[str, float], dict[str, float]]:
    """CPU seconds and minor page faults of the processes in session `sid` (an orchestrator's
    tree), by role: the leader, its direct children (the zygote) and their reaped children (cutime
    and cminflt: the workers that exited), and everything else alive (the live workers). Nothing is
    counted twice: a process is in its parent's cutime only once reaped, and then no longer alive.
    Faults (copy-on-write ones, mostly) do not depend on how busy the machine is, unlike CPU."""
    cpu = {"orchestrator": 0.0, "zygote": 0.0, "workers": 0.0}
    faults = dict(cpu)
    zygotes = set(children_of(sid))
    for pid in session_members(sid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue  # exited meanwhile; its CPU shows up in its parent's cutime once reaped
        fields = stat[stat.rfind(")") + 2 :].split()
        role = "orchestrator" if pid == sid else "zygote" if pid in zygotes else "workers"
        cpu[role] += (int(fields[11]) + int(fields[12])) / TICKS_PER_S
        faults[role] += int(fields[7])
        if role == "zygote":
            cpu["workers"] += (int(fields[13]) + int(fields[14])) / TICKS_PER_S
            faults["workers"] += int(fields[8])
    return cpu, faults


def frontend(system: System) -> str:
    argv: list[str] = system.info["command"].split()
    return argv[argv.index("--frontend") + 1]


def orchestrator_pid(system: System) -> int:
    """The pid of `system`'s orchestrator, found by its frontend endpoint among our children."""
    endpoint = frontend(system)
    for pid in children_of(os.getpid()):
        with contextlib.suppress(OSError):
            if endpoint.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    raise RuntimeError(f"no child process serves {endpoint}")


def task_burst(client: Any, count: int, task: str, args: tuple[Any, ...]) -> dict[str, Any]:
    """Submit `count` calls of `task` without waiting, then wait for every future."""
    started = time.perf_counter()
    futures = [client.submit(task, *args) for _ in range(count)]
    failures = [exc for fut in futures if (exc := fut.exception(timeout=BURST_TIMEOUT_S)) is not None]
    elapsed = time.perf_counter() - started
    return {
        "elapsed_s": elapsed,
        "all_replied_once": not failures and len({fut.task_id for fut in futures}) == count,
        "failed": len(failures),
        "first_failure": repr(failures[0]) if failures else None,
    }


class Measured:
    """Runs bursts on one system, recording each one's wall time, tree CPU and recycles."""

    def __init__(self, system: System, log_path: Path, client: Any):
        self.system = system
        self.log_path = log_path
        self.client = client
        self.sid = orchestrator_pid(system)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_catalog(self, timeout_s: float = CATALOG_TIMEOUT_S) -> bool:
        """Wait until the zygote's one-time task catalog has arrived (the orchestrator logs it), so
        that building it is not counted as the cost of the recycles around it."""
        deadline = time.monotonic() + timeout_s
        while CATALOG_LINE not in self.log_text():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)  # polling the log: the orchestrator has no other signal for it
        return True

    def recycle_counts(self) -> tuple[int, int]:
        """Recycles logged so far, and how many of them had a ready standby take the worker's place."""
        lines = [line for line in self.log_text().splitlines() if RECYCLE_LINE in line]
        return len(lines), sum(STANDBY_TOOK_OVER in line for line in lines)

    def burst(self, count: int, task: str, args: tuple[Any, ...]) -> dict[str, Any]:
        (recycles, standby), (cpu, faults) = self.recycle_counts(), session_usage(self.sid)
        run = self.system.burst(count) if task == "noop" else task_burst(self.client, count, task, args)
        time.sleep(0.05)  # let the last recycled worker exit and be reaped, so its CPU is counted
        cpu_after, faults_after = session_usage(self.sid)
        run["cpu_s"] = {role: round(cpu_after[role] - cpu[role], 4) for role in cpu}
        run["faults"] = {role: faults_after[role] - faults[role] for role in faults}
        recycles_after, standby_after = self.recycle_counts()
        run["recycles"] = recycles_after - recycles
        run["recycles_without_ready_standby"] = run["recycles"] - (standby_after - standby)
        return run


def phase_report(names: list[str], bursts: dict[str, list[dict[str, Any]]], tasks: int) -> dict[str, Any]:
    """Throughput of each system and, per round, what a recycle cost in CPU beyond the plain run."""
    report: dict[str, Any] = {"tasks_per_burst": tasks}
    for name in names:
        runs = bursts[name]
        rates = [round(tasks / run["elapsed_s"]) for run in runs]
        report[name] = {
            "tasks_per_s": round(statistics.median(rates)) if rates else None,
            "rounds_tasks_per_s": rates,
            "all_replied_once": bool(runs) and all(run["all_replied_once"] for run in runs),
            "recycles_by_round": [run["recycles"] for run in runs],
            # Recycles that found no ready standby: that worker's slot waited for a fork.
            "recycles_without_ready_standby_by_round": [run["recycles_without_ready_standby"] for run in runs],
            "cpu_ms_per_task_by_round": [round(sum(run["cpu_s"].values()) * 1000 / tasks, 4) for run in runs],
        }
    plain, recycled = report["plain"]["tasks_per_s"], report["recycled"]["tasks_per_s"]
    report["ratio"] = round(recycled / plain, 3) if plain and recycled else None
    report["ratio_by_round"] = [
        round(r / p, 3)
        for p, r in zip(report["plain"]["rounds_tasks_per_s"], report["recycled"]["rounds_tasks_per_s"], strict=False)
    ]
    per_round = []
    for p, r in zip(bursts["plain"], bursts["recycled"], strict=False):
        if r["recycles"]:
            extra = {role: (r["cpu_s"][role] - p["cpu_s"][role]) * 1000 / r["recycles"] for role in p["cpu_s"]}
            per_round.append(
                {
                    **{k: round(v, 3) for k, v in extra.items()},
                    "total": round(sum(extra.values()), 3),
                    "zygote_and_workers": round(extra["zygote"] + extra["workers"], 3),
                }
            )
    report["cpu_ms_per_recycle_by_round"] = per_round
    report["cpu_ms_per_recycle_paired"] = (
        {
            role: round(statistics.median(r[role] for r in per_round), 3)
            for role in ("total", "zygote_and_workers", "orchestrator", "zygote", "workers")
        }
        if per_round
        else None
    )
    for name in names:
        report[name]["cpu_s_by_round"] = [run["cpu_s"] for run in bursts[name]]
    faults = [
        {role: round((r["faults"][role] - p["faults"][role]) / r["recycles"], 1) for role in ("zygote", "workers")}
        for p, r in zip(bursts["plain"], bursts["recycled"], strict=False)
        if r["recycles"]
    ]
    report["faults_per_recycle"] = (
        {role: statistics.median(f[role] for f in faults) for role in ("zygote", "workers")} if faults else None
    )
    report["cpu_ms_per_recycle"] = median_bursts_per_recycle(bursts["plain"], bursts["recycled"])
    return report


CPU_SUMS = {"total": ("orchestrator", "zygote", "workers"), "zygote_and_workers": ("zygote", "workers")}


def median_bursts_per_recycle(plain: list[dict[str, Any]], recycled: list[dict[str, Any]]) -> dict[str, float] | None:
    """What one recycle cost, by role: the recycling system's median burst CPU minus the plain
    system's median burst CPU (same tasks), over the median recycles of a burst.

    Not the median of each round's difference: a plain burst's CPU per task moves with its own
    rate (at a lower rate, more wake-ups per task; on a busy machine 0.03 to 0.07 ms per no-op task
    between rounds of one run), and subtracting one disturbed burst from its pair moved the
    orchestrator's share of a recycle by up to 2 ms either way. The median of each side drops one
    disturbed burst per three, on either side alike (`cpu_ms_per_recycle_paired` keeps the
    per-round estimate beside it). `total` and `zygote_and_workers` are medians of the bursts' sums."""
    recycles = [run["recycles"] for run in recycled]
    if not plain or not recycled or not statistics.median(recycles):
        return None

    def median_cpu(runs: list[dict[str, Any]], roles: tuple[str, ...]) -> float:
        return statistics.median(sum(run["cpu_s"][role] for role in roles) for run in runs)

    per_recycle = statistics.median(recycles)
    sums = {**CPU_SUMS, **{role: (role,) for role in ("orchestrator", "zygote", "workers")}}
    return {
        name: round((median_cpu(recycled, roles) - median_cpu(plain, roles)) * 1000 / per_recycle, 3)
        for name, roles in sums.items()
    }


def recycling(opts: argparse.Namespace, procs: Processes, workdir: Path) -> dict[str, Any]:
    from neutrino import Client

    if problem := flag_missing(opts.orchestrator, RECYCLE_FLAG):
        log(f"recycling: {problem}")
        return {"error": problem}
    base = {"binary": opts.orchestrator, "repo": REPO, "workers": RECYCLE_APP_WORKERS, "window": None}
    args = {
        "plain": {**base, "log_path": workdir / "plain.log"},
        "recycled": {
            **base,
            "log_path": workdir / "recycled.log",
            "extra_args": [RECYCLE_FLAG, str(opts.max_tasks_per_worker)],
        },
    }
    names = list(args)
    task_args = (opts.task_ms / 1000,)
    with contextlib.ExitStack() as stack:
        systems = [stack.enter_context(neutrino_system(procs, orch_args, name)) for name, orch_args in args.items()]
        clients = [
            stack.enter_context(contextlib.closing(Client(frontend(s), timeout_s=BURST_TIMEOUT_S))) for s in systems
        ]
        measured = {s.name: Measured(s, args[s.name]["log_path"], c) for s, c in zip(systems, clients, strict=True)}
        alternate(systems, 1, lambda system, _: system.burst(opts.warmup))
        catalogs = {name: m.wait_for_catalog() for name, m in measured.items()}
        floors = [churn_floor()]
        marks = [len(measured["recycled"].log_text())]
        log(f"recycling: {opts.rounds} alternating bursts of {opts.tasks} noop tasks")
        noop = alternate(systems, opts.rounds, lambda system, _: measured[system.name].burst(opts.tasks, "noop", ()))
        marks.append(len(measured["recycled"].log_text()))
        floors.append(churn_floor())
        log(f"recycling: {opts.rounds} alternating bursts of {opts.task_tasks} sleep({opts.task_ms} ms) tasks")
        slow = alternate(
            systems, opts.rounds, lambda system, _: measured[system.name].burst(opts.task_tasks, "sleep", task_args)
        )
        recycled_log = measured["recycled"].log_text()
    report: dict[str, Any] = {
        "app": "examples.quickstart.app:app",
        "workers": RECYCLE_APP_WORKERS,
        "max_tasks_per_worker": opts.max_tasks_per_worker,
        "catalog_built_before_measuring": catalogs,
        "noop": phase_report(names, noop, opts.tasks),
        f"task_{opts.task_ms:g}ms": phase_report(names, slow, opts.task_tasks),
    }
    for system in systems:
        log_text = args[system.name]["log_path"].read_text(errors="replace")
        report[system.name] = {
            "recycles_logged": log_text.count(RECYCLE_LINE),
            "log_problem_count": len(log_problems(args[system.name]["log_path"], limit=len(log_text))),
            **system.info,
        }
        if system.error:
            report[system.name]["error"] = system.error
    report["replacement_start_ms"] = replacement_starts(recycled_log[marks[0] : marks[1]], RECYCLE_APP_WORKERS)
    report["replacement_start_ms"]["during"] = f"the noop bursts ({opts.rounds} x {opts.tasks} tasks)"
    report["replacement_start_ms_task_phase"] = replacement_starts(recycled_log[marks[1] :], RECYCLE_APP_WORKERS)
    floors.append(churn_floor())
    report["fork_floor"] = fork_floor(floors, report["noop"]["plain"]["tasks_per_s"], opts.max_tasks_per_worker)
    report["targets"] = recycling_targets(report, f"task_{opts.task_ms:g}ms")
    log(f"recycling: {json.dumps(report['targets'])}")
    return report


def recycling_targets(report: dict[str, Any], task_phase: str) -> dict[str, Any]:
    """Each target beside its measure and the floor, with pass (true/false; null if not measured)."""
    floor = report["fork_floor"].get("cpu_ms_per_fork")

    def per_recycle_ms(phase: str) -> float | None:
        """The larger of the whole tree's extra CPU and the zygote's and workers' alone: the
        orchestrator's share may come out negative (it batches differently at another rate),
        and that must not make a recycle look cheaper than what the forked processes spent."""
        measured = report[phase]["cpu_ms_per_recycle"]
        return max(measured["total"], measured["zygote_and_workers"]) if measured else None

    per_recycle = per_recycle_ms("noop")
    per_recycle_task = per_recycle_ms(task_phase)
    ready = report["replacement_start_ms"]

    def ratio(value: float | None, base: float | None) -> float | None:
        return round(value / base, 2) if value is not None and base else None

    floors = ratio(per_recycle, floor)
    return {
        "fork_floor_cpu_ms": floor,
        "cpu_per_recycle": {
            "ms": per_recycle,
            "floors": floors,
            "max_floors": CPU_PER_RECYCLE_MAX_FLOORS,
            "pass": None if floors is None else floors <= CPU_PER_RECYCLE_MAX_FLOORS,
            "also_in_task_phase": {"ms": per_recycle_task, "floors": ratio(per_recycle_task, floor)},
            # Beside the CPU, what does not move with the machine's load: page faults per recycle
            # (the zygote's and the worker's, beyond the plain run) and per bare fork.
            "faults": {
                **(report["noop"]["faults_per_recycle"] or {}),
                "floor_parent": report["fork_floor"].get("parent_faults_per_fork"),
                "floor_child": report["fork_floor"].get("child_faults_per_fork"),
            },
        },
        "replacement_ready_p50": {
            "ms": ready.get("p50"),
            "max_ms": READY_P50_MAX_MS,
            "pass": None if ready.get("p50") is None else ready["p50"] < READY_P50_MAX_MS,
        },
        "replacement_ready_p99": {
            "ms": ready.get("p99"),
            "max_ms": READY_P99_MAX_MS,
            "pass": None if ready.get("p99") is None else ready["p99"] < READY_P99_MAX_MS,
        },
        "throughput_with_task_ms": {
            "ratio": report[task_phase]["ratio"],
            "min_ratio": TASK_MS_RATIO_MIN,
            "pass": None if report[task_phase]["ratio"] is None else report[task_phase]["ratio"] >= TASK_MS_RATIO_MIN,
        },
    }
