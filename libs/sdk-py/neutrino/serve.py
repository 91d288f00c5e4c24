"""`neutrino serve ROLE`: the container entry point, one role per process.

    neutrino serve task-pod --app myapp:app          # orchestrator + workers; ZeroMQ on :5555, probes on :9090
    neutrino serve gateway --orchestrator tcp://task-pods:5555 --no-auth    # HTTP API on :8000
    neutrino serve model digits --app myapp:app      # one model replica on :8080

Each role is the service's own entry point with container defaults: it listens on all interfaces,
takes every setting from flags or the environment (`NEUTRINO_APP`, the orchestrator's `NEUTRINO_*`,
`NEUTRINO_GATEWAY_*`, `NEUTRINO_MODEL_SERVER_*`), passes flags it does not know to the service, and
drains on SIGTERM (the orchestrator is exec'd, so the signal reaches it directly). Task pods and the
gateway find a model at `http://neutrino-model-<name>:8080` (its Service name in a cluster) unless
`NEUTRINO_MODEL_<NAME>_URL` or `NEUTRINO_MODEL_URL_TEMPLATE` says otherwise.

CURVE (README "Encrypted links"): a task pod takes `NEUTRINO_CURVE_SECRET_KEY` / `NEUTRINO_CURVE_CLIENTS`
(or --curve-secret-key / --curve-clients, passed through to the orchestrator), the gateway
`NEUTRINO_CURVE_SERVER_KEY` / `NEUTRINO_CURVE_CLIENT_KEY` (or --curve-server-key / --curve-client-key).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import cli
from .models import CLUSTER_URL_TEMPLATE, URL_TEMPLATE_ENV

__all__ = ["ROLES", "find_orchestrator", "main", "orchestrator_argv"]

ROLES = ("task-pod", "gateway", "model")
ALL_INTERFACES = "0.0.0.0"
TASK_POD_PORT = 5555
TASK_POD_METRICS_PORT = 9090
GATEWAY_PORT = 8000
MODEL_PORT = 8080
ORCHESTRATOR_BIN_ENV = "NEUTRINO_ORCHESTRATOR_BIN"
ORCHESTRATOR_NAME = "neutrino-orchestrator"


class ServeError(Exception):
    """A role that cannot start as asked; the message names the fix."""


def find_orchestrator(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    """The orchestrator binary: `$NEUTRINO_ORCHESTRATOR_BIN`, else `neutrino-orchestrator` on PATH,
    else `target/release/neutrino-orchestrator` in the repository that holds `cwd` or this package."""
    env = os.environ if env is None else env
    if explicit := env.get(ORCHESTRATOR_BIN_ENV):
        if not os.access(explicit, os.X_OK):
            raise ServeError(f"{ORCHESTRATOR_BIN_ENV}={explicit!r} is not an executable file")
        return explicit
    if found := shutil.which(ORCHESTRATOR_NAME, path=env.get("PATH")):
        return found
    starts = [(cwd or Path.cwd()).resolve(), Path(__file__).resolve().parent]
    for start in starts:
        for folder in (start, *start.parents):
            candidate = folder / "target" / "release" / ORCHESTRATOR_NAME
            if os.access(candidate, os.X_OK):
                return str(candidate)
    raise ServeError(
        f"cannot find the {ORCHESTRATOR_NAME} binary: build it (`cargo build --release`, or `make setup`), "
        f"put it on PATH, or set {ORCHESTRATOR_BIN_ENV}=/path/to/{ORCHESTRATOR_NAME}"
    )


def _has_flag(rest: Sequence[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in rest)


def orchestrator_argv(
    app: str,
    *,
    host: str,
    port: int,
    metrics_port: int,
    rest: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    binary: str | None = None,
) -> list[str]:
    """The orchestrator's command line for a task pod. A setting already given in `rest` or by the
    orchestrator's own environment variable is left to it."""
    env = os.environ if env is None else env
    argv = [binary or find_orchestrator(env), "--app", app]
    if not _has_flag(rest, "--frontend") and "NEUTRINO_FRONTEND" not in env:
        argv += ["--frontend", f"tcp://{host}:{port}"]
    if not _has_flag(rest, "--metrics") and "NEUTRINO_METRICS" not in env:
        argv += ["--metrics", f"{host}:{metrics_port}"]
    if not _has_flag(rest, "--python") and "NEUTRINO_PYTHON" not in env:
        argv += ["--python", sys.executable]
    return argv + list(rest)


def _parser(role: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"neutrino serve {role}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Other flags go to the service itself; see its --help: "
        + {
            "task-pod": f"{ORCHESTRATOR_NAME} --help",
            "gateway": "neutrino gateway --help",
            "model": "neutrino model-server --help",
        }[role],
    )
    if role == "model":
        p.add_argument("name", nargs="?", default=None, help="the model's name in the app (env NEUTRINO_MODEL)")
    if role in ("task-pod", "model"):
        p.add_argument("--app", default=None, help="the neutrino.App, as module:attr (env NEUTRINO_APP)")
    p.add_argument("--host", default=None, help=f"address to listen on (env NEUTRINO_HOST; default {ALL_INTERFACES})")
    default_port = {"task-pod": TASK_POD_PORT, "gateway": GATEWAY_PORT, "model": MODEL_PORT}[role]
    what = "ZeroMQ frontend port" if role == "task-pod" else "HTTP port"
    p.add_argument("--port", type=int, default=None, help=f"{what} (env NEUTRINO_PORT; default {default_port})")
    if role == "task-pod":
        p.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            help=f"port of /metrics, /healthz and /readyz (env NEUTRINO_METRICS_PORT; default {TASK_POD_METRICS_PORT})",
        )
    return p


def _setting(value: object, env: Mapping[str, str], name: str, default: object = None) -> str | None:
    if value is not None:
        return str(value)
    got = env.get(name)
    return got if got else (None if default is None else str(default))


def _port(value: object, env: Mapping[str, str], name: str, default: int) -> int:
    raw = _setting(value, env, name, default)
    try:
        port = int(str(raw))
    except ValueError:
        flag = name.removeprefix("NEUTRINO_").lower().replace("_", "-")
        raise ServeError(f"{flag} must be a port number, got {raw!r}") from None
    if not 0 <= port <= 65535:
        raise ServeError(f"port {port} is out of range (0-65535)")
    return port


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(
            __doc__.strip().split("\n\n")[0] + "\n\nroles: " + ", ".join(ROLES), file=sys.stdout if args else sys.stderr
        )
        raise SystemExit(0 if args else 2)
    role, rest = args[0], args[1:]
    if role not in ROLES:
        raise SystemExit(f"neutrino serve: unknown role {role!r}; choose one of {', '.join(ROLES)}")
    opts, passthrough = _parser(role).parse_known_args(rest)
    env = os.environ
    try:
        host = _setting(opts.host, env, "NEUTRINO_HOST", ALL_INTERFACES) or ALL_INTERFACES
        if role == "task-pod":
            _serve_task_pod(opts, passthrough, host)
            return
        if role == "gateway":
            listen = _listen_flags(opts, passthrough, host, "NEUTRINO_GATEWAY_", GATEWAY_PORT)
            env.setdefault(URL_TEMPLATE_ENV, CLUSTER_URL_TEMPLATE)
            _run_python_service("gateway", listen + passthrough)
            return
        name = _setting(opts.name, env, "NEUTRINO_MODEL")
        app = _setting(opts.app, env, "NEUTRINO_APP")
        if not name:
            raise ServeError("which model? pass its name: neutrino serve model NAME --app module:attr")
        model = ["--model", name] + (["--app", app] if app else [])
        listen = _listen_flags(opts, passthrough, host, "NEUTRINO_MODEL_SERVER_", MODEL_PORT)
        _run_python_service("model-server", model + listen + passthrough)
    except ServeError as exc:
        print(f"neutrino serve {role}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _serve_task_pod(opts: argparse.Namespace, rest: list[str], host: str) -> None:
    env = os.environ
    app = _setting(opts.app, env, "NEUTRINO_APP")
    if not app:
        raise ServeError("which app? pass --app module:attr (or set NEUTRINO_APP)")
    port = _port(opts.port, env, "NEUTRINO_PORT", TASK_POD_PORT)
    metrics_port = _port(opts.metrics_port, env, "NEUTRINO_METRICS_PORT", TASK_POD_METRICS_PORT)
    argv = orchestrator_argv(app, host=host, port=port, metrics_port=metrics_port, rest=rest, env=env)
    env.setdefault(URL_TEMPLATE_ENV, CLUSTER_URL_TEMPLATE)  # the workers' default way to the models
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)  # the orchestrator becomes this process: SIGTERM drains it directly


def _listen_flags(
    opts: argparse.Namespace, rest: list[str], host: str, env_prefix: str, default_port: int
) -> list[str]:
    """`--host`/`--port` for a Python service: serve's own flags win, then the service's own flags and
    environment variables, then the container defaults (all interfaces, the role's port)."""
    env = os.environ
    flags: list[str] = []
    if opts.host is not None or not (_has_flag(rest, "--host") or env_prefix + "HOST" in env):
        flags += ["--host", host]
    if opts.port is not None or not (_has_flag(rest, "--port") or env_prefix + "PORT" in env):
        flags += ["--port", str(_port(opts.port, env, "NEUTRINO_PORT", default_port))]
    return flags


def _run_python_service(command: str, argv: list[str]) -> None:
    """Run the `neutrino COMMAND` that the service's package declares (see `neutrino.cli`)."""
    try:
        main = cli.find(command)
    except cli.CommandError as exc:
        raise ServeError(str(exc)) from None
    main(argv)
