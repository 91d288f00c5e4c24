"""Neutrino wire protocol: message types, frames and canonical encoding.

libs/protocol/SPEC.md is the authority; vectors/*.json pin the bytes.
"""

from .backend import Heartbeat, Shutdown, TaskAssignment, TaskResult, WorkerReady
from .control import Fork, Forked, WorkerExited, ZygoteFailed, ZygoteReady
from .errors import ErrorKind, ExitCode, RejectReason
from .frames import (
    PROTOCOL_VERSION,
    ErrorInfo,
    Message,
    MessageType,
    ProtocolError,
    TaskOptions,
    decode,
    decode_control,
    encode_control,
    header,
    parse_header,
)
from .frontend import CancelTask, Ping, Pong, SubmitTask, TaskAccepted, TaskRejected, TaskReply

__all__ = [
    "PROTOCOL_VERSION",
    "CancelTask",
    "ErrorInfo",
    "ErrorKind",
    "ExitCode",
    "Fork",
    "Forked",
    "Heartbeat",
    "Message",
    "MessageType",
    "Ping",
    "Pong",
    "ProtocolError",
    "RejectReason",
    "Shutdown",
    "SubmitTask",
    "TaskAccepted",
    "TaskAssignment",
    "TaskOptions",
    "TaskRejected",
    "TaskReply",
    "TaskResult",
    "WorkerExited",
    "WorkerReady",
    "ZygoteFailed",
    "ZygoteReady",
    "decode",
    "decode_control",
    "encode_control",
    "header",
    "parse_header",
]
