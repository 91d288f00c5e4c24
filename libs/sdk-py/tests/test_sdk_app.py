"""neutrino.app: registering tasks, their options, and calling them locally."""

from __future__ import annotations

import asyncio
import inspect
import math

import pytest
from neutrino import App, Task


def test_bare_and_called_decorators_register_tasks() -> None:
    app = App("demo")

    @app.task
    def add(x: int, y: int) -> int:
        """Add two numbers."""
        return x + y

    @app.task()
    def sub(x: int, y: int) -> int:
        return x - y

    @app.task("times", timeout=2, retries=3)
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="div")
    def div(x: float, y: float) -> float:
        return x / y

    assert list(app.tasks) == ["add", "sub", "times", "div"]
    assert app.tasks["add"] is add
    assert isinstance(add, Task)
    assert add.name == "add" and add.timeout is None and add.retries == 0 and not add.is_async
    assert mul.name == "times" and mul.timeout == 2.0 and isinstance(mul.timeout, float) and mul.retries == 3
    # functools.update_wrapper: the task still looks like the function it wraps.
    assert add.__name__ == "add" and add.__doc__ == "Add two numbers." and add.__wrapped__ is add.fn  # type: ignore[attr-defined]
    assert add.signature == inspect.signature(add.fn)
    assert list(add.signature.parameters) == ["x", "y"]


def test_tasks_stay_callable_locally() -> None:
    app = App("demo")

    @app.task
    def add(x: int, y: int = 10) -> int:
        return x + y

    @app.task(retries=1)
    async def greet(name: str) -> str:
        await asyncio.sleep(0)
        return f"hi {name}"

    assert add(1, 2) == 3
    assert add(x=1) == 11
    assert greet.is_async
    coro = greet("ann")
    assert inspect.iscoroutine(coro)
    assert asyncio.run(coro) == "hi ann"


def test_add_task_is_the_explicit_form_and_lambdas_are_fine() -> None:
    app = App("demo")
    double = app.add_task(lambda x: 2 * x, name="double", timeout=0.5)
    anonymous = app.add_task(lambda: None)
    assert double(4) == 8 and double.timeout == 0.5
    assert anonymous.name == "<lambda>"
    assert set(app.tasks) == {"double", "<lambda>"}


def test_apps_are_independent() -> None:
    a, b = App("a"), App("b")

    def job() -> None: ...

    a.add_task(job)
    b.add_task(job)
    assert list(a.tasks) == ["job"] and list(b.tasks) == ["job"]
    assert a.tasks["job"] is not b.tasks["job"]


def test_tasks_mapping_is_read_only() -> None:
    app = App("demo")
    app.add_task(print, name="p")
    with pytest.raises(TypeError):
        app.tasks["x"] = app.tasks["p"]  # type: ignore[index]
    assert "App 'demo'" in repr(app) and "p" in repr(app)


def test_unknown_options_are_listed_with_suggestions() -> None:
    app = App("demo")
    with pytest.raises(TypeError) as info:
        app.task(retry=3, timout=1)  # type: ignore[call-overload]
    msg = str(info.value)
    assert "undefined: retry (did you mean 'retry_on' or 'retries'?), timout (did you mean 'timeout'?)" in msg
    assert "Valid options: name, timeout, retries, retry_on, retry_backoff_s, retry_backoff_max_s." in msg
    with pytest.raises(TypeError, match="undefined: colour"):
        app.add_task(print, colour="red")


@pytest.mark.parametrize(
    ("timeout", "error", "words"),
    [
        (0, ValueError, "positive"),
        (-1.5, ValueError, "positive"),
        (math.inf, ValueError, "finite"),
        (math.nan, ValueError, "positive"),
        ("5", TypeError, "number of seconds"),
        (True, TypeError, "number of seconds"),
    ],
)
def test_bad_timeout_fails_at_decoration(timeout: object, error: type[Exception], words: str) -> None:
    app = App("demo")
    with pytest.raises(error, match=words):
        app.task(timeout=timeout)  # type: ignore[call-overload]
    assert not app.tasks


@pytest.mark.parametrize(
    ("retries", "error", "words"),
    [(-1, ValueError, "0 or more"), (1.5, TypeError, "must be an int"), (True, TypeError, "must be an int")],
)
def test_bad_retries_fails_at_decoration(retries: object, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        App("demo").task(retries=retries)  # type: ignore[call-overload]


def test_too_many_retries_for_the_protocol() -> None:
    App("demo").task(retries=2**32 - 2)
    with pytest.raises(ValueError, match="at most 4294967294"):
        App("demo").task(retries=2**32 - 1)


def test_retry_options_default_and_are_stored() -> None:
    app = App("demo")

    @app.task
    def plain() -> None: ...

    @app.task(retries=5, retry_on=ConnectionError, retry_backoff_s=0.25, retry_backoff_max_s=4)
    def one() -> None: ...

    many = app.add_task(lambda: None, name="many", retry_on=(KeyError, OSError), retry_backoff_max_s=1)

    assert (plain.retry_on, plain.retry_backoff_s, plain.retry_backoff_max_s) == ((), 1.0, 60.0)
    assert (one.retries, one.retry_on, one.retry_backoff_s, one.retry_backoff_max_s) == (
        5,
        (ConnectionError,),
        0.25,
        4.0,
    )
    assert isinstance(one.retry_backoff_max_s, float)
    assert (many.retry_on, many.retry_backoff_s, many.retry_backoff_max_s) == ((KeyError, OSError), 1.0, 1.0)


class NotAnError:
    pass


@pytest.mark.parametrize(
    ("retry_on", "words"),
    [
        (ValueError("x"), r"exception classes, not instances: got ValueError\('x'\); write retry_on=ValueError"),
        ((KeyError, OSError()), r"not instances: got OSError\(\); write retry_on=OSError"),
        (NotAnError, r"exception class or a tuple of them, got class NotAnError; e\.g\. retry_on=ConnectionError"),
        (int, "got class int"),
        ("ValueError", "got str 'ValueError'"),
        ([KeyError], r"got list \[<class 'KeyError'>\].*retry_on=\(ConnectionError, TimeoutError\)"),
        (None, "got NoneType None"),
    ],
)
def test_bad_retry_on_fails_at_decoration(retry_on: object, words: str) -> None:
    app = App("demo")
    with pytest.raises(TypeError, match=words):
        app.task(retry_on=retry_on)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=words):
        app.add_task(print, retry_on=retry_on)  # type: ignore[arg-type]
    assert not app.tasks


@pytest.mark.parametrize("option", ["retry_backoff_s", "retry_backoff_max_s"])
@pytest.mark.parametrize(
    ("value", "error", "words"),
    [
        (0, ValueError, "positive, finite number of seconds, got 0"),
        (-1.5, ValueError, "positive"),
        (math.inf, ValueError, "finite"),
        (math.nan, ValueError, "positive"),
        ("5", TypeError, "number of seconds, got str '5'"),
        (True, TypeError, "number of seconds"),
        (None, TypeError, "number of seconds"),
    ],
)
def test_bad_backoff_fails_at_decoration(option: str, value: object, error: type[Exception], words: str) -> None:
    app = App("demo")
    options = {"retry_backoff_s": 0.001, "retry_backoff_max_s": 1e6, option: value}
    with pytest.raises(error, match=f"{option} must be a .*{words}"):
        app.task(**options)  # type: ignore[call-overload]
    with pytest.raises(error, match=f"{option} must be a .*{words}"):
        app.add_task(print, **options)  # type: ignore[arg-type]
    assert not app.tasks


def test_backoff_cap_below_the_base_names_both_fixes() -> None:
    app = App("demo")
    with pytest.raises(
        ValueError, match=r"retry_backoff_max_s \(2\) is below retry_backoff_s \(5\).*raise .* or lower"
    ):
        app.task(retry_backoff_s=5, retry_backoff_max_s=2)
    assert app.add_task(print, retry_backoff_s=3, retry_backoff_max_s=3).retry_backoff_max_s == 3.0
    with pytest.raises(ValueError, match="below retry_backoff_s"):
        app.task(retry_backoff_max_s=0.5)  # the default base is 1 s


def test_bad_names() -> None:
    app = App("demo")
    with pytest.raises(ValueError, match="non-empty string"):
        app.task(name="")(print)
    with pytest.raises(ValueError, match="non-empty string"):
        app.add_task(print, name=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="given twice"):
        app.task("a", name="b")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="App name"):
        App("")


def test_duplicate_task_name_is_an_error() -> None:
    app = App("demo")

    @app.task
    def job() -> None: ...

    with pytest.raises(ValueError, match=r"already has a task named 'job'.*name="):

        @app.task
        def job() -> None: ...


def test_only_functions_can_be_tasks() -> None:
    app = App("demo")
    with pytest.raises(TypeError, match=r"got class .*Thing.*@app\.model"):

        @app.task
        class Thing: ...

    with pytest.raises(TypeError, match="needs a function"):
        app.add_task(42)  # type: ignore[arg-type]

    @app.task
    def job() -> None: ...

    with pytest.raises(TypeError, match=r"already a task.*task\.fn"):
        App("other").add_task(job)


def test_app_name_defaults_to_the_defining_module() -> None:
    assert App().name == __name__
    namespace: dict[str, object] = {"__name__": "__main__", "__file__": "/srv/billing.py", "App": App}
    exec("app = App()", namespace)
    assert namespace["app"].name == "billing"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="non-empty string"):
        App("  ")
