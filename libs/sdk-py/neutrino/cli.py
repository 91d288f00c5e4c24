"""The `neutrino` command line.

    neutrino dev examples.models.app:app            # the whole stack as local processes, for development
    neutrino serve task-pod --app myapp:app         # one role per process: the container entry point
    neutrino deploy render myapp:app -o deploy/app  # Kubernetes manifests for the app's models
    neutrino keygen pod --dir keys                  # a CURVE key pair for encrypted tcp:// links
    neutrino model-server --app examples.models.app:app --model digits --port 8001
    neutrino gateway --orchestrator tcp://127.0.0.1:5555 --no-auth

`gateway` and `model-server` hand their arguments to that service's own entry point (the same as
`neutrino-gateway ...` or `neutrino-model-server ...`), so flags and environment variables are
documented once, in `neutrino <command> --help`. The orchestrator is a Rust binary
(`neutrino-orchestrator`), which `neutrino serve task-pod` and `neutrino dev` start.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module with main(), the distribution that provides it, what it does)
COMMANDS = {
    "dev": ("neutrino.dev", "neutrino", "run gateway, task pods and model servers locally, with --reload"),
    "serve": ("neutrino.serve", "neutrino", "run one role (task-pod, gateway, model NAME): the container entry point"),
    "deploy": ("neutrino.deploy", "neutrino", "render Kubernetes manifests for an app's models"),
    "keygen": ("neutrino.keys", "neutrino", "write a CURVE key pair (NAME.key, NAME.key_secret) for tcp:// links"),
    "gateway": ("neutrino_gateway.__main__", "neutrino-gateway", "the HTTP API for tasks, in front of orchestrators"),
    "model-server": ("neutrino_model_server.__main__", "neutrino-model-server", "serve one @app.model over HTTP"),
}
# Commands whose main() takes its arguments; the services' entry points read sys.argv.
_TAKES_ARGV = ("dev", "serve", "deploy", "keygen")


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {what}" for name, (_, _, what) in COMMANDS.items()]
    return (
        "usage: neutrino <command> [args...]\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\n`neutrino <command> --help` for its flags"
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        raise SystemExit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"neutrino: unknown command {command!r}{hint}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    module_name, distribution, _ = COMMANDS[command]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(f"neutrino {command}: {exc.name} is not installed; install the {distribution} package", file=sys.stderr)
        raise SystemExit(2) from None
    if command in _TAKES_ARGV:
        module.main(rest)
        return
    sys.argv = [f"neutrino-{command}", *rest]
    module.main()
