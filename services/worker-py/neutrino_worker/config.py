"""The zygote's command line and environment, read once here and passed down (CONVENTIONS §9)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from neutrino import _logs

DEFAULT_CREDITS = 8
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


@dataclass(frozen=True, slots=True)
class ZygoteConfig:
    app: str  # "module:attr"
    app_dir: str  # absolute; becomes sys.path[0]
    control_path: str  # Unix stream socket the orchestrator listens on
    backend: str  # ZeroMQ endpoint of the orchestrator's ROUTER
    credits: int  # assignments a worker accepts in flight (WorkerReady.credits)
    log_level: int
    # Set when NEUTRINO_LOG is not a level name; logged once logging is set up.
    log_level_warning: str | None = None
    log_format: str = "text"  # NEUTRINO_LOG_FORMAT: text or json (the orchestrator passes its --log-format)
    # Set when NEUTRINO_LOG_FORMAT is not a format name; logged once logging is set up.
    log_format_warning: str | None = None


def _credits(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"--credits must be at least 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> ZygoteConfig:
    """Parse the command line; argparse exits with code 2 (EXIT_USAGE) on bad usage."""
    parser = argparse.ArgumentParser(
        prog="python -m neutrino_worker.zygote",
        description="Neutrino zygote: import the user app once, then fork workers on request.",
    )
    parser.add_argument("--app", required=True, metavar="MODULE:ATTR", help="the neutrino.App to serve")
    parser.add_argument("--app-dir", default=".", metavar="DIR", help="directory put first on sys.path")
    parser.add_argument("--control", required=True, metavar="PATH", help="the orchestrator's control socket")
    parser.add_argument("--backend", required=True, metavar="ENDPOINT", help="the orchestrator's worker ROUTER")
    parser.add_argument("--credits", type=_credits, default=DEFAULT_CREDITS, metavar="N", help="worker window")
    ns = parser.parse_args(argv)
    log_level, log_level_warning = parse_log_level(os.environ.get("NEUTRINO_LOG"))
    log_format, log_format_warning = parse_log_format(os.environ.get("NEUTRINO_LOG_FORMAT"))
    return ZygoteConfig(
        app=ns.app,
        app_dir=os.path.abspath(ns.app_dir),
        control_path=ns.control,
        backend=ns.backend,
        credits=ns.credits,
        log_level=log_level,
        log_level_warning=log_level_warning,
        log_format=log_format,
        log_format_warning=log_format_warning,
    )


def parse_log_level(value: str | None) -> tuple[int, str | None]:
    """The level NEUTRINO_LOG names (debug, info, warning, error; default warning), and a warning
    to log when it names none.

    An unknown value falls back to warning rather than failing: the variable is shared by every
    Neutrino service, and a typo in it should not stop workers from starting."""
    name = "warning" if value is None else value.strip().lower()
    level = _LOG_LEVELS.get(name)
    if level is None:
        return logging.WARNING, (
            f"NEUTRINO_LOG={value!r} is not a log level; using warning (choose one of {', '.join(_LOG_LEVELS)})"
        )
    return level, None


def parse_log_format(value: str | None) -> tuple[str, str | None]:
    """The format NEUTRINO_LOG_FORMAT names (text or json; default text), and a warning to log when it
    names none. Like the level, an unknown value falls back rather than stopping workers from starting."""
    try:
        return _logs.check_format(value or "text", "NEUTRINO_LOG_FORMAT"), None
    except ValueError as exc:
        return "text", f"{exc}; using text"
