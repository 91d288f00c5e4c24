"""Unit tests for the start-up report pipe (startup.py): a child's report reaches the zygote intact,
bounded, and never blocks either side."""

from __future__ import annotations

import os

import msgpack
import pytest
from neutrino_protocol import ErrorInfo
from neutrino_worker.startup import REPORT_MAX_BYTES, encode_report, fork_failed, open_pipe, read_report, write_report


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_a_report_round_trips_with_its_traceback() -> None:
    r, w = open_pipe()
    assert write_report(w, raised(OSError("cannot connect")))
    os.close(w)
    error = read_report(r)
    assert error is not None
    assert (error.kind, error.ename, error.evalue) == ("worker_start_error", "OSError", "cannot connect")
    assert error.traceback is not None and error.traceback.endswith("OSError: cannot connect\n")


def test_no_report_is_none() -> None:
    r, w = open_pipe()
    os.close(w)  # what a worker does once WorkerReady is sent
    assert read_report(r) is None


def test_reading_never_blocks_while_another_process_holds_the_write_end() -> None:
    r, w = open_pipe()
    try:
        assert read_report(r) is None
    finally:
        os.close(w)


def test_a_long_report_keeps_the_tracebacks_tail_within_the_limit() -> None:
    tb = "".join(f'  File "frame{i}.py", line {i}, in f\n' for i in range(2_000)) + "OSError: the end\n"
    data = encode_report(ErrorInfo("worker_start_error", "OSError", "é" * 5_000, tb))
    assert len(data) <= REPORT_MAX_BYTES
    error = ErrorInfo.from_map(msgpack.unpackb(data))
    assert error.traceback is not None and error.traceback.startswith("...\n")
    assert error.traceback.endswith("OSError: the end\n")
    assert error.evalue.startswith("é")


def test_a_garbled_report_is_still_a_start_up_failure() -> None:
    r, w = open_pipe()
    os.write(w, b"\xc1 not msgpack")
    os.close(w)
    error = read_report(r)
    assert error is not None and error.kind == "worker_start_error"
    assert "unreadable" in error.evalue


@pytest.mark.parametrize("exc", [BlockingIOError(11, "Resource temporarily unavailable")])
def test_a_failed_fork_is_a_start_up_failure(exc: OSError) -> None:
    error = fork_failed(exc)
    assert (error.kind, error.ename) == ("worker_start_error", "BlockingIOError")
    assert error.evalue.startswith("fork() failed:")
