"""`neutrino status --gateway URL` against a real gateway in front of a real orchestrator and workers:
the dashboard's numbers as text (or JSON), the token from the flag or NEUTRINO_TOKEN, and an error
that says what to do when the gateway cannot be reached, refuses the token or is not a gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Orchestrator, free_port, start_orchestrator
from .gateway_harness import TOKEN, Gateway, start_gateway

pytestmark = pytest.mark.timeout(120)

NEUTRINO = Path(sys.executable).parent / "neutrino"
APP = "tests.apps.dashboard_app:app"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Orchestrator, str]]:
    pod = f"tcp://127.0.0.1:{free_port()}"
    orch = start_orchestrator("--frontend", pod, workers=2, app=APP)
    gateway = start_gateway([pod], tmp_path_factory.mktemp("status") / "runs.db")
    try:
        assert gateway.request("POST", "/v1/tasks/hold", {"seconds": 0}).status == 200
        assert gateway.request("POST", "/v1/tasks/fail", {"message": "cli boom\nsecond line"}).status == 500
        yield gateway, orch, pod
    finally:
        gateway.stop()
        orch.stop()


def status(*args: str, token_env: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "NEUTRINO_TOKEN"}
    if token_env is not None:
        env["NEUTRINO_TOKEN"] = token_env
    return subprocess.run([str(NEUTRINO), "status", *args], capture_output=True, text=True, timeout=60, env=env)


def url(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


def test_the_numbers_as_text(stack: tuple[Gateway, Orchestrator, str]) -> None:
    gateway, _, pod = stack
    done = status("--gateway", url(gateway), "--token", TOKEN)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"gateway {url(gateway)} at " in out
    assert "task pods: 1 of 1 up; workers 0 busy, 2 idle; queue depth 0" in out
    assert pod in out
    assert "runs: 0 queued, 0 running; per second over " in out  # asked twice: the rates are known
    assert "finished since the gateway started: " in out and "task_error 1" in out
    assert "ValueError: cli boom second line" in out  # the error on one line
    rows = [line.split() for line in out.splitlines() if line.strip().split()[:1] and " hold " in line]
    assert rows and rows[0][1:4] == ["hold", "succeeded", "1"], out


def test_the_token_from_the_environment_and_json(stack: tuple[Gateway, Orchestrator, str]) -> None:
    gateway, _, pod = stack
    done = status("--gateway", url(gateway), "--json", "--runs", "1", token_env=TOKEN)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["status"]["task_pods"][0]["address"] == pod
    assert answer["status"]["window_s"] is not None
    assert all(rate is not None for rate in answer["status"]["runs"]["per_second"].values())
    assert [run["task"] for run in answer["runs"]] == ["fail"]


def test_a_missing_or_wrong_token_says_what_to_pass(stack: tuple[Gateway, Orchestrator, str]) -> None:
    gateway, _, _ = stack
    done = status("--gateway", url(gateway))
    assert done.returncode == 1 and done.stdout == ""
    assert f"the gateway at {url(gateway)} needs a token: pass --token TOKEN or set NEUTRINO_TOKEN" in done.stderr
    done = status("--gateway", url(gateway), "--token", "wrong")
    assert done.returncode == 1
    assert f"the gateway at {url(gateway)} refused the token: check --token or NEUTRINO_TOKEN" in done.stderr
    done = status("--gateway", url(gateway), token_env="wrong")
    assert done.returncode == 1 and "refused the token" in done.stderr


def test_an_unreachable_gateway_or_another_server(stack: tuple[Gateway, Orchestrator, str]) -> None:
    gateway, _, _ = stack
    closed = f"http://127.0.0.1:{free_port()}"
    done = status("--gateway", closed, "--token", TOKEN)
    assert done.returncode == 1 and done.stdout == ""
    assert f"cannot reach the gateway at {closed}" in done.stderr
    assert "Is the gateway running? (--gateway URL" in done.stderr
    done = status("--gateway", url(gateway) + "/elsewhere", "--token", TOKEN)
    assert done.returncode == 1
    assert "has no /v1/status: is it a Neutrino gateway" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gateway", "ftp://example.com"], "is not a gateway URL; write http://HOST:PORT"),
        (["--runs", "-1"], "--runs must be from 0 to 500"),
        (["--runs", "many"], "invalid int value"),
    ],
)
def test_bad_arguments_exit_2(args: list[str], message: str) -> None:
    done = status(*args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
