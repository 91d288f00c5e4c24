"""The Compose stack (deploy/compose.yaml) from images built here with no registry, driven through the
gateway only: tasks and model calls; one task pod killed (SIGKILL) under load, no run lost; the other
stopped (SIGTERM, drained) while runs wait in its queue, no run lost; the gateway restarted, its finished
runs still there by id.

The images come from scripts/images.sh (local base images from debootstrap, then every service image
and the models example). The task pods run the example plus one task that holds a worker
(tests/apps/compose_app.py), layered on the example's image and swapped in by a small override file;
everything else is the stack as users start it. Each test module run has its own Compose project
(`neutrino-test-...`), taken down with its volumes at the end.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, free_port

COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
TAG = "dev"
TEST_IMAGE = f"neutrino/compose-test-task-pod:{TAG}"  # the example's task-pod image + tests/apps/compose_app.py
TOKEN = "compose-test-token"
TERMINAL = {"succeeded", "failed", "cancelled"}
GRACE_PERIOD_S = 30  # the task pods' NEUTRINO_GRACE_PERIOD_S in deploy/compose.yaml
# A handwritten 0 (examples/models/app.py's ZERO): the model answers 0.
ZERO = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0]
ZERO += [0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]

pytestmark = [
    pytest.mark.skipif(shutil.which("docker") is None, reason="no docker command: the Compose stack needs Docker"),
    # The first test builds every image: minutes on 2 cores from an empty engine (the Rust build dominates).
    pytest.mark.timeout(1500),
]

OVERRIDE = f"""
services:
  task-pod-1:
    image: {TEST_IMAGE}
  task-pod-2:
    image: {TEST_IMAGE}
"""
TEST_IMAGE_DOCKERFILE = f"""
FROM neutrino/example-models-task-pod:{TAG}
COPY compose_app.py ./
ENV NEUTRINO_APP=compose_app:app
"""


def run(cmd: list[str], *, timeout: float = 120, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, input=stdin, cwd=ROOT)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out.stdout


def poll(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Wait for a readiness signal, checking every `interval` seconds; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)


@dataclass
class Stack:
    """One Compose project of deploy/compose.yaml (+ the test override), and HTTP calls to its gateway."""

    project: str
    override: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 300) -> str:
        files = ["-f", str(COMPOSE_FILE), "-f", str(self.override)]
        return run(["docker-compose", "-p", self.project, *files, *args], timeout=timeout, env=self.env)

    def container(self, service: str) -> str:
        ids = self.compose("ps", "-q", service).split()
        assert len(ids) == 1, (service, ids)
        return ids[0]

    def inspect(self, service: str, template: str) -> str:
        return run(["docker", "inspect", "-f", template, self.container(service)]).strip()

    def healthy(self, *services: str) -> bool:
        return all(self.inspect(s, "{{.State.Health.Status}}") == "healthy" for s in services)

    def pod_metric(self, service: str, sample: str) -> float:
        """One sample (`name` or `name{labels}`) from a task pod's /metrics, read from inside the container
        (port 9090 is not published)."""
        script = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9090/metrics').read().decode())"
        text = run(["docker", "exec", self.container(service), "python", "-c", script])
        values = [line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")]
        return sum(float(value) for key, value in values if key == sample)

    @contextlib.contextmanager
    def logs_on_failure(self) -> Iterator[None]:
        """The services' last log lines in the report of a failing test."""
        try:
            yield
        except BaseException:
            print(self.compose("logs", "--no-color", "--tail=150"))
            raise

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            data = None if body is None else json.dumps(body).encode()
            if data is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            reply = conn.getresponse()
            return reply.status, json.loads(reply.read() or b"null")
        finally:
            conn.close()

    def ready(self, pods: int = 1) -> bool:
        """The gateway answers /readyz 200 and uses at least `pods` task pods."""
        try:
            status, body = self.request("GET", "/readyz", timeout=2)
        except OSError:
            return False
        return status == 200 and len(body["task_pods"]) >= pods

    def submit(self, task: str, args: dict[str, Any], retries: int) -> str:
        status, body = self.request("POST", f"/v1/tasks/{task}?wait=0&retries={retries}", args)
        assert status == 202, (status, body)
        return str(body["id"])

    def finish(self, ids: list[str], timeout: float = 120) -> dict[str, dict[str, Any]]:
        """Every run's record once it is terminal (each read with a server-side long poll)."""
        deadline = time.monotonic() + timeout

        def final(run_id: str) -> dict[str, Any]:
            while time.monotonic() < deadline:
                status, body = self.request("GET", f"/v1/runs/{run_id}?wait=10")
                assert status == 200, (status, body)
                if body["status"] in TERMINAL:
                    return dict(body)
            raise AssertionError(f"run {run_id} not finished within {timeout} s: {body}")

        with ThreadPoolExecutor(16) as pool:
            return dict(zip(ids, pool.map(final, ids), strict=True))


@pytest.fixture(scope="module")
def images() -> None:
    """Every image, built from this checkout with no registry (the same command as `make images`)."""
    run(["bash", "scripts/images.sh"], timeout=1400)
    run(["docker", "build", "--quiet", "-t", TEST_IMAGE, "-f", "-", "tests/apps"], stdin=TEST_IMAGE_DOCKERFILE)


@pytest.fixture(scope="module")
def stack(images: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    override = tmp_path_factory.mktemp("compose") / "override.yaml"
    override.write_text(OVERRIDE)
    port = free_port()
    env = {**os.environ, "NEUTRINO_PORT": str(port), "NEUTRINO_AUTH_TOKEN": TOKEN, "NEUTRINO_TAG": TAG}
    project = f"neutrino-test-{uuid.uuid4().hex[:8]}"
    stack = Stack(project=project, override=override, port=port, env=env)
    try:
        started = time.monotonic()
        stack.compose("up", "-d")
        poll(lambda: stack.ready(pods=2), 180, "the gateway ready with both task pods")
        services = ("gateway", "task-pod-1", "task-pod-2", "neutrino-model-digits")
        poll(lambda: stack.healthy(*services), 180, "every service healthy", interval=0.5)
        print(f"compose up -> ready: {time.monotonic() - started:.1f} s")
        yield stack
    except BaseException:
        print(stack.compose("logs", "--no-color", "--tail=200"))
        raise
    finally:
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "10")


# Every run the tests finished, with what it ended as: checked again after the gateway restarts.
FINISHED: dict[str, dict[str, Any]] = {}


def test_images_hold_no_build_tools_and_run_as_an_unprivileged_user(images: None) -> None:
    for image in (f"neutrino/task-pod:{TAG}", f"neutrino/gateway:{TAG}", f"neutrino/model-server:{TAG}"):
        assert run(["docker", "image", "inspect", "-f", "{{.Config.User}}", image]).strip() == "10001:10001"
        probe = "import shutil; print([t for t in ('gcc', 'cc', 'g++', 'cargo', 'rustc', 'uv') if shutil.which(t)])"
        found = run(["docker", "run", "--rm", "--entrypoint", "python", image, "-c", probe]).strip()
        assert found == "[]", (image, found)
    binary = ["docker", "run", "--rm", "--entrypoint", "neutrino-orchestrator", f"neutrino/task-pod:{TAG}", "--version"]
    assert run(binary).startswith("neutrino-orchestrator ")


def test_tasks_and_model_calls_through_the_gateway(stack: Stack) -> None:
    with stack.logs_on_failure():
        status, tasks = stack.request("GET", "/v1/tasks")
        assert status == 200
        assert {"ink", "classify_digit", "classify_digits", "hold"} <= {t["name"] for t in tasks["tasks"]}, tasks

        status, record = stack.request("POST", "/v1/tasks/ink", {"pixels": ZERO})  # a plain task
        assert (status, record["status"]) == (200, "succeeded") and 0 < record["result"] < 1, record
        status, record = stack.request("POST", "/v1/tasks/classify_digit", {"pixels": ZERO})  # a task calling the model
        assert (status, record["result"]) == (200, 0), record
        status, record = stack.request("POST", "/v1/tasks/classify_digits", {"images": [ZERO] * 5})
        assert (status, record["result"]) == (200, [0] * 5), record
        FINISHED.update(stack.finish([record["id"]]))  # the full record, as GET /v1/runs/{id} has it

        status, out = stack.request("POST", "/v1/models/digits/predict", {"inputs": ZERO})  # the model, directly
        assert (status, out) == (200, {"outputs": 0}), out
        status, ready = stack.request("GET", "/v2/models/digits/ready")
        assert status == 200, ready


def test_a_task_pod_killed_under_load_loses_no_run(stack: Stack) -> None:
    with stack.logs_on_failure():
        victim = "task-pod-1"
        with ThreadPoolExecutor(8) as pool:  # about 6 s of work for 4 workers
            retried = list(pool.map(lambda i: stack.submit("hold", {"seconds": 0.25, "tag": i}, retries=3), range(80)))
            model = list(pool.map(lambda _: stack.submit("classify_digit", {"pixels": ZERO}, retries=3), range(16)))
            once = list(pool.map(lambda i: stack.submit("hold", {"seconds": 0.25, "tag": i}, retries=0), range(16)))
        # SIGKILL while the victim's workers are busy with some of those runs.
        poll(lambda: stack.pod_metric(victim, 'neutrino_orchestrator_workers{state="busy"}') > 0, 30, "victim busy")
        run(["docker", "kill", stack.container(victim)])

        finals = stack.finish(retried + model + once)
        FINISHED.update(finals)
        # Runs whose policy allows a retry all succeed, each with its own answer.
        assert [finals[i]["status"] for i in retried + model] == ["succeeded"] * 96, finals
        assert [finals[i]["result"] for i in retried] == list(range(80))
        assert [finals[i]["result"] for i in model] == [0] * 16
        # A run that may not be retried either finished, or failed saying its pod was lost mid-run.
        for run_id in once:
            final = finals[run_id]
            assert final["status"] == "succeeded" or final["error"]["kind"] == "pod_lost", final
        # And the kill did hit runs in flight: some were sent again, or failed as pod_lost.
        assert any(finals[i]["attempts"] > 1 for i in retried + model) or any(
            finals[i]["status"] == "failed" for i in once
        ), finals

        # The killed pod comes back (Docker does not restart a container that `docker kill` stopped).
        run(["docker", "start", stack.container(victim)])
        poll(lambda: stack.healthy(victim) and stack.ready(pods=2), 120, "the killed task pod back in use")


def test_a_stopped_task_pod_drains_its_queue_and_loses_no_run(stack: Stack) -> None:
    with stack.logs_on_failure():
        victim = "task-pod-2"
        with ThreadPoolExecutor(8) as pool:  # 48 x 0.5 s on 4 workers: runs wait in both pods' queues
            ids = list(pool.map(lambda i: stack.submit("hold", {"seconds": 0.5, "tag": i}, retries=0), range(48)))
        poll(lambda: stack.pod_metric(victim, "neutrino_orchestrator_queue_depth") > 0, 30, "runs queued in the victim")

        stopped: dict[str, float] = {}

        def stop() -> None:
            started = time.monotonic()
            run(["docker", "stop", "-t", str(GRACE_PERIOD_S + 5), stack.container(victim)], timeout=120)
            stopped["s"] = time.monotonic() - started

        stopper = threading.Thread(target=stop)
        stopper.start()
        finals = stack.finish(ids)
        stopper.join(timeout=120)
        FINISHED.update(finals)

        # Drained: runs the victim had not started went to the other pod without spending an attempt, and the
        # ones it was running finished first. None failed, though none may be retried.
        assert [finals[i]["status"] for i in ids] == ["succeeded"] * len(ids), finals
        assert [finals[i]["result"] for i in ids] == list(range(48))
        assert all(finals[i]["attempts"] == 1 for i in ids), finals
        # It stopped by itself well inside its grace period (no SIGKILL from Docker: exit 0, not 137).
        assert stack.inspect(victim, "{{.State.ExitCode}}") == "0"
        assert stopped["s"] < GRACE_PERIOD_S, stopped


def test_finished_runs_survive_a_gateway_restart(stack: Stack) -> None:
    with stack.logs_on_failure():
        assert len(FINISHED) > 100, "the tests before this one finished their runs"
        run(["docker", "restart", "-t", "15", stack.container("gateway")], timeout=60)
        poll(lambda: stack.ready(pods=1), 60, "the restarted gateway ready")

        def now(run_id: str) -> Any:
            status, record = stack.request("GET", f"/v1/runs/{run_id}")
            return record if status == 200 else (status, record)

        with ThreadPoolExecutor(16) as pool:
            after = dict(zip(FINISHED, pool.map(now, FINISHED), strict=True))
        changed = {i: (FINISHED[i], after[i]) for i in FINISHED if after[i] != FINISHED[i]}
        assert not changed, list(changed.items())[:3]
        status, run_after = stack.request("POST", "/v1/tasks/classify_digit", {"pixels": ZERO})
        assert (status, run_after["result"]) == (200, 0), run_after
