"""What `neutrino._tracing` (no OpenTelemetry) and `neutrino._otel` (the OpenTelemetry side) both
read: the `OTEL_*` settings Neutrino acts on, the error for ones it cannot, the tracing logger, and a
W3C `traceparent` parsed as strings. A module of its own so that `_otel` depends on it and not on
`_tracing`, which imports `_otel` lazily: neither imports the other both ways. Never imports
OpenTelemetry.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

log = logging.getLogger("neutrino.tracing")

EXPORTERS = ("otlp", "console", "none")
OTLP_PROTOCOLS = ("http/protobuf", "grpc")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")  # first set wins
# W3C Trace Context level 1, version 00 (a later version's first four fields read the same).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_INVALID_TRACE_ID = "0" * 32
_INVALID_SPAN_ID = "0" * 16
TRACESTATE_KEY = "neutrino"  # the gateway's tracestate entry: the run id
TRACE_MAX_BYTES = 512  # neutrino_protocol.TRACE_MAX_BYTES: a longer value gets the task rejected


class TracingConfigError(ValueError):
    """An `OTEL_*` variable this process cannot act on; the message names it and the fix."""


def wanted(env: Mapping[str, str]) -> bool:
    """Whether `env` switches tracing on (see the module's docstring)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = _exporter_names(env)
    if exporters is not None:
        return any(name != "none" for name in exporters)
    return any(
        env.get(name, "").strip() for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def _exporter_names(env: Mapping[str, str]) -> list[str] | None:
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if not raw:
        return None
    return [name.strip().lower() for name in raw.split(",") if name.strip()]


def check(env: Mapping[str, str]) -> None:
    """TracingConfigError when tracing is on and a variable names an exporter or protocol this
    process cannot use: said at start-up, not on the first span."""
    if not wanted(env):
        return
    for name in _exporter_names(env) or ["otlp"]:
        if name not in EXPORTERS:
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER={env['OTEL_TRACES_EXPORTER']!r}: {name!r} is not an exporter Neutrino "
                f"has; use one of {', '.join(EXPORTERS)}"
            )
    for name in PROTOCOL_VARIABLES:
        value = env.get(name, "").strip()
        if value:
            if value.lower() not in OTLP_PROTOCOLS:
                raise TracingConfigError(
                    f"{name}={value!r} is not an OTLP protocol Neutrino exports with; "
                    f"use one of {', '.join(OTLP_PROTOCOLS)}"
                )
            return


def otlp_protocol(env: Mapping[str, str]) -> str:
    """The OTLP transport: the traces-specific variable, else the general one, else the spec's default."""
    for name in PROTOCOL_VARIABLES:
        value = env.get(name, "").strip().lower()
        if value:
            return value
    return "http/protobuf"


def parse(traceparent: str | None) -> tuple[str, str, int] | None:
    """`(trace_id, parent_id, flags)` of a valid W3C `traceparent`, else None (a caller's bad header
    is ignored, as the W3C spec asks, and a new trace starts)."""
    if not traceparent or len(traceparent) > TRACE_MAX_BYTES:
        return None
    m = _TRACEPARENT.fullmatch(traceparent.strip())
    if m is None:
        return None
    version, trace_id, parent_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _INVALID_TRACE_ID or parent_id == _INVALID_SPAN_ID:
        return None
    return trace_id, parent_id, int(flags, 16)
