"""`neutrino serve ROLE`, the container entry point, as real processes on loopback: a model
replica, a task pod whose workers find it through NEUTRINO_MODEL_URL_TEMPLATE, and the gateway
in front; every role drains and exits 0 on SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import BINARY, ROOT, ProcessLog, free_port, http_ok, wait_until

APPS = ROOT / "tests" / "apps"


@pytest.mark.timeout(120)
def test_each_role_serves_and_drains(tmp_path: Path) -> None:
    model_port, pod_port, metrics_port, gateway_port = (free_port() for _ in range(4))
    env = {
        **os.environ,
        "NEUTRINO_ORCHESTRATOR_BIN": str(BINARY),
        "NEUTRINO_MODEL_URL_TEMPLATE": f"http://127.0.0.1:{model_port}",  # as a Service name would be
        "NEUTRINO_APP": "dev_stack_app:app",  # settings from the environment, as in a container
    }
    serve = [sys.executable, "-m", "neutrino", "serve"]
    loopback = ["--host", "127.0.0.1"]
    roles = {
        "model": [*serve, "model", "doubler", *loopback, "--port", str(model_port), "--app-dir", str(APPS)],
        "task-pod": [*serve, "task-pod", *loopback, "--port", str(pod_port), "--metrics-port", str(metrics_port)],
        "gateway": [*serve, "gateway", *loopback, "--port", str(gateway_port), "--no-auth"],
    }
    roles["task-pod"] += ["--app-dir", str(APPS), "--grace-period", "5"]  # the orchestrator's own flags
    roles["gateway"] += ["--orchestrator", f"tcp://127.0.0.1:{pod_port}", "--db", str(tmp_path / "runs.db")]
    procs: dict[str, ProcessLog] = {}
    try:
        for role, cmd in roles.items():
            proc = subprocess.Popen(
                cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
            )
            procs[role] = ProcessLog(proc=proc)
            procs[role].follow()
        wait_until(lambda: http_ok(f"http://127.0.0.1:{model_port}/v2/health/ready"), 60, "model ready")
        wait_until(lambda: http_ok(f"http://127.0.0.1:{metrics_port}/readyz"), 60, "task pod ready")
        wait_until(lambda: http_ok(f"http://127.0.0.1:{gateway_port}/readyz"), 60, "gateway ready")
        # serve task-pod exec'd the orchestrator: same pid, the binary's name.
        assert os.readlink(f"/proc/{procs['task-pod'].proc.pid}/exe") == str(BINARY.resolve())
        conn = http.client.HTTPConnection("127.0.0.1", gateway_port, timeout=30)
        conn.request(
            "POST", "/v1/tasks/double", body=json.dumps({"x": 21}), headers={"Content-Type": "application/json"}
        )
        reply = conn.getresponse()
        assert (reply.status, json.loads(reply.read())["result"]) == (200, 42)
    finally:
        for role in ("gateway", "task-pod", "model"):
            if role in procs and procs[role].proc.poll() is None:
                procs[role].proc.send_signal(signal.SIGTERM)
        codes = {role: p.proc.wait(timeout=30) for role, p in procs.items()}
    assert codes == {"model": 0, "task-pod": 0, "gateway": 0}, {r: p.log[-2000:] for r, p in procs.items()}
