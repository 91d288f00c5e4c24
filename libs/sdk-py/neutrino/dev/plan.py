"""What `neutrino dev` runs: one `Service` per process, computed from the app and the flags.

This list is the single source of truth for the local stack: the supervisor starts it, and
`neutrino dev APP --print-services --json` prints it for other tools (the Tiltfile reads it), so
`neutrino dev` and `tilt up` start the same processes with the same commands. Every service is
`python -m neutrino serve ROLE ...`, the same entry point the container images use.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import socket
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..app import App
from ..models import Model, model_url_env

__all__ = ["DevOptions", "Service", "example_calls", "plan_services"]

# Where the gateway keeps its run records in dev (ignored by git), so runs outlive a restart.
STATE_DIR = Path(".neutrino") / "dev"


@dataclass(frozen=True, slots=True)
class DevOptions:
    app: str  # module:attr
    root: Path  # the working directory: first on sys.path, file paths relative to it
    pods: int = 1
    workers: int = 2
    host: str = "127.0.0.1"
    port: int = 8000  # gateway; 0 = a free port (as are the other ports)
    pod_port: int = 5555  # task pod i listens on pod_port + i
    metrics_port: int = 9100  # task pod i serves /metrics, /readyz on metrics_port + i
    model_port: int = 8100  # model replicas take consecutive ports from here
    grace_period_s: float = 10.0  # a reload should not wait out a production-sized drain


@dataclass(frozen=True, slots=True)
class Service:
    """One process of the local stack: how to start it, when it is ready, what restarts it."""

    name: str
    kind: str  # task-pod | gateway | model
    cmd: list[str]
    env: dict[str, str]  # added to the inherited environment
    readiness_url: str
    links: list[str] = field(default_factory=list)
    deps: list[str] = field(default_factory=list)  # paths (relative to root) whose changes restart it
    resource_deps: list[str] = field(default_factory=list)  # services that must be ready first

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def plan_services(app: App, options: DevOptions) -> list[Service]:
    """Model replicas first, then the task pods (which call them), then the gateway in front."""
    ports = _Ports(options)
    host = options.host
    serve = [sys.executable, "-m", "neutrino", "serve"]
    watch = _app_dirs(options)
    # Neutrino's own sources count too when they live under the root (working on Neutrino itself).
    own = {kind: _source_dirs(options.root, packages) for kind, packages in _PACKAGES.items()}
    own["task-pod"] += _under(options.root, _orchestrator_binary())
    services: list[Service] = []
    model_urls: dict[str, list[str]] = {}
    for model in app.models.values():
        urls = model_urls.setdefault(model.name, [])
        for i in range(max(1, model.min_replicas)):
            port = ports.model()
            url = f"http://{host}:{port}"
            urls.append(url)
            cmd = [*serve, "model", model.name, "--app", options.app, "--host", host, "--port", str(port)]
            services.append(
                Service(
                    name=f"model-{model.name}-{i + 1}",
                    kind="model",
                    cmd=cmd,
                    env={"PYTHONUNBUFFERED": "1"},
                    readiness_url=f"{url}/v2/health/ready",
                    links=[f"{url}/v2/models/{model.name}"],
                    deps=watch + own["model"],
                )
            )
    model_services = [s.name for s in services]
    pod_env = {"PYTHONUNBUFFERED": "1"}
    pod_env.update({model_url_env(name): ",".join(urls) for name, urls in model_urls.items()})
    pods: list[tuple[str, int]] = []
    for i in range(options.pods):
        port, metrics_port = ports.pod(i)
        name = f"pod-{i + 1}"
        pods.append((name, port))
        cmd = [*serve, "task-pod", "--app", options.app, "--host", host, "--port", str(port)]
        cmd += ["--metrics-port", str(metrics_port), "--workers", str(options.workers)]
        cmd += ["--grace-period", f"{options.grace_period_s:g}"]
        services.append(
            Service(
                name=name,
                kind="task-pod",
                cmd=cmd,
                env=dict(pod_env),
                readiness_url=f"http://{host}:{metrics_port}/readyz",
                links=[f"http://{host}:{metrics_port}/metrics"],
                deps=watch + own["task-pod"],
                resource_deps=list(model_services),
            )
        )
    gateway_port = ports.gateway()
    api = f"http://{host}:{gateway_port}"
    cmd = [*serve, "gateway", "--host", host, "--port", str(gateway_port), "--no-auth"]
    cmd += ["--db", str(STATE_DIR / "gateway.db")]
    for _, port in pods:
        cmd += ["--orchestrator", f"tcp://{host}:{port}"]
    for name, urls in model_urls.items():
        cmd += ["--model", f"{name}={','.join(urls)}"]
    services.append(
        Service(
            name="gateway",
            kind="gateway",
            cmd=cmd,
            env={"PYTHONUNBUFFERED": "1"},
            readiness_url=f"{api}/readyz",
            links=[f"{api}/docs", f"{api}/openapi.json"],
            deps=own["gateway"],
            resource_deps=[name for name, _ in pods],
        )
    )
    ports.close()
    return services


def api_url(services: list[Service]) -> str:
    gateway = next(s for s in services if s.kind == "gateway")
    return gateway.readiness_url.removesuffix("/readyz")


def describe(options: DevOptions, services: list[Service]) -> str:
    """The `--print-services --json` document."""
    api = api_url(services)
    doc = {
        "app": options.app,
        "root": str(options.root),
        "api_url": api,
        "docs_url": f"{api}/docs",
        "services": [s.to_json() for s in services],
    }
    return json.dumps(doc, indent=2)


def example_calls(app: App, api: str, max_tasks: int = 3) -> list[str]:
    """A `curl` line for each of the first `max_tasks` tasks (arguments from the schemas' `examples`,
    defaults or types) and one per model that declares an `example` input, to paste into a shell."""
    lines = []
    tasks = [(name, entry) for name, entry in app.catalog().items() if entry.get("http", True)]
    for name, entry in tasks[:max_tasks]:
        body = json.dumps(example_arguments(entry["params"]), separators=(",", ":"))
        lines.append(f"curl -d {shlex.quote(body)} {api}/v1/tasks/{name}")
    for model in app.models.values():
        if (example := model_example(model)) is not None:
            body = json.dumps({"inputs": example}, separators=(",", ":"))
            lines.append(f"curl -d {shlex.quote(body)} {api}/v1/models/{model.name}/predict")
    return lines


def model_example(model: Model) -> Any:
    """The model class's optional `example` attribute: one input, as `predict` receives it."""
    return getattr(model.cls, "example", None)


def example_arguments(params: Mapping[str, Any]) -> dict[str, Any]:
    """Values for a task's required parameters from its JSON Schema; optional ones keep their defaults."""
    properties = params.get("properties", {})
    required = params.get("required", list(properties))
    return {key: example_value(properties.get(key, {}), params.get("$defs", {})) for key in required}


def example_value(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Any:
    if examples := schema.get("examples"):
        return examples[0]
    for key in ("default", "const"):
        if key in schema:
            return schema[key]
    if "enum" in schema:
        return schema["enum"][0]
    if ref := schema.get("$ref"):
        return example_value(defs.get(ref.rsplit("/", 1)[-1], {}), defs)
    for key in ("anyOf", "oneOf", "allOf"):
        if branches := schema.get(key):
            return example_value(branches[0], defs)
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: example_value(props[k], defs) for k in schema.get("required", []) if k in props}
    simple = {"integer": 1, "number": 1.0, "string": "hello", "boolean": True, "array": [], "null": None}
    return simple.get(kind) if isinstance(kind, str) else None


# The Python packages each kind of service runs, besides the app.
_PACKAGES = {
    "model": ("neutrino", "neutrino_protocol", "neutrino_model_server"),
    "task-pod": ("neutrino", "neutrino_protocol", "neutrino_worker"),
    "gateway": ("neutrino", "neutrino_protocol", "neutrino_gateway"),
}


def _source_dirs(root: Path, packages: tuple[str, ...]) -> list[str]:
    """The folders of `packages` that are under `root` (an editable install in a Neutrino checkout),
    relative to it; none for an installed Neutrino, whose code does not change under you."""
    found = []
    for package in packages:
        spec = importlib.util.find_spec(package)
        for location in list(spec.submodule_search_locations or []) if spec is not None else []:
            found += _under(root, location)
    return found


def _under(root: Path, path: str | None) -> list[str]:
    """`[path relative to root]` when it is under root, else `[]`."""
    if path is None:
        return []
    try:
        return [str(Path(path).resolve().relative_to(root))]
    except ValueError:
        return []


def _orchestrator_binary() -> str | None:
    from ..serve import ServeError, find_orchestrator

    try:
        return find_orchestrator()
    except ServeError:
        return None


def _app_dirs(options: DevOptions) -> list[str]:
    """The folder of the app's module, relative to the root: what `--reload` and Tilt watch."""
    module = options.app.split(":", 1)[0]
    spec_file = sys.modules.get(module).__file__ if module in sys.modules else None  # type: ignore[union-attr]
    if not spec_file:
        return ["."]
    folder = Path(spec_file).resolve().parent
    try:
        return [str(folder.relative_to(options.root)) or "."]
    except ValueError:
        return [str(folder)]


class _Ports:
    """Consecutive ports from each base; 0 asks the kernel for free ones (held open until `close()`,
    so two services are never handed the same one)."""

    def __init__(self, options: DevOptions) -> None:
        self.options = options
        self._held: list[socket.socket] = []
        self._models = self._consecutive(options.model_port)

    def pod(self, i: int) -> tuple[int, int]:
        o = self.options
        return (o.pod_port + i if o.pod_port else self._free(), o.metrics_port + i if o.metrics_port else self._free())

    def model(self) -> int:
        return next(self._models)

    def gateway(self) -> int:
        return self.options.port or self._free()

    def close(self) -> None:
        for s in self._held:
            s.close()

    def _consecutive(self, base: int) -> Iterator[int]:
        n = 0
        while True:
            yield base + n if base else self._free()
            n += 1

    def _free(self) -> int:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self._held.append(s)
        port: int = s.getsockname()[1]
        return port
