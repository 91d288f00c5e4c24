"""The zygote's and workers' log lines: text or JSON (`NEUTRINO_LOG_FORMAT`, which the orchestrator
sets from its `--log-format`), and the run fields each JSON line carries while an assignment runs,
the task's own log lines included."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from neutrino import _logs, _tracing
from neutrino_protocol import TaskAssignment

from .config import LOG_FORMAT, ZygoteConfig

R = TypeVar("R")

# Set once in the zygote, before it forks: its workers inherit it.
_json = False


def setup_logging(config: ZygoteConfig) -> None:
    global _json
    _json = config.log_format == "json"
    _logs.configure(config.log_level, config.log_format, LOG_FORMAT)
    for warning in (config.log_level_warning, config.log_format_warning):
        if warning is not None:
            logging.getLogger("neutrino.zygote").warning("%s", warning)


def task_fields(msg: TaskAssignment) -> dict[str, Any]:
    """What every line logged while `msg` runs carries: the task's ids, and the `trace_id` of its trace
    context when it came with one."""
    return {"task_id": msg.task_id, "task": msg.task, "attempt": msg.attempt, **_tracing.fields(msg.traceparent)}


def with_task_fields(run: Callable[[TaskAssignment], R]) -> Callable[[TaskAssignment], R]:
    """`run` itself with text logs (nothing to add, nothing to pay per task); with JSON logs, `run`
    with each assignment's `task_fields` bound while it runs."""
    if not _json:
        return run

    def bound(msg: TaskAssignment) -> R:
        with _logs.bound(**task_fields(msg)):
            return run(msg)

    return bound
