"""The task and run routes of the OpenAPI document: one operation per task with its schemas from the
catalog, the run routes, and the limits on their parameters that api.py checks."""

from __future__ import annotations

from typing import Any

from .catalog import Catalog
from .openapi_common import COMMON_ERRORS, UNAUTHORIZED, error_response, json_response

# Idempotency-Key: 1 to 255 printable ASCII characters, none of them whitespace at either end (HTTP
# trims a header value's ends, RFC 9110 §5.5). api.py checks the key against this very pattern.
IDEMPOTENCY_KEY_MAX_LENGTH = 255
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"
IDEMPOTENCY_KEY = {
    "type": "string",
    "minLength": 1,
    "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH,
    "pattern": IDEMPOTENCY_KEY_PATTERN,
}
MAX_RETRIES = 100
# A task pod holds an attempt at most a day (the orchestrator clamps a longer `timeout_s`,
# scheduler/policy.rs): the gateway refuses more rather than let a longer timeout quietly shrink.
MAX_TIMEOUT_S = 86_400.0
RUN_STATUS = {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]}
RECENT_RUNS = 50  # GET /v1/runs without ?limit=
MAX_RECENT_RUNS = 500
RUN_ERROR = {
    "type": "object",
    "required": ["type", "message", "kind"],
    "properties": {
        "type": {"type": "string"},
        "message": {"type": "string"},
        "kind": {"type": "string"},
        "traceback": {"type": "string"},
    },
}


def run_schema(result: dict[str, Any]) -> dict[str, Any]:
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
            "trace_id": {
                "type": ["string", "null"],
                "pattern": "^[0-9a-f]{32}$",
                "description": "The W3C trace the run belongs to: the request's traceparent, or a new one",
            },
        },
    }


def task_paths(catalog: Catalog, max_wait_s: float) -> dict[str, Any]:
    """POST /v1/tasks/{name} for each task in the catalog, and GET /v1/tasks."""
    paths: dict[str, Any] = {}
    for name in sorted(catalog.tasks):
        info = catalog.tasks[name]
        params = dict(info.body) or {"type": "object"}
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
                        "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT_S},
                        "description": "seconds each attempt may run (overrides the task's default; at most a day)",
                    },
                    {
                        "name": "retries",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_RETRIES},
                        "description": "retries after a worker death, a timeout or a retryable error",
                    },
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": IDEMPOTENCY_KEY,
                        "description": "the same key within the run TTL returns the same run; it never runs twice "
                        "(1 to 255 printable ASCII characters, no space at either end)",
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
                    "200": json_response(
                        {
                            "type": "object",
                            "required": ["id", "status", "result"],
                            "properties": {
                                "id": {"type": "string"},
                                "status": {"const": "succeeded"},
                                "result": info.result_body or {},
                            },
                        },
                        "The run succeeded within the wait",
                    ),
                    "202": json_response(
                        {"$ref": "#/components/schemas/Run"},
                        "Accepted; not finished within the wait. Poll the Location",
                        {"Location": {"schema": {"type": "string"}, "description": "/v1/runs/{id}"}},
                    ),
                    **COMMON_ERRORS,
                    "408": error_response("The body did not arrive within --body-timeout"),
                    "413": error_response(
                        "Body over --max-body-bytes, or the arguments over the task pod's --max-message-bytes"
                    ),
                    "403": error_response("A POST from a browser page on another origin"),
                    "404": error_response("Unknown task"),
                    "415": error_response("A body that is neither JSON nor msgpack"),
                    "409": error_response("Cancelled, or the Idempotency-Key belongs to another request"),
                    "422": error_response(
                        "The body does not match the task's parameters, or a query parameter or the "
                        "Idempotency-Key header is outside its schema"
                    ),
                    "429": error_response("Every task pod is busy; retry after Retry-After seconds"),
                    "500": error_response("The task failed: the remote error's type and message"),
                    "503": error_response(
                        "No task pod is reachable, or the run store cannot be written (`store_unavailable`: "
                        "nothing was accepted); retry after Retry-After seconds"
                    ),
                },
            }
        }
    paths["/v1/tasks"] = {
        "get": {
            "operationId": "list_tasks",
            "summary": "The registered tasks with the JSON Schemas of their parameters and results",
            "tags": ["tasks"],
            "responses": {
                "200": json_response(
                    {"type": "object", "required": ["tasks"], "properties": {"tasks": {"type": "array"}}}, "The tasks"
                ),
                "401": COMMON_ERRORS["401"],
            },
        }
    }
    return paths


def run_paths(max_wait_s: float) -> dict[str, Any]:
    """GET and DELETE /v1/runs/{id}, and POST /v1/runs/{id}/cancel."""
    paths: dict[str, Any] = {}
    run_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
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
                "200": json_response({"$ref": "#/components/schemas/Run"}, "The run"),
                **UNAUTHORIZED,
                "404": error_response("Unknown run (never created, expired, or deleted)"),
                "422": error_response("`wait` is not a finite number from 0 to the gateway's --max-wait"),
                "503": error_response("The run store cannot be read (`store_unavailable`)"),
            },
        },
        "delete": {
            "operationId": "delete_run",
            "summary": "Remove a finished run's record",
            "description": "After it, GET answers 404 and the run's Idempotency-Key is free again. A run "
            "still queued or running is not removed (409 `run_not_finished`): cancel it first with "
            "`POST /v1/runs/{id}/cancel`.",
            "tags": ["runs"],
            "parameters": [run_id],
            "responses": {
                "204": {"description": "Removed"},
                **UNAUTHORIZED,
                "404": error_response("Unknown run (never created, expired, or deleted)"),
                "409": error_response("`run_not_finished`: the run is queued or running; cancel it first"),
                "503": error_response(
                    "The run store cannot be written now (`store_unavailable`); the removal is written once it can be"
                ),
            },
        },
    }
    paths["/v1/runs/{id}/cancel"] = {
        "post": {
            "operationId": "cancel_run",
            "summary": "Cancel a run: dropped if queued, interrupted if running",
            "description": "An action on the run, not a removal: the run and its record stay (`cancelled`, "
            "or the outcome it reached first). Asking again changes nothing. No body is read.",
            "tags": ["runs"],
            "parameters": [run_id],
            "responses": {
                "200": json_response(
                    {"$ref": "#/components/schemas/Run"}, "The run after the cancel took effect (or it had finished)"
                ),
                "202": json_response(
                    {"$ref": "#/components/schemas/Run"}, "Cancel requested; the run has not stopped yet"
                ),
                **UNAUTHORIZED,
                "403": error_response("A POST from a browser page on another origin"),
                "404": error_response("Unknown run (never created, expired, or deleted)"),
                "408": error_response("A body (ignored) did not arrive within --body-timeout"),
                "413": error_response("A body (ignored) over --max-body-bytes"),
                "503": error_response("The run store cannot be written (`store_unavailable`)"),
            },
        }
    }
    return paths


def list_runs_path() -> dict[str, Any]:
    """GET /v1/runs: the runs the /dashboard page lists."""
    return {
        "get": {
            "operationId": "list_runs",
            "summary": "The runs created last, newest first, without their results",
            "tags": ["runs"],
            "parameters": [
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_RECENT_RUNS},
                    "description": f"how many runs (default {RECENT_RUNS})",
                }
            ],
            "responses": {
                "200": json_response(
                    {
                        "type": "object",
                        "required": ["runs"],
                        "properties": {"runs": {"type": "array", "items": {"$ref": "#/components/schemas/Run"}}},
                    },
                    "The runs; `GET /v1/runs/{id}` has one with its result",
                ),
                **UNAUTHORIZED,
                "422": error_response(f"`limit` is not an integer from 1 to {MAX_RECENT_RUNS}"),
                "503": error_response("The run store cannot be read (`store_unavailable`)"),
            },
        }
    }
