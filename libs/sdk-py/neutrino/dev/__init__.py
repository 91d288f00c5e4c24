"""`neutrino dev module:attr`: the whole stack for one app as local processes, for development.

    neutrino dev examples.models.app:app              # gateway, a task pod, every model's replicas
    neutrino dev myapp:app --pods 2 --reload          # two task pods; restart on code changes
    neutrino dev myapp:app --print-services --json    # what it would start (the Tiltfile reads this)

It starts each `@app.model` with `min_replicas` replicas, `--pods` task pods (orchestrator +
workers) whose workers find those replicas by themselves, and the gateway in front of the pods
(no auth: local development only); waits until each answers its readiness probe; prints the API
and docs URLs and a `curl` line per task and model; interleaves their logs behind coloured names.
A service that dies is restarted with backoff; Ctrl-C or SIGTERM drains and stops everything.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from ..app import App
from .plan import STATE_DIR, DevOptions, Service, api_url, describe, example_calls, plan_services
from .supervisor import Supervisor

__all__ = ["DevOptions", "Service", "load_app", "main", "plan_services"]

EXIT_USAGE = 2
EXIT_APP_IMPORT = 3


def parser() -> argparse.ArgumentParser:
    d = DevOptions(app="", root=Path("."))
    p = argparse.ArgumentParser(
        prog="neutrino dev", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("app", help="the neutrino.App, as module:attr (e.g. examples.models.app:app)")
    p.add_argument("--pods", type=int, default=d.pods, help=f"task pods to run (default {d.pods})")
    p.add_argument("--workers", type=int, default=d.workers, help=f"workers per task pod (default {d.workers})")
    p.add_argument(
        "--reload", action="store_true", help="restart task pods and model servers when the app's code changes"
    )
    p.add_argument("--host", default=d.host, help=f"address every service listens on (default {d.host})")
    p.add_argument(
        "--port", type=int, default=d.port, help=f"the gateway's HTTP port (default {d.port}; 0: any free port)"
    )
    p.add_argument(
        "--pod-port",
        type=int,
        default=d.pod_port,
        help=f"first task pod's ZeroMQ port, then +1 each (default {d.pod_port})",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=d.metrics_port,
        help=f"first task pod's /metrics and /readyz port, then +1 each (default {d.metrics_port})",
    )
    p.add_argument(
        "--model-port",
        type=int,
        default=d.model_port,
        help=f"first model replica's port, then +1 each (default {d.model_port})",
    )
    p.add_argument(
        "--grace-period",
        type=float,
        default=d.grace_period_s,
        help=f"seconds a stopping task pod gives running tasks (default {d.grace_period_s:g})",
    )
    p.add_argument(
        "--no-color", action="store_true", help="plain log prefixes (also when NO_COLOR is set or not a terminal)"
    )
    p.add_argument("--print-services", action="store_true", help="print what would run, and exit")
    p.add_argument("--json", action="store_true", help="with --print-services: as JSON (what the Tiltfile reads)")
    return p


def load_app(spec: str, root: Path) -> App:
    """Import `module:attr` with `root` first on sys.path, as the workers and model servers will."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(_usage(f"the app is module:attr, e.g. examples.models.app:app, not {spec!r}"))
    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except Exception:
        print(traceback.format_exc(), file=sys.stderr, end="")
        print(f"neutrino dev: the app module {module_name!r} failed to import (traceback above)", file=sys.stderr)
        raise SystemExit(EXIT_APP_IMPORT) from None
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        found = "nothing" if app is None else type(app).__name__
        raise SystemExit(_usage(f"{module_name}.{attr} is {found}, not a neutrino.App; name the App object"))
    return app


def main(argv: Sequence[str] | None = None) -> None:
    opts = parser().parse_args(argv)
    for flag, value, minimum in (("--pods", opts.pods, 1), ("--workers", opts.workers, 1)):
        if value < minimum:
            raise SystemExit(_usage(f"{flag} must be at least {minimum}, got {value}"))
    root = Path.cwd().resolve()
    options = DevOptions(
        app=opts.app,
        root=root,
        pods=opts.pods,
        workers=opts.workers,
        host=opts.host,
        port=opts.port,
        pod_port=opts.pod_port,
        metrics_port=opts.metrics_port,
        model_port=opts.model_port,
        grace_period_s=opts.grace_period,
    )
    app = load_app(opts.app, root)
    services = plan_services(app, options)
    if opts.print_services:
        print(describe(options, services) if opts.json else _table(services))
        return
    from ..serve import ServeError, find_orchestrator

    try:
        find_orchestrator()
    except ServeError as exc:
        raise SystemExit(_usage(str(exc))) from None
    (root / STATE_DIR).mkdir(parents=True, exist_ok=True)
    color = not opts.no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty()
    api = api_url(services)
    calls = example_calls(app, api)

    def banner(ready_s: float) -> None:
        bold, reset = ("\033[1m", "\033[0m") if color else ("", "")
        lines = [
            "",
            f"{bold}Neutrino dev: {opts.app} is ready ({ready_s:.1f} s){reset}",
            f"  API   {api}",
            f"  docs  {api}/docs",
            f"  {len(services)} services: " + ", ".join(s.name for s in services),
        ]
        if calls:
            lines += ["  try:", *(f"    {line}" for line in calls)]
        lines += ["  Ctrl-C stops everything." + ("  Watching for changes." if opts.reload else ""), ""]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()

    supervisor = Supervisor(
        services, root=root, grace_period_s=options.grace_period_s, reload=opts.reload, color=color, on_ready=banner
    )
    raise SystemExit(supervisor.run())


def _table(services: list[Service]) -> str:
    width = max(len(s.name) for s in services)
    return "\n".join(f"{s.name:<{width}}  {s.readiness_url:<40}  {' '.join(s.cmd)}" for s in services)


def _usage(message: str) -> int:
    print(f"neutrino dev: {message}", file=sys.stderr)
    return EXIT_USAGE
