"""The model routes of the OpenAPI document: /v1/models/{name}/predict and the Open Inference Protocol
(V2) routes, with the error shapes of the model server beside the gateway's own."""

from __future__ import annotations

from typing import Any

from .openapi_common import json_response

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


def model_paths() -> dict[str, Any]:
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
        "200": json_response(
            {"type": "object", "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}}},
            "A replica is ready",
        ),
        "400": json_response({"type": "object"}, "No replica is ready (the protocol's 4xx for false)"),
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
                "responses": {"200": json_response(metadata, "The model's metadata"), **lookup_errors},
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
                "200": json_response({"type": "object", "properties": {"live": {"type": "boolean"}}}, "Live"),
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
                "200": json_response(health, "Ready"),
                "400": json_response(health, "A model has no ready replica (the protocol's 4xx for false)"),
                "401": lookup_errors["401"],
            },
        }
    }
    return paths
