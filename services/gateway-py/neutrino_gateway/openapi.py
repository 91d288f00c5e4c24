"""The OpenAPI 3.1 document: its routes gathered from the modules that describe them (tasks and runs,
models, operations), its components and its security. The limits api.py checks are named here too.

# Layout

- `openapi_common`: the gateway's Error schema and the responses built on it
- `openapi_runs`: one operation per task with its schemas from the catalog, the run routes, their limits
- `openapi_models`: /v1/models/{name}/predict and the Open Inference Protocol (V2) routes
- `openapi_operations`: /v1/status, /healthz, /readyz, /metrics
"""

from __future__ import annotations

from typing import Any

from . import openapi_models, openapi_operations, openapi_runs
from .catalog import Catalog
from .openapi_common import ERROR
from .openapi_runs import (
    IDEMPOTENCY_KEY_MAX_LENGTH,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_RECENT_RUNS,
    MAX_RETRIES,
    MAX_TIMEOUT_S,
    RECENT_RUNS,
)

__all__ = [
    "IDEMPOTENCY_KEY_MAX_LENGTH",
    "IDEMPOTENCY_KEY_PATTERN",
    "MAX_RECENT_RUNS",
    "MAX_RETRIES",
    "MAX_TIMEOUT_S",
    "RECENT_RUNS",
    "build",
]


def build(catalog: Catalog, auth: bool, max_wait_s: float) -> dict[str, Any]:
    # The paths in the order the document has always listed them, so that a diff of /openapi.json
    # between two gateways shows only what changed.
    paths: dict[str, Any] = openapi_runs.task_paths(catalog, max_wait_s)
    paths.update(openapi_runs.run_paths(max_wait_s))
    paths.update(openapi_models.model_paths())
    paths["/v1/status"] = openapi_operations.status_path()
    paths["/v1/runs"] = openapi_runs.list_runs_path()
    paths.update(openapi_operations.health_paths())
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Neutrino gateway",
            "version": "1",
            "description": "Run Python tasks over HTTP. Any request may also be answered 503 "
            "`too_many_connections` (with Retry-After) when the gateway already holds --max-connections connections.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": ERROR,
                "ModelError": openapi_models.V1_MODEL_ERROR,
                "V2Error": openapi_models.V2_ERROR,
                "Run": openapi_runs.run_schema({}),
                "RunError": openapi_runs.RUN_ERROR,
            },
        },
    }
    for name in sorted(catalog.tasks):
        document["components"]["schemas"].update(catalog.tasks[name].components)
    if auth:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document
