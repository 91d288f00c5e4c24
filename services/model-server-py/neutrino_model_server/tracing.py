"""The model server's spans, when the `OTEL_*` variables switch tracing on (`neutrino._tracing`): one
server span per inference request (child of its `traceparent` header) and one `neutrino.batch` span
per call of the model's predict, linked to every request whose inputs it carried (a batch serves
several traces at once, so it is the child of the first and a link of all). Off, each hook costs a
flag check and OpenTelemetry is not imported."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

from neutrino import _tracing

SERVICE_NAME = "neutrino-model-server"
INFERENCE_PATHS = ("/predict", "/infer")
GRPC_SERVICE = "inference.GRPCInferenceService"

_NOTHING = contextlib.nullcontext()


def setup() -> None:
    """The tracer provider, when tracing is on; TracingConfigError for variables it cannot act on."""
    _tracing.setup(SERVICE_NAME)


def middlewares() -> list[Any]:
    """The request-span middleware for the inference routes, or none when tracing is off."""
    if not _tracing.ON:
        return []
    from neutrino import _otel

    return [
        _otel.server_middleware(lambda request: request.method == "POST" and request.path.endswith(INFERENCE_PATHS))
    ]


def grpc_request(
    method: str, metadata: Sequence[tuple[str, str | bytes]] | None
) -> contextlib.AbstractContextManager[Any]:
    """The server span of one gRPC call (`inference.GRPCInferenceService/<method>`), child of the
    `traceparent` in its metadata, as the REST middleware makes for a request: it is current while the
    call runs, so the batch links it (`link()`). It gives the span, or None when tracing is off."""
    if not _tracing.ON:
        return _NOTHING
    from neutrino import _otel

    context = {key: value for key, value in metadata or () if key in ("traceparent", "tracestate")}
    traceparent, tracestate = context.get("traceparent"), context.get("tracestate")
    return _otel.server_span(  # type: ignore[no-any-return]
        f"{GRPC_SERVICE}/{method}",
        traceparent if isinstance(traceparent, str) else None,
        tracestate if isinstance(tracestate, str) else None,
        {"rpc.system": "grpc", "rpc.service": GRPC_SERVICE, "rpc.method": method},
    )


def grpc_answered(span: Any, code: int, failed: bool) -> None:
    """Record a gRPC call's status code on its span (from `grpc_request`; None when off)."""
    if span is not None:
        from neutrino import _otel

        _otel.answered(span, "rpc.grpc.status_code", code, failed)


def link() -> Any:
    """The current request's span context, kept with its queued inputs for the batch's links; None when off."""
    if not _tracing.ON:
        return None
    from neutrino import _otel

    return _otel.current_span_context()


def batch(links: Iterable[Any], size: int) -> contextlib.AbstractContextManager[Any]:
    """Around one predict call over `size` inputs queued with `links` (from `link()`)."""
    if not _tracing.ON:
        return _NOTHING
    from neutrino import _otel

    # One link per request, however many of its inputs the batch carries.
    unique = {(link.trace_id, link.span_id): link for link in links if link is not None}
    return _otel.batch_span(list(unique.values()), size)  # type: ignore[no-any-return]
