"""The one "unknown option, did you mean" check, for `@app.task` and `@app.model` alike.

Both decorators take `**unknown` so a misspelt option (`retry=3`, `max_batch=8`) fails on the
decorator line with the closest valid names, rather than Python's bare "unexpected keyword".
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

__all__ = ["reject_unknown"]


def reject_unknown(kind: str, unknown: Mapping[str, object], valid: Sequence[str]) -> None:
    """TypeError naming each of `unknown`'s keys with its closest `valid` names; nothing when empty.

    `kind` ("task", "model") names the options in the message."""
    if not unknown:
        return
    parts = []
    for key in sorted(unknown):
        # Two guesses: `retry` is as likely `retries` as `retry_on`.
        close = " or ".join(repr(c) for c in difflib.get_close_matches(key, valid, n=2))
        parts.append(f"{key} (did you mean {close}?)" if close else key)
    raise TypeError(
        f"The following {kind} options are undefined: {', '.join(parts)}. Valid options: {', '.join(valid)}."
    )
