"""Imports fine in the zygote, but every worker dies right after the fork (a broken
post-fork resource): the orchestrator must back off, not fork-loop."""

import os

from neutrino import App

app = App("crash-at-fork")
_zygote = os.getpid()
os.register_at_fork(after_in_child=lambda: os._exit(1))


@app.task()
def noop() -> None:
    return None
