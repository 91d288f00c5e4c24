"""Dispatch with tracing off and on (issue 13: off under 2% of p50 and throughput, on under 10%),
beside the same orchestrator without any `OTEL_*` variable, in the same alternating rounds.

- `plain`: no `OTEL_*` variable anywhere;
- `off`: the variables a deployment might leave set (an OTLP endpoint) with `OTEL_TRACES_EXPORTER=none`:
  tracing stays off, and no worker imports OpenTelemetry;
- `on`: `OTEL_TRACES_EXPORTER=otlp` to an OTLP/HTTP sink (its own process), `OTEL_TRACES_SAMPLER=always_on`,
  and every call made inside a sampled span, so each SubmitTask carries a `traceparent` and each
  run is a span the worker exports.

What tracing off adds per task to code that had none is also timed directly: the client's one check
for a span to send (`neutrino._tracing.outgoing`, in ns), beside the p50 it is part of. The workers
pay nothing per task when off (the run function is not wrapped).

The floor of `on`: the CPU time the OpenTelemetry Python SDK alone takes per span in this process
(start and end a span like the worker's, batch it, encode and export it over OTLP/HTTP to the same
sink), and the throughput loss that much CPU per task would cost plain Neutrino on this machine's
cores: what no change to Neutrino can win back while every task is a span.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import time
import timeit
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _procs import Processes, log
from _systems import System, neutrino_system

Measure = Callable[[list[System]], dict[str, dict[str, Any]]]
TARGETS_PCT = {"off": 2.0, "on": 10.0}
# `on` exports every 200 ms (the SDK's default is 5 s): its exports then fall in its own rounds more
# than in plain's.
EXPORT_DELAY_MS = 200
CALLER_TRACEPARENT = (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7)


class Sink:
    """An OTLP/HTTP endpoint in its own process (its parsing must not take this client's GIL) that
    answers 200 to every export; `stats()` says how many exports and bytes it took."""

    def __init__(self, procs: Processes) -> None:
        self.proc = procs.spawn([sys.executable, __file__], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("http://"):
            raise RuntimeError(f"the OTLP sink did not start: {line!r}")
        self.endpoint = line
        self._procs = procs

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(self.endpoint + "/stats", timeout=10) as reply:
            stats: dict[str, int] = json.loads(reply.read())
        return stats

    def close(self) -> None:
        self._procs.stop(self.proc)


def serve_sink() -> None:
    """The sink's process: print the endpoint, then serve until stopped."""
    counts = {"requests": 0, "bytes": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            counts["requests"] += 1
            counts["bytes"] += len(body)
            self._answer(b"", "application/x-protobuf")

        def do_GET(self) -> None:
            self._answer(json.dumps(counts).encode(), "application/json")

        def _answer(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}, **extra}


def _in_span(system: System) -> System:
    """`system` with each call and burst made inside a sampled span (a caller that traces)."""
    from opentelemetry import trace

    caller = trace.NonRecordingSpan(
        trace.SpanContext(*CALLER_TRACEPARENT, is_remote=False, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    )

    def call(*args: Any) -> Any:
        with trace.use_span(caller):
            return system.call(*args)

    def burst(count: int) -> dict[str, Any]:
        with trace.use_span(caller):
            return system.burst(count)

    return System(system.name, call, burst, system.info, server_cpu_s=system.server_cpu_s)


def off_hook_ns() -> float:
    """ns per task of the client's check for a span to send, with tracing off and no OpenTelemetry
    imported (as in a client that does not trace): what tracing off costs a task."""
    from neutrino import _tracing

    if _tracing.ON or "opentelemetry.trace" in sys.modules:
        return float("nan")  # measured before anything here imports OpenTelemetry
    number = 200_000
    return min(timeit.repeat(_tracing.outgoing, number=number, repeat=5)) / number * 1e9


def sdk_floor_us(endpoint: str, spans: int = 5000, repeat: int = 3) -> float:
    """CPU µs per span (all threads of this process, the export thread's included) of a bare SDK
    span with the worker's kind and attributes under a remote sampled parent, through a
    BatchSpanProcessor and the OTLP/HTTP exporter to `endpoint`: the best of `repeat` runs."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    parent = trace.set_span_in_context(
        trace.NonRecordingSpan(
            trace.SpanContext(
                *CALLER_TRACEPARENT, is_remote=True, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED)
            )
        )
    )
    attributes = {"neutrino.task": "noop", "neutrino.task_id": 1, "neutrino.attempt": 1}
    best = float("inf")
    for _ in range(repeat):
        provider = TracerProvider()
        exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=spans))  # none dropped
        tracer = provider.get_tracer("neutrino")
        started = time.process_time()
        for _ in range(spans):
            tracer.start_span(
                "neutrino.run noop", context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
            ).end()
        provider.force_flush()
        best = min(best, time.process_time() - started)
        provider.shutdown()
    return best / spans * 1e6


def _floor_cost(floor_us: float, plain: dict[str, Any]) -> float | None:
    """Throughput lost, in % of plain's, if each task took `floor_us` more CPU on a machine whose
    cores plain keeps busy: plain spends cores/rate CPU-seconds per task, `on` that plus the floor."""
    if "tasks_per_s" not in plain:
        return None
    plain_cpu_us = (os.cpu_count() or 1) / plain["tasks_per_s"] * 1e6
    return round(floor_us / (plain_cpu_us + floor_us) * 100, 1)


def _beyond_floor(floor_us: float, plain: dict[str, Any], on: dict[str, Any]) -> dict[str, Any]:
    """What tracing on costs per task beyond the SDK's own span (the floor): Neutrino's share of the
    cost, in CPU µs per task and in % of plain's CPU per task."""
    if not (plain.get("cpu_us_per_task") and on.get("cpu_us_per_task")):
        return {}
    beyond = on["cpu_us_per_task"] - plain["cpu_us_per_task"] - floor_us
    return {
        "on_beyond_sdk_floor_cpu_us_per_task": round(beyond, 2),
        "on_beyond_sdk_floor_cpu_pct": round(beyond / plain["cpu_us_per_task"] * 100, 2),
    }


def _figures(half: dict[str, Any]) -> dict[str, Any]:
    if "noop_us" not in half or "throughput" not in half:
        return {"error": half.get("error", "not measured")}
    return {
        "noop_p50_us": half["noop_us"]["p50"],
        "noop_p99_us": half["noop_us"]["p99"],
        "tasks_per_s": half["throughput"]["tasks_per_s"],
        "cpu_us_per_task": half["throughput"].get("cpu_us_per_task"),
        "all_replied_once": half["throughput"]["all_replied_once"],
    }


def _cost(plain: dict[str, Any], other: dict[str, Any], target_pct: float) -> dict[str, Any]:
    """How much slower `other` is than `plain`, in % of plain's p50 and throughput."""
    if "error" in plain or "error" in other:
        return {"error": "not measured"}
    p50 = round((other["noop_p50_us"] / plain["noop_p50_us"] - 1) * 100, 2)
    rate = round((1 - other["tasks_per_s"] / plain["tasks_per_s"]) * 100, 2)
    cost = {"p50_pct": p50, "throughput_pct": rate, "target_pct": target_pct, "within": max(p50, rate) < target_pct}
    if plain.get("cpu_us_per_task") and other.get("cpu_us_per_task"):
        # CPU per task (client + orchestrator + workers): what the rates mean on a busy machine,
        # measured with less noise than they are.
        cost["cpu_us_per_task_added"] = round(other["cpu_us_per_task"] - plain["cpu_us_per_task"], 2)
        cost["cpu_pct"] = round((other["cpu_us_per_task"] / plain["cpu_us_per_task"] - 1) * 100, 2)
    return cost


def section(procs: Processes, orch_args: dict[str, Any], workdir: Path, measure: Measure) -> dict[str, Any]:
    """Plain beside off, then the same plain beside on, each pair measured in alternating rounds.

    Two pairs, not three systems at once: `on` leaves work behind its rounds (spans exported after
    the replies, the sink parsing them) that would land on whichever system runs next, and it
    imports OpenTelemetry into this client process. Plain and off are measured before either."""
    hook_ns = off_hook_ns()
    sink = Sink(procs)
    on_env = _env(
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_BSP_SCHEDULE_DELAY": str(EXPORT_DELAY_MS),
        }
    )
    off_env = _env({"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_TRACES_EXPORTER": "none"})

    def start(stack: contextlib.ExitStack, name: str, env: dict[str, str]) -> System:
        args = {**orch_args, "env": env, "log_path": workdir / f"orchestrator-tracing-{name}.log"}
        return stack.enter_context(neutrino_system(procs, args, name))

    try:
        with contextlib.ExitStack() as stack:
            plain = start(stack, "plain", _env({}))
            with contextlib.ExitStack() as off_stack:
                off = start(off_stack, "off", off_env)
                log("tracing: plain and off in alternating rounds")
                beside_off = measure([plain, off])
            on = _in_span(start(stack, "on", on_env))
            log("tracing: plain and on (every task sampled) in alternating rounds")
            beside_on = measure([plain, on])
        exported = sink.stats()
        floor_us = sdk_floor_us(sink.endpoint)
    finally:
        sink.close()
    plain_off, off_figures = _figures(beside_off.get("plain", {})), _figures(beside_off.get("off", {}))
    plain_on, on_figures = _figures(beside_on.get("plain", {})), _figures(beside_on.get("on", {}))
    p50_ns = plain_off.get("noop_p50_us", 0) * 1000
    return {
        "setup": __doc__.split("\n\n")[1].strip() if __doc__ else "",
        "plain_beside_off": plain_off,
        "off": off_figures,
        "plain_beside_on": plain_on,
        "on": on_figures,
        "off_vs_plain": _cost(plain_off, off_figures, TARGETS_PCT["off"]),
        "on_vs_plain": _cost(plain_on, on_figures, TARGETS_PCT["on"]),
        "off_client_check_ns_per_task": round(hook_ns, 1),
        "off_client_check_pct_of_p50": round(hook_ns / p50_ns * 100, 4) if p50_ns else None,
        "on_sdk_floor_cpu_us_per_span": round(floor_us, 1),
        "on_sdk_floor_throughput_pct": _floor_cost(floor_us, plain_on),
        **_beyond_floor(floor_us, plain_on, on_figures),
        "on_export_delay_ms": EXPORT_DELAY_MS,
        "otlp_exports_received": exported["requests"],
        "otlp_bytes_received": exported["bytes"],
    }


if __name__ == "__main__":
    serve_sink()
