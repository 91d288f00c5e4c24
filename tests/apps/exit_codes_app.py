"""Tasks that end their own worker process, for tests/test_exit_codes.py: every exit code the
runtime reserves for itself (SPEC.md §7) and a few signals, with and without retries."""

import os
import resource
import time
from pathlib import Path

from neutrino import App

app = App("exit-codes")


def _end(how: str, value: int) -> None:
    if how == "exit":
        os._exit(value)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a SIGSEGV leaves no core file behind
    os.kill(os.getpid(), value)
    time.sleep(60)  # a signal the process survived would show up as a hang, not a reply


def _first_attempt(marker: str) -> bool:
    """True (and the marker written, with this worker's pid) only the first time."""
    path = Path(marker)
    if path.exists():
        return False
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.rename(path)  # atomic: a reader never sees it empty
    return True


@app.task()
def end(how: str, value: int) -> None:
    _end(how, value)


@app.task(retries=1, retry_backoff_s=0.01, retry_backoff_max_s=0.05)
def end_once(how: str, value: int, marker: str) -> int:
    """Ends its worker on the first attempt, answers on the retry."""
    if _first_attempt(marker):
        _end(how, value)
    return os.getpid()


@app.task()
def hang(marker: str) -> None:
    """Writes its pid to `marker`, then waits to be killed from outside."""
    _first_attempt(marker)
    time.sleep(60)


@app.task(retries=1, retry_backoff_s=0.01, retry_backoff_max_s=0.05)
def hang_once(marker: str) -> int:
    if _first_attempt(marker):
        time.sleep(60)
    return os.getpid()


@app.task()
def add(x: int, y: int) -> int:
    return x + y
