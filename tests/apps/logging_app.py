"""The log tests' app: a task that logs a line of its own while it runs, which the worker's JSON
lines must tie to the run (its task id and name)."""

from __future__ import annotations

import logging

from neutrino import App

app = App("log-tests")
log = logging.getLogger("logging_app")


@app.task()
def shout(word: str) -> str:
    log.warning("shouting %s", word)
    return word.upper()
