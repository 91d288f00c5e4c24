"""Tasks that misbehave on purpose, for the lifecycle tests."""

import os
import sys
import time
from pathlib import Path

from neutrino import App, Retry

app = App("lifecycle")
_hoard: list[bytearray] = []


@app.task()
def pid() -> int:
    return os.getpid()


@app.task()
def hang(seconds: float = 60.0) -> None:
    time.sleep(seconds)


@app.task()
def crash() -> None:
    os._exit(1)


@app.task(timeout=0.5)
def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task(retries=2, retry_backoff_s=0.01, retry_backoff_max_s=0.05)
def hang_once(marker: str) -> int:
    """Hangs on its first attempt (to be killed), answers on the next: shows retries."""
    path = Path(marker)
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(os.getpid()))
        tmp.rename(path)  # atomic: a reader never sees it empty
        time.sleep(60)
    return os.getpid()


@app.task(retries=3, retry_on=(ConnectionError,), retry_backoff_s=0.01, retry_backoff_max_s=0.05)
def flaky(marker: str, failures: int) -> int:
    """Raises ConnectionError `failures` times (counted in a file), then succeeds."""
    path = Path(marker)
    seen = int(path.read_text()) if path.exists() else 0
    path.write_text(str(seen + 1))
    if seen < failures:
        raise ConnectionError(f"attempt {seen + 1} failed")
    return seen + 1


@app.task(retries=1)
def retry_later(marker: str) -> str:
    path = Path(marker)
    if not path.exists():
        path.write_text("1")
        raise Retry(delay=0.2)
    return "done"


@app.task()
def leak(mb: int) -> int:
    """Keeps `mb` MiB alive in this worker, touched so it is resident. In 8 MiB steps: one huge
    allocation would hold the GIL long enough to silence the heartbeat thread."""
    for _ in range(0, mb, 8):
        _hoard.append(bytearray(b"x") * (8 << 20))
    return len(_hoard)


@app.task()
def add(x: int, y: int) -> int:
    return x + y


@app.task()
def exit_with(code: int) -> None:
    sys.exit(code)
