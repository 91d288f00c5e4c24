"""Client <-> orchestrator messages (SPEC.md §4.2)."""

from __future__ import annotations

from dataclasses import dataclass

from .frames import U32, ErrorInfo, Message, MessageType, TraceStr, message


@message
@dataclass(slots=True)
class SubmitTask(Message):
    TYPE = MessageType.SUBMIT_TASK
    PAYLOAD = "always"
    id: int
    task: str
    timeout_s: float | None = None
    retries: U32 | None = None
    ack: bool | None = None
    traceparent: TraceStr | None = None
    tracestate: TraceStr | None = None
    payload: bytes | None = None


@message
@dataclass(slots=True)
class TaskAccepted(Message):
    TYPE = MessageType.TASK_ACCEPTED
    id: int


@message
@dataclass(slots=True)
class TaskRejected(Message):
    TYPE = MessageType.TASK_REJECTED
    id: int
    reason: str
    message: str


@message
@dataclass(slots=True)
class TaskReply(Message):
    TYPE = MessageType.TASK_REPLY
    PAYLOAD = "when_ok"
    id: int
    status: str
    attempts: U32
    error: ErrorInfo | None = None
    queue_us: int | None = None
    run_us: int | None = None
    payload: bytes | None = None


@message
@dataclass(slots=True)
class CancelTask(Message):
    TYPE = MessageType.CANCEL_TASK
    id: int


@message
@dataclass(slots=True)
class Ping(Message):
    TYPE = MessageType.PING
    nonce: int


@message
@dataclass(slots=True)
class Pong(Message):
    TYPE = MessageType.PONG
    nonce: int
    queue_depth: int
    workers: U32
    idle_workers: U32
    draining: bool
    instance: int | None = None


@message
@dataclass(slots=True)
class DescribeTasks(Message):
    TYPE = MessageType.DESCRIBE_TASKS
    nonce: int


@message
@dataclass(slots=True)
class TaskCatalog(Message):
    TYPE = MessageType.TASK_CATALOG
    PAYLOAD = "when_ready"
    nonce: int
    ready: bool
    tasks: list[str]
    payload: bytes | None = None
