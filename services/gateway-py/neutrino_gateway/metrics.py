"""The gateway's Prometheus metrics (prometheus-client, default registry), served at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
REQUESTS = Counter("neutrino_gateway_requests_total", "HTTP requests answered", ["route", "status"])
LATENCY = Histogram(
    "neutrino_gateway_request_seconds",
    "HTTP request time, from headers read to answer",
    ["route"],
    buckets=BUCKETS_S,
)
RUNS_ACCEPTED = Counter("neutrino_gateway_runs_accepted_total", "Runs recorded and sent to a task pod")
RUNS_REJECTED = Counter("neutrino_gateway_runs_rejected_total", "Runs refused with 429 because every task pod was busy")
RUNS_FINISHED = Counter("neutrino_gateway_runs_finished_total", "Runs that reached an outcome", ["status"])
RUNS_ACTIVE = Gauge("neutrino_gateway_runs_active", "Runs accepted and not finished")
PODS = Gauge("neutrino_gateway_task_pods", "Task pods known to the gateway, by state", ["state"])
# Model calls (models.py). `model` is a --model name, or one a replica has answered 2xx for; other
# names a caller makes up are counted as "_other", so they cannot grow the label set without bound.
MODEL_REQUESTS = Counter(
    "neutrino_gateway_model_requests_total",
    "Model calls answered, by model, route and status",
    ["model", "route", "status"],
)
MODEL_LATENCY = Histogram(
    "neutrino_gateway_model_request_seconds",
    "Model call time through the gateway, replica tries included",
    ["model", "route"],
    buckets=BUCKETS_S,
)
MODEL_REPLICA_SKIPS = Counter(
    "neutrino_gateway_model_replica_skips_total",
    "Replicas passed over for the next one: unreachable, busy (429) or unavailable (503)",
    ["model", "reason"],
)


_request_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}


def observe_request(route: str, status: int, seconds: float) -> None:
    """Count one answered request; the labelled children are looked up once per (route, status)."""
    children = _request_children.get((route, status))
    if children is None:
        children = (REQUESTS.labels(route, str(status)), LATENCY.labels(route))
        _request_children[(route, status)] = children
    children[0].inc()
    children[1].observe(seconds)
