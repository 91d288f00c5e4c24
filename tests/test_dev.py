"""`neutrino dev` end to end: the real command starts the real gateway, task pods (orchestrator +
workers) and model servers as local processes; the tests talk to them over HTTP only.

Each test copies the app into its own temp folder (the dev root, so the gateway's run records and
any edit stay there), starts `python -m neutrino dev` on free ports, waits for its "is ready"
banner, and at the end sends SIGINT and checks that every process it started is gone.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from examples.models.app import ZERO

from .conftest import BINARY, ROOT, ProcessLog, wait_until

APP_SOURCE = ROOT / "tests" / "apps" / "dev_stack_app.py"
APP = "devapp.app:app"
TERMINAL = {"succeeded", "failed", "cancelled"}


@dataclass(kw_only=True)
class Dev(ProcessLog):
    root: Path
    temp: Path  # the stack's TMPDIR: where the orchestrators make their run directories and ipc sockets

    @property
    def api(self) -> tuple[str, int]:
        m = self.wait_for(r"API\s+http://([\d.]+):(\d+)")
        return m.group(1), int(m.group(2))

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        host, port = self.api
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
            reply = conn.getresponse()
            return reply.status, json.loads(reply.read() or b"null")
        finally:
            conn.close()

    def descendants(self) -> set[int]:
        """Every live process under `neutrino dev` (services, zygotes, workers), from /proc."""
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        found, frontier = set(), {self.proc.pid}
        while frontier:
            frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
            found |= frontier
        return found

    def orchestrator_pid(self, pod: str) -> int:
        """The pid of task pod `pod`'s orchestrator, found by the frontend it logged."""
        port = self.wait_for(rf"{pod}\s+\| \[INFO\] Accepting tasks on tcp://[\d.]+:(\d+)").group(1)
        for pid in self.descendants():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"neutrino-orchestrator") and f"tcp://127.0.0.1:{port}".encode() in argv:
                return pid
        raise AssertionError(f"no orchestrator process for {pod} (port {port})")


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Any]:
    started: list[Dev] = []
    temps: list[Path] = []

    def _start(*flags: str, app: str = APP, root: Path = tmp_path) -> Dev:
        if app == APP:
            (tmp_path / "devapp").mkdir(exist_ok=True)
            (tmp_path / "devapp" / "__init__.py").touch()
            shutil.copy(APP_SOURCE, tmp_path / "devapp" / "app.py")
        cmd = [sys.executable, "-m", "neutrino", "dev", app, "--no-color", "--port", "0", "--pod-port", "0"]
        cmd += ["--metrics-port", "0", "--model-port", "0", "--grace-period", "5", *flags]
        temp = Path(tempfile.mkdtemp(prefix="nd-", dir="/tmp"))  # short: ipc paths stay under 107 bytes
        temps.append(temp)
        env = {**os.environ, "NEUTRINO_ORCHESTRATOR_BIN": str(BINARY), "TMPDIR": str(temp)}
        env.pop("XDG_RUNTIME_DIR", None)
        read, write = os.pipe()
        proc = subprocess.Popen(cmd, cwd=root, stdout=write, stderr=write, stdin=subprocess.DEVNULL, env=env)
        os.close(write)
        stream = os.fdopen(read, errors="replace")
        stack = Dev(proc=proc, stream=stream, root=root, temp=temp)  # type: ignore[arg-type]
        stack.follow()
        started.append(stack)
        stack.wait_for(r"is ready \(", timeout=60)
        return stack

    yield _start
    for stack in started:
        if stack.proc.poll() is None:
            stack.proc.send_signal(signal.SIGINT)
            try:
                stack.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stack.proc.kill()
                stack.proc.wait()
    for temp in temps:
        shutil.rmtree(temp, ignore_errors=True)


def paste_curl_lines(stack: Dev) -> list[str]:
    """Run each `curl` line of the ready banner in bash, as a user would paste it; each must answer 200."""
    curls = re.findall(r"^\s+(curl .*)$", stack.log, flags=re.MULTILINE)
    for line in curls:
        shell = ["bash", "-c", line + " -s -w '\\n%{http_code}'"]
        out = subprocess.run(shell, capture_output=True, text=True, timeout=30)
        assert out.stdout.rsplit("\n", 1)[-1] == "200", (line, out.stdout, out.stderr)
    return curls


def stop_and_check_clean(stack: Dev, killed: frozenset[int] = frozenset()) -> None:
    """SIGINT drains and stops everything: exit 0, no process left, no run directory or socket file left
    (but those of orchestrators the test SIGKILLed, which cannot clean up: `neutrino-<pid>-*`)."""
    children = stack.descendants()
    assert children, "neutrino dev started no processes"
    assert list(stack.temp.iterdir()), "the task pods' run directories (where the check below looks) are not there"
    stack.proc.send_signal(signal.SIGINT)
    assert stack.proc.wait(timeout=30) == 0, stack.log
    stack.wait_for(r"dev \| stopped")
    left = {pid for pid in children if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)}
    assert not left, f"processes outlived neutrino dev: {left}\n{stack.log}"
    left_dirs = [p for p in stack.temp.iterdir() if not any(p.name.startswith(f"neutrino-{pid}-") for pid in killed)]
    assert not left_dirs, f"left behind: {list(stack.temp.rglob('*'))}"
    sockets = [p for p in (stack.root / ".neutrino").rglob("*") if p.is_socket()]
    assert not sockets, sockets


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.timeout(180)
def test_dev_stack_serves_tasks_models_and_survives_a_killed_pod(dev: Any) -> None:
    stack = dev("--pods", "2")
    names = re.findall(r"\d+ services: (.*)", stack.log)[0]
    assert names.split(", ") == ["model-doubler-1", "pod-1", "pod-2", "gateway"]

    # The curl lines the banner prints work as printed (a plain task, a task calling the model, the model).
    curls = paste_curl_lines(stack)
    assert any("/v1/tasks/double" in c for c in curls) and any("/v1/models/doubler/predict" in c for c in curls)
    status, run = stack.request("POST", "/v1/tasks/double", {"x": 21})
    assert (status, run["result"]) == (200, 42)
    status, out = stack.request("POST", "/v1/models/doubler/predict", {"inputs": 5})
    assert (status, out) == (200, {"outputs": 10})

    # Load: 200 runs that keep workers busy, then SIGKILL one task pod's orchestrator mid-way.
    def submit(i: int) -> str:
        status, run = stack.request("POST", "/v1/tasks/double?wait=0", {"x": i, "delay_s": 0.01})
        assert status == 202, run
        return str(run["id"])

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(submit, range(100)))
        victim = stack.orchestrator_pid("pod-1")
        os.kill(victim, signal.SIGKILL)
        ids += list(pool.map(submit, range(100, 200)))

    # Every run ends in exactly one terminal state, and with retries=3 none is lost to the dead pod.
    finals: dict[str, dict[str, Any]] = {}

    def all_final() -> bool:
        for run_id in ids:
            if run_id not in finals:
                status, run = stack.request("GET", f"/v1/runs/{run_id}?wait=5")
                assert status in (200, 409, 500), run
                if run.get("status") in TERMINAL:
                    finals[run_id] = run
        return len(finals) == len(ids)

    wait_until(all_final, timeout=90, what="every run finished")
    outcomes = {run_id: (run["status"], run.get("result")) for run_id, run in finals.items()}
    wrong = {k: finals[k] for k, (status, result) in outcomes.items() if status != "succeeded"}
    assert not wrong, wrong
    assert sorted(result for _, result in outcomes.values()) == sorted(2 * i for i in range(200))

    # dev noticed the dead pod, restarted it, and it came back.
    stack.wait_for(r"pod-1\s+\| killed by SIGKILL; restarting in")
    stack.wait_for(r"pod-1\s+\| ready again", timeout=30)
    stop_and_check_clean(stack, killed=frozenset({victim}))


@pytest.mark.timeout(120)
def test_the_models_example_prints_curl_lines_that_work(dev: Any) -> None:
    """`make dev`'s stack: a plain task, tasks that call the digits model, and the model through the gateway."""
    stack = dev(app="examples.models.app:app", root=ROOT)
    curls = paste_curl_lines(stack)
    assert [c.split()[-1].split("/", 3)[-1] for c in curls] == [
        "v1/tasks/ink",
        "v1/tasks/classify_digit",
        "v1/tasks/classify_digits",
        "v1/models/digits/predict",
    ]
    assert stack.request("POST", "/v1/tasks/classify_digit", {"pixels": ZERO})[1]["result"] == 0
    stop_and_check_clean(stack)


@pytest.mark.timeout(120)
def test_reload_restarts_on_an_edited_task(dev: Any) -> None:
    stack = dev("--reload")
    assert stack.request("POST", "/v1/tasks/version", {})[1]["result"] == "v1"
    app_file = stack.root / "devapp" / "app.py"
    app_file.write_text(app_file.read_text().replace('VERSION = "v1"', 'VERSION = "v2"'))
    stack.wait_for(r"devapp/app.py changed; restarting")

    def answers_v2() -> bool:
        try:
            status, run = stack.request("POST", "/v1/tasks/version", {}, timeout=10)
        except OSError:
            return False
        time.sleep(0.05)  # between polls of a restarting pod
        return status == 200 and run["result"] == "v2"

    wait_until(answers_v2, timeout=60, what="the edited task answering")
    stop_and_check_clean(stack)


@pytest.mark.timeout(60)
def test_print_services_json_is_what_dev_runs(tmp_path: Path) -> None:
    (tmp_path / "devapp").mkdir()
    (tmp_path / "devapp" / "__init__.py").touch()
    shutil.copy(APP_SOURCE, tmp_path / "devapp" / "app.py")
    cmd = [sys.executable, "-m", "neutrino", "dev", APP, "--pods", "2", "--print-services", "--json"]
    doc = json.loads(subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=True, timeout=30).stdout)
    services = {s["name"]: s for s in doc["services"]}
    assert list(services) == ["model-doubler-1", "pod-1", "pod-2", "gateway"]
    assert doc["api_url"] == "http://127.0.0.1:8000" and doc["docs_url"] == "http://127.0.0.1:8000/docs"
    pod = services["pod-1"]
    assert pod["cmd"][1:5] == ["-m", "neutrino", "serve", "task-pod"]
    assert pod["env"]["NEUTRINO_MODEL_DOUBLER_URL"] == "http://127.0.0.1:8100"  # workers find the model themselves
    assert pod["readiness_url"] == "http://127.0.0.1:9100/readyz" and services["pod-2"]["cmd"][10] == "5556"
    assert pod["deps"] == ["devapp"] and pod["resource_deps"] == ["model-doubler-1"]
    gateway = services["gateway"]
    assert gateway["resource_deps"] == ["pod-1", "pod-2"] and gateway["deps"] == []
    assert "tcp://127.0.0.1:5555" in gateway["cmd"] and "tcp://127.0.0.1:5556" in gateway["cmd"]
    assert "doubler=http://127.0.0.1:8100" in gateway["cmd"]


@pytest.mark.timeout(60)
def test_dev_refuses_a_bad_app_clearly(tmp_path: Path) -> None:
    def dev(app: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "neutrino", "dev", app]
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=30)

    (tmp_path / "broken.py").write_text("import no_such_module_here\n")
    run = dev("broken:app")
    assert run.returncode == 3 and "ModuleNotFoundError" in run.stderr and "failed to import" in run.stderr
    (tmp_path / "notapp.py").write_text("app = 42\n")
    run = dev("notapp:app")
    assert run.returncode == 2 and "not a neutrino.App" in run.stderr
