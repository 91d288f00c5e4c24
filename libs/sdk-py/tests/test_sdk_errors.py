"""neutrino.errors: the exception tree and the mapping from wire errors and rejections."""

from __future__ import annotations

import asyncio
import concurrent.futures
import pickle

import pytest
from neutrino import errors
from neutrino.errors import (
    BadArgumentsError,
    BusyError,
    DrainingError,
    InvalidRequestError,
    NeutrinoError,
    NeutrinoTimeoutError,
    PayloadTooLargeError,
    ProtocolError,
    RejectedError,
    ResultEncodingError,
    ShuttingDownError,
    TaskCancelledError,
    TaskError,
    TaskTimeoutError,
    UnknownTaskError,
    WorkerDiedError,
    error_from_reply,
    rejected_error,
)


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("task_error", TaskError),
        ("unknown_task", UnknownTaskError),
        ("bad_arguments", BadArgumentsError),
        ("result_not_serializable", ResultEncodingError),
        ("worker_died", WorkerDiedError),
        ("timeout", TaskTimeoutError),
        ("cancelled", TaskCancelledError),
        ("shutting_down", ShuttingDownError),
        ("from_the_future", TaskError),
    ],
)
def test_error_from_reply_picks_the_class_by_kind(kind: str, cls: type[TaskError]) -> None:
    err = error_from_reply(kind, "ValueError", "bad input", "Traceback ...\nValueError: bad input", 3, 17)
    assert type(err) is cls
    assert isinstance(err, TaskError) and isinstance(err, NeutrinoError)
    assert (err.kind, err.type, err.message, err.attempts, err.task_id) == (kind, "ValueError", "bad input", 3, 17)
    assert err.traceback == "Traceback ...\nValueError: bad input"
    assert str(err) == "ValueError: bad input"


def test_remote_traceback_is_a_note_not_part_of_str() -> None:
    err = error_from_reply("task_error", "KeyError", "'x'", 'File "t.py", line 1\nKeyError: x', 1, 1)
    assert err.__notes__ == ['Remote traceback:\nFile "t.py", line 1\nKeyError: x']
    assert "line 1" not in str(err)
    assert not hasattr(error_from_reply("worker_died", "worker_died", "killed", None, 1, 1), "__notes__")


def test_task_cancelled_error_is_not_the_futures_cancelled_error() -> None:
    assert not issubclass(TaskCancelledError, concurrent.futures.CancelledError)
    assert not issubclass(TaskCancelledError, asyncio.CancelledError)
    assert "concurrent.futures.CancelledError" in (TaskCancelledError.__doc__ or "")


@pytest.mark.parametrize(
    ("reason", "cls"),
    [
        ("busy", BusyError),
        ("draining", DrainingError),
        ("invalid", InvalidRequestError),
        ("too_large", PayloadTooLargeError),
        ("mystery", RejectedError),
    ],
)
def test_rejected_error_picks_the_class_by_reason(reason: str, cls: type[RejectedError]) -> None:
    err = rejected_error(reason, "queue full; retry later", 9)
    assert type(err) is cls and isinstance(err, NeutrinoError) and not isinstance(err, TaskError)
    assert (err.reason, err.message, err.task_id) == (reason, "queue full; retry later", 9)
    assert str(err) == f"task rejected ({reason}): queue full; retry later"


def test_errors_pickle_with_their_fields() -> None:
    for err in (
        error_from_reply("bad_arguments", "TypeError", "missing y", "tb", 2, 5),
        rejected_error("busy", "full", 4),
        ProtocolError("bad meta", kind="meta"),
    ):
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is type(err) and str(copy) == str(err) and vars(copy) == vars(err)


def test_tree_shape() -> None:
    assert issubclass(NeutrinoTimeoutError, TimeoutError)
    # The task overran (a TaskError), which is not the client giving up waiting (a TimeoutError).
    assert not issubclass(TaskTimeoutError, TimeoutError)
    assert issubclass(ProtocolError, ValueError)
    assert issubclass(errors.AddressError, ValueError)
    assert issubclass(errors.NotSupportedError, NotImplementedError)
    public = [getattr(errors, n) for n in dir(errors) if n.endswith("Error") and isinstance(getattr(errors, n), type)]
    assert all(issubclass(cls, NeutrinoError) for cls in public)
