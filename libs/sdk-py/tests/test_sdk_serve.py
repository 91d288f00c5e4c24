"""neutrino.serve (the container entry point) and neutrino.dev.plan (what `neutrino dev` runs): no processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from neutrino import App
from neutrino.dev.plan import DevOptions, example_calls, example_value, plan_services
from neutrino.serve import ServeError, find_orchestrator, main, orchestrator_argv


def test_task_pod_listens_everywhere_unless_told_otherwise() -> None:
    argv = orchestrator_argv("a:app", host="0.0.0.0", port=5555, metrics_port=9090, env={}, binary="/bin/orch")
    assert argv == [
        "/bin/orch", "--app", "a:app", "--frontend", "tcp://0.0.0.0:5555", "--metrics", "0.0.0.0:9090",
        "--python", sys.executable,
    ]  # fmt: skip
    # A setting the orchestrator gets from its own flag or variable is left to it.
    rest = ["--frontend", "tcp://10.0.0.1:7000", "--workers", "4"]
    argv = orchestrator_argv(
        "a:app", host="h", port=1, metrics_port=2, rest=rest, env={"NEUTRINO_METRICS": "x:1"}, binary="o"
    )
    assert argv == ["o", "--app", "a:app", "--python", sys.executable, *rest]


def test_find_orchestrator_in_order(tmp_path: Path) -> None:
    binary = tmp_path / "neutrino-orchestrator"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert find_orchestrator({"NEUTRINO_ORCHESTRATOR_BIN": str(binary), "PATH": ""}) == str(binary)
    assert find_orchestrator({"PATH": str(tmp_path)}) == str(binary)
    with pytest.raises(ServeError, match="is not an executable"):
        find_orchestrator({"NEUTRINO_ORCHESTRATOR_BIN": str(tmp_path / "nope")})
    repo = tmp_path / "repo"
    (repo / "target" / "release").mkdir(parents=True)
    os.link(binary, repo / "target" / "release" / "neutrino-orchestrator")
    assert find_orchestrator({"PATH": ""}, cwd=repo / "sub") == str(
        repo / "target" / "release" / "neutrino-orchestrator"
    )


def test_serve_refuses_unknown_roles_and_missing_settings(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEUTRINO_APP", raising=False)
    monkeypatch.delenv("NEUTRINO_MODEL_URL_TEMPLATE", raising=False)
    with pytest.raises(SystemExit, match="unknown role 'worker'"):
        main(["worker"])
    with pytest.raises(SystemExit) as exit_info:
        main(["task-pod"])
    assert exit_info.value.code == 2 and "pass --app module:attr" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["model", "--app", "a:app"])
    assert exit_info.value.code == 2 and "which model?" in capsys.readouterr().err
    assert "NEUTRINO_MODEL_URL_TEMPLATE" not in os.environ, "a role that did not start changed nothing"


class Double:
    example = 4

    def load(self) -> None: ...

    def predict(self, x: int) -> int:
        return 2 * x


def _app() -> App:
    app = App("planned")

    @app.task()
    def add(x: int, y: int = 5) -> int:
        return x + y

    app.add_model(Double, name="double", min_replicas=2)
    return app


def test_plan_wires_models_pods_and_gateway() -> None:
    options = DevOptions(app="planned:app", root=Path("/r"), pods=2, workers=3)
    services = plan_services(_app(), options)
    assert [s.name for s in services] == ["model-double-1", "model-double-2", "pod-1", "pod-2", "gateway"]
    pods = [s for s in services if s.kind == "task-pod"]
    assert pods[0].env["NEUTRINO_MODEL_DOUBLE_URL"] == "http://127.0.0.1:8100,http://127.0.0.1:8101"
    assert "--workers" in pods[1].cmd and pods[1].cmd[pods[1].cmd.index("--port") + 1] == "5556"
    gateway = services[-1]
    assert (
        gateway.cmd.count("--orchestrator") == 2 and "double=http://127.0.0.1:8100,http://127.0.0.1:8101" in gateway.cmd
    )


def test_free_ports_are_distinct() -> None:
    options = DevOptions(app="planned:app", root=Path("/r"), pods=3, port=0, pod_port=0, metrics_port=0, model_port=0)
    urls = [s.readiness_url for s in plan_services(_app(), options)]
    assert len(set(urls)) == len(urls)


def test_example_calls_paste_as_json() -> None:
    calls = example_calls(_app(), "http://h:1")
    assert calls == [
        """curl -d '{"x":1}' http://h:1/v1/tasks/add""",
        """curl -d '{"inputs":4}' http://h:1/v1/models/double/predict""",
    ]
    assert example_value({"type": "string", "examples": ["it's"]}, {}) == "it's"
    assert example_value({"anyOf": [{"type": "integer"}, {"type": "null"}]}, {}) == 1
    assert example_value(
        {"$ref": "#/$defs/P"}, {"P": {"type": "object", "properties": {"a": {"enum": ["z"]}}, "required": ["a"]}}
    ) == {"a": "z"}
