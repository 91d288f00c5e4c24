"""The `neutrino` command line: one entry point for the services that ship as Python packages.

    neutrino model-server --app examples.models.app:app --model digits --port 8001
    neutrino gateway --orchestrator tcp://127.0.0.1:5555 --no-auth

Each subcommand hands its arguments to that service's own entry point (the same as
`neutrino-model-server ...` or `python -m neutrino_gateway ...`), so flags and environment
variables are documented once, in `neutrino <command> --help`. The orchestrator is a Rust binary
(`target/release/neutrino-orchestrator`), not a subcommand.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module with main(), the distribution that provides it, what it does)
COMMANDS = {
    "gateway": ("neutrino_gateway.__main__", "neutrino-gateway", "the HTTP API for tasks, in front of orchestrators"),
    "model-server": ("neutrino_model_server.__main__", "neutrino-model-server", "serve one @app.model over HTTP"),
}


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
    sys.argv = [f"neutrino-{command}", *rest]
    module.main()
