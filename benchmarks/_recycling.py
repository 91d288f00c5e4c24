"""The recycling part of lifecycle.py: throughput with `--max-tasks-per-worker` against without.

Two orchestrators for the quickstart app, one plain and one recycling its workers, are up at once
and measured in alternating rounds (as in dispatch.py). Recycles are counted from the recycling
orchestrator's log; its "ready!" lines for workers beyond the initial pool time the replacements.

The floor under any recycling ratio: a replacement costs at least one fork and one exit of a
process the zygote's size (`_fork_control.py churn`, f ms of CPU). With the plain orchestrator
keeping every core busy at P tasks/s, recycling every N tasks can at best reach
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
from pathlib import Path
from typing import Any

from _neutrino import log_problems
from _procs import Processes, log
from _systems import alternate, neutrino_system

REPO = Path(__file__).resolve().parent.parent
RECYCLE_APP_WORKERS = 2
RECYCLE_FLAG = "--max-tasks-per-worker"
RECYCLE_LINE = "Recycling worker"
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


def replacement_starts(log_path: Path, initial_workers: int) -> dict[str, Any]:
    """Fork-request-to-ready times of the workers started after the initial pool."""
    text = log_path.read_text(errors="replace")
    values = sorted(float(ms) for wid, ms in READY_LINE.findall(text) if int(wid) > initial_workers)
    if not values:
        return {"n": 0, "error": f"no 'Worker worker-NNN ready!' line with NNN > {initial_workers} in the log"}
    return {
        "n": len(values),
        "p50": round(statistics.median(values), 2),
        "p99": nearest_rank(values, 99),
        "max": values[-1],
        "min": values[0],
    }


def fork_floor(tasks_per_s: float | None, max_tasks_per_worker: int, forks: int = 300) -> dict[str, Any]:
    """CPU of a bare fork + exit of the app's process, and the recycling ratio it allows at best."""
    argv = [sys.executable, str(REPO / "benchmarks" / "_fork_control.py"), "churn", "--children", str(forks)]
    done = subprocess.run([*argv, "examples.quickstart.app"], cwd=REPO, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return {"error": f"_fork_control.py churn exited {done.returncode}: {done.stderr.strip()[-500:]}"}
    floor: dict[str, Any] = json.loads(done.stdout)
    cores = os.cpu_count() or 1
    if tasks_per_s:
        fork_share = floor["cpu_ms_per_fork"] / 1000 * tasks_per_s / (cores * max_tasks_per_worker)
        floor["ratio_bound"] = round(1 / (1 + fork_share), 3)
        floor["cores"] = cores
    return floor


def recycling(opts: argparse.Namespace, procs: Processes, workdir: Path) -> dict[str, Any]:
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
    with contextlib.ExitStack() as stack:
        systems = [stack.enter_context(neutrino_system(procs, orch_args, name)) for name, orch_args in args.items()]
        alternate(systems, 1, lambda system, _: system.burst(opts.warmup))
        log(f"recycling: {opts.rounds} alternating bursts of {opts.tasks} noop tasks")
        bursts = alternate(systems, opts.rounds, lambda system, _: system.burst(opts.tasks))
    report: dict[str, Any] = {
        "app": "examples.quickstart.app:app",
        "workers": RECYCLE_APP_WORKERS,
        "max_tasks_per_worker": opts.max_tasks_per_worker,
        "tasks_per_burst": opts.tasks,
    }
    for system in systems:
        runs = bursts[system.name]
        rates = [round(opts.tasks / run["elapsed_s"]) for run in runs]
        log_text = args[system.name]["log_path"].read_text(errors="replace")
        report[system.name] = {
            "tasks_per_s": round(statistics.median(rates)) if rates else None,
            "rounds_tasks_per_s": rates,
            "all_replied_once": bool(runs) and all(run["all_replied_once"] for run in runs),
            "recycles_logged": log_text.count(RECYCLE_LINE),
            "log_problem_count": len(log_problems(args[system.name]["log_path"], limit=len(log_text))),
            "tasks_run": opts.warmup + len(runs) * opts.tasks,
            **system.info,
        }
        if system.error:
            report[system.name]["error"] = system.error
    plain, recycled = report["plain"]["tasks_per_s"], report["recycled"]["tasks_per_s"]
    report["ratio"] = round(recycled / plain, 3) if plain and recycled else None
    report["ratio_by_round"] = [
        round(r / p, 3)
        for p, r in zip(report["plain"]["rounds_tasks_per_s"], report["recycled"]["rounds_tasks_per_s"], strict=False)
    ]
    report["recycled"]["recycles_expected_about"] = report["recycled"]["tasks_run"] // opts.max_tasks_per_worker
    report["replacement_start_ms"] = replacement_starts(args["recycled"]["log_path"], RECYCLE_APP_WORKERS)
    report["fork_floor"] = fork_floor(plain, opts.max_tasks_per_worker)
    log(
        f"recycling: plain {plain} tasks/s, recycled {recycled} tasks/s, ratio {report['ratio']}, "
        f"{report['recycled']['recycles_logged']} recycles; replacement start {report['replacement_start_ms']}; "
        f"a bare fork costs {report['fork_floor'].get('cpu_ms_per_fork')} ms CPU, "
        f"bounding the ratio at {report['fork_floor'].get('ratio_bound')}"
    )
    return report
