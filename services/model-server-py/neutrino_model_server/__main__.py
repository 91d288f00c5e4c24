"""`neutrino-model-server` / `python -m neutrino_model_server`: parse the settings, serve until SIGTERM or Ctrl-C.

Exit codes (config.py): 0 stopped, 2 bad flags, 3 the app failed to import or has no such model,
4 the model's load() raised (its traceback is printed).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import traceback
from collections.abc import Sequence

from neutrino import _logs
from neutrino._tracing import TracingConfigError

from . import tracing
from .config import EXIT_APP_IMPORT, EXIT_CONFIG, EXIT_LOAD_FAILED, ConfigError, load
from .server import LoadFailed, ModelServer


def main(argv: Sequence[str] | None = None) -> None:
    """Serve as `argv` (default: the command line) and the environment say; `neutrino model-server` calls this too."""
    try:
        config = load(argv)
    except ConfigError as exc:
        print(f"neutrino-model-server: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    _logs.configure(config.log_level, config.log_format, "[%(levelname)s] %(name)s: %(message)s")
    try:
        tracing.setup()
    except TracingConfigError as exc:
        print(f"neutrino-model-server: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    try:
        server = ModelServer(config)
    except ConfigError as exc:  # a flag that does not fit the model: a bad flag, exit 2
        print(f"neutrino-model-server: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    except Exception as exc:
        detail = "".join(traceback.format_exception(exc))
        print(
            f"neutrino-model-server: cannot load model {config.model!r} from {config.app}:\n{detail}", file=sys.stderr
        )
        raise SystemExit(EXIT_APP_IMPORT) from None

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await server.run(stop)

    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - a plain asyncio loop works the same, slower
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve())
    except LoadFailed as exc:
        print(f"neutrino-model-server: {exc}\n{exc.traceback}", file=sys.stderr, end="")
        raise SystemExit(EXIT_LOAD_FAILED) from None


if __name__ == "__main__":
    main()
