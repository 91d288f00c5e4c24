"""The Prometheus metrics of one model server, in a registry of its own (several servers may share a process
in tests). Queue length and in-flight requests are read when scraped, so they cost nothing per request."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self, model: str, queued: Callable[[], float], in_flight: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "neutrino_model_requests", "HTTP requests answered", ["model", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "neutrino_model_request_seconds",
            "Request time, body read to answer",
            ["model", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "neutrino_model_batch_size", "Inputs per predict call", ["model"], buckets=BATCH_BUCKETS, registry=r
        ).labels(model)
        self.predict_seconds = Histogram(
            "neutrino_model_predict_seconds",
            "Time of one predict call (one batch)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        ).labels(model)
        queue = Gauge("neutrino_model_queue_length", "Inputs waiting for a batch", ["model"], registry=r)
        queue.labels(model).set_function(queued)
        flight = Gauge("neutrino_model_in_flight", "HTTP predict/infer requests being answered", ["model"], registry=r)
        flight.labels(model).set_function(in_flight)
        self._model = model
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        children = self._children.get((route, status))
        if children is None:
            children = (self.requests.labels(self._model, route, str(status)), self.latency.labels(self._model, route))
            self._children[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
