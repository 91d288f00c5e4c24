"""The model to serve: import the app, find the model by name, and adapt its methods for the server.

`Served` wraps one instance of the user's class: `load()` (sync ones run in a thread, so the
server keeps answering health checks meanwhile), `check(x)`, which checks one input against the
class's type hints (typed.py) and its `validate(x)` when it has one, and `run_batch(xs)`, which
calls `predict` once for the batch (or with the one input when batching is off) and checks that a
batch's answer is a list as long as the batch.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from neutrino import App, Model
from pydantic import ValidationError

from . import typed
from .config import Config


class AppImportError(Exception):
    """The app could not be imported, or has no model of that name; the message says which."""


class Served:
    def __init__(self, model: Model, *, max_concurrency: int) -> None:
        self.model = model
        self.name = model.name
        # The calling convention follows the model's declaration, not the server's batch size: a model
        # written for lists still gets a list (of one) when --max-batch-size 1 turns batching off.
        self.batched = model.batched
        self.instance = model.cls()
        self._predict: Callable[[Any], Any] = self.instance.predict
        self._async_predict = inspect.iscoroutinefunction(self._predict)
        validate = getattr(self.instance, "validate", None)
        self._validate: Callable[[Any], Any] | None = validate if callable(validate) else None
        self.input_type, self.output_type = model.io_types()
        self._adapter = typed.adapter(model.name, self.input_type)
        # False for a model with neither hints nor validate(): its inputs skip check() altogether.
        self.checks_inputs = self._adapter is not None or self._validate is not None
        # Sync predict runs here, so the event loop keeps taking requests (and forming the next batch).
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix=f"predict-{model.name}")

    async def load(self) -> None:
        load = self.instance.load
        if inspect.iscoroutinefunction(load):
            await load()
        else:
            await asyncio.get_running_loop().run_in_executor(self._pool, load)

    def check(self, value: Any) -> Any:
        """The input as predict gets it, validated against the type hint (pydantic's coercions applied),
        then passed to `validate()`; raises `typed.InputRefused` with FastAPI-style errors."""
        try:
            if self._adapter is not None:
                value = self._adapter.validate_python(value)
            if self._validate is not None:
                self._validate(value)
        except ValidationError as exc:  # the hint's, or one validate() raised itself
            raise typed.InputRefused("validation_error", typed.errors_of(exc)) from None
        except (ValueError, TypeError) as exc:
            raise typed.InputRefused(
                type(exc).__name__, [{"loc": [], "msg": str(exc), "type": "value_error"}]
            ) from None
        return value

    async def run_batch(self, values: list[Any]) -> list[Any]:
        arg = values if self.batched else values[0]
        try:
            if self._async_predict:
                out = await self._predict(arg)
            else:
                out = await asyncio.get_running_loop().run_in_executor(self._pool, self._predict, arg)
        except Exception:
            raise
        except BaseException as exc:
            task = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
                raise  # our own deadline or shutdown, not predict's doing
            # sys.exit(), KeyboardInterrupt or a stray CancelledError inside predict: that batch
            # fails; the replica (and every other request on it) lives on.
            raise PredictAborted(f"predict raised {type(exc).__name__}: {exc}") from exc
        if not self.batched:
            return [out]
        if not isinstance(out, (list, tuple)) and hasattr(out, "tolist"):
            out = out.tolist()  # a numpy array of outputs
        if not isinstance(out, (list, tuple)) or len(out) != len(values):
            got = f"a {type(out).__name__} of length {len(out)}" if hasattr(out, "__len__") else type(out).__name__
            raise BatchShapeError(
                f"{self.model.cls.__qualname__}.predict got a batch of {len(values)} inputs and returned {got}; "
                "with max_batch_size > 1 it must return a list with one output per input, in order"
            )
        return list(out)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class PredictAborted(RuntimeError):
    """predict raised a BaseException that is not an Exception (SystemExit, KeyboardInterrupt, ...)."""


class BatchShapeError(RuntimeError):
    """predict answered a batch with something other than one output per input."""


def find_model(config: Config) -> Model:
    if config.app_dir:
        sys.path.insert(0, config.app_dir)
    module_name, _, attr = config.app.partition(":")
    module = importlib.import_module(module_name)  # an import error propagates with its traceback
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise AppImportError(f"{config.app} is not a neutrino.App (got {type(app).__name__}); point --app at it")
    model = app.models.get(config.model)
    if model is None:
        known = ", ".join(sorted(app.models)) or "(none: decorate a class with @app.model)"
        raise AppImportError(f"app {app.name!r} has no model named {config.model!r}; its models: {known}")
    return model
