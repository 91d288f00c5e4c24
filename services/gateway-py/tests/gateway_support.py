"""Names the gateway's process tests share (a module of its own: `conftest` is a name every test
folder has, so `from conftest import ...` finds whichever was imported first in a full run)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the `tests` package (harness) and the example apps, as the processes see them

from tests.conftest import free_port  # noqa: E402

__all__ = ["DIGITS_APP", "ECHO_APP", "HERE", "ROOT", "dead_url", "free_port"]

ECHO_APP = "gateway_models_app:app"  # in this folder (--app-dir)
DIGITS_APP = "examples.models.app:app"


def dead_url() -> str:
    """A URL nothing listens on: connections to it are refused."""
    return f"http://127.0.0.1:{free_port()}"
