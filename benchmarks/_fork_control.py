"""Control processes for the memory benchmark: the same app import, without Neutrino.

Run as a script (from the repository root) in one of two modes:

    python benchmarks/_fork_control.py fork --children N [--freeze] MODULE
    python benchmarks/_fork_control.py hold MODULE
    python benchmarks/_fork_control.py churn --children N [--zygote] MODULE

`fork` imports MODULE with the collector off (as the zygote does), optionally calls gc.freeze(),
then forks N children that each turn the collector on and run a full gc.collect(). `hold`
imports MODULE and runs gc.collect() in this one process (N of them make "separate imports").
Once every process has collected, one JSON line goes to stdout (`{"parent": pid, "children":
[pids], "import": {...}}`) and the processes stay up, idle, until SIGTERM, so the caller can read
their memory from /proc. Children leave when the parent does: they block on a pipe whose only
write end the parent holds.

`churn` is the floor under recycling: it imports MODULE as the zygote does (collector off,
gc.freeze()), with `--zygote` the zygote's own modules too (so the process is the zygote's size),
then forks N children one after another that each leave at once through
os._exit, and prints the CPU one such fork costs, parent and child together, and the minor page
faults of each side. No worker can be replaced for less, whatever it does once started.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import resource
import signal
import sys
import time
from typing import Any


def _import(module: str) -> dict[str, Any]:
    gc.disable()  # a collection during the import would only add noise; the zygote does the same
    imported = importlib.import_module(module)
    return dict(getattr(imported, "IMPORT_INFO", {}))


def _child(ready_w: int, hold_r: int) -> None:
    gc.enable()
    gc.collect()
    os.write(ready_w, b"r")
    os.read(hold_r, 1)  # returns b"" once the parent, the only writer, is gone


def fork(module: str, children: int, freeze: bool) -> None:
    info = _import(module)
    if freeze:
        gc.freeze()
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pids = []
    for _ in range(children):
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(ready_r)
                os.close(hold_w)
                _child(ready_w, hold_r)
            finally:
                os._exit(0)
        pids.append(pid)
    os.close(ready_w)
    os.close(hold_r)
    ready = 0
    while ready < children:
        chunk = os.read(ready_r, children)
        if not chunk:
            sys.exit(f"only {ready} of {children} children collected")
        ready += len(chunk)
    _report({"parent": os.getpid(), "children": pids, "import": info, "gc_freeze": freeze})


def hold(module: str) -> None:
    info = _import(module)
    gc.enable()
    gc.collect()
    _report({"parent": os.getpid(), "children": [], "import": info})


def churn(module: str, children: int, zygote: bool) -> None:
    if zygote:
        _import("neutrino_worker.zygote")
    info = _import(module)
    gc.freeze()
    before_self, before_children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    started = time.perf_counter()
    for _ in range(children):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    elapsed = time.perf_counter() - started
    after_self, after_children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)

    def cpu_ms(before: resource.struct_rusage, after: resource.struct_rusage) -> float:
        return (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000 / children

    def faults(before: resource.struct_rusage, after: resource.struct_rusage) -> float:
        return (after.ru_minflt - before.ru_minflt) / children

    parent, child = cpu_ms(before_self, after_self), cpu_ms(before_children, after_children)
    with open("/proc/self/status") as status:
        rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    print(
        json.dumps(
            {
                "forks": children,
                "parent_rss_kb": rss_kb,
                "cpu_ms_per_fork": round(parent + child, 3),
                "parent_cpu_ms": round(parent, 3),
                "child_cpu_ms": round(child, 3),
                # Minor faults (copy-on-write and first touches): unlike CPU time, the same on a
                # busy machine as on an idle one.
                "parent_faults_per_fork": round(faults(before_self, after_self), 1),
                "child_faults_per_fork": round(faults(before_children, after_children), 1),
                "wall_ms_per_fork": round(elapsed * 1000 / children, 3),
                "import": info,
            }
        ),
        flush=True,
    )


def _report(document: dict[str, Any]) -> None:
    print(json.dumps(document), flush=True)
    while True:
        signal.pause()  # until SIGTERM, whose default action ends the process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["fork", "hold", "churn"])
    parser.add_argument("module", help="the module to import, e.g. benchmarks.apps.big_import")
    parser.add_argument("--children", type=int, default=8)
    parser.add_argument("--freeze", action="store_true", help="gc.freeze() before forking")
    parser.add_argument("--zygote", action="store_true", help="churn: import the zygote's modules too")
    opts = parser.parse_args()
    sys.path.insert(0, os.getcwd())
    if opts.mode == "fork":
        fork(opts.module, opts.children, opts.freeze)
    elif opts.mode == "churn":
        churn(opts.module, opts.children, opts.zygote)
    else:
        hold(opts.module)


if __name__ == "__main__":
    main()
