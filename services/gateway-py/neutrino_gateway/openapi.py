"""The OpenAPI 3.1 document: the fixed routes, and one operation per task with its schemas from the catalog."""

from __future__ import annotations

from typing import Any

from .catalog import Catalog

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message", "detail"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}, "detail": {}},
        }
    },
}
RUN_STATUS = {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]}


def _run_schema(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["id", "task", "status", "attempts", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "task": {"type": "string"},
            "status": RUN_STATUS,
            "result": result or {},
            "error": {"$ref": "#/components/schemas/RunError"},
            "attempts": {"type": "integer", "minimum": 0},
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": {"type": ["string", "null"], "format": "date-time"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
        },
    }


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


COMMON_ERRORS = {
    "400": _error_response("Malformed body or query parameter"),
    "401": _error_response("Missing or wrong bearer token"),
    "413": _error_response("Body over the size limit"),
}


def build(catalog: Catalog, auth: bool, max_wait_s: float) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    run_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    for name in sorted(catalog.tasks):
        info = catalog.tasks[name]
        params = dict(info.params) or {"type": "object"}
        paths[f"/v1/tasks/{name}"] = {
            "post": {
                "operationId": f"run_{name}",
                "summary": info.doc.split("\n", 1)[0] or f"Run task {name}",
                "description": info.doc or f"Run task `{name}` and wait for its result (or get a run id).",
                "tags": ["tasks"],
                "parameters": [
                    {
                        "name": "wait",
                        "in": "query",
                        "schema": {"type": "number", "minimum": 0, "maximum": max_wait_s},
                        "description": "seconds to wait for the result before answering 202 (0: do not wait)",
                    },
                    {
                        "name": "timeout",
                        "in": "query",
                        "schema": {"type": "number", "exclusiveMinimum": 0},
                        "description": "seconds each attempt may run (overrides the task's default)",
                    },
                    {
                        "name": "retries",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 100},
                        "description": "retries after a worker death, a timeout or a retryable error",
                    },
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": {"type": "string", "maxLength": 255},
                        "description": "the same key within the run TTL returns the same run; it never runs twice",
                    },
                    {
                        "name": "Prefer",
                        "in": "header",
                        "schema": {"type": "string"},
                        "description": "`respond-async`: answer 202 at once",
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": params}, "application/msgpack": {"schema": params}},
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["id", "status", "result"],
                            "properties": {
                                "id": {"type": "string"},
                                "status": {"const": "succeeded"},
                                "result": info.result or {},
                            },
                        },
                        "The run succeeded within the wait",
                    ),
                    "202": _json(
                        {"$ref": "#/components/schemas/Run"},
                        "Accepted; not finished within the wait. Poll the Location",
                        {"Location": {"schema": {"type": "string"}, "description": "/v1/runs/{id}"}},
                    ),
                    **COMMON_ERRORS,
                    "404": _error_response("Unknown task"),
                    "409": _error_response("Cancelled, or the Idempotency-Key belongs to another request"),
                    "422": _error_response("The body does not match the task's parameters"),
                    "429": _error_response("Every task pod is busy; retry after Retry-After seconds"),
                    "500": _error_response("The task failed: the remote error's type and message"),
                    "503": _error_response("No task pod is reachable"),
                },
            }
        }
    paths["/v1/tasks"] = {
        "get": {
            "operationId": "list_tasks",
            "summary": "The registered tasks with the JSON Schemas of their parameters and results",
            "tags": ["tasks"],
            "responses": {
                "200": _json(
                    {"type": "object", "required": ["tasks"], "properties": {"tasks": {"type": "array"}}}, "The tasks"
                ),
                "401": COMMON_ERRORS["401"],
            },
        }
    }
    paths["/v1/runs/{id}"] = {
        "get": {
            "operationId": "get_run",
            "summary": "A run's status, and its result or error once finished",
            "tags": ["runs"],
            "parameters": [
                run_id,
                {
                    "name": "wait",
                    "in": "query",
                    "schema": {"type": "number", "minimum": 0, "maximum": max_wait_s},
                    "description": "seconds to wait for the run to finish first",
                },
            ],
            "responses": {
                "200": _json({"$ref": "#/components/schemas/Run"}, "The run"),
                **COMMON_ERRORS,
                "404": _error_response("Unknown run"),
            },
        },
        "delete": {
            "operationId": "cancel_run",
            "summary": "Cancel a run: dropped if queued, interrupted if running",
            "tags": ["runs"],
            "parameters": [run_id],
            "responses": {
                "200": _json(
                    {"$ref": "#/components/schemas/Run"}, "The run after the cancel took effect (or it had finished)"
                ),
                "202": _json({"$ref": "#/components/schemas/Run"}, "Cancel requested; the run has not stopped yet"),
                **COMMON_ERRORS,
                "404": _error_response("Unknown run"),
            },
        },
    }
    for path, what in (("/healthz", "The gateway process is up"), ("/readyz", "At least one task pod answers")):
        paths[path] = {
            "get": {
                "operationId": path.strip("/"),
                "summary": what,
                "tags": ["operations"],
                "security": [],
                "responses": {"200": _json({"type": "object"}, what), "503": _json({"type": "object"}, "Not ready")},
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
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Neutrino gateway", "version": "1", "description": "Run Python tasks over HTTP."},
        "paths": paths,
        "components": {
            "schemas": {
                "Error": ERROR,
                "Run": _run_schema({}),
                "RunError": {
                    "type": "object",
                    "required": ["type", "message", "kind"],
                    "properties": {
                        "type": {"type": "string"},
                        "message": {"type": "string"},
                        "kind": {"type": "string"},
                        "traceback": {"type": "string"},
                    },
                },
            },
        },
    }
    if auth:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document
