"""The run of each assignment as a span, child of the task's `traceparent` (SPEC.md §4.5), when the
`OTEL_*` variables switch tracing on (`neutrino._tracing`). Off, `traced` hands the run function back
untouched and OpenTelemetry is never imported: not by the zygote, not by a worker."""

from __future__ import annotations

import logging
from collections.abc import Callable

from neutrino import _tracing
from neutrino_protocol import TaskAssignment, TaskResult

log = logging.getLogger("neutrino.worker")

SERVICE_NAME = "neutrino-worker"

Run = Callable[[TaskAssignment], TaskResult]


def traced(run: Run) -> Run:
    """`run` itself when tracing is off; else `run` inside a `neutrino.run <task>` span. The tracer
    provider starts here, in the worker after its fork: its export thread and connections must not
    be the zygote's. Variables that cannot be acted on are logged and the worker runs untraced."""
    if not _tracing.ON:
        return run
    try:
        _tracing.setup(SERVICE_NAME)
    except _tracing.TracingConfigError as exc:
        log.error("tracing stays off in this worker: %s", exc)
        return run
    from neutrino import _otel
    from opentelemetry import context, trace

    tracer = _otel.tracer()
    consumer, error = trace.SpanKind.CONSUMER, trace.StatusCode.ERROR
    # The parent context and run id of the last task's (traceparent, tracestate): the tasks a client
    # sends from one span, or the attempts of one run, share them, and contexts are immutable.
    last: list[tuple[str | None, str | None, context.Context | None, str | None]] = [(None, None, None, None)]

    def run_in_span(msg: TaskAssignment) -> TaskResult:
        # start_span and attach by hand: a third cheaper than start_as_current_span's context managers;
        # every attribute given at the start, where the SDK checks them in one pass.
        traceparent, tracestate, parent, run_id = last[0]
        if traceparent != msg.traceparent or tracestate != msg.tracestate:
            traceparent, tracestate = msg.traceparent, msg.tracestate
            parent, run_id = _otel.remote_context(traceparent, tracestate), _tracing.run_id_of(tracestate)
            last[0] = (traceparent, tracestate, parent, run_id)
        attributes: dict[str, str | int] = {
            "neutrino.task": msg.task,
            "neutrino.task_id": msg.task_id,
            "neutrino.attempt": msg.attempt,
        }
        if run_id is not None:
            attributes["neutrino.run_id"] = run_id
        span = tracer.start_span(f"neutrino.run {msg.task}", context=parent, kind=consumer, attributes=attributes)
        token = context.attach(trace.set_span_in_context(span, parent))
        try:
            result = run(msg)
            if result.status != "ok":
                span.set_status(error, result.error.kind if result.error is not None else result.status)
            return result
        finally:
            context.detach(token)
            span.end()

    return run_in_span


def flush() -> None:
    """The worker's buffered spans exported before it exits: `os._exit` skips the SDK's own `atexit`.
    Tracing off, nothing else is looked at (each exiting worker would copy those pages)."""
    if _tracing.ON:
        _tracing.flush()
