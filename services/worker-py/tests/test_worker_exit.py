"""What a worker writes out on its way to `os._exit` (worker.py `_flush`): a task's buffered output
reaches its stream even when the other stream cannot be flushed."""

from __future__ import annotations

import io

import pytest
from neutrino_worker import worker


class Broken(io.StringIO):
    def flush(self) -> None:
        raise ValueError("I/O operation on closed file")


def test_buffered_output_is_flushed_on_both_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    out, err = io.BytesIO(), io.BytesIO()
    stdout, stderr = io.TextIOWrapper(out), io.TextIOWrapper(err)
    stdout.write("printed by a task")
    stderr.write("logged by a task")
    monkeypatch.setattr("sys.stdout", stdout)
    monkeypatch.setattr("sys.stderr", stderr)
    worker._flush()
    assert (out.getvalue(), err.getvalue()) == (b"printed by a task", b"logged by a task")


@pytest.mark.parametrize("bad", [None, Broken()], ids=["none", "closed"])
def test_a_stream_a_task_broke_does_not_keep_the_other_from_being_flushed(
    monkeypatch: pytest.MonkeyPatch, bad: object
) -> None:
    err = io.BytesIO()
    stderr = io.TextIOWrapper(err)
    stderr.write("still written")
    monkeypatch.setattr("sys.stdout", bad)
    monkeypatch.setattr("sys.stderr", stderr)
    worker._flush()
    assert err.getvalue() == b"still written"
