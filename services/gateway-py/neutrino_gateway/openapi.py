"""The OpenAPI 3.1 document: the fixed routes, the model routes, and one operation per task with its schemas
from the catalog."""

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
            "trace_id": {
                "type": ["string", "null"],
                "pattern": "^[0-9a-f]{32}$",
                "description": "The W3C trace the run belongs to: the request's traceparent, or a new one",
            },
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


# What any POST that reads a body may answer; operations add their own. A GET or DELETE reads no
# body, so it declares only 401 of these.
COMMON_ERRORS = {
    "400": _error_response("Malformed body or query parameter"),
    "401": _error_response("Missing or wrong bearer token"),
    "413": _error_response("Body over the size limit"),
}
UNAUTHORIZED = {"401": COMMON_ERRORS["401"]}


# The model routes answer with the replica's own body, whose error shapes are the model server's:
# `{"error": {"type", "message"}}` on /v1, `{"error": "<message>"}` on /v2 (the protocol's). The
# gateway's own refusals (401, 404 unknown model or version, 429 all busy, 503 none reachable, 504
# none answered in time) are its Error on /v1, and the protocol's shape on /v2, as V2 clients expect.
MODEL_NAME_PARAM = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"},
    "description": "the model's name in the app (`@app.model(name=...)`)",
}
MODEL_VERSION_PARAM = {
    "name": "version",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"},
    "description": "the model's version (a Neutrino model server serves version `1`)",
}
# The binary tensor data extension (tritonclient's default): the JSON request or answer, this many
# bytes long, then the tensors' raw bytes, in one application/octet-stream body.
BINARY_HEADER = "Inference-Header-Content-Length"
BINARY_BODY = {"schema": {"type": "string", "format": "binary"}}
V1_MODEL_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}, "traceback": {"type": "string"}},
        }
    },
}
V2_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def _either(description: str, replica_error: str) -> dict[str, Any]:
    """An error status that the gateway or the replica may answer, each in its own shape (the same under /v2)."""
    if replica_error == "V2Error":
        return _replica(description, replica_error)
    schema = {"anyOf": [{"$ref": "#/components/schemas/Error"}, {"$ref": f"#/components/schemas/{replica_error}"}]}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _gateway(description: str, replica_error: str) -> dict[str, Any]:
    """An error status only the gateway answers: its Error, or the protocol's shape under /v2."""
    return _replica(description, "V2Error" if replica_error == "V2Error" else "Error")


def _model_call_errors(replica_error: str) -> dict[str, Any]:
    return {
        "400": _replica("The body is not one the model server can read", replica_error),
        "401": _gateway("Missing or wrong bearer token", replica_error),
        "403": _gateway("A POST from a browser page on another origin", replica_error),
        "404": _either("Unknown model: no replicas configured, or the replica serves another model", replica_error),
        "408": _either(
            "The body did not arrive within the gateway's or the model server's --body-timeout", replica_error
        ),
        "413": _either("Body over the gateway's or the model server's size limit", replica_error),
        "422": _replica("The model refused the input (its validate())", replica_error),
        "429": _either("Every replica is busy; retry after Retry-After seconds", replica_error),
        "500": _replica("The model's predict raised", replica_error),
        "503": _either("No replica took the request (none reachable, or all loading)", replica_error),
        "504": _either(
            "No replica answered within the gateway's --model-attempt-timeout, or past its or the model server's "
            "deadline",
            replica_error,
        ),
    }


def _replica(description: str, replica_error: str) -> dict[str, Any]:
    """An error status only the replica answers, in its shape."""
    schema = {"$ref": f"#/components/schemas/{replica_error}"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _model_paths() -> dict[str, Any]:
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": {"type": "string"},
            "data": {"type": "array"},
        },
    }
    tensor_meta = {"type": "object", "properties": {"name": {"type": "string"}, "datatype": {"type": "string"}}}
    predict_in = {"type": "object", "required": ["inputs"], "properties": {"inputs": {}}}
    predict_out = {"type": "object", "required": ["outputs"], "properties": {"outputs": {}}}
    infer_in = {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "minItems": 1, "items": tensor},
            "outputs": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
        },
    }
    infer_out = {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": tensor},
        },
    }
    ready = {
        "200": _json(
            {"type": "object", "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}}},
            "A replica is ready",
        ),
        "400": _json({"type": "object"}, "No replica is ready (the protocol's 4xx for false)"),
    }
    binary_length = {
        BINARY_HEADER: {
            "description": "Binary tensor extension: the length of the JSON part at the body's start",
            "schema": {"type": "integer", "minimum": 0},
        }
    }
    lookup_errors = {
        "401": _gateway("Missing or wrong bearer token", "V2Error"),
        "404": _either("Unknown model or version", "V2Error"),
        "503": _gateway("No replica reachable", "V2Error"),
        "504": _gateway(
            "No replica answered within --model-attempt-timeout, or past the gateway's deadline", "V2Error"
        ),
    }
    metadata = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": tensor_meta},
            "outputs": {"type": "array", "items": tensor_meta},
        },
    }
    paths: dict[str, Any] = {
        "/v1/models/{name}/predict": {
            "post": {
                "operationId": "model_predict",
                "summary": "One input through a model's replicas",
                "description": 'The body `{"inputs": x}` and its Content-Type go to a replica as they are; '
                "its answer comes back as it is.",
                "tags": ["models"],
                "parameters": [MODEL_NAME_PARAM],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": predict_in},
                        "application/msgpack": {"schema": predict_in},
                    },
                },
                "responses": {
                    "200": {
                        "description": "The model's output",
                        "content": {
                            "application/json": {"schema": predict_out},
                            "application/msgpack": {"schema": predict_out},
                        },
                    },
                    **_model_call_errors("ModelError"),
                },
            }
        },
    }
    for base, params, suffix, which in (
        ("/v2/models/{name}", [MODEL_NAME_PARAM], "", "a model"),
        ("/v2/models/{name}/versions/{version}", [MODEL_NAME_PARAM, MODEL_VERSION_PARAM], "_version", "one version"),
    ):
        paths[base] = {
            "get": {
                "operationId": f"model_metadata{suffix}",
                "summary": f"The metadata of {which} (Open Inference Protocol)",
                "tags": ["models"],
                "parameters": params,
                "responses": {"200": _json(metadata, "The model's metadata"), **lookup_errors},
            }
        }
        paths[base + "/ready"] = {
            "get": {
                "operationId": f"model_ready{suffix}",
                "summary": f"200 when one of the replicas of {which} is ready, 400 when none is",
                "tags": ["models"],
                "parameters": params,
                "responses": {**ready, **lookup_errors},
            }
        }
        paths[base + "/infer"] = {
            "post": {
                "operationId": f"model_infer{suffix}",
                "summary": f"A batch of rows as V2 tensors through the replicas of {which}",
                "description": "JSON, or the binary tensor data extension (application/octet-stream with "
                f"{BINARY_HEADER}); the body and that header go to a replica as they are, and its answer "
                "comes back as it is.",
                "tags": ["models"],
                "parameters": [
                    *params,
                    {"name": BINARY_HEADER, "in": "header", "required": False, **binary_length[BINARY_HEADER]},
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": infer_in}, "application/octet-stream": BINARY_BODY},
                },
                "responses": {
                    "200": {
                        "description": "The outputs: JSON, or binary when the request asked for binary outputs",
                        "headers": binary_length,
                        "content": {"application/json": {"schema": infer_out}, "application/octet-stream": BINARY_BODY},
                    },
                    **_model_call_errors("V2Error"),
                },
            }
        }
    health = {"type": "object", "properties": {"ready": {"type": "boolean"}, "models": {"type": "object"}}}
    paths["/v2/health/live"] = {
        "get": {
            "operationId": "v2_live",
            "summary": "The gateway answers (Open Inference Protocol server liveness)",
            "tags": ["models"],
            "responses": {
                "200": _json({"type": "object", "properties": {"live": {"type": "boolean"}}}, "Live"),
                "401": lookup_errors["401"],
            },
        }
    }
    paths["/v2/health/ready"] = {
        "get": {
            "operationId": "v2_ready",
            "summary": "200 when each model named by --model has a ready replica, 400 when one has none",
            "description": "`models` maps each of those names to whether it has a ready replica.",
            "tags": ["models"],
            "responses": {
                "200": _json(health, "Ready"),
                "400": _json(health, "A model has no ready replica (the protocol's 4xx for false)"),
                "401": lookup_errors["401"],
            },
        }
    }
    return paths


def _dashboard_paths() -> dict[str, Any]:
    """GET /v1/status and GET /v1/runs: what the /dashboard page polls and `neutrino status` prints."""
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
        "/v1/status": {
            "get": {
                "operationId": "status",
                "summary": "Task pods and their workers, queue depth, runs per second by outcome, model replicas",
                "description": "What the /dashboard page shows and `neutrino status` prints. Rates are over the "
                "samples taken when this was asked for in the last 10 s (one a second at most).",
                "tags": ["operations"],
                "responses": {"200": _json(status, "The numbers now"), **UNAUTHORIZED},
            }
        },
        "/v1/runs": {
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
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["runs"],
                            "properties": {"runs": {"type": "array", "items": {"$ref": "#/components/schemas/Run"}}},
                        },
                        "The runs; `GET /v1/runs/{id}` has one with its result",
                    ),
                    **UNAUTHORIZED,
                    "422": _error_response(f"`limit` is not an integer from 1 to {MAX_RECENT_RUNS}"),
                    "503": _error_response("The run store cannot be read (`store_unavailable`)"),
                },
            }
        },
    }


def build(catalog: Catalog, auth: bool, max_wait_s: float) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    run_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
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
                    "200": _json(
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
                    "202": _json(
                        {"$ref": "#/components/schemas/Run"},
                        "Accepted; not finished within the wait. Poll the Location",
                        {"Location": {"schema": {"type": "string"}, "description": "/v1/runs/{id}"}},
                    ),
                    **COMMON_ERRORS,
                    "408": _error_response("The body did not arrive within --body-timeout"),
                    "413": _error_response(
                        "Body over --max-body-bytes, or the arguments over the task pod's --max-message-bytes"
                    ),
                    "403": _error_response("A POST from a browser page on another origin"),
                    "404": _error_response("Unknown task"),
                    "415": _error_response("A body that is neither JSON nor msgpack"),
                    "409": _error_response("Cancelled, or the Idempotency-Key belongs to another request"),
                    "422": _error_response(
                        "The body does not match the task's parameters, or a query parameter or the "
                        "Idempotency-Key header is outside its schema"
                    ),
                    "429": _error_response("Every task pod is busy; retry after Retry-After seconds"),
                    "500": _error_response("The task failed: the remote error's type and message"),
                    "503": _error_response(
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
                **UNAUTHORIZED,
                "404": _error_response("Unknown run (never created, expired, or deleted)"),
                "422": _error_response("`wait` is not a finite number from 0 to the gateway's --max-wait"),
                "503": _error_response("The run store cannot be read (`store_unavailable`)"),
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
                "404": _error_response("Unknown run (never created, expired, or deleted)"),
                "409": _error_response("`run_not_finished`: the run is queued or running; cancel it first"),
                "503": _error_response(
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
                "200": _json(
                    {"$ref": "#/components/schemas/Run"}, "The run after the cancel took effect (or it had finished)"
                ),
                "202": _json({"$ref": "#/components/schemas/Run"}, "Cancel requested; the run has not stopped yet"),
                **UNAUTHORIZED,
                "403": _error_response("A POST from a browser page on another origin"),
                "404": _error_response("Unknown run (never created, expired, or deleted)"),
                "408": _error_response("A body (ignored) did not arrive within --body-timeout"),
                "413": _error_response("A body (ignored) over --max-body-bytes"),
                "503": _error_response("The run store cannot be written (`store_unavailable`)"),
            },
        }
    }
    paths.update(_model_paths())
    paths.update(_dashboard_paths())
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
                "ModelError": V1_MODEL_ERROR,
                "V2Error": V2_ERROR,
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
    for name in sorted(catalog.tasks):
        document["components"]["schemas"].update(catalog.tasks[name].components)
    if auth:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document
