"""Loading the user's `neutrino.App` from a "module:attr" spec, with every failure made reportable."""

from __future__ import annotations

import importlib
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING

from neutrino_protocol import ErrorInfo, ErrorKind

if TYPE_CHECKING:
    from neutrino import App


class AppLoadError(Exception):
    """The app could not be loaded; `error` is what ZygoteFailed carries."""

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(error.evalue)
        self.error = error


@dataclass(frozen=True, slots=True)
class LoadedApp:
    app: App
    import_ms: float


def load_app(spec: str) -> LoadedApp:
    """Import `module:attr` and check it is a neutrino.App; raise AppLoadError on any failure."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise _failure(
            "ValueError", f"--app {spec!r} is not MODULE:ATTR; pass e.g. --app myproject.tasks:app", traceback=None
        )
    started = time.perf_counter()
    try:
        # Imported here, not at module level, so that a broken SDK install is reported the same
        # way as a broken app instead of crashing the zygote before it can say why.
        from neutrino import App

        module = importlib.import_module(module_name)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt at import are app failures too
        raise _failure(type(exc).__name__, str(exc), traceback="".join(traceback.format_exception(exc))) from exc
    import_ms = (time.perf_counter() - started) * 1000.0
    try:
        app = getattr(module, attr)
    except AttributeError:
        raise _failure(
            "AttributeError",
            f"module {module_name!r} has no attribute {attr!r}; define `{attr} = App(...)` there or fix --app",
            traceback=None,
        ) from None
    if not isinstance(app, App):
        raise _failure(
            "TypeError",
            f"{spec} is a {type(app).__name__}, not a neutrino.App; point --app at the App instance",
            traceback=None,
        )
    return LoadedApp(app=app, import_ms=import_ms)


def _failure(ename: str, evalue: str, traceback: str | None) -> AppLoadError:
    return AppLoadError(
        ErrorInfo(kind=ErrorKind.APP_IMPORT_ERROR.value, ename=ename, evalue=evalue, traceback=traceback)
    )
