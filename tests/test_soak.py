"""A one-minute soak through the whole stack (benchmarks/soak.py --minutes 1): gateway, two real task
pods recycling their workers every 25 tasks, workers calling a real model server. Every run is
answered exactly once and runs exactly once; the orchestrators and zygotes do not leak descriptors.

The ten-minute version, and what its numbers mean, is in benchmarks/README.md.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import BINARY, ROOT

pytestmark = pytest.mark.timeout(300)

# Workers are replaced every 25 tasks, so a minute at 50 runs/s recycles about 120 of them. A leak
# of one descriptor per worker in the orchestrator (a socket or pipe per worker never closed) or in
# the zygote (a start-up pipe) would add that many; their own sockets and pipes barely move.
# HTTP-facing processes are left out: their descriptors follow the number of open connections.
FD_GROWTH_BOUND = 16
MIN_RECYCLES = 30


def test_a_one_minute_soak_answers_every_run_exactly_once() -> None:
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run `make setup` (cargo build --release) first")
    proc = subprocess.run(
        [sys.executable, "benchmarks/soak.py", "--minutes", "1", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.stdout, f"soak.py printed no report (exit {proc.returncode}):\n{proc.stderr[-5000:]}"
    report = json.loads(proc.stdout)
    assert "error" not in report, report["error"]
    runs = report["runs"]
    assert runs["lost"] == 0 and runs["violations"] == 0, json.dumps(runs, indent=2)
    assert runs["submitted"] == runs["accepted"] > 0, runs
    assert runs["outcomes"] == {"succeeded": runs["accepted"]}, runs
    assert runs["executions"] == {"once": runs["accepted"]}, runs  # nothing lost, nothing run twice
    assert report["gateway_runs_active_after"] == 0  # every finished run left the gateway's memory
    assert report["recycles"] >= MIN_RECYCLES, report["recycles"]
    processes = report["processes"]
    assert {"gateway", "model-0", "orchestrator-0", "orchestrator-1", "zygote-0", "zygote-1"} <= set(processes)
    for name, p in processes.items():
        assert len(p["pids"]) == 1, f"{name} was restarted during the soak: {p['pids']}"
        if name.startswith(("orchestrator-", "zygote-")):
            growth = p["fds"]["last"] - p["fds"]["first"]
            assert growth <= FD_GROWTH_BOUND, f"{name}: {growth} more open descriptors after the soak: {p['fds']}"
    assert report["ok"] and proc.returncode == 0, proc.stderr[-3000:]
