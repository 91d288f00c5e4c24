"""Tasks that misbehave on purpose, for lifecycle tests."""

import os
import time

from neutrino import App

app = App("lifecycle")


@app.task()
def pid() -> int:
    return os.getpid()


@app.task()
def hang(seconds: float = 60.0) -> None:
    time.sleep(seconds)


@app.task()
def crash() -> None:
    os._exit(1)
