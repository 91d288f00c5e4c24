"""The gateway's part of a run's trace (SPEC.md §4.5): every run gets a W3C trace context, sent with
its SubmitTask and kept in its record, and with tracing on (the `OTEL_*` variables,
`neutrino._tracing`) the gateway draws a server span per API request and, from the `queue_us` each
reply carries, the run's wait in the orchestrator.

The run's `traceparent` is the request span's when tracing is on; off, it is the caller's
`traceparent` header when valid, else a new (unsampled) one: logs and records of one run still
share a trace id, and a tracing worker behind a non-tracing gateway continues the caller's trace.
The run id travels in the `tracestate` under the `neutrino` key, so the worker's span can name it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from neutrino import _tracing

if TYPE_CHECKING:
    from neutrino_protocol import TaskReply

    from .run import Run

SERVICE_NAME = "neutrino-gateway"
TRACESTATE_KEY = _tracing.TRACESTATE_KEY
TRACED_PATHS = ("/v1/", "/v2/models/")
MAX_TRACESTATE_ENTRIES = 32  # W3C Trace Context
_ENTRY = re.compile(r"[a-z0-9][a-z0-9_\-*/@]*=[\x20-\x2b\x2d-\x3c\x3e-\x7e]*[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


def setup() -> None:
    """The tracer provider, when tracing is on; TracingConfigError for variables it cannot act on."""
    _tracing.setup(SERVICE_NAME)


def middlewares() -> list[Any]:
    """The request-span middleware for the API (`/v1/...`, and the models' `/v2/models/...`), or none
    when tracing is off: probes, metrics and the dashboard's files make no spans."""
    if not _tracing.ON:
        return []
    from neutrino import _otel

    return [_otel.server_middleware(lambda request: request.path.startswith(TRACED_PATHS))]


def run_context(headers: Mapping[str, str]) -> tuple[str, str | None] | None:
    """`(traceparent, tracestate)` for a run a request starts (see the module's docstring): the
    request span's, or the caller's; None when the run starts a trace of its own (runs.py draws its
    ids with the run id's)."""
    if _tracing.ON:
        from neutrino import _otel

        current = _otel.current_context()
        if current is not None:
            return current
    incoming = headers.get("traceparent")
    if incoming is None:
        return None
    incoming = incoming.strip()
    if _tracing.parse(incoming) is None:
        return None
    return incoming, headers.get("tracestate")


def with_run(tracestate: str | None, run_id: str) -> str:
    """`tracestate` with `neutrino=<run id>` first (W3C: a vendor puts its updated entry at the front),
    any earlier `neutrino` entry and malformed entries left out, within the entry and size limits."""
    if not tracestate:  # the usual case: nothing from the caller to keep
        return f"{TRACESTATE_KEY}={run_id}"
    entries = [f"{TRACESTATE_KEY}={run_id}"]
    for raw in tracestate.split(","):
        entry = raw.strip()
        if entry and _ENTRY.fullmatch(entry) and not entry.startswith(f"{TRACESTATE_KEY}="):
            entries.append(entry)
    entries = entries[:MAX_TRACESTATE_ENTRIES]
    while len(",".join(entries).encode()) > _tracing.TRACE_MAX_BYTES:
        entries.pop()
    return ",".join(entries)


def run_created(run: Run) -> None:
    """The request's span names the run it created."""
    if _tracing.ON:
        from opentelemetry import trace

        trace.get_current_span().set_attributes({"neutrino.run_id": run.id, "neutrino.task": run.task})


def sent(run: Run) -> None:
    """Note when the run goes to a task pod: the start of its queue-wait span."""
    if _tracing.ON:
        run.sent_ns = time.time_ns()


def replied(run: Run, reply: TaskReply) -> None:
    """Draw the run's wait in the orchestrator from the reply's `queue_us`, under the run's context."""
    if _tracing.ON and reply.queue_us is not None and run.sent_ns:
        from neutrino import _otel

        _otel.draw_queue_span(
            run.traceparent,
            run.sent_ns,
            reply.queue_us,
            reply.attempts,
            {"neutrino.run_id": run.id, "neutrino.task": run.task},
        )
