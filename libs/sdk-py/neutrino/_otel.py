"""The OpenTelemetry side of `neutrino._tracing`: the tracer provider and exporters a service installs,
the W3C propagation of the current span, and spans drawn after the fact from durations another
process measured (the orchestrator's `queue_us`, SPEC.md §4.5). Imported only when tracing is on or
the process uses OpenTelemetry already: importing the SDK costs tens of milliseconds. `_tracing`
imports this module lazily, and this module reads what it shares with `_tracing` (settings, error
type, logger) from `neutrino._tracing_base`, so the two never import each other.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from opentelemetry import context, trace
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import _tracing_base

PROPAGATOR = TraceContextTextMapPropagator()
TRACER_NAME = "neutrino"
FLUSH_TIMEOUT_MS = 5_000

_lock = threading.Lock()
_provider: TracerProvider | None = None


def setup(service_name: str) -> None:
    """The global tracer provider with one batching processor per exporter `OTEL_TRACES_EXPORTER`
    names (default `otlp`). The SDK reads the sampler, the batch sizes and delays and the exporter's
    endpoint, headers and timeout from their own variables."""
    global _provider
    with _lock:
        if _provider is not None:
            return
        # Ours first, then what OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME say, which wins.
        resource = Resource.create({"service.name": service_name}).merge(OTELResourceDetector().detect())
        provider = TracerProvider(resource=resource)
        for exporter in _exporters(os.environ):
            provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _provider = provider


def _exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    for name in {n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()}:
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            exporters.append(_otlp(_tracing_base.otlp_protocol(env)))
    return exporters


def _otlp(protocol: str) -> SpanExporter:
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError:
            raise _tracing_base.TracingConfigError(
                "OTLP over gRPC needs the package opentelemetry-exporter-otlp-proto-grpc, which is not "
                "installed; install it, or set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"
            ) from None
        exporter: SpanExporter = GrpcExporter()
        return exporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def flush() -> None:
    if _provider is not None:
        _provider.force_flush(FLUSH_TIMEOUT_MS)


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def extract(traceparent: str | None, tracestate: str | None = None) -> context.Context:
    """The context whose remote parent is that `traceparent` (a new trace when it is absent or invalid)."""
    carrier = {"traceparent": traceparent or ""}
    if tracestate:
        carrier["tracestate"] = tracestate
    return PROPAGATOR.extract(carrier)


def inject(ctx: context.Context | None = None) -> dict[str, str]:
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, ctx)
    return carrier


def current_context() -> tuple[str, str | None] | None:
    """`(traceparent, tracestate)` of the current span, for SubmitTask; None without a valid span, and
    no tracestate when it is over the protocol's limit (the task would be rejected: logged). The
    answer for the last span is kept: a caller sends many tasks from one span."""
    global _last_context
    span_context = trace.get_current_span().get_span_context()
    last = _last_context
    if last is not None and last[0] is span_context:
        return last[1]
    if not span_context.is_valid:
        return None
    traceparent = f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"
    tracestate = span_context.trace_state.to_header() or None
    if tracestate is not None and len(tracestate.encode()) > _tracing_base.TRACE_MAX_BYTES:
        _tracing_base.log.warning("tracestate over %d bytes left out of the task", _tracing_base.TRACE_MAX_BYTES)
        tracestate = None
    answer = (traceparent, tracestate)
    _last_context = (span_context, answer)
    return answer


_last_context: tuple[trace.SpanContext, tuple[str, str | None]] | None = None


def span_context(traceparent: str | None) -> trace.SpanContext:
    return trace.get_current_span(extract(traceparent)).get_span_context()


def draw_queue_span(
    parent: str | None, sent_ns: int, queue_us: int, attempts: int, attributes: Mapping[str, Any]
) -> None:
    """The orchestrator's queue wait as a span under `parent`: from when the task was sent
    (`sent_ns`, this process's wall clock) for `queue_us` microseconds of the orchestrator's clock
    (SPEC.md §4.5, "drawing spans without shared clocks"). With several attempts it covers the earlier
    ones and their backoffs too: `neutrino.attempts` says how many."""
    span = tracer().start_span(
        "neutrino.queue",
        context=extract(parent),
        kind=trace.SpanKind.INTERNAL,
        start_time=sent_ns,
        attributes={**attributes, "neutrino.attempts": attempts},
    )
    span.end(sent_ns + queue_us * 1_000)


def model_span(model: str) -> Any:
    """The client span of one model call (all its tries): the model server's request span is its child."""
    return tracer().start_as_current_span(
        f"neutrino.model {model}", kind=trace.SpanKind.CLIENT, attributes={"neutrino.model": model}
    )


def server_middleware(traced: Callable[[Any], bool]) -> Any:
    """An aiohttp middleware putting each request `traced(request)` accepts in a server span, child
    of the request's W3C `traceparent` (a new trace without one); other requests pass untouched."""
    from aiohttp import web

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        if not traced(request):
            return await handler(request)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else request.path
        with server_span(
            f"{request.method} {route}",
            request.headers.get("traceparent"),
            request.headers.get("tracestate"),
            {"http.request.method": request.method, "http.route": route, "url.path": request.path},
        ) as span:
            response = await handler(request)
            answered(span, "http.response.status_code", response.status, failed=response.status >= 500)
            return response

    return middleware


def server_span(name: str, traceparent: str | None, tracestate: str | None, attributes: Mapping[str, Any]) -> Any:
    """The current span of one request a server answers (HTTP or gRPC), child of the caller's
    `traceparent` (a new trace without one). An exception escaping it is the server's business
    (an aborted gRPC call raises to end itself): `answered` says how the request went."""
    return tracer().start_as_current_span(
        name,
        context=extract(traceparent, tracestate),
        kind=trace.SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )


def answered(span: trace.Span, attribute: str, code: int, failed: bool) -> None:
    """A server span's answer: its status code under `attribute`, and an error status when `failed`."""
    span.set_attribute(attribute, code)
    if failed:
        span.set_status(trace.StatusCode.ERROR)


def batch_span(links: list[trace.SpanContext], size: int) -> Any:
    """A model server's batch: child of the first request it serves, linked to every one of them."""
    parent = trace.NonRecordingSpan(links[0]) if links else None
    return tracer().start_as_current_span(
        "neutrino.batch",
        context=trace.set_span_in_context(parent) if parent is not None else None,
        kind=trace.SpanKind.INTERNAL,
        links=[trace.Link(link) for link in links],
        attributes={"neutrino.batch_size": size},
    )


def current_span_context() -> trace.SpanContext | None:
    span_context = trace.get_current_span().get_span_context()
    return span_context if span_context.is_valid else None


def remote_context(traceparent: str | None, tracestate: str | None) -> context.Context | None:
    """`extract` for a context known to come from a Neutrino sender, in a third of its time (a
    worker does this per task): None when `traceparent` is absent or invalid (a new trace)."""
    parsed = _tracing_base.parse(traceparent)
    if parsed is None:
        return None
    trace_id, span_id, flags = parsed
    state = TraceState.from_header([tracestate]) if tracestate else None
    span_context = trace.SpanContext(
        int(trace_id, 16),
        int(span_id, 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(flags & 0xFF),
        trace_state=state,
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context))
