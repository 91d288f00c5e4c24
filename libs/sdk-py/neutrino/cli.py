"""The `neutrino` command line.

    neutrino dev examples.models.app:app            # the whole stack as local processes, for development
    neutrino serve task-pod --app myapp:app         # one role per process: the container entry point
    neutrino deploy render myapp:app -o deploy/app  # Kubernetes manifests for the app's models
    neutrino keygen pod --dir keys                  # a CURVE key pair for encrypted tcp:// links
    neutrino status --gateway http://127.0.0.1:8000 # task pods, workers, queue, run rates, models
    neutrino model-server --app examples.models.app:app --model digits --port 8001
    neutrino gateway --orchestrator tcp://127.0.0.1:5555 --no-auth

The SDK's own commands are in `COMMANDS`. Any other is declared by the package that provides it,
as an entry point in the `neutrino.commands` group (in its pyproject.toml, under
`[project.entry-points."neutrino.commands"]`: `NAME = "package.module:main"`), so the SDK names no
service, and a service's command is there exactly when its package is installed; `neutrino --help`
describes it by that package's summary. Every command is a
`main(argv: Sequence[str] | None = None)` that takes the arguments after its name; `gateway` and
`model-server` are the services' own entry points (the same as `neutrino-gateway ...`), so their
flags and environment variables are documented once, in `neutrino <command> --help`. The
orchestrator is a Rust binary (`neutrino-orchestrator`), which `neutrino serve task-pod` and
`neutrino dev` start.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points

__all__ = ["COMMANDS", "GROUP", "CommandError", "UnknownCommandError", "declared", "find", "main"]

GROUP = "neutrino.commands"
# The SDK's own subcommands: name -> (module with main(argv), what it does). A package's entry
# point of the same name does not replace one of these.
COMMANDS = {
    "dev": ("neutrino.dev", "run gateway, task pods and model servers locally, with --reload"),
    "serve": ("neutrino.serve", "run one role (task-pod, gateway, model NAME): the container entry point"),
    "deploy": ("neutrino.deploy", "render Kubernetes manifests for an app's models"),
    "keygen": ("neutrino.keys", "write a CURVE key pair (NAME.key, NAME.key_secret) for tcp:// links"),
    "status": ("neutrino.status", "a gateway's task pods, workers, queue, run rates, models, recent runs"),
}

Command = Callable[[Sequence[str]], None]


class CommandError(Exception):
    """A command that cannot run as installed; the message names the package to install or fix."""


class UnknownCommandError(CommandError):
    """Neither the SDK nor an installed package provides the command."""


def declared() -> dict[str, list[EntryPoint]]:
    """The commands installed packages declare in the `neutrino.commands` group, by name (more than
    one entry for a name two packages both declare), the SDK's own names left out."""
    found: dict[str, list[EntryPoint]] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda ep: (ep.name, _package(ep))):
        if ep.name not in COMMANDS:
            found.setdefault(ep.name, []).append(ep)
    return found


def find(command: str) -> Command:
    """The `main(argv)` of `command`: the SDK's own, else the one an installed package declares."""
    if command in COMMANDS:
        main: Command = importlib.import_module(COMMANDS[command][0]).main
        return main
    eps = declared().get(command)
    if not eps:
        raise UnknownCommandError(
            f"unknown command {command!r}: no installed package provides it (a Neutrino service's command "
            f"comes with that service's package: install neutrino-{command})"
        )
    if len(eps) > 1:
        packages = " and ".join(_package(ep) for ep in eps)
        raise CommandError(f"{packages} both declare the command {command!r}; uninstall all but one of them")
    try:
        loaded: Command = eps[0].load()
    except (ImportError, AttributeError) as exc:
        raise CommandError(
            f"the {_package(eps[0])} package declares this command as {eps[0].value}, which does not load "
            f"({type(exc).__name__}: {exc}); reinstall {_package(eps[0])}"
        ) from None
    return loaded


def usage() -> str:
    commands = {name: what for name, (_, what) in COMMANDS.items()}
    for name, eps in declared().items():
        commands[name] = " / ".join(_summary(ep) for ep in eps)
    width = max(len(name) for name in commands)
    lines = [f"  {name:<{width}}  {what}" for name, what in commands.items()]
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
    try:
        run = find(command)
    except UnknownCommandError as exc:
        close = difflib.get_close_matches(command, [*COMMANDS, *declared()], n=1)
        message = f"unknown command {command!r} (did you mean {close[0]!r}?)" if close else str(exc)
        print(f"neutrino: {message}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2) from None
    except CommandError as exc:
        print(f"neutrino {command}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    run(rest)


def _package(ep: EntryPoint) -> str:
    """The distribution that declares `ep` (its module when the metadata does not say)."""
    return ep.dist.name if ep.dist is not None else ep.module


def _summary(ep: EntryPoint) -> str:
    summary = ep.dist.metadata["Summary"] if ep.dist is not None else None
    return summary or f"from {_package(ep)}"
