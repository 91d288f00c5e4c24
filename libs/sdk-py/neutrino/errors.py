"""The one exception tree of the SDK, rooted at `NeutrinoError`, and the mapping from wire errors to it.

Layout:

    NeutrinoError
    ├── TaskError                 a task was accepted and answered with an error (SPEC.md §5)
    │   ├── UnknownTaskError, BadArgumentsError, ResultEncodingError,
    │   └── WorkerDiedError, TaskTimeoutError, TaskCancelledError, ShuttingDownError
    ├── RejectedError             the orchestrator refused the task; it never ran (SPEC.md TaskRejected)
    │   └── BusyError, DrainingError, InvalidRequestError, PayloadTooLargeError
    ├── ProtocolError             a peer sent a malformed message or payload
    ├── NeutrinoTimeoutError      a client gave up waiting (also a TimeoutError)
    │   └── CatalogNotReadyError  the orchestrator answered, but has no task catalog yet
    ├── ModelError                a model server answered a predict with an error (`status`, `type`, `message`)
    │   └── ModelInputError, ModelBusyError
    ├── AuthenticationError       the HTTP gateway refused the bearer token
    │   └── HandshakeError        a task pod refused the tcp:// link's handshake (CURVE keys)
    ├── UnavailableError          the gateway, every task pod behind it, or every model replica is unreachable
    ├── ClientClosedError         the client was closed while a task was pending
    ├── AddressError              an orchestrator address the client cannot use (also a ValueError)
    ├── KeyFileError              a CURVE key or key file that cannot be used (also a ValueError)
    └── NotSupportedError         a feature this version does not have yet (also a NotImplementedError)

`neutrino.Retry` is not in this tree: tasks raise it to ask for a retry (see retry.py).
"""

from __future__ import annotations

from typing import Any


class NeutrinoError(Exception):
    """Base of every error the Neutrino SDK raises."""


class TaskError(NeutrinoError):
    """A task ran (or was about to) and was answered with an error.

    `type` and `message` describe the remote exception (`ename`/`evalue` on the wire), `traceback`
    is the remote formatted traceback when there is one, `kind` the SPEC.md §5 error kind.
    """

    #: The SPEC.md §5 kind a subclass stands for (the base class takes any kind).
    KIND = "task_error"

    def __init__(
        self,
        message: str,
        *,
        kind: str | None = None,
        type: str | None = None,
        traceback: str | None = None,
        attempts: int = 1,
        task_id: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind if kind is not None else self.KIND
        self.type = type if type is not None else self.kind
        self.message = message
        self.traceback = traceback
        self.attempts = attempts
        self.task_id = task_id
        if traceback:
            # Printed under the local traceback when the error goes uncaught, so the remote
            # frames (the useful ones) are not lost; str() stays short.
            self.add_note(f"Remote traceback:\n{traceback.rstrip()}")

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(type={self.type!r}, message={self.message!r}, task_id={self.task_id!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle through self.args by default, which would drop the keyword fields.
        kwargs = {
            "kind": self.kind,
            "type": self.type,
            "traceback": self.traceback,
            "attempts": self.attempts,
            "task_id": self.task_id,
        }
        return (_rebuild, (type(self), self.message, kwargs))


class UnknownTaskError(TaskError):
    """No task of that name is registered in the app the workers run."""

    KIND = "unknown_task"


class BadArgumentsError(TaskError):
    """The arguments do not fit the task function's signature."""

    KIND = "bad_arguments"


class ResultEncodingError(TaskError):
    """The task returned a value msgpack cannot encode; return plain data (dict, list, str, ...)."""

    KIND = "result_not_serializable"


class WorkerDiedError(TaskError):
    """The worker running the task exited (crash, OOM, kill) before answering, retries spent."""

    KIND = "worker_died"


class TaskTimeoutError(TaskError):
    """The task's last attempt overran its timeout (the task's `timeout`, or `timeout_s` per call);
    the orchestrator killed its worker. Retries, if any, were spent. The task may have partly run.

    Not a `TimeoutError`: that is `NeutrinoTimeoutError`, the client giving up waiting.
    """

    KIND = "timeout"


class TaskCancelledError(TaskError):
    """The task was cancelled by `CancelTask` (SPEC.md kind `cancelled`), e.g. `Client.cancel()`.
    A queued task never ran (`attempts` 0); a running one was interrupted by killing its worker.
    (`TaskFuture.cancel()` sends the same request but cancels the local future at once, so its
    owner sees `concurrent.futures.CancelledError` rather than this.)

    Named so it does not shadow `concurrent.futures.CancelledError` / `asyncio.CancelledError`,
    which mean "this local Future was cancelled" rather than "the orchestrator cancelled the task".
    """

    KIND = "cancelled"


class ShuttingDownError(TaskError):
    """The orchestrator stopped before the task could run; it is safe to submit it again elsewhere."""

    KIND = "shutting_down"


_BY_KIND: dict[str, type[TaskError]] = {
    cls.KIND: cls
    for cls in (
        UnknownTaskError,
        BadArgumentsError,
        ResultEncodingError,
        WorkerDiedError,
        TaskTimeoutError,
        TaskCancelledError,
        ShuttingDownError,
    )
}


def error_from_reply(
    kind: str,
    ename: str,
    evalue: str,
    traceback: str | None,
    attempts: int,
    task_id: int | None,
) -> TaskError:
    """Build the TaskError subclass for a wire error; kinds this SDK does not know give a plain TaskError."""
    cls = _BY_KIND.get(kind, TaskError)
    return cls(evalue, kind=kind, type=ename, traceback=traceback, attempts=attempts, task_id=task_id)


class RejectedError(NeutrinoError):
    """The orchestrator refused the task (`TaskRejected`): it was not queued and will never run."""

    REASON = ""

    def __init__(self, message: str, *, reason: str | None = None, task_id: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else self.REASON
        self.message = message
        self.task_id = task_id

    def __str__(self) -> str:
        return f"task rejected ({self.reason}): {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, {"reason": self.reason, "task_id": self.task_id}))


class BusyError(RejectedError):
    """The orchestrator's queue is full: retry later, or submit to another orchestrator."""

    REASON = "busy"


class DrainingError(RejectedError):
    """The orchestrator is shutting down and accepts no new tasks: submit elsewhere."""

    REASON = "draining"


class InvalidRequestError(RejectedError):
    """The orchestrator could not read the request (a malformed message or an SDK/orchestrator mismatch)."""

    REASON = "invalid"


class PayloadTooLargeError(RejectedError):
    """The arguments exceed the orchestrator's message size limit (`--max-message-bytes`)."""

    REASON = "too_large"


_BY_REASON: dict[str, type[RejectedError]] = {
    cls.REASON: cls for cls in (BusyError, DrainingError, InvalidRequestError, PayloadTooLargeError)
}


def rejected_error(reason: str, message: str, task_id: int | None) -> RejectedError:
    """Build the RejectedError subclass for a `TaskRejected` reason (unknown reasons give the base class)."""
    return _BY_REASON.get(reason, RejectedError)(message, reason=reason, task_id=task_id)


class ProtocolError(NeutrinoError, ValueError):
    """A peer sent a message or payload that does not follow SPEC.md; `kind` names the failure class."""

    def __init__(self, message: str, *, kind: str = "payload") -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), {"kind": self.kind}))


class NeutrinoTimeoutError(NeutrinoError, TimeoutError):
    """The client stopped waiting for an answer (the task may still run; it was asked to cancel)."""


class CatalogNotReadyError(NeutrinoTimeoutError):
    """`describe()` gave up: the orchestrator answered, but its zygote had not reported the task
    catalog yet (the app is still importing, the catalog is being built, or the zygote restarts)."""


class ModelError(NeutrinoError):
    """A model server answered `predict` with an error: `status` (HTTP), `type` and `message` of the failure
    (for `predict` raising, the exception's class name and message), `traceback` when the server sent one."""

    def __init__(self, message: str, *, status: int = 500, type: str = "error", traceback: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.traceback = traceback

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        kwargs = {"status": self.status, "type": self.type, "traceback": self.traceback}
        return (_rebuild, (type(self), self.message, kwargs))


class ModelInputError(ModelError):
    """The model server refused the input (HTTP 400/422) before it joined a batch; fix the input."""


class ModelBusyError(ModelError):
    """Every replica of the model kept answering 429 (its queue full) until the client gave up; retry later."""


class AuthenticationError(NeutrinoError):
    """The gateway refused the client's bearer token (HTTP 401); pass `Client(..., token=...)` or set NEUTRINO_TOKEN."""


class HandshakeError(AuthenticationError):
    """A task pod refused this client's tcp:// connection during the ZeroMQ handshake: its CURVE key
    is not in the pod's allowlist, the server key is not that pod's, or one side speaks CURVE and the
    other plain text. Nothing was delivered; the tasks that waited on the link fail with this error,
    and the client stays unusable (fix the keys and create a new client). `reason` names the case:
    "refused" (the pod's allowlist), "mechanism" (CURVE on one side only) or "closed" (the pod hung
    up mid-handshake: almost always a wrong server key)."""

    def __init__(self, message: str, *, reason: str = "refused") -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), {"reason": self.reason}))


class UnavailableError(NeutrinoError):
    """The gateway cannot be reached, or has no task pod to run on (HTTP 503); retry later."""


class ClientClosedError(NeutrinoError):
    """The client was closed while this task or ping was still waiting for its answer."""


class AddressError(NeutrinoError, ValueError):
    """An orchestrator address the client cannot connect to (wrong scheme or shape)."""


class KeyFileError(NeutrinoError, ValueError):
    """A CURVE key that cannot be used: a missing or malformed key file, a secret key file where a
    public one belongs (or the reverse), or a server key without the client's own pair."""


class NotSupportedError(NeutrinoError, NotImplementedError):
    """Something this version of the SDK does not do yet; the message says what to use instead."""


def _rebuild(cls: type[Exception], message: str, kwargs: dict[str, Any]) -> Exception:
    return cls(message, **kwargs)
