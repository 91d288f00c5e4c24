"""The start-up report: how a forked worker tells its zygote why it could not start.

Each child gets the write end of a pipe of its own. A failure before `WorkerReady` is written
there as one msgpack `Error` map (kind `worker_start_error`) before the child exits; once
`WorkerReady` is sent the child closes its end, so anything after that is a worker death. The
zygote reads the pipe when it reaps the child and puts the error in `WorkerExited.error`
(SPEC.md §4.4): the orchestrator learns of a start-up failure from that message, never from an
exit code, which a task can forge.
"""

from __future__ import annotations

import contextlib
import os
import traceback

import msgpack
from neutrino_protocol import ErrorInfo, ErrorKind

# One write of at most PIPE_BUF bytes into an empty pipe is atomic and never blocks, whatever the
# pipe's capacity (a single page when the user's pipe quota is spent). A traceback keeps its tail.
REPORT_MAX_BYTES = 4096
_EVALUE_MAX_BYTES = 1024
_KIND = ErrorKind.WORKER_START_ERROR.value


def open_pipe() -> tuple[int, int]:
    """(read end, write end), both non-blocking: neither side may ever wait on the other."""
    return os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)


def write_report(fd: int, exc: BaseException) -> bool:
    """In the child: say why start-up failed. Returns whether the report was written."""
    error = ErrorInfo(_KIND, type(exc).__name__, str(exc), "".join(traceback.format_exception(exc)))
    try:
        return os.write(fd, encode_report(error)) > 0
    except OSError:
        return False


def encode_report(error: ErrorInfo) -> bytes:
    """The report as written to the pipe: at most REPORT_MAX_BYTES, a long traceback cut to its tail."""
    data: bytes = msgpack.packb(error.to_map())
    if len(data) <= REPORT_MAX_BYTES:
        return data
    short = ErrorInfo(error.kind, _head(error.ename, 200), _head(error.evalue, _EVALUE_MAX_BYTES))
    room = REPORT_MAX_BYTES - len(msgpack.packb(short.to_map())) - 32  # the traceback's key, headers, "..."
    if error.traceback and room > 0:
        short.traceback = "...\n" + _tail(error.traceback, room)
    out: bytes = msgpack.packb(short.to_map())
    return out


def read_report(fd: int) -> ErrorInfo | None:
    """In the zygote, once the child is reaped: its report, or None if it wrote none. Closes `fd`."""
    try:
        data = os.read(fd, REPORT_MAX_BYTES + 1)
    except OSError:  # BlockingIOError: nothing written, and a process the child forked holds the write end
        data = b""
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    if not data:
        return None
    try:
        error = ErrorInfo.from_map(msgpack.unpackb(data))
    except Exception as exc:  # garbled: still a start-up failure, say so
        why = f"the worker's start-up report ({len(data)} bytes) is unreadable: {exc}"
        return ErrorInfo(_KIND, type(exc).__name__, why)
    error.kind = _KIND
    return error


def fork_failed(exc: OSError) -> ErrorInfo:
    return ErrorInfo(_KIND, type(exc).__name__, f"fork() failed: {exc}")


def _head(text: str, max_bytes: int) -> str:
    return text.encode()[:max_bytes].decode(errors="ignore")


def _tail(text: str, max_bytes: int) -> str:
    return text.encode()[-max_bytes:].decode(errors="ignore")
