"""The Prometheus metrics of one model server, in a registry of its own (several servers may share a process
in tests). Queue depth and in-flight requests are read when scraped, so they cost nothing per request.
Names, labels and units follow docs/metrics.md, the vocabulary every Neutrino service shares.

Requests and batches are counted in plain Python numbers and moved into the Prometheus metrics when
/metrics is read (the gateway's metrics.py does the same): a `Histogram.observe` takes a lock per
value and walks the bounds, some 2 µs, and a request made three of them (its own time, and its
batch's size and predict time), a tenth of a no-op request's CPU on the server."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# Upper bounds of every time histogram, in seconds: 1, 2.5 and 5 per decade from 1 µs to 10 s, then
# 25 and 60 s; the orchestrator and the gateway use the same ladder, so quantiles compare.
TIME_BUCKETS_S = (
    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _Counted:
    """What one histogram (and the counter beside it, if any) gained since the last `publish()`."""

    __slots__ = ("bounds", "buckets", "count", "counter", "histogram", "sum")

    def __init__(self, histogram: Histogram, bounds: Sequence[float], counter: Counter | None = None) -> None:
        self.histogram = histogram
        self.counter = counter
        self.bounds = (*bounds, float("inf"))
        self.count = 0
        self.sum = 0.0
        self.buckets = [0] * len(self.bounds)

    def add(self, value: float) -> None:
        self.count += 1
        self.sum += value
        # The first bound at or above `value`: the bucket Histogram.observe would count it in.
        self.buckets[bisect.bisect_left(self.bounds, value)] += 1

    def publish(self) -> None:
        if not self.count:
            return
        count, self.count = self.count, 0
        if self.counter is not None:
            self.counter.inc(count)
        total, self.sum = self.sum, 0.0
        buckets, self.buckets = self.buckets, [0] * len(self.bounds)
        # Histogram has no call that adds counts it did not observe one at a time; its values are
        # these (prometheus-client's own structure: one value per bound, +Inf's included, then the sum).
        self.histogram._sum.inc(total)
        for value, n in zip(self.histogram._buckets, buckets, strict=True):
            if n:
                value.inc(n)


class _Publisher(Collector):
    """Registered ahead of the metrics, so a collection of the registry publishes before it reads them."""

    def __init__(self, publish: Callable[[], None]) -> None:
        self._publish = publish

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        self._publish()
        return []


class Metrics:
    def __init__(self, model: str, queued: Callable[[], float], in_flight: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(_Publisher(self.publish))
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
        self._requests: dict[tuple[str, int], _Counted] = {}
        self._batch_size = _Counted(batch_size, BATCH_BUCKETS)
        self._predict_seconds = _Counted(predict_seconds, TIME_BUCKETS_S)

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request (`status`: its HTTP status code, the `code` label)."""
        counted = self._requests.get((route, status))
        if counted is None:
            counter = self.requests.labels(self._model, route, str(status))
            counted = _Counted(self.latency.labels(self._model, route), TIME_BUCKETS_S, counter)
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
