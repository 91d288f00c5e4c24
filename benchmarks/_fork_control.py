"""Control processes for the memory benchmark: the same app import, without Neutrino.

Run as a script (from the repository root) in one of two modes:

    python benchmarks/_fork_control.py fork --children N [--freeze] MODULE
    python benchmarks/_fork_control.py hold MODULE

`fork` imports MODULE with the collector off (as the zygote does), optionally calls gc.freeze(),
then forks N children that each turn the collector on and run a full gc.collect(). `hold`
imports MODULE and runs gc.collect() in this one process (N of them make "separate imports").
Once every process has collected, one JSON line goes to stdout (`{"parent": pid, "children":
[pids], "import": {...}}`) and the processes stay up, idle, until SIGTERM, so the caller can read
their memory from /proc. Children leave when the parent does: they block on a pipe whose only
write end the parent holds.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import signal
import sys
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


def _report(document: dict[str, Any]) -> None:
    print(json.dumps(document), flush=True)
    while True:
        signal.pause()  # until SIGTERM, whose default action ends the process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["fork", "hold"])
    parser.add_argument("module", help="the module to import, e.g. benchmarks.apps.big_import")
    parser.add_argument("--children", type=int, default=8)
    parser.add_argument("--freeze", action="store_true", help="gc.freeze() before forking")
    opts = parser.parse_args()
    sys.path.insert(0, os.getcwd())
    if opts.mode == "fork":
        fork(opts.module, opts.children, opts.freeze)
    else:
        hold(opts.module)


if __name__ == "__main__":
    main()
