"""Worker <-> orchestrator messages (SPEC.md §4.3)."""

from __future__ import annotations

from dataclasses import dataclass

from .frames import U32, ErrorInfo, Message, MessageType, TraceStr, message


@message
@dataclass(slots=True)
class WorkerReady(Message):
    TYPE = MessageType.WORKER_READY
    worker_id: str
    pid: U32
    credits: U32
    tasks: list[str]


@message
@dataclass(slots=True)
class TaskAssignment(Message):
    TYPE = MessageType.TASK_ASSIGNMENT
    PAYLOAD = "always"
    task_id: int
    task: str
    attempt: U32
    timeout_s: float | None = None
    traceparent: TraceStr | None = None
    tracestate: TraceStr | None = None
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
    retry: bool | None = None
    retry_delay_s: float | None = None
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
