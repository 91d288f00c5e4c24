"""Error kinds, rejection reasons and exit codes (SPEC.md §4.2, §5, §7)."""

from __future__ import annotations

import enum


class ErrorKind(enum.StrEnum):
    TASK_ERROR = "task_error"
    UNKNOWN_TASK = "unknown_task"
    BAD_ARGUMENTS = "bad_arguments"
    RESULT_NOT_SERIALIZABLE = "result_not_serializable"
    RESULT_TOO_LARGE = "result_too_large"
    WORKER_DIED = "worker_died"
    CANCELLED = "cancelled"
    SHUTTING_DOWN = "shutting_down"
    PROTOCOL_ERROR = "protocol_error"
    TIMEOUT = "timeout"
    APP_IMPORT_ERROR = "app_import_error"
    WORKER_START_ERROR = "worker_start_error"


class RejectReason(enum.StrEnum):
    BUSY = "busy"
    DRAINING = "draining"
    INVALID = "invalid"
    TOO_LARGE = "too_large"


class ExitCode(enum.IntEnum):
    """What Neutrino's own processes exit with (SPEC.md §7). A worker's code is reported, never acted on."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    APP_IMPORT = 3
    PROTOCOL = 4
