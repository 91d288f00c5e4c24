"""Neutrino wire protocol: message types, frames and canonical encoding.

libs/protocol/SPEC.md is the authority; vectors/*.json pin the bytes.
"""

from . import payload
from .backend import Heartbeat, Shutdown, TaskAssignment, TaskResult, WorkerReady
from .control import Fork, Forked, WorkerExited, ZygoteCatalog, ZygoteFailed, ZygoteReady
from .errors import ErrorKind, ExitCode, RejectReason
from .frames import (
    CONTROL_MAX_BYTES,
    CONTROL_MAX_PAYLOAD_BYTES,
    PROTOCOL_VERSION,
    TRACE_MAX_BYTES,
    ErrorInfo,
    Message,
    MessageType,
    ProtocolError,
    TaskOptions,
    control_payload_follows,
    decode,
    decode_control,
    encode_control,
    header,
    parse_header,
)
from .frontend import (
    CancelTask,
    DescribeTasks,
    Ping,
    Pong,
    SubmitTask,
    TaskAccepted,
    TaskCatalog,
    TaskRejected,
    TaskReply,
)
from .payload import PayloadError

__all__ = [
    "CONTROL_MAX_BYTES",
    "CONTROL_MAX_PAYLOAD_BYTES",
    "PROTOCOL_VERSION",
    "TRACE_MAX_BYTES",
    "CancelTask",
    "DescribeTasks",
    "ErrorInfo",
    "ErrorKind",
    "ExitCode",
    "Fork",
    "Forked",
    "Heartbeat",
    "Message",
    "MessageType",
    "PayloadError",
    "Ping",
    "Pong",
    "ProtocolError",
    "RejectReason",
    "Shutdown",
    "SubmitTask",
    "TaskAccepted",
    "TaskAssignment",
    "TaskCatalog",
    "TaskOptions",
    "TaskRejected",
    "TaskReply",
    "TaskResult",
    "WorkerExited",
    "WorkerReady",
    "ZygoteCatalog",
    "ZygoteFailed",
    "ZygoteReady",
    "control_payload_follows",
    "decode",
    "decode_control",
    "encode_control",
    "header",
    "parse_header",
    "payload",
]
