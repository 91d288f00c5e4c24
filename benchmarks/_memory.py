"""The memory part of lifecycle.py: how much of a big import forked workers share, beside controls.

The orchestrator serves `benchmarks.apps.big_import:app` (its import builds many small GC-tracked
objects); once every worker has run a full gc.collect(), the PSS of the zygote and the workers is
read from /proc/<pid>/smaps_rollup. The controls (_fork_control.py) run the same import without
Neutrino: forked with gc.freeze(), forked without it, and in separate processes.

PSS (proportional set size) charges each resident page to the processes mapping it in equal
parts, so the PSS of a group adds up to the memory the group really holds: a page shared
copy-on-write by nine processes counts once, a page each one copied counts nine times. Dividing
that total by the RSS of one process that holds the import says how many imports' worth of
memory the group costs (1.0 = perfect sharing, N = none).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _neutrino import Orchestrator, log_problems, wait_ready
from _procs import Processes, children_of, log

REPO = Path(__file__).resolve().parent.parent
BIG_MODULE = "benchmarks.apps.big_import"
IMPORT_MB_ENV = "NEUTRINO_BENCH_IMPORT_MB"  # read by BIG_MODULE
START_TIMEOUT_S = 300  # passed as --start-timeout: the zygote builds the whole heap at import
CALL_TIMEOUT_S = 30.0  # a gc.collect() over a large heap is slow; a lost reply still fails the run
COLLECT_BATCHES = 20  # bursts of `collect` tried before giving up on reaching every worker
CONTROL_TIMEOUT_S = 120.0  # import and collect in the control processes, all of them
MEMORY_HEADROOM = 1.3  # a part is skipped unless MemAvailable exceeds its estimated need by this factor
PER_PROCESS_MB = 40  # an interpreter with zmq and the SDK loaded, besides the import
KB_PER_MB = 1024


def smaps_rollup_kb(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/smaps_rollup (Rss, Pss, Private_Dirty, ...)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[name] = int(value.split()[0])
    return fields


def status_kb(pid: int, field: str) -> int:
    """A kB field of /proc/<pid>/status, e.g. VmRSS."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / KB_PER_MB
    return float("inf")


def footprint(holder: int, others: list[int], holder_role: str, other_role: str) -> dict[str, Any]:
    """Total PSS of `holder` and `others`, against the RSS (VmRSS) of `holder` alone."""
    processes = []
    for role, pid in [(holder_role, holder)] + [(other_role, pid) for pid in others]:
        smaps = smaps_rollup_kb(pid)
        processes.append(
            {
                "role": role,
                "pid": pid,
                "pss_mb": _mb(smaps["Pss"]),
                "rss_mb": _mb(smaps["Rss"]),
                "private_dirty_mb": _mb(smaps["Private_Dirty"]),
            }
        )
    total_pss = sum(proc["pss_mb"] for proc in processes)
    one_rss = _mb(status_kb(holder, "VmRSS"))
    return {
        "total_pss_mb": round(total_pss, 1),
        "one_process_rss_mb": one_rss,
        "one_process": f"{holder_role} pid {holder} (VmRSS)",
        "ratio": round(total_pss / one_rss, 3),
        "processes": len(processes),
        "per_process": processes,
    }


def _mb(kb: int) -> float:
    return round(kb / KB_PER_MB, 1)


# ---------------------------------------------------------------- the measurement


def find_zygote(orchestrator_pid: int) -> int:
    children = children_of(orchestrator_pid)
    for pid in children:
        with contextlib.suppress(OSError):
            if b"neutrino_worker.zygote" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    raise RuntimeError(f"no zygote among the orchestrator's children {children}")


def collect_everywhere(client: Any, workers: set[int]) -> dict[str, Any]:
    """Bursts of `collect` until every worker pid has answered (a fast worker may take a whole burst)."""
    seen: set[int] = set()
    for batch in range(1, COLLECT_BATCHES + 1):
        futures = [client.submit("collect") for _ in range(2 * len(workers))]
        seen.update(fut.result(timeout=CALL_TIMEOUT_S) for fut in futures)
        if workers <= seen:
            return {"workers_collected": len(workers & seen), "batches": batch}
    raise RuntimeError(f"{len(workers - seen)} of {len(workers)} workers never ran collect in {COLLECT_BATCHES} bursts")


def wait_for_line(log_path: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log_path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r} in {log_path} within {timeout_s} s")
        time.sleep(0.05)  # polling the log: the orchestrator has no other signal for it


def neutrino_memory(opts: argparse.Namespace, procs: Processes, workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    from neutrino import Client

    log_path = workdir / "memory.log"
    orch = Orchestrator(
        procs,
        opts.orchestrator,
        REPO,
        opts.workers,
        None,
        log_path,
        app=f"{BIG_MODULE}:app",
        extra_args=["--start-timeout", str(START_TIMEOUT_S)],
        env=env,
    )
    log(f"memory: started {' '.join(orch.argv)}")
    client = Client(orch.endpoint, timeout_s=CALL_TIMEOUT_S)
    result: dict[str, Any] = {"command": " ".join(orch.argv)}
    try:
        result["ready_ms"] = round(wait_ready(client, orch, opts.workers, START_TIMEOUT_S + 30) * 1000, 1)
        zygote = find_zygote(orch.proc.pid)
        # The zygote builds its task catalog in a short-lived child of its own: once the catalog
        # has arrived, that child is gone and the zygote's children are its workers.
        wait_for_line(log_path, "Task catalog received", START_TIMEOUT_S)
        workers = children_of(zygote)
        if len(workers) != opts.workers:
            raise RuntimeError(f"zygote {zygote} has {len(workers)} children, expected {opts.workers}: {workers}")
        log(f"memory: {opts.workers} workers ready after {result['ready_ms']:.0f} ms; zygote {zygote}")
        result["import"] = client.call("info")
        before = footprint(zygote, workers, "zygote", "worker")
        result["collect"] = collect_everywhere(client, set(workers))
        result.update(footprint(zygote, workers, "zygote", "worker"))
        result["before_collect"] = {key: before[key] for key in ("total_pss_mb", "one_process_rss_mb", "ratio")}
        result["workers_after"] = client.ping()["workers"]
    finally:
        client.close()
        result["stop"] = orch.stop()
        result["log_problems"] = log_problems(log_path)
    return result


def read_report(proc: subprocess.Popen[bytes], deadline: float) -> dict[str, Any]:
    """The one JSON line a control process prints once it has imported and collected."""
    assert proc.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"control pid {proc.pid} did not report within {CONTROL_TIMEOUT_S}s")
        if select.select([proc.stdout], [], [], remaining)[0]:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"control pid {proc.pid} exited with code {proc.wait()} before reporting")
            line += chunk
    return dict(json.loads(line))


def control(procs: Processes, workdir: Path, env: dict[str, str], mode: list[str], copies: int) -> dict[str, Any]:
    """Start `copies` control processes in `mode`, measure them once all have reported, stop them."""
    argv = [sys.executable, str(Path(__file__).with_name("_fork_control.py")), *mode, BIG_MODULE]
    stderr_path = workdir / "control.log"
    deadline = time.monotonic() + CONTROL_TIMEOUT_S
    with stderr_path.open("ab") as stderr:
        started = [procs.spawn(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr) for _ in range(copies)]
    try:
        reports = [read_report(proc, deadline) for proc in started]
        first, *rest = reports
        if first["children"]:
            result = footprint(first["parent"], first["children"], "parent", "child")
        else:
            result = footprint(first["parent"], [report["parent"] for report in rest], "process", "process")
        result["import"] = first["import"]
    except Exception:
        log(f"control failed; its stderr: {stderr_path.read_text(errors='replace')[-2000:]}")
        raise
    finally:
        stops = [procs.stop(proc) for proc in started]
        for proc in started:
            if proc.stdout:
                proc.stdout.close()
    result["command"] = " ".join(argv[1:]) + (f" (x{copies})" if copies > 1 else "")
    result["orphans"] = [pid for stop in stops for pid in stop["orphans"]]
    return result


def measured_if_room(name: str, need_mb: float, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`measure()`, unless the machine lacks the memory for it; errors are reported, not raised."""
    available = mem_available_mb()
    if available < need_mb * MEMORY_HEADROOM:
        log(f"memory: skipping {name}: needs about {need_mb:.0f} MB, MemAvailable {available:.0f} MB")
        return {"error": f"skipped: needs about {need_mb:.0f} MB, MemAvailable {available:.0f} MB (lower --import-mb)"}
    log(f"memory: {name}")
    try:
        result = measure()
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return {"error": f"{type(exc).__name__}: {exc}"}
    log(
        f"memory: {name}: total PSS {result['total_pss_mb']} MB, one RSS {result['one_process_rss_mb']} MB, "
        f"ratio {result['ratio']}"
    )
    return result


def memory(opts: argparse.Namespace, procs: Processes, workdir: Path) -> dict[str, Any]:
    env = {**os.environ, IMPORT_MB_ENV: str(opts.import_mb)}
    n, size, base = opts.workers, opts.import_mb, PER_PROCESS_MB
    copies = ["--children", str(n)]
    controls = {
        "fork_with_gc_freeze": (size + n * base, ["fork", *copies, "--freeze"], 1),
        "fork_without_gc_freeze": ((n + 1) * (size + base), ["fork", *copies], 1),
        "separate_imports": (n * (size + base), ["hold"], n),
    }
    return {
        "import_mb_requested": size,
        "workers": n,
        "neutrino": measured_if_room("neutrino", size + n * base, lambda: neutrino_memory(opts, procs, workdir, env)),
        "controls": {
            name: measured_if_room(name, need, lambda mode=mode, k=k: control(procs, workdir, env, mode, k))
            for name, (need, mode, k) in controls.items()
        },
        "note": "ratio = total PSS of all processes / VmRSS of one process holding the import "
        "(zygote, fork parent, or one of the separate processes); 1.0 = one copy shared by all",
    }
