"""The operations routes of the OpenAPI document: GET /v1/status (what the /dashboard page polls and
`neutrino status` prints), the health checks and /metrics."""

from __future__ import annotations

from typing import Any

from .openapi_common import UNAUTHORIZED, json_response


def status_path() -> dict[str, Any]:
    """GET /v1/status: task pods and their workers, queue depth, runs per second, model replicas."""
    count = {"type": "integer", "minimum": 0}
    rate = {"type": ["number", "null"], "minimum": 0}
    pod = {
        "type": "object",
        "required": ["address", "state", "workers", "queue_depth", "runs_in_flight", "last_pong_s_ago"],
        "properties": {
            "address": {"type": "string"},
            "state": {"type": "string", "enum": ["up", "draining", "down", "refused"]},
            "workers": {
                "type": "object",
                "required": ["busy", "idle"],
                "properties": {"busy": count, "idle": count},
                "description": "from the pod's last Pong; 0 while it is not answering",
            },
            "queue_depth": count,
            "runs_in_flight": {**count, "description": "runs this gateway sent there, not answered yet"},
            "last_pong_s_ago": {"type": ["number", "null"], "minimum": 0},
        },
    }
    replica = {
        "type": "object",
        "required": ["url", "up"],
        "description": "numbers from the replica's /metrics; `error` instead when it could not be read",
        "properties": {
            "url": {"type": "string"},
            "up": {"type": "boolean"},
            "error": {"type": "string"},
            "requests": count,
            "requests_per_s": rate,
            "batches": count,
            "batches_per_s": rate,
            "mean_batch_size": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "over the rate window when batches ran in it, else since the replica started",
            },
            "batch_sizes": {
                "type": "array",
                "description": "batches since the replica started, per size range (above the previous "
                "`up_to`, at most this one; null: above the largest)",
                "items": {
                    "type": "object",
                    "required": ["up_to", "batches"],
                    "properties": {"up_to": {"type": ["integer", "null"], "minimum": 0}, "batches": count},
                },
            },
            "queue_depth": count,
            "requests_in_flight": count,
        },
    }
    status = {
        "type": "object",
        "required": ["time", "window_s", "task_pods", "totals", "runs", "models"],
        "properties": {
            "time": {"type": "string", "format": "date-time"},
            "window_s": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "the seconds the rates span (up to 10); null on the first look, with no rates yet",
            },
            "task_pods": {"type": "array", "items": pod},
            "totals": {
                "type": "object",
                "required": ["task_pods", "task_pods_up", "workers_busy", "workers_idle", "queue_depth"],
                "properties": {
                    "task_pods": count,
                    "task_pods_up": count,
                    "workers_busy": count,
                    "workers_idle": count,
                    "queue_depth": count,
                },
            },
            "runs": {
                "type": "object",
                "required": ["queued", "running", "finished", "per_second"],
                "properties": {
                    "queued": {**count, "description": "runs waiting in the gateway for a task pod"},
                    "running": {**count, "description": "runs a task pod has (running or in its queue)"},
                    "finished": {
                        "type": "object",
                        "additionalProperties": count,
                        "description": "runs finished since the gateway started, by outcome: `ok` or the error kind",
                    },
                    "per_second": {"type": "object", "additionalProperties": rate},
                },
            },
            "models": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "replicas"],
                    "properties": {"name": {"type": "string"}, "replicas": {"type": "array", "items": replica}},
                },
            },
        },
    }
    return {
        "get": {
            "operationId": "status",
            "summary": "Task pods and their workers, queue depth, runs per second by outcome, model replicas",
            "description": "What the /dashboard page shows and `neutrino status` prints. Rates are over the "
            "samples taken when this was asked for in the last 10 s (one a second at most).",
            "tags": ["operations"],
            "responses": {"200": json_response(status, "The numbers now"), **UNAUTHORIZED},
        }
    }


def health_paths() -> dict[str, Any]:
    """GET /healthz, /readyz and /metrics: open to all (no token), for probes and Prometheus."""
    paths: dict[str, Any] = {}
    for path, what in (("/healthz", "The gateway process is up"), ("/readyz", "At least one task pod answers")):
        paths[path] = {
            "get": {
                "operationId": path.strip("/"),
                "summary": what,
                "tags": ["operations"],
                "security": [],
                "responses": {
                    "200": json_response({"type": "object"}, what),
                    "503": json_response({"type": "object"}, "Not ready"),
                },
            }
        }
    paths["/metrics"] = {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "tags": ["operations"],
            "security": [],
            "responses": {
                "200": {
                    "description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    return paths
