"""`--log-format json` in every service: the orchestrator (and the zygote and workers it starts), the
gateway and a model server each write one JSON object per line, with `timestamp`, `level` and
`message`, and the lines about a run carry its ids (`task_id` and `task` in the orchestrator and its
workers, `run_id` and `task` in the gateway). A format that does not exist is refused at start-up.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from neutrino import Client, _logs
from neutrino_model_server.testing import start_model_server
from neutrino_worker.config import parse_log_format

from .conftest import BINARY, ROOT, Orchestrator, free_port, start_orchestrator
from .gateway_harness import start_gateway

pytestmark = pytest.mark.timeout(120)

APP = "tests.apps.logging_app:app"
MODEL_APP_DIR = ROOT / "services" / "model-server-py" / "tests"


def json_lines(log: str, service: str) -> list[dict[str, Any]]:
    """Every line of `log` as a JSON object with the keys every line has (fails naming the line that is not)."""
    parsed = []
    for line in log.splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{service} wrote a line that is not JSON: {line!r}\n{log}") from None
        assert isinstance(obj, dict), line
        assert {"timestamp", "level", "message"} <= obj.keys(), line
        assert obj["level"] in {"TRACE", "DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL"}, line
        stamp = datetime.datetime.fromisoformat(obj["timestamp"])
        assert stamp.utcoffset() == datetime.timedelta(0), line
        parsed.append(obj)
    assert parsed, f"{service} wrote no lines"
    return parsed


# -- the formatter, without processes -----------------------------------------------------------


def test_the_json_formatter_writes_bound_and_extra_fields_and_the_traceback() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(_logs.JsonFormatter())
    log = logging.getLogger("test_logs.formatter")
    log.addHandler(handler)
    log.propagate = False
    try:
        with _logs.bound(task_id=7, task="add"):
            log.warning("ran %s", "it", extra={"run_id": "r1"})
            try:
                raise ValueError("kaput")
            except ValueError:
                log.exception("failed")
        log.warning("outside")
    finally:
        log.removeHandler(handler)
    first, second, third = json_lines(out.getvalue(), "the formatter")
    assert first["message"] == "ran it" and first["level"] == "WARNING" and first["logger"] == "test_logs.formatter"
    assert (first["task_id"], first["task"], first["run_id"]) == (7, "add", "r1")
    assert second["task_id"] == 7 and "ValueError: kaput" in second["exception"]
    assert "task_id" not in third and "run_id" not in third


def test_a_log_format_that_does_not_exist_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match=r"--log-format='xml' is not a log format; use one of text, json"):
        _logs.check_format("xml", "--log-format")
    assert _logs.check_format(" JSON ", "--log-format") == "json"


def test_the_worker_falls_back_to_text_on_an_unknown_format_and_says_so() -> None:
    assert parse_log_format(None) == ("text", None)
    assert parse_log_format("json") == ("json", None)
    fmt, warning = parse_log_format("yaml")
    assert fmt == "text" and warning is not None and "NEUTRINO_LOG_FORMAT='yaml' is not a log format" in warning


# -- the orchestrator, its zygote and workers ---------------------------------------------------


@pytest.fixture(params=["flag", "env"])
def json_pod(request: pytest.FixtureRequest) -> Iterator[Orchestrator]:
    """A task pod logging JSON, set by `--log-format json` or by NEUTRINO_LOG_FORMAT."""
    env = {"RUST_LOG": "debug", "NEUTRINO_LOG": "info"}
    args: list[str] = []
    if request.param == "flag":
        args = ["--log-format", "json"]
    else:
        env["NEUTRINO_LOG_FORMAT"] = "json"
    orch = start_orchestrator(*args, workers=1, app=APP, env=env)
    yield orch
    orch.stop()


def test_the_orchestrator_and_its_workers_log_json_with_the_task_ids(json_pod: Orchestrator) -> None:
    with Client(json_pod.address) as client:
        assert client.call("shout", "hello") == "HELLO"
    json_pod.wait_for(r"shouting hello")
    lines = json_lines(json_pod.log, "the task pod")
    dispatch = [line for line in lines if line["message"] == "dispatch"]
    assert len(dispatch) == 1 and dispatch[0]["task"] == "shout", dispatch
    # The task's own line, written in the worker, carries the orchestrator's id for that task.
    shouted = [line for line in lines if line["message"] == "shouting hello"]
    assert len(shouted) == 1, lines
    assert shouted[0]["task_id"] == dispatch[0]["task_id"] and shouted[0]["task"] == "shout"
    assert shouted[0]["logger"] == "logging_app" and shouted[0]["level"] == "WARNING"
    # The zygote's own lines are JSON too (NEUTRINO_LOG=info shows its import line).
    assert any(line.get("logger") == "neutrino.zygote" for line in lines), lines


def test_the_orchestrator_refuses_an_unknown_log_format() -> None:
    done = subprocess.run(
        [str(BINARY), "--app", APP, "--log-format", "xml"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "invalid value 'xml' for '--log-format" in done.stderr and "text, json" in done.stderr


# -- the gateway ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "env"])
def test_the_gateway_logs_json_with_the_run_id(how: str, tmp_path: Path) -> None:
    pod = f"tcp://127.0.0.1:{free_port()}"
    orch = start_orchestrator("--frontend", pod, workers=1, app=APP)
    args, env = (["--log-format", "json"], {}) if how == "flag" else ([], {"NEUTRINO_GATEWAY_LOG_FORMAT": "json"})
    gateway = start_gateway([pod], tmp_path / "runs.db", *args, "--log-level", "DEBUG", env=env)
    try:
        reply = gateway.request("POST", "/v1/tasks/shout", {"word": "hi"})
        assert reply.status == 200 and reply.json["result"] == "HI", reply.body
        run_id = reply.json["id"]
        gateway.wait_for(rf'"run_id": "{run_id}"')
    finally:
        gateway.stop()
        orch.stop()
    lines = json_lines(gateway.log, "the gateway")
    about_the_run = [line for line in lines if line.get("run_id") == run_id]
    assert about_the_run and all(line["task"] == "shout" for line in about_the_run), lines
    assert any("gateway listening on" in line["message"] for line in lines)


def test_the_gateway_refuses_an_unknown_log_format(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "neutrino_gateway", "--orchestrator", "tcp://127.0.0.1:5555", "--no-auth"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={**os.environ, "NEUTRINO_GATEWAY_LOG_FORMAT": "xml"},
    )
    assert done.returncode == 2
    assert "NEUTRINO_GATEWAY_LOG_FORMAT='xml' is not a log format; use one of text, json" in done.stderr


# -- the model server -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "env"])
def test_the_model_server_logs_json(how: str) -> None:
    args, env = (["--log-format", "json"], {}) if how == "flag" else ([], {"NEUTRINO_MODEL_SERVER_LOG_FORMAT": "json"})
    server = start_model_server("model_server_app:app", "echo", *args, app_dir=MODEL_APP_DIR, cwd=ROOT, env=env)
    try:
        server.wait_ready()
    finally:
        server.stop()
    lines = json_lines(server.log, "the model server")
    assert any("listening on" in line["message"] for line in lines), lines
    assert all(line["logger"].startswith("neutrino") for line in lines), lines


def test_the_model_server_refuses_an_unknown_log_format() -> None:
    server = start_model_server("model_server_app:app", "echo", "--log-format", "xml", app_dir=MODEL_APP_DIR, cwd=ROOT)
    assert server.proc.wait(30) == 2
    server.wait_for(r"--log-format='xml' is not a log format; use one of text, json")
