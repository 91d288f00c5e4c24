"""`Model`, one class registered with `@app.model(...)`, and `app.models`, the namespace tasks call models through.

`@app.model(...)` is sugar over `app.add_model(cls, ...)`; like task options, model options are
checked when the class is decorated. The decorator returns the class unchanged, so `Digits()`
still builds a plain instance in unit tests. The registration (`app.models.digits`, a `Model`)
holds the options the model server reads and is also the client: `app.models.digits.predict(x)`
reaches the model's replicas over HTTP (see `_model_client.py`), from their URLs in
configuration: `app.configure_models({"digits": [...]})`, else the environment variable
`NEUTRINO_MODEL_<NAME>_URL` (comma-separated; the name in capitals, other characters as `_`).
"""

from __future__ import annotations

import inspect
import math
import os
import re
import typing
from collections.abc import Iterator, Mapping, MutableSequence, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._model_client import ModelClient

__all__ = ["Model", "ModelNamespace", "model_url_env", "service_name"]

MODEL_OPTIONS = (
    "name",
    "min_replicas",
    "max_replicas",
    "max_batch_size",
    "batch_wait_ms",
    "max_concurrency",
    "cpu",
    "memory",
    "gpu",
)
DEFAULT_BATCH_WAIT_MS = 5.0
# A wait longer than this would add more latency than any batch saves; likely ms/s confusion.
MAX_BATCH_WAIT_MS = 10_000.0
URL_ENV_PREFIX = "NEUTRINO_MODEL_"


# Set by `neutrino serve` in a container: where a model is when no NEUTRINO_MODEL_<NAME>_URL says
# otherwise. `{service}` is `service_name(name)`, `{name}` the model's own name.
URL_TEMPLATE_ENV = "NEUTRINO_MODEL_URL_TEMPLATE"
CLUSTER_URL_TEMPLATE = "http://{service}:8080"


def model_url_env(name: str) -> str:
    """The environment variable that holds model `name`'s replica URLs: `digits` -> `NEUTRINO_MODEL_DIGITS_URL`."""
    return f"{URL_ENV_PREFIX}{re.sub(r'[^A-Za-z0-9]', '_', name).upper()}_URL"


def service_name(name: str) -> str:
    """The Kubernetes Service (and Compose host) name of model `name`: `My_Model` -> `neutrino-model-my-model`.

    DNS labels allow lower-case letters, digits and `-` only, at most 63 characters.
    """
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return f"neutrino-model-{label}"[:63].rstrip("-")


class Model:
    """A model class registered with an App: its options, and a client for its replicas.

    - `cls`: the class; `load()` is called once per replica, `predict(x)` for each input
      (or `predict(xs)` with a list of inputs, returning a list as long, when `max_batch_size > 1`).
      Either may be `async def`. An optional `validate(x)` is called on each input before it joins
      a batch; raising `ValueError` or `TypeError` there fails only that request (HTTP 422).
      Type hints on `validate(x)`, else on `predict` (its list's item type when batched), are
      checked per input with pydantic before that, as FastAPI checks a body: a bad input gets a
      422 naming each wrong field, and `predict` gets the validated value (see `io_types`).
    - `min_replicas`, `max_replicas`: how many model servers a deployment runs.
    - `max_batch_size`: the most inputs one `predict` call gets (1: no batching).
    - `batch_wait_ms`: how long a batch may wait to fill, from its first input's arrival. A
      server with nothing queued and nothing running sends a lone input at once, unless its
      last batch carried several requests: their callers are coming back, and the first back
      waits (`batch_wait_ms` at most) for the others.
    - `max_concurrency`: `predict` calls running at once in one replica (sync ones in threads).
    - `cpu`, `memory`, `gpu`: what one replica needs, as Kubernetes quantities (`cpu="500m"`,
      `memory="2Gi"`; `gpu` counts `nvidia.com/gpu` devices). `neutrino deploy render` makes them
      each replica's requests and limits; None: the renderer's defaults.
    """

    def __init__(
        self,
        cls: type[Any],
        *,
        name: str,
        min_replicas: int,
        max_replicas: int,
        max_batch_size: int,
        batch_wait_ms: float,
        max_concurrency: int,
        cpu: str | None = None,
        memory: str | None = None,
        gpu: int = 0,
    ) -> None:
        self.cls = cls
        self.name = name
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.max_batch_size = max_batch_size
        self.batch_wait_ms = batch_wait_ms
        self.max_concurrency = max_concurrency
        self.cpu = cpu
        self.memory = memory
        self.gpu = gpu
        self.batched = max_batch_size > 1
        self.urls: tuple[str, ...] | None = None  # set by App.configure_models; else read from the environment
        self._client: ModelClient | None = None

    def options(self) -> dict[str, Any]:
        """The options as plain data (what a deployment and the model server read)."""
        return {
            "name": self.name,
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "max_batch_size": self.max_batch_size,
            "batch_wait_ms": self.batch_wait_ms,
            "max_concurrency": self.max_concurrency,
            "cpu": self.cpu,
            "memory": self.memory,
            "gpu": self.gpu,
        }

    def io_types(self) -> tuple[Any, Any]:
        """The types of one input and of one output, from the class's type hints; `Any` where unstated.

        The input's is `validate(x)`'s hint, else `predict`'s; a batched model's `predict` takes and
        returns lists, so its hints count by their item type (`list[list[float]]` -> `list[float]`),
        and a hint that is not a list says nothing about one input. The model server checks inputs
        against the input type and describes both in its V2 metadata.
        """
        x, out = _hints(self.cls.predict)
        if self.batched:
            x, out = _item_type(x), _item_type(out)
        validate = getattr(self.cls, "validate", None)
        if callable(validate):
            hint, _ = _hints(validate)
            if hint is not Any:
                x = hint
        return x, out

    def replica_urls(self) -> tuple[str, ...]:
        """The replicas' base URLs: from `App.configure_models`, else `NEUTRINO_MODEL_<NAME>_URL`, else
        `NEUTRINO_MODEL_URL_TEMPLATE` (which `neutrino serve` sets to `http://neutrino-model-<name>:8080`)."""
        if self.urls:
            return self.urls
        env = model_url_env(self.name)
        urls = split_urls(os.environ.get(env, ""))
        if not urls and (template := os.environ.get(URL_TEMPLATE_ENV)):
            urls = split_urls(template.format(name=self.name, service=service_name(self.name)))
        if not urls:
            raise LookupError(
                f"no URL for model {self.name!r}: set {env}=http://HOST:PORT (comma-separated for several replicas; "
                f"a Kubernetes Service in a cluster) or call app.configure_models({{{self.name!r}: [...]}})"
            )
        return urls

    @property
    def client(self) -> ModelClient:
        """The HTTP client for this model's replicas (built on first use, from `replica_urls()`)."""
        if self._client is None:
            from ._model_client import ModelClient

            self._client = ModelClient(self.name, self.replica_urls())
        return self._client

    def predict(self, x: Any, *, timeout_s: float | None = None) -> Any:
        """Run one input through the model's replicas and return its output.

        In a coroutine (an `async def` task) this returns an awaitable: `await model.predict(x)`.
        Elsewhere it blocks and returns the output. Raises `ModelInputError` (the model refused
        the input), `ModelError` (predict raised; `type`/`message` from the server),
        `ModelBusyError` (every replica's queue stayed full), `UnavailableError` (no replica
        reachable) or `NeutrinoTimeoutError`.
        """
        if _in_coroutine():
            return self.client.apredict(x, timeout_s=timeout_s)
        return self.client.predict(x, timeout_s=timeout_s)

    async def apredict(self, x: Any, *, timeout_s: float | None = None) -> Any:
        """`predict` as a coroutine, always."""
        return await self.client.apredict(x, timeout_s=timeout_s)

    def __repr__(self) -> str:
        return f"<Model {self.name!r} of {self.cls.__qualname__} max_batch_size={self.max_batch_size}>"


class ModelNamespace(Mapping[str, Model]):
    """`app.models`: the registered models by name, as attributes (`app.models.digits`) or items."""

    def __init__(self, models: Mapping[str, Model]) -> None:
        self._models = models

    def __getattr__(self, name: str) -> Model:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._models[name]
        except KeyError:
            raise AttributeError(
                f"no model named {name!r}; registered: {', '.join(sorted(self._models)) or '(none)'}"
            ) from None

    def __getitem__(self, name: str) -> Model:
        return self._models[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)

    def __repr__(self) -> str:
        return f"<models {sorted(self._models)}>"


def check_model_class(cls: object) -> type[Any]:
    """The class, if it can be served: a class with callable `load` and `predict`."""
    if not inspect.isclass(cls):
        what = "a function" if callable(cls) else f"{type(cls).__name__} {cls!r}"
        raise TypeError(
            f"@app.model needs a class with load() and predict(x), got {what}; "
            "for a function use @app.task, or wrap it in a class"
        )
    methods: dict[str, Any] = {m: getattr(cls, m, None) for m in ("load", "predict")}
    missing = [m for m, fn in methods.items() if not callable(fn)]
    if missing:
        raise TypeError(
            f"model class {cls.__qualname__} has no {' or '.join(f'{m}()' for m in missing)} method; "
            "define `def load(self)` (called once per replica) and `def predict(self, x)`"
        )
    params = [
        p
        for p in list(inspect.signature(methods["predict"]).parameters.values())[1:]
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if len(params) != 1:
        raise TypeError(
            f"{cls.__qualname__}.predict must take exactly one input after self (a list of inputs when "
            f"max_batch_size > 1), got {len(params)} required parameters"
        )
    return cls


def _hints(method: Any) -> tuple[Any, Any]:
    """The hints of a method's one input (its first parameter after self) and of its return value."""
    from .schema import _type_hints

    signature = inspect.signature(method)
    hints = _type_hints(method, signature)
    params = [p for p in list(signature.parameters.values())[1:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return (hints.get(params[0].name, Any) if params else Any), hints.get("return", Any)


def _item_type(hint: Any) -> Any:
    """The element type of `list[X]`, `Sequence[X]` or `tuple[X, ...]` (Annotated or not); else Any."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, Sequence, MutableSequence) and len(args) == 1:
        return args[0]
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0]
    return Any


def check_options(
    name: object,
    min_replicas: object,
    max_replicas: object,
    max_batch_size: object,
    batch_wait_ms: object,
    max_concurrency: object,
) -> tuple[int, int, int, float, int]:
    """Checked (min_replicas, max_replicas, max_batch_size, batch_wait_ms, max_concurrency)."""
    if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name)):
        raise ValueError(
            f"model name must be letters, digits, '_', '.' or '-' (it is a URL path segment), got {name!r}; "
            "e.g. name='digits'"
        )
    lo = _int_option("min_replicas", min_replicas, minimum=0)
    hi = lo if max_replicas is None else _int_option("max_replicas", max_replicas, minimum=1)
    if hi < max(lo, 1):
        raise ValueError(f"max_replicas ({hi}) is below min_replicas ({lo}); raise max_replicas")
    batch = _int_option("max_batch_size", max_batch_size, minimum=1)
    if isinstance(batch_wait_ms, bool) or not isinstance(batch_wait_ms, (int, float)):
        raise TypeError(f"batch_wait_ms must be a number of milliseconds, got {type(batch_wait_ms).__name__}")
    if not (0 <= batch_wait_ms <= MAX_BATCH_WAIT_MS and math.isfinite(batch_wait_ms)):
        raise ValueError(
            f"batch_wait_ms must be between 0 and {MAX_BATCH_WAIT_MS:g} milliseconds, got {batch_wait_ms!r} "
            "(it is milliseconds: 5 means 5 ms)"
        )
    conc = _int_option("max_concurrency", max_concurrency, minimum=1)
    return lo, hi, batch, float(batch_wait_ms), conc


_CPU = re.compile(r"[0-9]+m|[0-9]+(\.[0-9]{1,3})?")
_MEMORY = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)")
_MEMORY_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_MEMORY_UNITS.update({f"{p}i": 1024 ** (n + 1) for n, p in enumerate("KMGTPE")})


def check_resources(cpu: object, memory: object, gpu: object) -> tuple[str | None, str | None, int]:
    """Checked (cpu, memory, gpu): cpu and memory as Kubernetes quantity strings (cores as a number
    become one: 0.5 -> "500m"), or None when not stated; gpu a count of devices."""
    return _check_cpu(cpu), _check_memory(memory), _int_option("gpu", gpu, minimum=0)


def _check_cpu(cpu: object) -> str | None:
    if cpu is None:
        return None
    if isinstance(cpu, (int, float)) and not isinstance(cpu, bool):
        millicores = round(cpu * 1000) if math.isfinite(cpu) else 0
        if millicores < 1 or abs(cpu * 1000 - millicores) > 1e-6:
            raise ValueError(f"cpu must be a positive number of cores in steps of 0.001, got {cpu!r}; e.g. cpu=0.5")
        return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"
    if not isinstance(cpu, str):
        raise TypeError(f"cpu must be cores as a number (0.5) or a string ('500m'), got {type(cpu).__name__}")
    if not _CPU.fullmatch(cpu) or not any(c in "123456789" for c in cpu.rstrip("m")):
        raise ValueError(
            f"cpu {cpu!r} is not a Kubernetes CPU quantity; write cores ('2', '0.5') or millicores ('500m')"
        )
    return cpu


def _check_memory(memory: object) -> str | None:
    if memory is None:
        return None
    if not isinstance(memory, str):
        raise TypeError(
            f"memory must be a string with a unit, e.g. '512Mi' or '2Gi', got {type(memory).__name__} {memory!r}"
        )
    match = _MEMORY.fullmatch(memory.strip())
    if match is None:
        raise ValueError(f"memory {memory!r} is not a Kubernetes quantity; write e.g. '512Mi' or '2Gi'")
    number, unit = match.groups()
    if unit not in _MEMORY_UNITS or " " in memory:
        letter = unit[:1].upper() if unit[:1].lower() in "kmgtpe" else ""
        hint = f"; did you mean '{number}{letter}i'?" if letter else ""
        why = " ('m' is thousandths of a byte)" if unit == "m" else ""
        raise ValueError(
            f"memory {memory!r} is not a Kubernetes quantity{why}; units are Ki, Mi, Gi, Ti (powers of 1024) "
            f"or k, M, G, T (powers of 1000){hint}"
        )
    if float(number) * _MEMORY_UNITS[unit] < 2**20:
        raise ValueError(f"memory {memory!r} is under one MiB (a bare number is bytes); write e.g. '{number}Mi'")
    return memory


def _int_option(option: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{option} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{option} must be {minimum} or more, got {value}")
    return value


def split_urls(value: str | Sequence[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    urls = []
    for item in items:
        url = item.strip().rstrip("/")
        if not url:
            continue
        if "://" not in url:
            url = f"http://{url}"
        if not url.startswith("http://"):
            raise ValueError(f"model URL {url!r} must be http://HOST:PORT")
        urls.append(url)
    return tuple(urls)


def _in_coroutine() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
