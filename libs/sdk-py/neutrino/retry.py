"""`Retry`: what a task raises to ask for another attempt (SPEC.md §4.3 `TaskResult.retry`).

It is a signal from user code to the worker, not an error the SDK reports, so it sits outside the
`NeutrinoError` tree: an `except NeutrinoError` around SDK calls must never swallow it.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["Retry"]


class Retry(Exception):
    """Raise inside a task to have it retried: `raise neutrino.Retry(delay=30, message="rate limited")`.

    The orchestrator retries while the task's `retries` allow (SPEC.md §6 rule 6), waiting at
    least `delay` seconds (None: the task's backoff alone). Once attempts run out, the caller gets
    a `TaskError` of type `Retry` whose message is `message` (or "retry requested").
    """

    def __init__(self, delay: float | None = None, message: str = "") -> None:
        if delay is not None:
            if isinstance(delay, bool) or not isinstance(delay, (int, float)):
                raise TypeError(f"Retry delay must be a number of seconds or None, got {type(delay).__name__}")
            if not (delay >= 0 and math.isfinite(delay)):
                raise ValueError(f"Retry delay must be a finite number of seconds >= 0, got {delay!r}")
            delay = float(delay)
        if not isinstance(message, str):
            raise TypeError(f"Retry message must be a str, got {type(message).__name__}")
        super().__init__(message or "retry requested")
        self.delay = delay
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.delay, self.message))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(delay={self.delay!r}, message={self.message!r})"
