"""`App`, the registry of what a Neutrino application runs: its tasks (`task.py`) and models (`models.py`).

`@app.task(...)` is sugar over `app.add_task(fn, ...)`, `@app.model(...)` over `app.add_model(cls, ...)`;
both check their options on the decorator line, so a mistake fails at import time with a message
naming the fix. There is no global app: workers load the one named on their command line.
The zygote sends each task's options to the orchestrator (`ZygoteReady.task_options`, SPEC.md
§4.4), which enforces timeouts and schedules retries (SPEC.md §6 rules 5-6), and then the app's
`catalog()` (`ZygoteCatalog`), which clients read with `Client.describe()`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ParamSpec, TypeVar, overload

from . import models as _models
from . import task as _task
from ._options import reject_unknown
from .models import DEFAULT_BATCH_WAIT_MS, MODEL_OPTIONS, Model, ModelNamespace
from .schema import TaskEntry, task_catalog
from .task import DEFAULT_RETRY_BACKOFF_MAX_S, DEFAULT_RETRY_BACKOFF_S, TASK_OPTIONS, RetryOn, Task

__all__ = ["App"]

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=type[Any])


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
        reject_unknown("task", unknown, TASK_OPTIONS)
        _task.check_function(fn)
        task_name = _task.check_name(fn, name)
        if task_name in self._tasks:
            raise ValueError(
                f"app {self.name!r} already has a task named {task_name!r} ({self._tasks[task_name]!r}); "
                "rename the function or pass name='...'"
            )
        backoff_s, backoff_max_s = _task.check_backoff(retry_backoff_s, retry_backoff_max_s)
        task: Task[P, R] = Task(
            fn,
            name=task_name,
            timeout=_task.check_timeout(timeout),
            retries=_task.check_retries(retries),
            retry_on=_task.check_retry_on(retry_on),
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
        reject_unknown("task", unknown, TASK_OPTIONS)
        _task.check_timeout(timeout)
        _task.check_retries(retries)
        _task.check_retry_on(retry_on)
        _task.check_backoff(retry_backoff_s, retry_backoff_max_s)
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
        reject_unknown("model", unknown, MODEL_OPTIONS)
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
        reject_unknown("model", unknown, MODEL_OPTIONS)
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
