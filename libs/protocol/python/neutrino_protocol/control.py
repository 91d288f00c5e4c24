"""Zygote <-> orchestrator messages on the control link (SPEC.md §4.4)."""

from __future__ import annotations

from dataclasses import dataclass

from .frames import U32, ErrorInfo, Message, MessageType, TaskOptions, message


@message
@dataclass(slots=True)
class ZygoteReady(Message):
    TYPE = MessageType.ZYGOTE_READY
    pid: U32
    tasks: list[str]
    import_ms: float
    task_options: dict[str, TaskOptions] | None = None


@message
@dataclass(slots=True)
class ZygoteFailed(Message):
    TYPE = MessageType.ZYGOTE_FAILED
    error: ErrorInfo


@message
@dataclass(slots=True)
class Fork(Message):
    TYPE = MessageType.FORK
    worker_ids: list[str]
    heartbeat_ms: U32 | None = None


@message
@dataclass(slots=True)
class Forked(Message):
    TYPE = MessageType.FORKED
    worker_id: str
    pid: U32


@message
@dataclass(slots=True)
class WorkerExited(Message):
    TYPE = MessageType.WORKER_EXITED
    worker_id: str
    pid: U32
    exit_code: U32 | None = None
    signal: U32 | None = None
    # Set only when the worker failed to start (it never sent WorkerReady): the start-up failure
    # signal, kind `worker_start_error`. Never inferred from `exit_code`.
    error: ErrorInfo | None = None


@message
@dataclass(slots=True)
class ZygoteCatalog(Message):
    TYPE = MessageType.ZYGOTE_CATALOG
    PAYLOAD = "always"
    tasks: list[str]
    build_ms: float
    payload: bytes | None = None
