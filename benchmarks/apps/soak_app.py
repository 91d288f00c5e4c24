"""The soak and chaos benchmarks' app: a task that calls a model, and records that it ran.

`infer` asks the `echo` model (its replicas from NEUTRINO_MODEL_ECHO_URL) for `x` and returns the
answer; before that it appends `token` to a file of its own worker under the directory in
NEUTRINO_BENCH_RAN_DIR (when set), so a benchmark can count how many times each run really ran.
"""

from __future__ import annotations

import os
import time
from typing import IO, Any

from neutrino import App

app = App("soak")
RAN_DIR_ENV = "NEUTRINO_BENCH_RAN_DIR"

_ran: tuple[int, IO[str]] | None = None  # (pid, file): opened after fork, once per worker


def _record(token: str) -> None:
    global _ran
    directory = os.environ.get(RAN_DIR_ENV)
    if not directory:
        return
    if _ran is None or _ran[0] != os.getpid():
        _ran = (os.getpid(), open(os.path.join(directory, f"ran-{os.getpid()}.log"), "a", buffering=1))  # noqa: SIM115
    _ran[1].write(token + "\n")  # line-buffered: on disk before the task goes on


@app.model(name="echo", max_batch_size=16, batch_wait_ms=1)
class Echo:
    def load(self) -> None:
        pass

    def predict(self, xs: list[Any]) -> list[Any]:
        return xs


@app.task()
def infer(token: str, x: int, sleep_s: float = 0.0) -> int:
    """Record `token`, sleep `sleep_s`, then return the `echo` model's answer for `x` (which is `x`)."""
    _record(token)
    if sleep_s > 0:
        time.sleep(sleep_s)
    result: int = app.models.echo.predict(x)
    return result
