"""`neutrino-gateway` / `python -m neutrino_gateway`: parse the settings, serve until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from neutrino import _logs
from neutrino._tracing import TracingConfigError

from . import tracing
from .config import ConfigError, load
from .server import run


def main(argv: Sequence[str] | None = None) -> None:
    """Serve as `argv` (default: the command line) and the environment say; `neutrino gateway` calls this too."""
    try:
        config = load(argv)
    except ConfigError as exc:
        print(f"neutrino-gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    _logs.configure(config.log_level, config.log_format, "[%(levelname)s] %(name)s: %(message)s")
    try:
        tracing.setup()
    except TracingConfigError as exc:
        print(f"neutrino-gateway: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if config.no_auth:
        logging.getLogger("neutrino.gateway").warning(
            "auth is off (--no-auth): anyone who can reach the port can run tasks"
        )

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(config, stop)

    # uvloop when installed (a dependency of the package): about 15% off each request's time here.
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - a plain asyncio loop works the same, slower
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve())


if __name__ == "__main__":
    main()
