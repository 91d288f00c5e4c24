"""The gateway's Prometheus metrics (prometheus-client, default registry), served at /metrics.

Names, labels and units follow docs/metrics.md, the one vocabulary of every Neutrino service:
`task`, `model`, `pod`, `outcome` (`ok` or the error kind, as the orchestrator counts it) and
`code` (the HTTP status) mean the same wherever they appear.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from neutrino._metrics import Counted, Publisher
from prometheus_client import REGISTRY, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from .pod import Pod

# Upper bounds of every time histogram, in seconds: 1, 2.5 and 5 per decade from 1 µs to 10 s, then
# 25 and 60 s; the orchestrator and the model servers use the same ladder, so quantiles compare.
TIME_BUCKETS_S = (
    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0,
)  # fmt: skip
OK = "ok"  # the `outcome` of a run that succeeded; any other is the kind of its error


REGISTRY.register(Publisher(lambda: publish()))  # ahead of the metrics: a scrape publishes first (below)
REQUESTS = Counter("neutrino_gateway_requests_total", "HTTP requests answered", ["route", "code"])
LATENCY = Histogram(
    "neutrino_gateway_request_seconds",
    "HTTP request time, from headers read to answer",
    ["route"],
    buckets=TIME_BUCKETS_S,
)
RUNS_ACCEPTED = Counter("neutrino_gateway_runs_accepted_total", "Runs recorded and sent to a task pod", ["task"])
RUNS_REJECTED = Counter(
    "neutrino_gateway_runs_rejected_total", "Runs refused with 429 because every task pod was busy", ["task"]
)
RUNS_FINISHED = Counter(
    "neutrino_gateway_runs_finished_total",
    "Runs that reached an outcome: ok, or the kind of their error",
    ["task", "outcome"],
)
RUN_SECONDS = Histogram(
    "neutrino_gateway_run_seconds",
    "Time from accepting a run to recording its outcome",
    ["task"],
    buckets=TIME_BUCKETS_S,
)
RUNS_ACTIVE = Gauge("neutrino_gateway_runs_active", "Runs accepted and not finished")
PODS = Gauge("neutrino_gateway_task_pods", "Task pods known to the gateway, by state", ["state"])
# Model calls (models.py). `model` is a --model name, or one a replica has answered 2xx for; other
# names a caller makes up are counted as "_other", so they cannot grow the label set without bound.
MODEL_REQUESTS = Counter(
    "neutrino_gateway_model_requests_total",
    "Model calls answered, by model, route and HTTP status code",
    ["model", "route", "code"],
)
MODEL_LATENCY = Histogram(
    "neutrino_gateway_model_request_seconds",
    "Model call time through the gateway, replica tries included",
    ["model", "route"],
    buckets=TIME_BUCKETS_S,
)
MODEL_REPLICA_SKIPS = Counter(
    "neutrino_gateway_model_replica_skips_total",
    "Replicas passed over for the next one: unreachable, busy (429) or unavailable (503)",
    ["model", "reason"],
)


TASK_POD_UP = Gauge("neutrino_gateway_task_pod_up", "1 while the task pod answers pings", ["pod"])
TASK_POD_WORKERS = Gauge(
    "neutrino_gateway_task_pod_workers",
    "Workers of the task pod by state (idle, busy), from its last pong",
    ["pod", "state"],
)
TASK_POD_QUEUE_DEPTH = Gauge(
    "neutrino_gateway_task_pod_queue_depth", "Tasks waiting in the task pod, from its last pong", ["pod"]
)
TASK_POD_RUNS_IN_FLIGHT = Gauge(
    "neutrino_gateway_task_pod_runs_in_flight", "Runs sent to the task pod and not answered yet", ["pod"]
)
_PER_POD = (TASK_POD_UP, TASK_POD_WORKERS, TASK_POD_QUEUE_DEPTH, TASK_POD_RUNS_IN_FLIGHT)


def observe_pods(pods: Iterable[Pod]) -> None:
    """Set the task pod gauges from the pool, at scrape time: nothing is paid per run, and a pod that
    left the pool leaves /metrics with it."""
    up = down = 0
    for gauge in _PER_POD:
        gauge.clear()
    for pod in pods:
        up, down = (up + 1, down) if pod.up else (up, down + 1)
        TASK_POD_UP.labels(pod.address).set(1 if pod.up else 0)
        TASK_POD_WORKERS.labels(pod.address, "idle").set(pod.idle_workers)
        TASK_POD_WORKERS.labels(pod.address, "busy").set(pod.workers - pod.idle_workers)
        TASK_POD_QUEUE_DEPTH.labels(pod.address).set(pod.queue_depth)
        TASK_POD_RUNS_IN_FLIGHT.labels(pod.address).set(len(pod.in_flight))
    PODS.labels("up").set(up)
    PODS.labels("down").set(down)


# -- counted per request and per run, published at scrape time -------------------------------------
#
# Five of prometheus-client's locked updates per run; the hot path adds to plain numbers instead
# (neutrino._metrics), and `publish()` moves them into the metrics above when something reads them
# (a scrape, through the Publisher registered above; the dashboard): the same names, labels and
# values on /metrics.

_request_counts: dict[tuple[str, int], Counted] = {}
_accepted_counts: dict[str, Counted] = {}
_finished_counts: dict[tuple[str, str], Counted] = {}


def observe_request(route: str, status: int, seconds: float) -> None:
    """Count one answered request."""
    counted = _request_counts.get((route, status))
    if counted is None:
        counted = Counted(REQUESTS.labels(route, str(status)), LATENCY.labels(route))
        _request_counts[(route, status)] = counted
    counted.add(seconds)


def run_accepted(task: str) -> None:
    """Count one run accepted."""
    counted = _accepted_counts.get(task)
    if counted is None:
        counted = _accepted_counts[task] = Counted(RUNS_ACCEPTED.labels(task))
    counted.inc()


def run_finished(task: str, outcome: str, seconds: float) -> None:
    counted = _finished_counts.get((task, outcome))
    if counted is None:
        counted = Counted(RUNS_FINISHED.labels(task, outcome), RUN_SECONDS.labels(task))
        _finished_counts[(task, outcome)] = counted
    counted.add(seconds)


def publish() -> None:
    """Move what was counted since the last call into the Prometheus metrics (see above)."""
    for table in (_request_counts, _accepted_counts, _finished_counts):
        for counted in table.values():
            counted.publish()
