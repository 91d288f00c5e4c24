"""The Prometheus metrics of one model server, in a registry of its own (several servers may share a process
in tests). Queue depth and in-flight requests are read when scraped, so they cost nothing per request.
Names, labels and units follow docs/metrics.md, the vocabulary every Neutrino service shares.

Requests and batches are counted in plain Python numbers and moved into the Prometheus metrics when
/metrics is read (neutrino._metrics, as the gateway does): a `Histogram.observe` takes a lock per
value and walks the bounds, some 2 µs, and a request made three of them (its own time, and its
batch's size and predict time), a tenth of a no-op request's CPU on the server."""

from __future__ import annotations

from collections.abc import Callable

from neutrino._metrics import Counted, Publisher
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Upper bounds of every time histogram, in seconds: 1, 2.5 and 5 per decade from 1 µs to 10 s, then
# 25 and 60 s; the orchestrator and the gateway use the same ladder, so quantiles compare.
TIME_BUCKETS_S = (
    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self, model: str, queued: Callable[[], float], in_flight: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(Publisher(self.publish))  # ahead of the metrics: a scrape publishes first
        self.requests = Counter(
            "neutrino_model_requests", "Requests answered, by HTTP status code", ["model", "route", "code"], registry=r
        )
        self.latency = Histogram(
            "neutrino_model_request_seconds",
            "Request time, body read to answer",
            ["model", "route"],
            buckets=TIME_BUCKETS_S,
            registry=r,
        )
        batch_size = Histogram(
            "neutrino_model_batch_size", "Inputs per predict call", ["model"], buckets=BATCH_BUCKETS, registry=r
        ).labels(model)
        predict_seconds = Histogram(
            "neutrino_model_predict_seconds",
            "Time of one predict call (one batch)",
            ["model"],
            buckets=TIME_BUCKETS_S,
            registry=r,
        ).labels(model)
        queue = Gauge("neutrino_model_queue_depth", "Inputs waiting for a batch", ["model"], registry=r)
        queue.labels(model).set_function(queued)
        flight = Gauge(
            "neutrino_model_requests_in_flight", "Predict/infer requests being answered", ["model"], registry=r
        )
        flight.labels(model).set_function(in_flight)
        self._model = model
        self._requests: dict[tuple[str, int], Counted] = {}
        self._batch_size = Counted(histogram=batch_size)
        self._predict_seconds = Counted(histogram=predict_seconds)

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request (`status`: its HTTP status code, the `code` label)."""
        counted = self._requests.get((route, status))
        if counted is None:
            counter = self.requests.labels(self._model, route, str(status))
            counted = Counted(counter, self.latency.labels(self._model, route))
            self._requests[(route, status)] = counted
        counted.add(seconds)

    def batch(self, size: int, seconds: float) -> None:
        """Count one predict call over `size` inputs that took `seconds`."""
        self._batch_size.add(size)
        self._predict_seconds.add(seconds)

    def publish(self) -> None:
        """Move what was counted since the last call into the Prometheus metrics (see above)."""
        for counted in (*self._requests.values(), self._batch_size, self._predict_seconds):
            counted.publish()

    def render(self) -> bytes:
        return generate_latest(self.registry)
