"""`App`, the registry of what a Neutrino application runs, and `Task`, one registered function.

`@app.task(...)` is sugar over `app.add_task(fn, ...)`. Options are checked when the function is
decorated, so a mistake fails at import time with a message naming the fix, never when the first
task runs on a worker. There is no global app: workers load the one named on their command line.
The zygote sends each task's options to the orchestrator (`ZygoteReady.task_options`, SPEC.md
§4.4), which enforces timeouts and schedules retries (SPEC.md §6 rules 5-6), and then the app's
`catalog()` (`ZygoteCatalog`), which clients read with `Client.describe()`.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import os
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Generic, ParamSpec, TypeVar, overload

from . import models as _models
from .models import DEFAULT_BATCH_WAIT_MS, Model, ModelNamespace
from .schema import TaskEntry, task_catalog

__all__ = ["App", "Task"]

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=type[Any])

_TASK_OPTIONS = ("name", "timeout", "retries", "retry_on", "retry_backoff_s", "retry_backoff_max_s")
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


class App:
    """A named set of tasks and models that workers and model servers import and clients call by name."""

    def __init__(self, name: str | None = None) -> None:
        """`name` (used in messages, logs and deployment names) defaults to the defining module's name."""
        if name is None:
            name = _caller_module_name()
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"App name must be a non-empty string, got {name!r}; e.g. App('billing')")
        self.name = name
        self._tasks: dict[str, Task[..., Any]] = {}
        # Read-only view: registering goes through add_task, which checks options and duplicates.
        self._tasks_view: Mapping[str, Task[..., Any]] = MappingProxyType(self._tasks)
        self._models: dict[str, Model] = {}
        self._models_view = ModelNamespace(MappingProxyType(self._models))

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
        retry_on: RetryOn = (),
        retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
        retry_backoff_max_s: float = DEFAULT_RETRY_BACKOFF_MAX_S,
        **unknown: object,
    ) -> Task[P, R]:
        """Register `fn` as a task and return its Task wrapper.

        - `name` defaults to the function's `__name__`.
        - `timeout`: a per-attempt limit in seconds (None: no limit). An attempt that overruns it
          has its worker killed and replaced; it ends with error kind `timeout`.
        - `retries`: how many more attempts the task may take after the first. An attempt is
          retried when it times out, when its worker dies, when the function raises
          `neutrino.Retry`, or when it raises an instance of `retry_on`.
        - `retry_on`: an exception class, or a tuple of them, that asks for a retry when raised
          (as in an `except` clause). Other exceptions answer the task at once.
        - `retry_backoff_s`, `retry_backoff_max_s`: the wait before retry n is
          `min(retry_backoff_max_s, retry_backoff_s * 2**(n-1))`, scaled by a random factor in
          [0.5, 1] (SPEC.md §6 rule 6); a longer `Retry(delay=...)` wins.

        `SubmitTask` options (`Client.submit_with(timeout_s=..., retries=...)`) override
        `timeout` and `retries` per call.
        """
        _reject_unknown(unknown)
        if isinstance(fn, Task):
            raise TypeError(f"{fn!r} is already a task; register the function itself: app.add_task(task.fn)")
        if inspect.isclass(fn):
            raise TypeError(
                f"@app.task needs a function, got class {fn.__qualname__}; decorate a `def` or `async def` "
                "(to serve a class as a model, use @app.model)"
            )
        if not callable(fn):
            raise TypeError(f"@app.task needs a function, got {type(fn).__name__} {fn!r}")
        task_name = _check_name(fn, name)
        if task_name in self._tasks:
            raise ValueError(
                f"app {self.name!r} already has a task named {task_name!r} ({self._tasks[task_name]!r}); "
                "rename the function or pass name='...'"
            )
        backoff_s, backoff_max_s = _check_backoff(retry_backoff_s, retry_backoff_max_s)
        task: Task[P, R] = Task(
            fn,
            name=task_name,
            timeout=_check_timeout(timeout),
            retries=_check_retries(retries),
            retry_on=_check_retry_on(retry_on),
            retry_backoff_s=backoff_s,
            retry_backoff_max_s=backoff_max_s,
        )
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
        retry_on: RetryOn = (),
        retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
        retry_backoff_max_s: float = DEFAULT_RETRY_BACKOFF_MAX_S,
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
        retry_on: Any = (),
        retry_backoff_s: Any = DEFAULT_RETRY_BACKOFF_S,
        retry_backoff_max_s: Any = DEFAULT_RETRY_BACKOFF_MAX_S,
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
        _check_retry_on(retry_on)
        _check_backoff(retry_backoff_s, retry_backoff_max_s)
        options: dict[str, Any] = {
            "name": name,
            "timeout": timeout,
            "retries": retries,
            "retry_on": retry_on,
            "retry_backoff_s": retry_backoff_s,
            "retry_backoff_max_s": retry_backoff_max_s,
        }
        if fn is not None:
            return self.add_task(fn, **options)

        def decorate(f: Callable[P, R]) -> Task[P, R]:
            return self.add_task(f, **options)

        return decorate

    @property
    def models(self) -> ModelNamespace:
        """The registered models by name, `app.models.digits` or `app.models["digits"]` (see `neutrino.Model`);
        `app.models.digits.predict(x)` calls the model's replicas."""
        return self._models_view

    def add_model(
        self,
        cls: C,
        *,
        name: str | None = None,
        min_replicas: int = 1,
        max_replicas: int | None = None,
        max_batch_size: int = 1,
        batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
        max_concurrency: int = 1,
        cpu: str | float | None = None,
        memory: str | None = None,
        gpu: int = 0,
        **unknown: object,
    ) -> Model:
        """Register class `cls` as a model and return its `Model` (options described there).

        `name` defaults to the class name in lower case; `max_replicas` defaults to `min_replicas`.
        """
        _models.reject_unknown(unknown)
        _models.check_model_class(cls)
        model_name = cls.__name__.lower() if name is None else name
        lo, hi, batch, wait_ms, conc = _models.check_options(
            model_name, min_replicas, max_replicas, max_batch_size, batch_wait_ms, max_concurrency
        )
        cpu_quantity, memory_quantity, gpus = _models.check_resources(cpu, memory, gpu)
        if model_name in self._models:
            raise ValueError(
                f"app {self.name!r} already has a model named {model_name!r} ({self._models[model_name]!r}); "
                "pass name='...'"
            )
        model = Model(
            cls,
            name=model_name,
            min_replicas=lo,
            max_replicas=hi,
            max_batch_size=batch,
            batch_wait_ms=wait_ms,
            max_concurrency=conc,
            cpu=cpu_quantity,
            memory=memory_quantity,
            gpu=gpus,
        )
        self._models[model_name] = model
        return model

    def model(
        self,
        *,
        name: str | None = None,
        min_replicas: int = 1,
        max_replicas: int | None = None,
        max_batch_size: int = 1,
        batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
        max_concurrency: int = 1,
        cpu: str | float | None = None,
        memory: str | None = None,
        gpu: int = 0,
        **unknown: object,
    ) -> Callable[[C], C]:
        """Decorator form of `add_model`; returns the class unchanged (its registration is `app.models.<name>`)."""
        # Checked here too, so a typo fails on the decorator line.
        _models.reject_unknown(unknown)
        _models.check_options(name, min_replicas, max_replicas, max_batch_size, batch_wait_ms, max_concurrency)
        _models.check_resources(cpu, memory, gpu)

        def decorate(cls: C) -> C:
            self.add_model(
                cls,
                name=name,
                min_replicas=min_replicas,
                max_replicas=max_replicas,
                max_batch_size=max_batch_size,
                batch_wait_ms=batch_wait_ms,
                max_concurrency=max_concurrency,
                cpu=cpu,
                memory=memory,
                gpu=gpu,
            )
            return cls

        return decorate

    def configure_models(self, urls: Mapping[str, str | Sequence[str]]) -> None:
        """Set where each model's replicas are: `{"digits": ["http://127.0.0.1:8601", ...]}` (or one
        comma-separated string). Overrides `NEUTRINO_MODEL_<NAME>_URL`; call before the first predict."""
        for model_name, value in urls.items():
            model = self.models.get(model_name)
            if model is None:
                raise KeyError(
                    f"no model named {model_name!r} in app {self.name!r}; registered: {sorted(self._models)}"
                )
            model.urls = _models.split_urls(value)
            model._client = None

    def catalog(self) -> dict[str, TaskEntry]:
        """Each task's description, by name: JSON Schemas of its parameters and result, the first
        paragraph of its docstring, its options (see `neutrino.schema` for the shape). Plain data
        that msgpack and JSON encode. Imports pydantic on first use."""
        return task_catalog(self._tasks)

    def __repr__(self) -> str:
        models = f" models={sorted(self._models)}" if self._models else ""
        return f"<App {self.name!r} tasks={sorted(self._tasks)}{models}>"


def _caller_module_name() -> str:
    """The module that called `App()`: `examples.quickstart.app`, or a script's file stem when run as __main__."""
    frame = inspect.currentframe()
    caller = frame.f_back.f_back if frame is not None and frame.f_back is not None else None
    if caller is None:
        return "app"
    module = caller.f_globals.get("__name__")
    if module == "__main__" or not isinstance(module, str):
        path = caller.f_globals.get("__file__")
        return os.path.splitext(os.path.basename(path))[0] if isinstance(path, str) else "app"
    return module


def _reject_unknown(unknown: Mapping[str, object]) -> None:
    if not unknown:
        return
    parts = []
    for key in sorted(unknown):
        # Two guesses: `retry` is as likely `retries` as `retry_on`.
        close = " or ".join(repr(c) for c in difflib.get_close_matches(key, _TASK_OPTIONS, n=2))
        parts.append(f"{key} (did you mean {close}?)" if close else key)
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
    if retries > MAX_RETRIES:
        raise ValueError(f"retries must be at most {MAX_RETRIES} (the protocol counts attempts in 32 bits)")
    return retries


def _check_retry_on(retry_on: object) -> tuple[type[BaseException], ...]:
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


def _check_backoff(base: object, cap: object) -> tuple[float, float]:
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
