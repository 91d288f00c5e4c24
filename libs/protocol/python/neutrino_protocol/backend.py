"""Worker <-> orchestrator messages (SPEC.md §4.3)."""

from __future__ import annotations

from dataclasses import dataclass

from .frames import ErrorInfo, Message, MessageType, message


@message
@dataclass(slots=True)
class WorkerReady(Message):
    TYPE = MessageType.WORKER_READY
    worker_id: str
    pid: int
    credits: int
    tasks: list[str]


@message
@dataclass(slots=True)
class TaskAssignment(Message):
    TYPE = MessageType.TASK_ASSIGNMENT
    PAYLOAD = "always"
    task_id: int
    task: str
    attempt: int
    timeout_s: float | None = None
    payload: bytes | None = None


@message
@dataclass(slots=True)
class TaskResult(Message):
    TYPE = MessageType.TASK_RESULT
    PAYLOAD = "when_ok"
    task_id: int
    status: str
    error: ErrorInfo | None = None
    run_us: int | None = None
    payload: bytes | None = None


@message
@dataclass(slots=True)
class Heartbeat(Message):
    TYPE = MessageType.HEARTBEAT
    worker_id: str
    rss_kb: int | None = None


@message
@dataclass(slots=True)
class Shutdown(Message):
    """Also sent to the zygote on the control link."""

    TYPE = MessageType.SHUTDOWN
    graceful: bool
