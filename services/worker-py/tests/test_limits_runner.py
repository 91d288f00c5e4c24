"""The result size limit of the runner: over it, kind `result_too_large`, and the runner serves on."""

from __future__ import annotations

import msgpack
import pytest
from neutrino import App
from neutrino_protocol import TaskAssignment
from neutrino_worker import runner as runner_module
from neutrino_worker.runner import Runner


def call(runner: Runner, task: str, *args: object) -> TaskAssignment:
    return TaskAssignment(1, task, 1, payload=msgpack.packb([list(args), {}], use_bin_type=True))


def test_a_result_over_the_limit_is_a_typed_error() -> None:
    app = App("unit")

    @app.task()
    def blob(n: int) -> bytes:
        return b"x" * n

    runner = Runner(app.tasks, max_result_bytes=1000)
    ok = runner.run(call(runner, "blob", 900))
    assert ok.status == "ok" and ok.payload is not None and len(ok.payload) <= 1000
    refused = runner.run(call(runner, "blob", 5000))
    assert refused.status == "error" and refused.error is not None
    assert refused.error.kind == "result_too_large" and refused.error.ename == "ResultTooLargeError"
    assert "5003 bytes" in refused.error.evalue and "--max-message-bytes" in refused.error.evalue
    assert runner.run(call(runner, "blob", 10)).status == "ok"


@pytest.mark.parametrize(("value", "limit"), [("12345", 12345), ("", None), ("nope", None), ("0", None)])
def test_the_limit_comes_from_the_orchestrator(monkeypatch: pytest.MonkeyPatch, value: str, limit: int | None) -> None:
    monkeypatch.setenv(runner_module.MAX_RESULT_ENV, value)
    expected = runner_module.DEFAULT_MAX_RESULT_BYTES if limit is None else limit
    assert runner_module.max_result_bytes_from_env() == expected
