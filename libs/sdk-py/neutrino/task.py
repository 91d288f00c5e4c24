"""`Task`, one function registered with an App: its options, their defaults and the checks on them.

A task's options are checked when the function is decorated (see `App.add_task` for what each
means), so a mistake fails at import time with a message naming the fix, never when the first task
runs on a worker. The defaults are SPEC.md's: the catalog (`schema.py`) lists only the options
that differ from them, and the orchestrator applies them to a task that states none.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar

__all__ = ["DEFAULT_RETRY_BACKOFF_MAX_S", "DEFAULT_RETRY_BACKOFF_S", "MAX_RETRIES", "TASK_OPTIONS", "RetryOn", "Task"]

P = ParamSpec("P")
R = TypeVar("R")

TASK_OPTIONS = ("name", "timeout", "retries", "retry_on", "retry_backoff_s", "retry_backoff_max_s")
# SPEC.md §6 rule 6 defaults, which the orchestrator applies when a task states none.
DEFAULT_RETRY_BACKOFF_S = 1.0
DEFAULT_RETRY_BACKOFF_MAX_S = 60.0
# `retries` travels as a uint32 (SPEC.md §3.1), and so does `attempts` (= retries + 1).
MAX_RETRIES = 0xFFFFFFFF - 1

RetryOn = type[BaseException] | tuple[type[BaseException], ...]


class Task(Generic[P, R]):
    """A function registered with an App, still callable locally (handy in unit tests).

    Calling a Task calls the function in this process; for an `async def` task that returns the
    coroutine, as the function itself would. Attributes are fixed at registration: `name`, `fn`,
    `is_async`, `signature` (computed once, used by workers to check arguments), `timeout`
    (seconds, or None for no limit), `retries`, `retry_on` (always a tuple of exception classes),
    `retry_backoff_s` and `retry_backoff_max_s`; see `App.add_task` for what they mean.
    """

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str,
        timeout: float | None,
        retries: int,
        retry_on: tuple[type[BaseException], ...] = (),
        retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
        retry_backoff_max_s: float = DEFAULT_RETRY_BACKOFF_MAX_S,
    ) -> None:
        self.fn = fn
        self.name = name
        self.timeout = timeout
        self.retries = retries
        self.retry_on = retry_on
        self.retry_backoff_s = retry_backoff_s
        self.retry_backoff_max_s = retry_backoff_max_s
        self.is_async = inspect.iscoroutinefunction(fn)
        try:
            self.signature = inspect.signature(fn)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"cannot read the signature of {fn!r} ({exc}); wrap it in a plain `def`") from None
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name!r} of {getattr(self.fn, '__qualname__', self.fn)!r}>"


def check_function(fn: object) -> None:
    """TypeError unless `fn` is a function (or other callable) that is not already a task."""
    if isinstance(fn, Task):
        raise TypeError(f"{fn!r} is already a task; register the function itself: app.add_task(task.fn)")
    if inspect.isclass(fn):
        raise TypeError(
            f"@app.task needs a function, got class {fn.__qualname__}; decorate a `def` or `async def` "
            "(to serve a class as a model, use @app.model)"
        )
    if not callable(fn):
        raise TypeError(f"@app.task needs a function, got {type(fn).__name__} {fn!r}")


def check_name(fn: Callable[..., Any], name: str | None) -> str:
    if name is None:
        default = getattr(fn, "__name__", None)
        if not isinstance(default, str) or not default:
            raise TypeError(f"{fn!r} has no __name__ to name the task after; pass name='...'")
        return default
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"task name must be a non-empty string, got {name!r}; e.g. name='resize_image'")
    return name


def check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {type(timeout).__name__} {timeout!r}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive, finite number of seconds, got {timeout!r}; None means no limit")
    return float(timeout)


def check_retries(retries: object) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"retries must be an int (0 for no retries), got {type(retries).__name__} {retries!r}")
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, got {retries}")
    if retries > MAX_RETRIES:
        raise ValueError(f"retries must be at most {MAX_RETRIES} (the protocol counts attempts in 32 bits)")
    return retries


def check_retry_on(retry_on: object) -> tuple[type[BaseException], ...]:
    """`retry_on` as a tuple of exception classes: what an `except` clause accepts, minus nesting."""
    items = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    for item in items:
        if isinstance(item, BaseException):
            raise TypeError(
                f"retry_on takes exception classes, not instances: got {item!r}; write retry_on={type(item).__name__}"
            )
        if not (inspect.isclass(item) and issubclass(item, BaseException)):
            what = f"class {item.__qualname__}" if inspect.isclass(item) else f"{type(item).__name__} {item!r}"
            raise TypeError(
                f"retry_on must be an exception class or a tuple of them, got {what}; "
                "e.g. retry_on=ConnectionError or retry_on=(ConnectionError, TimeoutError)"
            )
    return items


def check_backoff(base: object, cap: object) -> tuple[float, float]:
    base_s = _positive_seconds("retry_backoff_s", base)
    cap_s = _positive_seconds("retry_backoff_max_s", cap)
    if cap_s < base_s:
        raise ValueError(
            f"retry_backoff_max_s ({cap!r}) is below retry_backoff_s ({base!r}); the cap must be at least the "
            "first wait: raise retry_backoff_max_s or lower retry_backoff_s"
        )
    return base_s, cap_s


def _positive_seconds(option: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{option} must be a number of seconds, got {type(value).__name__} {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{option} must be a positive, finite number of seconds, got {value!r}")
    return float(value)
