"""Gateway settings: read once, from flags with environment fallbacks, into one frozen `Config`.

Every flag has an environment variable (`NEUTRINO_GATEWAY_` + the flag name in capitals, `-` as
`_`) so a container can be configured without a command line. Flags win over the environment.
Units are in the names.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from neutrino import _logs
from neutrino.errors import KeyFileError
from neutrino.keys import CLIENT_KEY_ENV, SERVER_KEY_ENV, CurveKeys, client_keys
from neutrino.models import URL_ENV_PREFIX, URL_TEMPLATE_ENV, model_url_env, service_name

ENV_PREFIX = "NEUTRINO_GATEWAY_"
# A model name goes into a URL path and maybe a host name: the SDK's characters, one DNS label long.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class ConfigError(ValueError):
    """A setting the gateway cannot start with; the message names the flag and the fix."""


@dataclass(frozen=True, slots=True)
class Config:
    orchestrators: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    db_path: Path = Path("neutrino-gateway.db")
    auth_tokens: frozenset[str] = field(default_factory=frozenset)
    no_auth: bool = False
    max_body_bytes: int = 16 * 2**20
    # Slow clients: a connection must finish sending a request's head within header_timeout_s of
    # opening (or of its previous answer; it is also the keep-alive idle limit), and its body within
    # body_timeout_s; beyond max_connections open at once, new connections are closed at once.
    header_timeout_s: float = 30.0
    body_timeout_s: float = 60.0
    max_connections: int = 10_000
    default_wait_s: float = 30.0
    max_wait_s: float = 300.0
    request_deadline_s: float = 330.0  # the longest any one HTTP request may take, wait included
    run_ttl_s: float = 24 * 3600.0
    max_active_runs: int = 100_000  # unfinished runs held at once; beyond, new ones get 429
    include_traceback: bool = False
    ping_interval_s: float = 0.5
    pod_timeout_s: float = 3.0  # a pod silent this long is lost: 6 pings
    resolve_interval_s: float = 5.0
    log_level: str = "INFO"
    log_format: str = "text"  # or "json": one object per line (neutrino._logs)
    # CURVE on every task pod link (SPEC.md §2.1): the pods' public key and the gateway's own pair.
    curve: CurveKeys | None = None
    # Model replicas (models.py): by name from --model, else NEUTRINO_MODEL_<NAME>_URL (the SDK's
    # variable, keyed by that name), else the URL template with {name} and {service} filled in.
    models: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    model_url_env: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    model_url_template: str | None = None
    # The longest one try at one replica may take before the next is tried: a replica that took the
    # connection and never answers (a stopped process, a wedged host) costs no more than this. Above
    # the model server's own --request-timeout (30 s), past which a replica that is not hung has
    # answered, 504 if nothing else; so it cuts no call a healthy replica would have answered.
    model_attempt_timeout_s: float = 35.0

    def model_replicas(self, name: str) -> tuple[str, ...] | None:
        """The base URLs of model `name`'s replicas, or None when nothing says where it is.
        `name` must already match MODEL_NAME."""
        if name in self.models:
            return self.models[name]
        if urls := self.model_url_env.get(model_url_env(name)):
            return urls
        if self.model_url_template:
            return _urls(self.model_url_template.format(name=name, service=service_name(name)), "--model-url-template")
        return None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neutrino-gateway",
        description="Neutrino gateway: the public HTTP API for tasks, in front of one or many orchestrators.",
        epilog=f"Every flag can also be set from the environment: {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}PORT=8000; "
        f"{ENV_PREFIX}ORCHESTRATOR takes a comma-separated list, {ENV_PREFIX}AUTH_TOKEN too, "
        f"{ENV_PREFIX}MODEL a ';'-separated one).",
    )
    p.add_argument(
        "--orchestrator",
        action="append",
        default=None,
        metavar="ADDR",
        help="orchestrator frontend, tcp://HOST:PORT; repeatable. A HOST that is a DNS name is re-resolved "
        "every --resolve-interval seconds and each address it resolves to is a task pod (Kubernetes headless Service)",
    )
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port to listen on (default 8000)")
    p.add_argument("--db", default=None, help="SQLite file for run records (default ./neutrino-gateway.db)")
    p.add_argument(
        "--auth-token", action="append", default=None, metavar="TOKEN", help="accepted bearer token; repeatable"
    )
    p.add_argument("--auth-token-file", default=None, help="file with one accepted bearer token per line")
    p.add_argument(
        "--no-auth", action="store_true", default=None, help="accept requests without a token (local development only)"
    )
    p.add_argument("--max-body-bytes", type=int, default=None, help="largest accepted request body (default 16 MiB)")
    p.add_argument(
        "--header-timeout",
        type=float,
        default=None,
        help="seconds a connection has to send a request's headers, from opening or from its previous answer; "
        "also how long an idle keep-alive connection stays open (default 30)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=None,
        help="seconds a request has to send its whole body; past it the answer is 408 (default 60)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="most HTTP connections open at once; beyond, new ones are closed at once (default 10000)",
    )
    p.add_argument(
        "--default-wait",
        type=float,
        default=None,
        help="seconds a POST waits for the result when ?wait= is absent (default 30)",
    )
    p.add_argument("--max-wait", type=float, default=None, help="largest accepted ?wait= (default 300)")
    p.add_argument(
        "--request-deadline",
        type=float,
        default=None,
        help="seconds any one request may take, ?wait= included; past it the answer is 504 (default 330)",
    )
    p.add_argument(
        "--max-active-runs",
        type=int,
        default=None,
        help="most unfinished runs at once (each is held in memory); beyond, new runs get 429 (default 100000)",
    )
    p.add_argument(
        "--run-ttl",
        type=float,
        default=None,
        help="seconds a finished run's record (and its Idempotency-Key) is kept (default 86400)",
    )
    p.add_argument(
        "--include-traceback", action="store_true", default=None, help="put remote tracebacks in task failure answers"
    )
    p.add_argument(
        "--ping-interval", type=float, default=None, help="seconds between load pings to each task pod (default 0.5)"
    )
    p.add_argument(
        "--pod-timeout",
        type=float,
        default=None,
        help="seconds without a pong before a task pod counts as lost (default 3)",
    )
    p.add_argument(
        "--resolve-interval",
        type=float,
        default=None,
        help="seconds between DNS re-resolutions of orchestrator names (default 5)",
    )
    p.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="NAME=URL[,URL...]",
        help="the replicas of model NAME, for /v1/models/NAME/... and /v2/models/NAME/...; repeatable. "
        f"Env {ENV_PREFIX}MODEL: 'a=http://h1:8080,http://h2:8080;b=http://h3:8080'",
    )
    p.add_argument(
        "--model-url-template",
        default=None,
        metavar="URL",
        help="where a model not named by --model is, with {service} (neutrino-model-NAME, a DNS label) or {name} "
        f"filled in, e.g. http://{{service}}:8080 (default: ${URL_TEMPLATE_ENV}, which `neutrino serve` sets)",
    )
    p.add_argument(
        "--model-attempt-timeout",
        type=float,
        default=None,
        help="seconds one try at one model replica may take; then the next replica is tried (a replica that "
        "accepts the connection and never answers costs no more). Keep it above the model servers' "
        "--request-timeout (default 35)",
    )
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    p.add_argument("--log-format", default=None, help="text (default) or json: one JSON object per line")
    p.add_argument(
        "--curve-server-key",
        default=None,
        metavar="FILE",
        help="the task pods' CURVE public key (their NAME.key, or its 40-character Z85 text): every pod link is "
        f"encrypted and authenticated; needs --curve-client-key (env {ENV_PREFIX}CURVE_SERVER_KEY or "
        f"{SERVER_KEY_ENV})",
    )
    p.add_argument(
        "--curve-client-key",
        default=None,
        metavar="FILE",
        help="the gateway's own CURVE key pair (NAME.key_secret); its NAME.key must be in the pods' --curve-clients "
        f"(env {ENV_PREFIX}CURVE_CLIENT_KEY or {CLIENT_KEY_ENV})",
    )
    return p


def load(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Parse `argv` (default sys.argv[1:]) over `env` (default os.environ) into a checked Config."""
    env = os.environ if env is None else env
    opts = parser().parse_args(argv)

    def pick(flag_value: object, name: str) -> str | None:
        if flag_value is not None:
            return str(flag_value)
        return env.get(ENV_PREFIX + name)

    orchestrators = opts.orchestrator or _split(env.get(ENV_PREFIX + "ORCHESTRATOR", ""))
    if not orchestrators:
        raise ConfigError("no task pod to send runs to: pass --orchestrator tcp://HOST:PORT (repeatable)")
    for address in orchestrators:
        if not address.startswith("tcp://") or address.count(":") < 2:
            raise ConfigError(f"--orchestrator {address!r}: write tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555")
    tokens = set(opts.auth_token or _split(env.get(ENV_PREFIX + "AUTH_TOKEN", "")))
    token_file = pick(opts.auth_token_file, "AUTH_TOKEN_FILE")
    if token_file:
        try:
            tokens.update(line.strip() for line in Path(token_file).read_text().splitlines() if line.strip())
        except OSError as exc:
            raise ConfigError(f"--auth-token-file {token_file!r}: {exc.strerror}") from None
    no_auth = opts.no_auth if opts.no_auth is not None else _truthy(env.get(ENV_PREFIX + "NO_AUTH", ""))
    if not tokens and not no_auth:
        raise ConfigError(
            "no auth token configured: pass --auth-token TOKEN (or --auth-token-file), "
            "or --no-auth to accept anyone (local development only)"
        )
    defaults = Config(orchestrators=())

    def number(flag: object, name: str, default: float, kind: type = float, minimum: float = 0.0) -> float:
        raw = pick(flag, name)
        if raw is None:
            return default
        try:
            value: float = kind(raw)
        except ValueError:
            raise ConfigError(f"{name.lower().replace('_', '-')} must be a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{name.lower().replace('_', '-')} must be a finite number, got {raw!r}")
        if value < minimum:
            raise ConfigError(f"{name.lower().replace('_', '-')} must be at least {minimum}, got {raw!r}")
        return value

    def log_format(flag_value: str | None) -> str:
        source = "--log-format" if flag_value is not None else ENV_PREFIX + "LOG_FORMAT"
        try:
            return _logs.check_format(pick(flag_value, "LOG_FORMAT") or defaults.log_format, source)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    config = Config(
        orchestrators=tuple(orchestrators),
        host=pick(opts.host, "HOST") or defaults.host,
        port=int(number(opts.port, "PORT", defaults.port, int, 0)),
        db_path=Path(pick(opts.db, "DB") or defaults.db_path),
        auth_tokens=frozenset(tokens),
        no_auth=no_auth,
        max_body_bytes=int(number(opts.max_body_bytes, "MAX_BODY_BYTES", defaults.max_body_bytes, int, 1)),
        header_timeout_s=number(opts.header_timeout, "HEADER_TIMEOUT", defaults.header_timeout_s, float, 0.1),
        body_timeout_s=number(opts.body_timeout, "BODY_TIMEOUT", defaults.body_timeout_s, float, 0.1),
        max_connections=int(number(opts.max_connections, "MAX_CONNECTIONS", defaults.max_connections, int, 1)),
        default_wait_s=number(opts.default_wait, "DEFAULT_WAIT", defaults.default_wait_s),
        max_wait_s=number(opts.max_wait, "MAX_WAIT", defaults.max_wait_s),
        request_deadline_s=number(opts.request_deadline, "REQUEST_DEADLINE", defaults.request_deadline_s, float, 0.1),
        max_active_runs=int(number(opts.max_active_runs, "MAX_ACTIVE_RUNS", defaults.max_active_runs, int, 1)),
        run_ttl_s=number(opts.run_ttl, "RUN_TTL", defaults.run_ttl_s, float, 1.0),
        include_traceback=bool(
            opts.include_traceback
            if opts.include_traceback is not None
            else _truthy(env.get(ENV_PREFIX + "INCLUDE_TRACEBACK", ""))
        ),
        ping_interval_s=number(opts.ping_interval, "PING_INTERVAL", defaults.ping_interval_s, float, 0.01),
        pod_timeout_s=number(opts.pod_timeout, "POD_TIMEOUT", defaults.pod_timeout_s, float, 0.05),
        resolve_interval_s=number(opts.resolve_interval, "RESOLVE_INTERVAL", defaults.resolve_interval_s, float, 0.1),
        log_level=(pick(opts.log_level, "LOG_LEVEL") or defaults.log_level).upper(),
        log_format=log_format(opts.log_format),
        models=_models(opts.model or [part for part in env.get(ENV_PREFIX + "MODEL", "").split(";") if part.strip()]),
        model_url_env={
            key: _urls(value, key)
            for key, value in env.items()
            if key.startswith(URL_ENV_PREFIX) and key.endswith("_URL") and value.strip()
        },
        model_attempt_timeout_s=number(
            opts.model_attempt_timeout, "MODEL_ATTEMPT_TIMEOUT", defaults.model_attempt_timeout_s, float, 0.01
        ),
        model_url_template=_template(pick(opts.model_url_template, "MODEL_URL_TEMPLATE") or env.get(URL_TEMPLATE_ENV)),
    )
    try:
        curve = client_keys(
            pick(opts.curve_server_key, "CURVE_SERVER_KEY") or env.get(SERVER_KEY_ENV) or None,
            pick(opts.curve_client_key, "CURVE_CLIENT_KEY") or env.get(CLIENT_KEY_ENV) or None,
            env={},
            server_what="--curve-server-key",
            client_what="--curve-client-key",
        )
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from None
    if curve is not None:
        config = dataclasses.replace(config, curve=curve)
    if config.default_wait_s > config.max_wait_s:
        raise ConfigError(f"--default-wait {config.default_wait_s} is above --max-wait {config.max_wait_s}")
    if config.max_wait_s >= config.request_deadline_s:
        raise ConfigError("--max-wait must be below --request-deadline")
    if config.pod_timeout_s <= config.ping_interval_s:
        raise ConfigError("--pod-timeout must be longer than --ping-interval (a few pings)")
    return config


def _models(specs: Sequence[str]) -> dict[str, tuple[str, ...]]:
    models: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        name, sep, urls = spec.strip().partition("=")
        if not sep or not MODEL_NAME.fullmatch(name):
            raise ConfigError(
                f"--model {spec!r}: write NAME=URL[,URL...], e.g. --model digits=http://127.0.0.1:8080 "
                "(a NAME is letters, digits, '_', '.' or '-')"
            )
        if name in models:
            raise ConfigError(f"--model {name!r} is given twice: list all its replicas in one, NAME=URL,URL")
        models[name] = _urls(urls, f"--model {name}")
        if not models[name]:
            raise ConfigError(f"--model {spec!r} names no URL: write {name}=http://HOST:PORT")
    return models


def _urls(value: str, where: str) -> tuple[str, ...]:
    """Comma-separated base URLs, checked; `HOST:PORT` means http://HOST:PORT (as the SDK reads them)."""
    urls = []
    for item in value.split(","):
        url = item.strip().rstrip("/")
        if not url:
            continue
        if "://" not in url:
            url = f"http://{url}"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query or parts.fragment:
            raise ConfigError(f"{where}: {item.strip()!r} is not a base URL; write http://HOST:PORT")
        urls.append(url)
    return tuple(urls)


def _template(template: str | None) -> str | None:
    if not template:
        return None
    try:
        urls = template.format(name="digits", service=service_name("digits"))
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"--model-url-template {template!r}: only {{name}} and {{service}} can be filled in ({exc!r})"
        ) from None
    if not _urls(urls, f"--model-url-template {template!r}"):
        raise ConfigError(f"--model-url-template {template!r} names no URL; e.g. http://{{service}}:8080")
    return template


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")
