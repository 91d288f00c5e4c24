"""Names the gateway's process tests share (a module of its own: `conftest` is a name every test
folder has, so `from conftest import ...` finds whichever was imported first in a full run)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the `tests` package (harness) and the example apps, as the processes see them

ECHO_APP = "gateway_models_app:app"  # in this folder (--app-dir)
DIGITS_APP = "examples.models.app:app"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dead_url() -> str:
    """A URL nothing listens on: connections to it are refused."""
    return f"http://127.0.0.1:{free_port()}"
