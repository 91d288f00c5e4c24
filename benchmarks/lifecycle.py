"""Lifecycle benchmark: what forked workers cost in memory, and what recycling them costs.

Measured, each part on its own (`--only memory|recycling`):
- memory: the orchestrator serves `benchmarks.apps.big_import:app`, whose import builds
  `--import-mb` MB of small GC-tracked objects, with `--workers` workers; once every worker has
  run a full `gc.collect()`, the PSS of the zygote and all workers (/proc/<pid>/smaps_rollup)
  against the RSS of one process holding the import (the zygote). Controls run the same import
  without Neutrino (see _fork_control.py): forked with gc.freeze(), forked without it, and in
  separate processes, so the numbers show what fork and gc.freeze() each buy;
- recycling (_recycling.py): two orchestrators for `examples.quickstart.app:app` with 2 workers,
  one plain and one with `--max-tasks-per-worker`, up at once and measured in alternating rounds,
  first with no-op tasks, then with `--task-ms` tasks: tasks/s (median round), recycles counted
  from the log ("Recycling worker"), the CPU one recycle costs (each tree's CPU from /proc, recycled
  minus plain, per recycle), the start time of each replacement worker ("Worker worker-NNN ready!
  (X ms from fork request)"), and the floor: the CPU of a bare fork + exit of a process the
  zygote's size. `recycling.targets` puts each of issue 11's three targets beside its measure and
  the floor, with pass/fail.

Run from the repository root (build the orchestrator first: `cargo build --release`):

    uv run python benchmarks/lifecycle.py --json             # one JSON document on stdout
    uv run python benchmarks/lifecycle.py --only memory      # one part, readable summary

Progress goes to stderr. Every process started is stopped by pid on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _machine import cpu_seconds, other_load
from _memory import mem_available_mb, memory
from _procs import Processes, log
from _recycling import recycling

REPO = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- report


def targets(report: dict[str, Any]) -> dict[str, bool | None]:
    def get(*keys: str) -> Any:
        value: Any = report
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def check(value: float | None, passes: Callable[[float], bool]) -> bool | None:
        return None if value is None else passes(value)

    return {
        "memory_ratio_under_1.2": check(get("memory", "neutrino", "ratio"), lambda r: r < 1.2),
        # Issue 11's recycling targets (the no-op throughput target they replace is below the floor).
        "recycling_cpu_per_recycle_at_most_2.5x_fork_floor": get("recycling", "targets", "cpu_per_recycle", "pass"),
        "replacement_ready_p50_under_10ms": get("recycling", "targets", "replacement_ready_p50", "pass"),
        "replacement_ready_p99_under_30ms": get("recycling", "targets", "replacement_ready_p99", "pass"),
        "recycling_throughput_with_task_ms_at_least_0.95x": get(
            "recycling", "targets", "throughput_with_task_ms", "pass"
        ),
    }


def orchestrator_info(binary: Path) -> dict[str, Any]:
    """The binary under test, and whether its Rust sources changed after it was built."""
    if not binary.is_file():
        return {"path": str(binary), "error": "not found"}
    sources = (REPO / "services" / "orchestrator-rs").rglob("*.rs")
    newest = max((path.stat().st_mtime for path in sources), default=0.0)
    return {"path": str(binary), "older_than_sources": newest > binary.stat().st_mtime}


def print_summary(report: dict[str, Any]) -> None:
    mem = report.get("memory", {})
    for name, part in [("neutrino", mem.get("neutrino")), *mem.get("controls", {}).items()]:
        if part:
            ratio = part.get("ratio", part.get("error"))
            print(
                f"memory   {name:24} total PSS {part.get('total_pss_mb')} MB  one RSS "
                f"{part.get('one_process_rss_mb')} MB  ratio {ratio}"
            )
    rec = report.get("recycling")
    if rec:
        if "error" in rec:
            print(f"recycling ERROR {rec['error']}")
        else:
            for phase in [k for k in rec if k == "noop" or k.startswith("task_")]:
                part = rec[phase]
                print(
                    f"recycling {phase}: plain {part['plain']['tasks_per_s']} tasks/s, recycled "
                    f"{part['recycled']['tasks_per_s']} tasks/s, ratio {part['ratio']}, "
                    f"CPU per recycle {part['cpu_ms_per_recycle']} ms"
                )
            print(f"replacement start ms: {rec['replacement_start_ms']}")
            print(f"recycling targets: {json.dumps(rec['targets'])}")
        print(f"machine during recycling: {rec['machine_during']}")
    print(f"targets: {report['targets']}")


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--only", choices=["memory", "recycling"], help="run one part only")
    parser.add_argument("--import-mb", type=int, default=400, help="MB of small objects the big app builds at import")
    parser.add_argument("--workers", type=int, default=8, help="workers in the memory test")
    parser.add_argument("--tasks", type=int, default=20000, help="noop tasks per recycling burst")
    parser.add_argument("--warmup", type=int, default=500, help="untimed noop tasks before the recycling rounds")
    parser.add_argument("--rounds", type=int, default=3, help="alternating recycling rounds per orchestrator")
    parser.add_argument("--max-tasks-per-worker", type=int, default=100, help="for the recycled orchestrator")
    parser.add_argument("--task-ms", type=float, default=1.0, help="task length (sleep) of the throughput target")
    parser.add_argument("--task-tasks", type=int, default=6000, help="tasks per --task-ms burst")
    parser.add_argument(
        "--orchestrator", type=Path, default=REPO / "target" / "release" / "neutrino-orchestrator", help="binary"
    )
    return parser.parse_args(argv)


def raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, raise_interrupt)
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="neutrino-bench-"))
    report: dict[str, Any] = {
        "benchmark": "lifecycle",
        "config": {k: v for k, v in vars(opts).items() if k not in ("json", "orchestrator")},
        "machine": {
            "cpu_count": os.cpu_count(),
            "mem_available_mb_at_start": round(mem_available_mb()),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "orchestrator": orchestrator_info(opts.orchestrator),
    }
    parts = {"memory": memory, "recycling": recycling}
    try:
        with Processes() as procs:
            for name, part in parts.items():
                if opts.only not in (None, name):
                    continue
                part_started, cpu_before = time.perf_counter(), cpu_seconds()
                try:
                    report[name] = part(opts, procs, workdir)
                except Exception as exc:
                    traceback.print_exc(file=sys.stderr)
                    report[name] = {"error": f"{type(exc).__name__}: {exc}"}
                report[name]["machine_during"] = other_load(cpu_before, time.perf_counter() - part_started)
            report["process_findings"] = procs.findings
    except KeyboardInterrupt:
        log("interrupted: servers stopped")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["targets"] = targets(report)
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    if opts.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_summary(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
