"""Model server settings: read once, from flags with environment fallbacks, into one frozen `Config`.

Every flag has an environment variable (`NEUTRINO_MODEL_SERVER_` + the flag in capitals, `-` as
`_`); flags win; a flag left unset has its default, or is off (--grpc-port: no gRPC listener). The
batching flags, when given, override the model's own options (the benchmark turns batching off that
way); otherwise the `@app.model(...)` options apply.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from neutrino import _logs

ENV_PREFIX = "NEUTRINO_MODEL_SERVER_"

# Exit codes (the supervisor, e.g. Kubernetes, shows them; a load failure is not worth a hot restart loop).
EXIT_OK = 0
EXIT_CONFIG = 2  # a flag the server cannot start with
EXIT_APP_IMPORT = 3  # the app module failed to import, or has no such model
EXIT_LOAD_FAILED = 4  # the model's load() raised

DEFAULT_PORT = 8080
MAX_PORT = 65535


class ConfigError(ValueError):
    """A setting the server cannot start with; the message names the flag and the fix."""


@dataclass(frozen=True, slots=True)
class Config:
    app: str
    model: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    # The Open Inference Protocol over gRPC (grpc_server.py) on its own port; None: not served.
    grpc_port: int | None = None
    app_dir: str = "."  # first on sys.path, as the orchestrator does for its workers
    max_queue: int = 1024  # queued inputs (not yet in a batch); beyond it requests get 429
    request_timeout_s: float = 30.0  # per-request deadline, queue wait and predict included; then 504
    max_batch_size: int | None = None  # None: the model's option
    batch_wait_ms: float | None = None
    max_concurrency: int | None = None
    # Input limits: the body's bytes (413), and the elements of one infer request's tensors, all
    # inputs together (413; a V2 tensor's shape is checked before its data is converted).
    max_body_bytes: int = 64 * 2**20
    max_elements: int = 16 * 2**20
    # Slow clients, as the gateway's: request head within header_timeout_s of opening (or of the
    # previous answer; also the keep-alive idle limit), whole body within body_timeout_s (408),
    # at most max_connections open (beyond, a typed 503 and close).
    header_timeout_s: float = 30.0
    body_timeout_s: float = 60.0
    max_connections: int = 10_000
    include_traceback: bool = True  # 500 answers carry predict's traceback (the callers are our own tasks)
    log_level: str = "INFO"
    log_format: str = "text"  # or "json": one object per line (neutrino._logs)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neutrino-model-server",
        description="Serve one @app.model class over HTTP: POST /v1/models/NAME/predict and the KServe V2 API.",
        epilog=f"Every flag can also be set from the environment: {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}PORT=8080).",
    )
    p.add_argument("--app", default=None, help="the neutrino.App, as module:attr (required)")
    p.add_argument("--model", default=None, help="the model's name in that app (required)")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port to listen on (default 8080; 0 picks a free one)")
    p.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="also serve the KServe V2 (Open Inference Protocol) gRPC service on this port "
        "(default: off; 0 picks a free one)",
    )
    p.add_argument("--app-dir", default=None, help="put this folder first on sys.path for --app (default .)")
    p.add_argument("--max-queue", type=int, default=None, help="queued inputs before 429 (default 1024)")
    p.add_argument("--request-timeout", type=float, default=None, help="per-request deadline in seconds (default 30)")
    p.add_argument("--max-batch-size", type=int, default=None, help="override the model's max_batch_size")
    p.add_argument("--batch-wait-ms", type=float, default=None, help="override the model's batch_wait_ms")
    p.add_argument("--max-concurrency", type=int, default=None, help="override the model's max_concurrency")
    p.add_argument(
        "--max-body-bytes", type=int, default=None, help="largest request body; beyond, 413 (default 64 MiB)"
    )
    p.add_argument(
        "--max-elements",
        type=int,
        default=None,
        help="most tensor elements in one V2 infer request, all inputs together; beyond, 413 (default 16777216)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=None,
        help="seconds a connection has to send a request's headers, from opening or its previous answer; "
        "also the keep-alive idle limit (default 30)",
    )
    p.add_argument(
        "--body-timeout", type=float, default=None, help="seconds to send a whole request body; then 408 (default 60)"
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="most HTTP connections open at once; beyond, a 503 and close (default 10000)",
    )
    p.add_argument("--no-traceback", action="store_true", default=None, help="leave tracebacks out of 500 answers")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR")
    p.add_argument("--log-format", default=None, help="text (default) or json: one JSON object per line")
    return p


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    args = parser().parse_args(argv)
    env = os.environ if env is None else env

    def pick(flag: str, value: object) -> str | None:
        if value is not None:
            return str(value)
        return env.get(ENV_PREFIX + flag.upper().replace("-", "_"))

    def number(flag: str, value: object, kind: type[int] | type[float], minimum: float) -> int | float | None:
        raw = pick(flag, value)
        if raw is None:
            return None
        try:
            got = kind(raw)
        except ValueError:
            raise ConfigError(f"--{flag} must be a number, got {raw!r}") from None
        if got < minimum:
            raise ConfigError(f"--{flag} must be at least {minimum:g}, got {raw}")
        return got

    app, model = pick("app", args.app), pick("model", args.model)
    if not app or ":" not in app:
        raise ConfigError("--app is missing or not module:attr; pass e.g. --app examples.models.app:app")
    if not model:
        raise ConfigError("--model is missing; pass the model's name, e.g. --model digits")
    options: dict[str, object] = {}
    for key, flag, value, kind, minimum in (
        ("port", "port", args.port, int, 0),
        ("grpc_port", "grpc-port", args.grpc_port, int, 0),
        ("max_queue", "max-queue", args.max_queue, int, 1),
        ("request_timeout_s", "request-timeout", args.request_timeout, float, 0.001),
        ("max_batch_size", "max-batch-size", args.max_batch_size, int, 1),
        ("batch_wait_ms", "batch-wait-ms", args.batch_wait_ms, float, 0),
        ("max_concurrency", "max-concurrency", args.max_concurrency, int, 1),
        ("max_body_bytes", "max-body-bytes", args.max_body_bytes, int, 1),
        ("max_elements", "max-elements", args.max_elements, int, 1),
        ("header_timeout_s", "header-timeout", args.header_timeout, float, 0.1),
        ("body_timeout_s", "body-timeout", args.body_timeout, float, 0.1),
        ("max_connections", "max-connections", args.max_connections, int, 1),
    ):
        got = number(flag, value, kind, minimum)
        if got is not None:
            options[key] = got
    for key, flag, value in (("host", "host", args.host), ("app_dir", "app-dir", args.app_dir)):
        if (raw := pick(flag, value)) is not None:
            options[key] = raw
    if (log_format := pick("log-format", args.log_format)) is not None:
        source = "--log-format" if args.log_format is not None else ENV_PREFIX + "LOG_FORMAT"
        try:
            options["log_format"] = _logs.check_format(log_format, source)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if (level := pick("log-level", args.log_level)) is not None:
        options["log_level"] = level.upper()
    no_tb = pick("no-traceback", args.no_traceback)
    if no_tb is not None and no_tb.lower() in ("1", "true", "yes"):
        options["include_traceback"] = False
    for key, flag in (("port", "port"), ("grpc_port", "grpc-port")):
        if key in options and options[key] > MAX_PORT:  # type: ignore[operator]
            raise ConfigError(f"--{flag} must be a port number (0-{MAX_PORT}), got {options[key]}")
    grpc_port = options.get("grpc_port")
    if grpc_port and grpc_port == options.get("port", DEFAULT_PORT):
        raise ConfigError(f"--grpc-port {grpc_port} is also the HTTP --port; give gRPC a port of its own")
    return Config(app=app, model=model, **options)  # type: ignore[arg-type]
