"""Running one task assignment: decode the arguments, call the function, encode the result or a typed error.

This is the per-task hot path of the whole product, so the success path does only what it must:
one dict lookup, one unpack, one `Signature.bind`, the call, one pack. Error paths may be slow.
No sockets here; the worker loop feeds assignments in and sends the results out.

A result is bounded: once encoded it may be at most the orchestrator's --max-message-bytes (the
orchestrator passes it to the zygote as NEUTRINO_MAX_RESULT_BYTES). A larger one is answered with
kind `result_too_large` and the worker carries on; sent as it is, it would be over what the
orchestrator's socket takes, dropped with the connection, and the task never answered.

A task asks for another attempt by raising `neutrino.Retry` or an instance of its `retry_on`:
the result then carries `retry` (SPEC.md §4.3), and the orchestrator decides whether attempts
remain (SPEC.md §6 rule 6).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import traceback
from collections.abc import Callable, Coroutine, Mapping
from time import perf_counter_ns
from types import TracebackType
from typing import Any, Protocol

import msgpack
from neutrino_protocol import ErrorInfo, ErrorKind, TaskAssignment, TaskResult
from neutrino_protocol import payload as _payload

# The payload codec's decoder (SPEC.md §3.2), bound once: the options come from neutrino_protocol.payload.
_unpackb = functools.partial(msgpack.unpackb, **_payload.UNPACK_OPTIONS)
_TASK_ERROR = ErrorKind.TASK_ERROR.value
_BAD_ARGUMENTS = ErrorKind.BAD_ARGUMENTS.value
_UNKNOWN_TASK = ErrorKind.UNKNOWN_TASK.value
_NOT_SERIALIZABLE = ErrorKind.RESULT_NOT_SERIALIZABLE.value
_TOO_LARGE = ErrorKind.RESULT_TOO_LARGE.value
MAX_RESULT_ENV = "NEUTRINO_MAX_RESULT_BYTES"
DEFAULT_MAX_RESULT_BYTES = 64 * 2**20  # the orchestrator's default --max-message-bytes


class TaskSpec(Protocol):
    """What the runner needs of a registered task (the SDK's `neutrino.Task` fits)."""

    @property
    def name(self) -> str: ...
    @property
    def fn(self) -> Callable[..., Any]: ...
    @property
    def is_async(self) -> bool: ...
    @property
    def signature(self) -> inspect.Signature: ...
    @property
    def retry_on(self) -> tuple[type[BaseException], ...]: ...


class Runner:
    """Runs assignments one at a time; async tasks share one event loop kept for the process's life."""

    def __init__(self, tasks: Mapping[str, TaskSpec], max_result_bytes: int | None = None) -> None:
        # Imported here, in the worker, as loader.py imports the SDK: the zygote must be able to
        # report a broken SDK install rather than crash while importing this module.
        from neutrino import Retry

        self._retry = Retry
        self._tasks: dict[str, tuple[TaskSpec, int]] = {
            name: (task, _plain_arity(task)) for name, task in tasks.items()
        }
        # One packer reused for every result: it resets itself after each pack, even a failed one.
        self._pack = _payload.new_packer().pack
        self._loop: asyncio.AbstractEventLoop | None = None
        self._max_result = max_result_bytes if max_result_bytes is not None else max_result_bytes_from_env()

    def run(self, msg: TaskAssignment) -> TaskResult:
        entry = self._tasks.get(msg.task)
        if entry is None:
            return _error(
                msg, _UNKNOWN_TASK, _UNKNOWN_TASK, f"no task named {msg.task!r}; this app has: {self._names()}"
            )
        try:
            call = _unpackb(msg.payload)
        except Exception as exc:
            return _error(msg, _BAD_ARGUMENTS, _BAD_ARGUMENTS, f"payload is not valid msgpack ({exc})")
        if type(call) is not list or len(call) != 2 or type(call[0]) is not list or type(call[1]) is not dict:
            return _error(
                msg, _BAD_ARGUMENTS, _BAD_ARGUMENTS, f"payload must be [args: array, kwargs: map], got {_shape(call)}"
            )
        args, kwargs = call
        task, arity = entry
        # Signature.bind costs more than the rest of a no-op task; skip it for the common call that
        # provably fits: every parameter given positionally, nothing else.
        if kwargs or len(args) != arity:
            try:
                task.signature.bind(*args, **kwargs)
            except TypeError as exc:
                return _error(msg, _BAD_ARGUMENTS, "TypeError", _call_error_message(task, args, exc))
        fn = task.fn
        started = perf_counter_ns()
        try:
            value = self._run_async(fn(*args, **kwargs)) if task.is_async else fn(*args, **kwargs)
        except SystemExit:
            raise  # sys.exit() in a task ends the worker, as it would any Python program
        except BaseException as exc:
            run_us = (perf_counter_ns() - started) // 1000
            return self._task_error(msg, task, exc, run_us)
        run_us = (perf_counter_ns() - started) // 1000
        try:
            payload = self._pack(value)
        except Exception as exc:
            return _error(
                msg,
                _NOT_SERIALIZABLE,
                type(exc).__name__,
                f"{task.name}() returned a {type(value).__name__} that msgpack cannot encode ({exc}); "
                "return None, bool, int (64-bit), float, str, bytes, or lists/tuples and dicts of those",
                run_us=run_us,
            )
        if len(payload) > self._max_result:
            return _error(
                msg,
                _TOO_LARGE,
                "ResultTooLargeError",
                f"{task.name}() returned {len(payload)} bytes once encoded, over the limit of {self._max_result} "
                "(the orchestrator's --max-message-bytes); return less, or store the data elsewhere and return "
                "where it is",
                run_us=run_us,
            )
        return TaskResult(task_id=msg.task_id, status="ok", run_us=run_us, payload=payload)

    def _task_error(self, msg: TaskAssignment, task: TaskSpec, exc: BaseException, run_us: int) -> TaskResult:
        """The result for a task that raised: a retry request for `Retry` or `retry_on`, else a plain error."""
        # For a Retry, str(exc) is its message, or "retry requested" when the task gave none.
        tb = _format_traceback(exc, task.fn)
        error = ErrorInfo(kind=_TASK_ERROR, ename=type(exc).__name__, evalue=str(exc), traceback=tb)
        task_id = msg.task_id
        if isinstance(exc, self._retry):
            return TaskResult(
                task_id=task_id, status="error", error=error, run_us=run_us, retry=True, retry_delay_s=exc.delay
            )
        if task.retry_on and isinstance(exc, task.retry_on):
            return TaskResult(task_id=task_id, status="error", error=error, run_us=run_us, retry=True)
        return TaskResult(task_id=task_id, status="error", error=error, run_us=run_us)

    def _run_async(self, coro: Coroutine[Any, Any, Any]) -> Any:
        loop = self._loop
        if loop is None:
            # Created on first use, in the worker (never in the zygote: a loop's selector and
            # self-pipe must not be shared across fork), and kept so tasks can share clients.
            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)

    def _names(self) -> str:
        return ", ".join(sorted(self._tasks)) or "(no tasks)"


def max_result_bytes_from_env() -> int:
    """The result limit the orchestrator set for this zygote's workers (the default when run alone)."""
    raw = os.environ.get(MAX_RESULT_ENV, "")
    try:
        value = int(raw)
    except ValueError:
        return DEFAULT_MAX_RESULT_BYTES
    return value if value > 0 else DEFAULT_MAX_RESULT_BYTES


def _plain_arity(task: TaskSpec) -> int:
    """The parameter count when every parameter may be passed positionally (no *args/**kwargs/keyword-only), else -1."""
    params = task.signature.parameters.values()
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return len(params) if all(p.kind in plain for p in params) else -1


def _error(
    msg: TaskAssignment, kind: str, ename: str, evalue: str, tb: str | None = None, run_us: int | None = None
) -> TaskResult:
    error = ErrorInfo(kind=kind, ename=ename, evalue=evalue, traceback=tb)
    return TaskResult(task_id=msg.task_id, status="error", error=error, run_us=run_us)


def _shape(value: Any) -> str:
    if type(value) is list:
        if len(value) > 4:
            return f"an array of {len(value)} items"
        return "[" + ", ".join(type(v).__name__ for v in value) + "]"
    return f"a {type(value).__name__}"


def _call_error_message(task: TaskSpec, args: list[Any], exc: TypeError) -> str:
    """Why the arguments do not fit, from `Signature.bind`'s TypeError, named like the interpreter
    names it: "add() missing a required argument: 'y'"."""
    qualname = getattr(task.fn, "__qualname__", task.name)
    text = str(exc)
    if text == "too many positional arguments":
        # bind does not say how many; the counts are what the caller needs to fix the call.
        params = task.signature.parameters.values()
        accepted = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
        text = f"{text}: {len(args)} given, at most {accepted} accepted"
    return text if text.startswith(f"{qualname}(") else f"{qualname}() {text}"


def _format_traceback(exc: BaseException, fn: Callable[..., Any]) -> str:
    """The traceback from the task function's frame down: the runner's and asyncio's frames are noise."""
    tb: TracebackType | None = exc.__traceback__
    code = getattr(fn, "__code__", None)
    start = tb
    while start is not None and start.tb_frame.f_code is not code:
        start = start.tb_next
    if start is None and tb is not None:
        start = tb.tb_next  # fn has no code object of its own (a builtin, a callable object): drop our frame
    return "".join(traceback.format_exception(type(exc), exc, start))
