"""The whole stack as local processes, for soak.py and chaos.py: model replicas, task pods, a gateway.

    gateway (python -m neutrino_gateway, SQLite file) ──ZeroMQ tcp──▶ orchestrator (per pod)
        (real binary, recycling on) ─fork─▶ zygote ─fork─▶ workers ──HTTP──▶ model server (per replica)

Every process is started in its own session by `_procs.Processes` and stopped by pid. Each
listens on a port fixed at start, so a killed service comes back where its peers look for it, as
behind a Kubernetes Service: a model replica on its port (the workers' NEUTRINO_MODEL_ECHO_URL),
a task pod on its tcp:// address (the gateway's --orchestrator), the gateway on its HTTP port and
the same SQLite file. Readiness is each service's own log line (and the gateway's /readyz), never
a fixed sleep. The app is `benchmarks/apps/soak_app.py`: `infer` records its token in
`ran_dir`, then calls the `echo` model.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _procs import Processes, children_of, free_tcp_port, session_members

REPO = Path(__file__).resolve().parents[1]
BINARY = REPO / "target" / "release" / "neutrino-orchestrator"
APP = "benchmarks.apps.soak_app:app"
MODEL = "echo"
READY_TIMEOUT_S = 60.0
# After the orchestrator is SIGKILLed, its zygote sees the control link close and exits, and the
# workers follow by PR_SET_PDEATHSIG: this bounds how long that may take before it is a finding.
POD_DEATH_GRACE_S = 10.0


@dataclass
class Service:
    """One long-lived process of the stack, restartable with the same argv on the same port."""

    name: str
    argv: list[str]
    log_path: Path
    ready_pattern: str
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_offset: int = 0  # where this incarnation's log starts
    starts: int = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Stack:
    procs: Processes
    workdir: Path
    pods: int = 2
    replicas: int = 1
    workers: int = 2
    max_tasks_per_worker: int = 20
    binary: Path = BINARY
    orchestrator_args: tuple[str, ...] = ()
    gateway_args: tuple[str, ...] = ()
    services: dict[str, Service] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ran_dir = self.workdir / "ran"
        self.ran_dir.mkdir(parents=True, exist_ok=True)
        python = sys.executable
        self.replica_urls = []
        for i in range(self.replicas):
            port = free_tcp_port()
            self.replica_urls.append(f"http://127.0.0.1:{port}")
            argv = [python, "-m", "neutrino_model_server", "--app", APP, "--model", MODEL, "--port", str(port)]
            self._add(f"model-{i}", argv, rf"model '{MODEL}' ready")
        self.pod_addresses = []
        worker_env = {
            **os.environ,
            f"NEUTRINO_MODEL_{MODEL.upper()}_URL": ",".join(self.replica_urls),
            "NEUTRINO_BENCH_RAN_DIR": str(self.ran_dir),
        }
        for i in range(self.pods):
            address = f"tcp://127.0.0.1:{free_tcp_port()}"
            self.pod_addresses.append(address)
            argv = [str(self.binary), "--app", APP, "--workers", str(self.workers), "--frontend", address]
            argv += ["--python", python, "--max-tasks-per-worker", str(self.max_tasks_per_worker)]
            argv += ["--grace-period", "5", *self.orchestrator_args]
            self._add(f"pod-{i}", argv, r"Orchestrator ready with \d+ worker", env=worker_env)
        self.gateway_port = free_tcp_port()
        self.url = f"http://127.0.0.1:{self.gateway_port}"
        self.db = self.workdir / "runs.db"
        argv = [python, "-m", "neutrino_gateway", "--port", str(self.gateway_port), "--db", str(self.db), "--no-auth"]
        for address in self.pod_addresses:
            argv += ["--orchestrator", address]
        self._add("gateway", [*argv, *self.gateway_args], r"gateway listening on http://")

    def _add(self, name: str, argv: list[str], ready: str, env: dict[str, str] | None = None) -> None:
        self.services[name] = Service(name, argv, self.workdir / f"{name}.log", ready, env)

    # -- starting and stopping ------------------------------------------------------------------

    def start(self) -> None:
        """Everything, in dependency order, each ready before the gateway is asked for /readyz."""
        names = [n for n in self.services if n != "gateway"]
        for name in names:
            self.spawn(name)
        for name in names:
            self.wait_ready(name)
        self.spawn("gateway")
        self.wait_ready("gateway")

    def spawn(self, name: str) -> None:
        service = self.services[name]
        if service.alive():
            raise RuntimeError(f"{name} is already running")
        service.log_offset = service.log_path.stat().st_size if service.log_path.exists() else 0
        with service.log_path.open("ab") as log:
            service.proc = self.procs.spawn(
                service.argv, cwd=REPO, env=service.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        service.starts += 1

    def restart(self, name: str) -> None:
        self.spawn(name)
        self.wait_ready(name)

    def wait_ready(self, name: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        service = self.services[name]
        rx = re.compile(service.ready_pattern)
        deadline = time.monotonic() + timeout_s
        while not rx.search(self.log(name)):
            if not service.alive():
                raise RuntimeError(
                    f"{name} exited ({service.proc and service.proc.returncode}):\n{self.log(name)[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready within {timeout_s}s:\n{self.log(name)[-3000:]}")
            time.sleep(0.02)  # polling the log file: the ready line is the signal
        if name == "gateway":
            self.wait_gateway_pods(timeout_s)

    def wait_gateway_pods(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until /readyz lists every task pod that is running as usable."""
        deadline = time.monotonic() + timeout_s
        while True:
            expected = {a for i, a in enumerate(self.pod_addresses) if self.services[f"pod-{i}"].alive()}
            ready = self.readyz()
            if ready.get("ready") and expected <= set(ready.get("task_pods", [])):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway /readyz after {timeout_s}s: {ready}\n{self.log('gateway')[-3000:]}")
            time.sleep(0.05)

    def readyz(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as reply:
                return dict(json.loads(reply.read()))
        except urllib.error.HTTPError as exc:
            return dict(json.loads(exc.read()))
        except (OSError, ValueError):
            return {}

    def log(self, name: str) -> str:
        """This incarnation's log."""
        service = self.services[name]
        if not service.log_path.exists():
            return ""
        with service.log_path.open("rb") as f:
            f.seek(service.log_offset)
            return f.read().decode(errors="replace")

    def full_log(self, name: str) -> str:
        path = self.services[name].log_path
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> dict[str, Any]:
        """SIGTERM every service (gateway first), as an operator would; how each went."""
        stops = {}
        for name in ["gateway", *(n for n in self.services if n != "gateway")]:
            service = self.services[name]
            if service.proc is not None and service.proc.returncode is None:
                stops[name] = self.procs.stop(service.proc)
        return stops

    # -- killing ----------------------------------------------------------------------------------

    def kill(self, name: str, with_zygote: bool = False) -> dict[str, Any]:
        """kill -9 one service. A task pod's workers are not killed: they must go by themselves
        (the zygote kills them when its control link closes; with `with_zygote`, the zygote is
        SIGKILLed too and PR_SET_PDEATHSIG must do it). Any still there after POD_DEATH_GRACE_S
        is a finding, and is killed then."""
        service = self.services[name]
        assert service.proc is not None
        pid = service.pid
        family = self.pod_family(name) if name.startswith("pod-") else []
        zygotes = children_of(pid) if with_zygote else []
        os.kill(pid, signal.SIGKILL)
        for zygote in zygotes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(zygote, signal.SIGKILL)
        service.proc.wait()
        what: dict[str, Any] = {"killed": name, "pid": pid}
        if zygotes:
            what["zygote_killed_too"] = zygotes
        if family:
            deadline = time.monotonic() + POD_DEATH_GRACE_S
            while (left := [p for p in family if _alive(p)]) and time.monotonic() < deadline:
                time.sleep(0.01)  # polling /proc: there is no event for "a non-child exited"
            what["children"] = len(family)
            what["children_gone_s"] = round(POD_DEATH_GRACE_S - max(0.0, deadline - time.monotonic()), 3)
            if left:
                self.findings.append(f"{name}: pids {left} outlived the SIGKILLed orchestrator by {POD_DEATH_GRACE_S}s")
                what["orphans"] = left
                for p in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p, signal.SIGKILL)
        return what

    def pod_family(self, name: str) -> list[int]:
        """The zygote and the workers of pod `name` (children, grandchildren of the orchestrator)."""
        zygotes = children_of(self.services[name].pid)
        return zygotes + [w for z in zygotes for w in children_of(z)]

    def workers_of(self, name: str) -> list[int]:
        return [w for z in children_of(self.services[name].pid) for w in children_of(z)]

    # -- what the benchmarks read ------------------------------------------------------------------

    def long_lived(self) -> dict[str, int]:
        """Pids of the long-lived processes now: each service, and each pod's zygote."""
        pids = {}
        for name, service in self.services.items():
            if not service.alive():
                continue
            pids[name.replace("pod-", "orchestrator-")] = service.pid
            if name.startswith("pod-"):
                zygotes = children_of(service.pid)
                if zygotes:
                    pids[name.replace("pod-", "zygote-")] = zygotes[0]
        return pids

    def recycles(self) -> int:
        return sum(self.full_log(n).count("Recycling worker") for n in self.services if n.startswith("pod-"))

    def executions(self) -> Counter[str]:
        """How many times each token's task ran, from the workers' files."""
        counts: Counter[str] = Counter()
        for path in self.ran_dir.glob("ran-*.log"):
            counts.update(line for line in path.read_text().splitlines() if line)
        return counts

    def gateway_metrics(self) -> dict[str, float]:
        """The gateway's run counters (this incarnation's)."""
        try:
            with urllib.request.urlopen(self.url + "/metrics", timeout=5) as reply:
                text = reply.read().decode()
        except OSError:
            return {}
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("neutrino_gateway_runs_") and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                found[key] = float(value)
        return found

    def runs_active(self) -> float | None:
        """Runs the gateway holds as unfinished now (its `neutrino_gateway_runs_active` gauge)."""
        return self.gateway_metrics().get("neutrino_gateway_runs_active")

    def problems(self, limit: int = 20) -> dict[str, list[str]]:
        """Lines at WARN or above, or tracebacks, from each service's log."""
        markers = ("WARN", "ERROR", "Traceback", "panicked", "CRITICAL")
        found = {}
        for name in self.services:
            lines = [line for line in self.full_log(name).splitlines() if any(m in line for m in markers)]
            if lines:
                found[name] = lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])
        return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rfind(")") + 2] != "Z"


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


__all__ = ["Stack", "open_fds", "rss_kb", "session_members"]
