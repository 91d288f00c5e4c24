"""`App`, the registry of what a Neutrino application runs, and `Task`, one registered function.

`@app.task(...)` is sugar over `app.add_task(fn, ...)`. Options are checked when the function is
decorated, so a mistake fails at import time with a message naming the fix, never when the first
task runs on a worker. There is no global app: workers load the one named on their command line.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Generic, ParamSpec, TypeVar, overload

__all__ = ["App", "Task"]

P = ParamSpec("P")
R = TypeVar("R")

_TASK_OPTIONS = ("name", "timeout", "retries")


class Task(Generic[P, R]):
    """A function registered with an App, still callable locally (handy in unit tests).

    Calling a Task calls the function in this process; for an `async def` task that returns the
    coroutine, as the function itself would. Attributes are fixed at registration: `name`, `fn`,
    `is_async`, `signature` (computed once, used by workers to check arguments), `timeout`
    (seconds, or None for no limit) and `retries`.
    """

    def __init__(self, fn: Callable[P, R], *, name: str, timeout: float | None, retries: int) -> None:
        self.fn = fn
        self.name = name
        self.timeout = timeout
        self.retries = retries
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


class App:
    """A named set of tasks (and, later, models) that workers import and clients call by name."""

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"App name must be a non-empty string, got {name!r}; e.g. App('billing')")
        self.name = name
        self._tasks: dict[str, Task[..., Any]] = {}
        # Read-only view: registering goes through add_task, which checks options and duplicates.
        self._tasks_view: Mapping[str, Task[..., Any]] = MappingProxyType(self._tasks)

    @property
    def tasks(self) -> Mapping[str, Task[..., Any]]:
        """The registered tasks by name (read-only; register with `@app.task` or `app.add_task`)."""
        return self._tasks_view

    def add_task(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
        **unknown: object,
    ) -> Task[P, R]:
        """Register `fn` as a task and return its Task wrapper.

        `name` defaults to the function's `__name__`; `timeout` is a per-attempt limit in seconds
        (None: no limit); `retries` is how many more attempts a worker death or timeout may take.
        """
        _reject_unknown(unknown)
        if isinstance(fn, Task):
            raise TypeError(f"{fn!r} is already a task; register the function itself: app.add_task(task.fn)")
        if inspect.isclass(fn):
            raise TypeError(
                f"@app.task needs a function, got class {fn.__qualname__}; decorate a `def` or `async def` "
                "(serving a class as a model will be @app.model)"
            )
        if not callable(fn):
            raise TypeError(f"@app.task needs a function, got {type(fn).__name__} {fn!r}")
        task_name = _check_name(fn, name)
        if task_name in self._tasks:
            raise ValueError(
                f"app {self.name!r} already has a task named {task_name!r} ({self._tasks[task_name]!r}); "
                "rename the function or pass name='...'"
            )
        task: Task[P, R] = Task(fn, name=task_name, timeout=_check_timeout(timeout), retries=_check_retries(retries))
        self._tasks[task_name] = task
        return task

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        name: str | None = None,
        /,
        *,
        timeout: float | None = None,
        retries: int = 0,
        **unknown: object,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        fn: Any = None,
        /,
        *,
        name: Any = None,
        timeout: Any = None,
        retries: Any = 0,
        **unknown: Any,
    ) -> Any:
        """Decorator form of `add_task`: `@app.task`, `@app.task()`, `@app.task("name", retries=3)`."""
        if isinstance(fn, str):
            if name is not None:
                raise TypeError(f"task name given twice ({fn!r} and name={name!r}); pass it once")
            fn, name = None, fn
        # Checked here too, so `@app.task(retry=3)` fails on the decorator line, not on the `def`.
        _reject_unknown(unknown)
        _check_timeout(timeout)
        _check_retries(retries)
        if fn is not None:
            return self.add_task(fn, name=name, timeout=timeout, retries=retries)

        def decorate(f: Callable[P, R]) -> Task[P, R]:
            return self.add_task(f, name=name, timeout=timeout, retries=retries)

        return decorate

    def __repr__(self) -> str:
        return f"<App {self.name!r} tasks={sorted(self._tasks)}>"


def _reject_unknown(unknown: Mapping[str, object]) -> None:
    if not unknown:
        return
    parts = []
    for key in sorted(unknown):
        close = difflib.get_close_matches(key, _TASK_OPTIONS, n=1)
        parts.append(f"{key} (did you mean {close[0]!r}?)" if close else key)
    raise TypeError(
        f"The following task options are undefined: {', '.join(parts)}. Valid options: {', '.join(_TASK_OPTIONS)}."
    )


def _check_name(fn: Callable[..., Any], name: str | None) -> str:
    if name is None:
        default = getattr(fn, "__name__", None)
        if not isinstance(default, str) or not default:
            raise TypeError(f"{fn!r} has no __name__ to name the task after; pass name='...'")
        return default
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"task name must be a non-empty string, got {name!r}; e.g. name='resize_image'")
    return name


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, got {type(timeout).__name__} {timeout!r}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive, finite number of seconds, got {timeout!r}; None means no limit")
    return float(timeout)


def _check_retries(retries: object) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"retries must be an int (0 for no retries), got {type(retries).__name__} {retries!r}")
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, got {retries}")
    return retries
