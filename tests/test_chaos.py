"""Chaos, short and seeded (benchmarks/chaos.py): under load through the gateway, kill -9 workers, a
task pod, a model replica and the gateway, restart each as a supervisor would, and check that every
accepted run ends in exactly one terminal state. On failure the seed and the replay command are in
the assertion message. NEUTRINO_CHAOS_SEED picks another seed (the default is fixed, so CI replays
the same schedule every time).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import BINARY, ROOT, Orchestrator, free_port, start_orchestrator, wait_until
from .gateway_harness import Gateway, start_gateway

pytestmark = pytest.mark.timeout(240)

SEED = int(os.environ.get("NEUTRINO_CHAOS_SEED", "20261206"))
GATEWAY_APP = "tests.apps.gateway_app:app"
KINDS = {"kill_worker", "kill_pod", "kill_model", "kill_gateway"}


def test_chaos_every_accepted_run_ends_in_exactly_one_terminal_state() -> None:
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run `make setup` (cargo build --release) first")
    argv = ["--seed", str(SEED), "--rounds", "3", "--round-s", "6", "--rate", "20", "--json"]
    proc = subprocess.run(
        [sys.executable, "benchmarks/chaos.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=220
    )
    replay = f"seed {SEED}: uv run python benchmarks/chaos.py {' '.join(argv[:-1])}"
    assert proc.stdout, f"{replay}\nchaos.py printed no report (exit {proc.returncode}):\n{proc.stderr[-5000:]}"
    report = json.loads(proc.stdout)
    assert "error" not in report, f"{replay}\n{report['error']}"
    assert report["seed"] == SEED
    runs = report["runs"]
    assert runs["lost"] == 0 and runs["violations"] == 0, f"{replay}\n{json.dumps(runs, indent=2)}"
    assert report["gateway_runs_active_after"] == 0, f"{replay}: the gateway still holds runs it finished"
    assert runs["accepted"] > 0 and runs.get("outcomes", {}).get("succeeded", 0) > 0, f"{replay}\n{runs}"
    # The schedule really hit each kind of process, and every killed service came back.
    done = [e for e in report["events"] if "skipped" not in e["done"]]
    assert {e["action"] for e in done} == KINDS, f"{replay}\n{report['events']}"
    errors = [e for e in report["events"] if "error" in e["done"]]
    assert not errors, f"{replay}\n{errors}"
    # A SIGKILLed orchestrator's zygote and workers went by themselves (control link, PDEATHSIG).
    assert report["findings"] == [], f"{replay}\n{report['findings']}"
    pod_kills = [e for e in done if e["action"] == "kill_pod"]
    assert all(e["done"].get("children", 0) > 0 for e in pod_kills), pod_kills
    # Both ways a pod dies: the orchestrator alone (the zygote takes the workers down), and with its
    # zygote (only the workers' PR_SET_PDEATHSIG can).
    assert {bool(e["done"].get("zygote_killed_too")) for e in pod_kills} == {False, True}, pod_kills
    assert report["ok"] and proc.returncode == 0, f"{replay}\n{proc.stderr[-3000:]}"


def test_a_seed_replays_the_same_schedule() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import chaos
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    def plan(seed: int) -> list[tuple[float, str, int, float, float]]:
        events = chaos.schedule(random.Random(seed), 4, 6.0, 2, 2)
        return [(e.at_s, e.action, e.target, e.pick, e.down_s) for e in events]

    assert plan(SEED) == plan(SEED)
    assert plan(SEED) != plan(SEED + 1)
    assert {action for _, action, *_ in plan(SEED)} == KINDS


# -- the bugs chaos runs found, one focused test each ---------------------------------------------


def test_a_cancel_outlives_the_loss_of_the_runs_pod(tmp_path: Path) -> None:
    """A cancel (POST /v1/runs/{id}/cancel) of a run whose pod then stops answering: the run must end
    cancelled, not be sent to another pod (where it would run to success after its caller was told the
    cancel was taken)."""
    first = task_pod()
    second_address = f"tcp://127.0.0.1:{free_port()}"
    gw = start_gateway([first[1], second_address], tmp_path / "runs.db")
    second: Orchestrator | None = None
    try:
        run_id = gw.request("POST", "/v1/tasks/sleep?wait=0&retries=2", {"seconds": 3.0}).json["id"]
        wait_until(lambda: _started(gw, run_id), 10, "the run went to the first pod")
        second = start_orchestrator("--frontend", second_address, workers=1, app=GATEWAY_APP)
        # The first pod freezes: its pongs stop and it never hears the cancel.
        os.kill(first[0].proc.pid, signal.SIGSTOP)
        reply = gw.request("POST", f"/v1/runs/{run_id}/cancel")
        assert reply.status in (200, 202), reply.body
        run = gw.request("GET", f"/v1/runs/{run_id}?wait=20").json
        assert run["status"] == "cancelled", run
        assert gw.request("GET", f"/v1/runs/{run_id}").json["status"] == "cancelled"  # and it stays so
    finally:
        gw.stop()
        os.kill(first[0].proc.pid, signal.SIGKILL)
        first[0].stop()
        if second is not None:
            second.stop()


def _started(gw: Gateway, run_id: str) -> bool:
    return gw.request("GET", f"/v1/runs/{run_id}").json["status"] == "running"


def task_pod(workers: int = 1) -> tuple[Orchestrator, str]:
    tcp = f"tcp://127.0.0.1:{free_port()}"
    return start_orchestrator("--frontend", tcp, workers=workers, app=GATEWAY_APP), tcp
