"""The Compose test's app: the models example as it ships (examples/models/app.py), plus one task that
holds a worker for a while, so the test can kill or stop a task pod while runs are in flight or queued.
It runs only inside the task-pod container, where the example sits at /app/examples/models/app.py."""

from __future__ import annotations

import time

from examples.models.app import app

__all__ = ["app"]


@app.task()
def hold(seconds: float, tag: int) -> int:
    """Keep a worker busy for `seconds`, then answer `tag`: each run's answer says which run it was."""
    time.sleep(seconds)
    return tag
