"""Whether this process traces, read from the standard `OTEL_*` variables, and the W3C trace context
as plain strings: what every Python service (gateway, model server, zygote and workers) and the SDK's
clients check before doing anything about traces.

Tracing is off unless the environment asks for it: `OTEL_TRACES_EXPORTER` set to an exporter other
than `none`, or an OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
set; `OTEL_SDK_DISABLED=true` turns it off whatever else is set. (The OpenTelemetry spec makes `otlp`
the default exporter; Neutrino, which ships without a collector, waits to be told.) Everything else
(sampler, batch delays, endpoint, headers, `OTEL_SERVICE_NAME`, resource attributes) is the
OpenTelemetry SDK's own reading of the variables.

This module never imports OpenTelemetry: a worker that does not trace pays one flag check per task
and nothing at import or fork. `neutrino._otel` holds what needs the SDK and is imported only when
tracing is on, or, for the clients, when the process already uses OpenTelemetry itself; what both
read (the settings, the error type, the logger, `parse`) is in `neutrino._tracing_base`, re-exported here.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import msgpack

# Re-exported: the services, the SDK and the tests read these here.
from ._tracing_base import TRACE_MAX_BYTES as TRACE_MAX_BYTES
from ._tracing_base import TRACESTATE_KEY as TRACESTATE_KEY
from ._tracing_base import TracingConfigError as TracingConfigError
from ._tracing_base import check as check
from ._tracing_base import otlp_protocol as otlp_protocol
from ._tracing_base import parse as parse
from ._tracing_base import wanted as wanted

# Read once at import: the zygote imports this before forking, so its workers inherit the answer.
ON: bool = wanted(os.environ)


def uses_otel() -> bool:
    """Whether spans and context can come from OpenTelemetry here: tracing is on, or the process
    imported the OpenTelemetry API itself (an application that traces on its own, whose current
    span a client call should continue). A dictionary lookup when neither."""
    return ON or "opentelemetry.trace" in sys.modules


def setup(service_name: str) -> bool:
    """Install the OpenTelemetry SDK's tracer provider and exporter for this process when tracing
    is on (once; `service_name` unless `OTEL_SERVICE_NAME` or the resource attributes say
    otherwise); whether it is on. TracingConfigError for unusable variables."""
    if not ON:
        return False
    check(os.environ)
    from . import _otel

    _otel.setup(service_name)
    return True


def flush() -> None:
    """Export the spans still buffered: before a process leaves without running `atexit` (a worker
    ends with `os._exit`). Nothing to do when tracing is off."""
    if ON and "neutrino._otel" in sys.modules:
        from . import _otel

        _otel.flush()


def outgoing() -> tuple[str, str | None] | None:
    """`(traceparent, tracestate)` of the current OpenTelemetry span, for a task sent now; None when
    there is none (no OpenTelemetry, no span) or when it is longer than the protocol carries."""
    if not uses_otel():
        return None
    from . import _otel

    return _otel.current_context()


def with_trace(meta: bytes, trace: tuple[str, str | None]) -> bytes:
    """A packed SubmitTask meta map (a fixmap, SPEC.md §3.1) with `traceparent` and `tracestate`
    added: they are its last fields in canonical order, so the bytes equal a whole new encoding
    (tests compare the two). The packed pair is kept for the next task, usually sent in the same span."""
    global _last_trace
    cached = _last_trace
    if cached is None or cached[0] is not trace:
        traceparent, tracestate = trace
        extra = _TRACEPARENT + msgpack.packb(traceparent)
        if tracestate is not None:
            extra += _TRACESTATE + msgpack.packb(tracestate)
        cached = _last_trace = (trace, 1 if tracestate is None else 2, extra)
    if not 0x80 <= meta[0] <= 0x8F - cached[1]:
        raise ValueError(f"SubmitTask meta does not start with a fixmap of room for {cached[1]} more fields")
    return bytes((meta[0] + cached[1],)) + meta[1:] + cached[2]


_TRACEPARENT, _TRACESTATE = msgpack.packb("traceparent"), msgpack.packb("tracestate")  # the keys, packed once
_last_trace: tuple[tuple[str, str | None], int, bytes] | None = None


def headers() -> dict[str, str]:
    """The `traceparent` (and `tracestate`) HTTP headers of the current span; empty without one."""
    if not uses_otel():
        return {}
    from . import _otel

    return _otel.inject()


# -- the context as strings (no OpenTelemetry needed) ----------------------------------------


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32 hex digits of the trace a `traceparent` belongs to, or None when it is not valid."""
    parsed = parse(traceparent)
    return None if parsed is None else parsed[0]


def new_traceparent(sampled: bool = False, ids: bytes | None = None) -> str:
    """A `traceparent` for a new trace (random ids), for runs a non-tracing gateway starts: their
    logs and records still share one trace id. Not sampled: no span was recorded for it. `ids`: 24
    bytes from os.urandom the caller drew already (the gateway draws them with a run id's)."""
    if ids is None:
        ids = os.urandom(24)  # an all-zero id (invalid) has odds of 2**-64: not worth a branch
    return f"00-{ids[:16].hex()}-{ids[16:].hex()}-{'01' if sampled else '00'}"


def run_id_of(tracestate: str | None) -> str | None:
    """The run id a gateway put in a task's `tracestate` (under `TRACESTATE_KEY`), if any."""
    for raw in (tracestate or "").split(","):
        key, _, value = raw.strip().partition("=")
        if key == TRACESTATE_KEY and value:
            return value
    return None


def fields(traceparent: str | None) -> dict[str, Any]:
    """`{"trace_id": ...}` for a log line about work in that trace; empty without a valid one."""
    trace_id = trace_id_of(traceparent)
    return {} if trace_id is None else {"trace_id": trace_id}


# -- model calls ---------------------------------------------------------------------------------


class _HasName(Protocol):
    name: str


S = TypeVar("S", bound=_HasName)
P = ParamSpec("P")
R = TypeVar("R")


def model_call(predict: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """`predict` (a model client's blocking call) inside a `neutrino.model <name>` client span when
    spans can be made here; its requests then carry the span's `traceparent` (`headers()`)."""

    @functools.wraps(predict)
    def traced(client: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if not uses_otel():
            return predict(client, *args, **kwargs)
        from . import _otel

        with _otel.model_span(client.name):
            return predict(client, *args, **kwargs)

    return traced


def amodel_call(
    predict: Callable[Concatenate[S, P], Awaitable[R]],
) -> Callable[Concatenate[S, P], Awaitable[R]]:
    """`model_call` for the async side."""

    @functools.wraps(predict)
    async def traced(client: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if not uses_otel():
            return await predict(client, *args, **kwargs)
        from . import _otel

        with _otel.model_span(client.name):
            return await predict(client, *args, **kwargs)

    return traced
