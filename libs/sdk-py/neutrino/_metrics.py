"""Prometheus metrics counted in plain numbers and published when they are read, for the services'
hot paths (the gateway's and the model server's, which depend on prometheus-client: the `prometheus`
extra; nothing else in the SDK imports this module).

prometheus-client takes a lock per `inc()` and walks the bucket list in Python per `observe()`, a
few µs per request where a request makes several. A service adds to a `Counted` instead, and a
`Publisher` registered ahead of its metrics moves what was counted into them whenever the registry
is collected (a scrape): the same names, labels and values, counted once per scrape rather than
once per request.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector


class Counted:
    """What one labelled counter, histogram, or counter and histogram pair gained since the last
    `publish()`. `inc()` counts the counter only; `add(value)` observes the histogram (and counts)."""

    __slots__ = ("bounds", "buckets", "count", "counter", "histogram", "sum")

    def __init__(self, counter: Counter | None = None, histogram: Histogram | None = None) -> None:
        self.counter = counter
        self.histogram = histogram
        # The histogram's own upper bounds, +Inf last: where `Histogram.observe` would count a value.
        self.bounds: Sequence[float] = histogram._upper_bounds if histogram is not None else ()
        self.count = 0
        self.sum = 0.0
        self.buckets = [0] * len(self.bounds)

    def inc(self) -> None:
        self.count += 1

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
        if self.histogram is not None:
            total, self.sum = self.sum, 0.0
            buckets, self.buckets = self.buckets, [0] * len(self.bounds)
            # Histogram has no call that adds counts it did not observe one at a time; its values
            # are these (prometheus-client's own structure: one value per bound, then the sum).
            # Tests compare the samples with a Histogram's that observed the same values.
            self.histogram._sum.inc(total)
            for value, n in zip(self.histogram._buckets, buckets, strict=True):
                if n:
                    value.inc(n)


class Publisher(Collector):
    """Calls `publish` whenever its registry is collected; registered ahead of the metrics it fills,
    so a collection publishes before it reads them."""

    def __init__(self, publish: Callable[[], None]) -> None:
        self._publish = publish

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        self._publish()
        return []
