"""Log lines of the Python services (gateway, model server, zygote and workers): `--log-format text`
keeps each service's own line, `json` writes one object per line for a log collector. Also the
fields bound to the current context (`bound`), which every JSON line logged in it carries: that is
how a line about a run gets its `run_id`, `task`, `task_id` and `trace_id` without each call
spelling them out. The Rust orchestrator writes the same keys (services/orchestrator-rs/src/logging.rs).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

LOG_FORMATS = ("text", "json")

_FIELDS: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "neutrino_log_fields", default=MappingProxyType({})
)
# What a LogRecord holds of its own; anything else on a record came from `extra=` and is a field.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def check_format(value: str, source: str) -> str:
    """`value` as a log format name; ValueError naming `source` (the flag or variable) and the choices."""
    name = value.strip().lower()
    if name not in LOG_FORMATS:
        raise ValueError(f"{source}={value!r} is not a log format; use one of {', '.join(LOG_FORMATS)}")
    return name


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Every JSON line logged inside the block (in this thread or asyncio task) carries `fields`."""
    token = _FIELDS.set({**_FIELDS.get(), **fields})
    try:
        yield
    finally:
        _FIELDS.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: `timestamp` (RFC 3339, UTC), `level`, `logger`, `message`, the bound
    fields, the record's `extra=` fields, and `exception` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_FIELDS.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def _timestamp(created: float) -> str:
    """RFC 3339 in UTC with a `Z`, as the orchestrator writes it."""
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def configure(level: int | str, log_format: str, text_format: str) -> None:
    """Send the root logger's records to stderr, as `text_format` lines or JSON (`log_format`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(text_format))
    logging.basicConfig(level=level, handlers=[handler], force=True)
