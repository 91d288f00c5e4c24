"""A task that reports the trace context its worker received, for tests/test_trace_context.py.

The worker runtime does not hand the trace context to tasks yet (SPEC.md §4.5 only has the worker
receive it), so the task finds the `TaskAssignment` being run by walking up the stack to the
worker frame that holds it: what it reports is exactly what the worker decoded from the wire.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from neutrino import App, Retry
from neutrino_protocol import TaskAssignment

app = App("trace")


def _assignment() -> TaskAssignment:
    frame = sys._getframe(1)
    while frame is not None:
        for value in frame.f_locals.values():
            if type(value) is TaskAssignment:
                return value
        frame = frame.f_back
    raise LookupError("no TaskAssignment on the stack: not running in a Neutrino worker")


@app.task(retries=2, retry_backoff_s=0.05, retry_backoff_max_s=0.05)
def seen(log: str, failures: int, how: str, run_s: float) -> list[Any]:
    """[attempt, traceparent, tracestate] as the worker received them, also appended to `log` on
    every attempt; the first `failures` attempts end by `how`: "retry" (raise Retry) or "exit"
    (the worker dies)."""
    msg = _assignment()
    seen = [msg.attempt, msg.traceparent, msg.tracestate]
    with open(log, "a") as f:
        f.write(json.dumps(seen) + "\n")
    time.sleep(run_s)
    if msg.attempt <= failures:
        if how == "exit":
            os._exit(1)
        raise Retry(delay=0.2)
    return seen
