"""Runner unit tests: every outcome of running an assignment, without sockets or processes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from neutrino import App, Retry
from neutrino_protocol import TaskAssignment, TaskResult, decode
from neutrino_worker.runner import Runner


def payload(*args: Any, **kwargs: Any) -> bytes:
    return msgpack.packb([list(args), kwargs], use_bin_type=True)


def assignment(task: str, raw: bytes, task_id: int = 7) -> TaskAssignment:
    return TaskAssignment(task_id, task, 1, payload=raw)


def value(result: TaskResult) -> Any:
    assert result.status == "ok", result.error
    assert result.payload is not None
    return msgpack.unpackb(result.payload, raw=False)


@pytest.fixture
def runner() -> Runner:
    app = App("unit")

    @app.task()
    def add(x: int, y: int) -> int:
        return x + y

    @app.task()
    async def greet(name: str) -> str:
        await asyncio.sleep(0)
        return f"Hello, {name}!"

    @app.task()
    def fail(message: str = "boom") -> None:
        raise ValueError(message)

    @app.task()
    async def afail() -> None:
        await asyncio.sleep(0)
        raise KeyError("missing")

    @app.task()
    def returns(kind: str) -> object:
        return {"set": {1, 2}, "object": object(), "big": 2**70, "nested": [1, {"a": {3}}]}[kind]

    @app.task()
    async def loop_id() -> int:
        return id(asyncio.get_running_loop())

    @app.task()
    def echo(data: bytes) -> bytes:
        return data

    @app.task()
    def exits() -> None:
        raise SystemExit(5)

    @app.task(name="renamed")
    def original() -> str:
        return "renamed"

    @app.task(retries=2)
    def again(delay: float | None = None, message: str = "") -> None:
        raise Retry(delay=delay, message=message)

    @app.task(retries=2)
    async def aagain() -> None:
        await asyncio.sleep(0)
        raise Retry(delay=0)

    @app.task(retries=2, retry_on=(ConnectionError, KeyError))
    def flaky(kind: str) -> None:
        raise {"reset": ConnectionResetError("reset by peer"), "key": KeyError("k"), "value": ValueError("v")}[kind]

    return Runner(app.tasks)


def test_sync_task_returns_its_value(runner: Runner) -> None:
    result = runner.run(assignment("add", payload(1, y=2), task_id=42))
    assert result.task_id == 42
    assert value(result) == 3
    assert result.error is None
    assert isinstance(result.run_us, int) and result.run_us >= 0


def test_async_task_runs_on_one_kept_loop(runner: Runner) -> None:
    assert value(runner.run(assignment("greet", payload("Ada")))) == "Hello, Ada!"
    first = value(runner.run(assignment("loop_id", payload())))
    assert value(runner.run(assignment("loop_id", payload()))) == first


def test_bytes_round_trip_as_bin(runner: Runner) -> None:
    assert value(runner.run(assignment("echo", payload(b"\x00\xff")))) == b"\x00\xff"


def test_task_registered_under_another_name(runner: Runner) -> None:
    assert value(runner.run(assignment("renamed", payload()))) == "renamed"


def test_result_encodes_to_valid_frames(runner: Runner) -> None:
    ok = runner.run(assignment("add", payload(1, 2)))
    assert decode(ok.encode()) == ok
    err = runner.run(assignment("fail", payload()))
    assert decode(err.encode()) == err


def test_unknown_task(runner: Runner) -> None:
    result = runner.run(assignment("nope", payload()))
    assert result.status == "error" and result.payload is None
    assert result.error is not None
    assert result.error.kind == "unknown_task"
    assert "'nope'" in result.error.evalue and "add" in result.error.evalue


@pytest.mark.parametrize(
    "raw",
    [
        b"\xc1",  # never valid msgpack
        b"\x92\x90",  # truncated
        msgpack.packb([[], {}]) + b"\x00",  # trailing bytes
        msgpack.packb([[1, 2]]),  # not a pair
        msgpack.packb([[], {}, {}]),
        msgpack.packb({"x": 1, "y": 2}),
        msgpack.packb([{}, []]),
        msgpack.packb("args"),
    ],
)
def test_payload_that_is_not_args_kwargs(runner: Runner, raw: bytes) -> None:
    result = runner.run(assignment("add", raw))
    assert result.status == "error"
    assert result.error is not None and result.error.kind == "bad_arguments"


def test_bad_arguments_read_like_python(runner: Runner) -> None:
    result = runner.run(assignment("add", payload(1)))
    assert result.error is not None
    assert result.error.kind == "bad_arguments"
    assert result.error.ename == "TypeError"
    # Named like the interpreter names it, qualified name included (these test tasks are nested functions).
    assert result.error.evalue.endswith(".add() missing a required argument: 'y'")


def _pos_only(a: int, b: int = 0, /, c: int = 0, *rest: int, d: int, e: int = 0, **more: int) -> None:
    raise AssertionError("must not run")


def _kw_only(*, key: str) -> None:
    raise AssertionError("must not run")


def _strict(a: int, /, b: int) -> None:
    raise AssertionError("must not run")


@pytest.mark.parametrize(
    ("fn", "args", "kwargs", "why"),
    [
        (_pos_only, [], {"d": 1}, "missing a required argument: 'a'"),
        (_pos_only, [1], {}, "missing a required argument: 'd'"),
        (_pos_only, [1, 2, 3, 4], {}, "missing a required argument: 'd'"),
        (_strict, [], {"a": 1, "b": 2}, "'a' parameter is positional only, but was passed as a keyword"),
        (_strict, [1], {"b": 2, "c": 3}, "got an unexpected keyword argument 'c'"),
        (_strict, [1, 2, 3], {}, "too many positional arguments: 3 given, at most 2 accepted"),
        (_pos_only, [1, 2, 3], {"c": 1, "d": 1}, "multiple values for argument 'c'"),
        (_kw_only, [1], {"key": "k"}, "too many positional arguments: 1 given, at most 0 accepted"),
        (_kw_only, [], {}, "missing a required argument: 'key'"),
        (_kw_only, [], {"key": "k", "other": 1}, "got an unexpected keyword argument 'other'"),
    ],
)
def test_bad_arguments_message_names_the_function_and_the_problem(
    fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], why: str
) -> None:
    app = App("sig")
    app.task()(fn)
    result = Runner(app.tasks).run(assignment(fn.__name__, payload(*args, **kwargs)))
    assert result.error is not None and result.error.kind == "bad_arguments"
    assert result.error.evalue == f"{fn.__qualname__}() {why}"


def test_bad_arguments_never_enter_the_function(runner: Runner) -> None:
    result = runner.run(assignment("fail", payload("a", "b")))
    assert result.error is not None and result.error.kind == "bad_arguments"
    assert result.error.evalue.endswith(".fail() too many positional arguments: 2 given, at most 1 accepted")


def test_non_string_keyword_is_bad_arguments(runner: Runner) -> None:
    raw = msgpack.packb([[], {b"x": 1}], use_bin_type=True)
    result = runner.run(assignment("add", raw))
    assert result.error is not None and result.error.kind == "bad_arguments"
    assert result.error.evalue.endswith(".add() keywords must be strings")


def test_non_string_keys_inside_values_are_fine(runner: Runner) -> None:
    # SPEC.md §3.2: only keyword argument names must be str; maps inside values may have any keys.
    raw = msgpack.packb([[{1: "a", b"k": [2]}], {}], use_bin_type=True)
    result = runner.run(assignment("echo", raw))
    assert result.status == "ok" and result.payload is not None
    assert msgpack.unpackb(result.payload, raw=False, strict_map_key=False) == {1: "a", b"k": [2]}


def test_exception_in_task(runner: Runner) -> None:
    result = runner.run(assignment("fail", payload("kaput")))
    assert result.status == "error" and result.payload is None
    error = result.error
    assert error is not None
    assert (error.kind, error.ename, error.evalue) == ("task_error", "ValueError", "kaput")
    assert error.traceback is not None
    assert error.traceback.startswith("Traceback (most recent call last):")
    assert "in fail" in error.traceback and error.traceback.rstrip().endswith("ValueError: kaput")
    assert "neutrino_worker" not in error.traceback
    assert result.run_us is not None


def test_exception_in_async_task_has_a_clean_traceback(runner: Runner) -> None:
    result = runner.run(assignment("afail", payload()))
    error = result.error
    assert error is not None
    assert (error.kind, error.ename, error.evalue) == ("task_error", "KeyError", "'missing'")
    assert error.traceback is not None and "in afail" in error.traceback
    assert "asyncio" not in error.traceback and "neutrino_worker" not in error.traceback


@pytest.mark.parametrize(
    ("kind", "type_name"), [("set", "set"), ("object", "object"), ("big", "int"), ("nested", "list")]
)
def test_result_not_serializable(runner: Runner, kind: str, type_name: str) -> None:
    result = runner.run(assignment("returns", payload(kind)))
    error = result.error
    assert error is not None and error.kind == "result_not_serializable"
    assert f"returned a {type_name}" in error.evalue
    assert result.payload is None
    # The reused packer must be clean after a failed pack.
    assert value(runner.run(assignment("add", payload(2, 2)))) == 4


def test_system_exit_ends_the_worker(runner: Runner) -> None:
    with pytest.raises(SystemExit):
        runner.run(assignment("exits", payload()))


def test_retry_asks_for_another_attempt(runner: Runner) -> None:
    result = runner.run(assignment("again", payload(2.5, "rate limited")))
    assert result.status == "error" and result.payload is None and result.run_us is not None
    error = result.error
    assert error is not None
    assert (error.kind, error.ename, error.evalue) == ("task_error", "Retry", "rate limited")
    assert error.traceback is not None and "in again" in error.traceback
    assert (result.retry, result.retry_delay_s) == (True, 2.5)
    assert decode(result.encode()) == result


def test_retry_without_delay_or_message(runner: Runner) -> None:
    result = runner.run(assignment("again", payload()))
    assert result.error is not None and result.error.evalue == "retry requested"
    assert (result.retry, result.retry_delay_s) == (True, None)
    result = runner.run(assignment("aagain", payload()))
    assert (result.retry, result.retry_delay_s) == (True, 0.0)


@pytest.mark.parametrize(
    ("kind", "ename", "retry"),
    [("reset", "ConnectionResetError", True), ("key", "KeyError", True), ("value", "ValueError", None)],
)
def test_retry_on_matches_like_except(runner: Runner, kind: str, ename: str, retry: bool | None) -> None:
    result = runner.run(assignment("flaky", payload(kind)))
    assert result.error is not None and (result.error.kind, result.error.ename) == ("task_error", ename)
    assert (result.retry, result.retry_delay_s) == (retry, None)


def test_plain_errors_carry_no_retry_flag(runner: Runner) -> None:
    for task, raw in (("fail", payload()), ("add", payload(1)), ("nope", payload())):
        result = runner.run(assignment(task, raw))
        assert result.status == "error" and result.retry is None and result.retry_delay_s is None
