"""How long `neutrino dev` takes from the command to "is ready" (every service answering its
readiness probe), beside the floor: the slowest single thing it has to wait for, measured alone
in the same run (a fresh Python that imports the app and runs each model's `load()`, and one
orchestrator to its first ready pool).

    uv run python benchmarks/dev_ready.py --json                       # examples.models.app:app, 3 runs
    uv run python benchmarks/dev_ready.py --app examples.quickstart.app:app --runs 5

Ports are free ones picked per run; every process is stopped by `neutrino dev` itself (SIGINT).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import cpu_seconds, other_load
from _procs import free_tcp_port, log

ROOT = Path(__file__).resolve().parents[1]
BINARY = ROOT / "target" / "release" / "neutrino-orchestrator"
READY = re.compile(rb"is ready \(([\d.]+) s\)")

LOAD_FLOOR = """
import importlib, sys, time
t0 = time.perf_counter()
module, _, attr = sys.argv[1].partition(":")
app = getattr(importlib.import_module(module), attr)
for model in app.models.values():
    instance = model.cls()
    instance.load()
print(time.perf_counter() - t0)
"""


def dev_ready(app: str, pods: int) -> dict[str, float]:
    """One cold start of `neutrino dev`: seconds to the banner, as seen from outside and as it reports."""
    cmd = [sys.executable, "-m", "neutrino", "dev", app, "--no-color", "--pods", str(pods)]
    cmd += ["--port", "0", "--pod-port", "0", "--metrics-port", "0", "--model-port", "0"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if m := READY.search(line):
                outside = time.perf_counter() - t0
                return {"ready_s": round(outside, 3), "reported_s": float(m.group(1))}
        raise SystemExit(f"neutrino dev exited ({proc.wait()}) before it was ready")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load_floor(app: str) -> float:
    """A fresh interpreter that imports the app and loads every model once: what a model server must do."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", LOAD_FLOOR, app], cwd=ROOT, check=True, capture_output=True)
    return round(time.perf_counter() - t0, 3)


def orchestrator_floor(app: str) -> float:
    """One orchestrator alone, from exec to its /readyz answering 200."""
    import urllib.request

    port, metrics = free_tcp_port(), free_tcp_port()
    cmd = [str(BINARY), "--app", app, "--frontend", f"tcp://127.0.0.1:{port}", "--metrics", f"127.0.0.1:{metrics}"]
    cmd += ["--python", sys.executable, "--grace-period", "5"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/readyz", timeout=1) as reply:
                    if reply.status == 200:
                        return round(time.perf_counter() - t0, 3)
            except OSError:
                time.sleep(0.01)
            if proc.poll() is not None:
                raise SystemExit(f"the orchestrator exited ({proc.returncode}) before it was ready")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--app", default="examples.models.app:app")
    parser.add_argument("--pods", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    args = parser.parse_args()
    if not BINARY.exists():
        raise SystemExit(f"{BINARY} is missing: run `make setup` first")
    os.environ.setdefault("NEUTRINO_ORCHESTRATOR_BIN", str(BINARY))
    before, started = cpu_seconds(), time.perf_counter()
    runs, loads, orchestrators = [], [], []
    for i in range(args.runs):  # alternate, so machine noise falls on both alike
        log(f"run {i + 1}/{args.runs}: neutrino dev {args.app}")
        runs.append(dev_ready(args.app, args.pods))
        loads.append(load_floor(args.app))
        orchestrators.append(orchestrator_floor(args.app))
    ready = [r["ready_s"] for r in runs]
    floor = [max(a, b) for a, b in zip(loads, orchestrators, strict=True)]
    report = {
        "app": args.app,
        "pods": args.pods,
        "runs": runs,
        "ready_s_p50": round(statistics.median(ready), 3),
        "floor": {
            "import_and_load_models_s": loads,
            "orchestrator_to_ready_s": orchestrators,
            "slowest_service_alone_s_p50": round(statistics.median(floor), 3),
        },
        "ratio_to_floor": round(statistics.median(ready) / statistics.median(floor), 2),
        "targets": {"ready_under_5s": statistics.median(ready) < 5.0},
        "machine": other_load(before, time.perf_counter() - started),
    }
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
