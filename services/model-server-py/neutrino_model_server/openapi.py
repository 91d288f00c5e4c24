"""The model server's OpenAPI 3.1 document (`GET /openapi.json`): every route it answers, with the
request and response bodies of the Open Inference Protocol's REST API, every status each route can
answer, and the constraints the server enforces.

What JSON Schema cannot say, the operations' descriptions do, with the status it gets: an infer
request's `data` must hold exactly the elements its `shape` claims, and fit its `datatype` (400);
the requested `outputs` must be ones the model produces (400); the shapes together must hold at
most --max-elements elements (413). The `{name}` and `{version}` path parameters are enumerated: a
server serves one model, at one version; any other is a 404. The binary tensor extension's bodies
are declared as `application/octet-stream` (a JSON header, then raw tensors; its layout is in the
infer operations' description), and a 422's `detail` is FastAPI's list of `{loc, msg, type}`.
"""

from __future__ import annotations

import math
from typing import Any

from .v2 import DTYPES

# FastAPI's validation errors (a 422's `detail`): where in the request, what is wrong, the error's kind.
DETAIL: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["loc", "msg", "type"],
        "properties": {
            "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
            "msg": {"type": "string"},
            "type": {"type": "string"},
        },
    },
}
V2_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "detail": DETAIL},
}
V1_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {
                "type": {"type": "string"},
                "message": {"type": "string"},
                "traceback": {"type": "string"},
                "detail": DETAIL,
            },
        }
    },
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
PARAMETERS = {"type": "object", "description": "Protocol parameters (others than these are accepted, not used)"}
BINARY = {"type": "string", "format": "binary"}
BINARY_BODY = (
    "The binary tensor extension, both ways. A request body may be its JSON part (Inference-Header-Content-Length "
    "bytes long, that header's value) followed by the raw data of each input whose parameters.binary_data_size "
    "gives its byte count (such an input has no `data`), in input order; raw data is row-major and "
    "little-endian, BOOL one byte per element, BYTES each element a 4-byte little-endian length and its "
    "bytes. An output is answered the same way when its parameters.binary_data is true or, when it does not "
    "say, when the request's parameters.binary_data_output is true: the answer is then application/octet-stream, "
    "its Inference-Header-Content-Length header gives the JSON part's length, and each such output has "
    "parameters.binary_data_size in place of `data`. A header length past the body's end, binary sizes that "
    "do not add up to the bytes after the JSON part, or raw data whose size does not fit its shape and "
    "datatype are 400s."
)
DATATYPE = {"type": "string", "enum": list(DTYPES)}
# The protocol's tensor data: flat, or nested in row-major order; elements are booleans, numbers or strings.
TENSOR_DATA: dict[str, Any] = {"type": "array", "items": {"type": ["boolean", "number", "string", "array"]}}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _v2_error(description: str, retry: bool = False) -> dict[str, Any]:
    return _json({"$ref": "#/components/schemas/V2Error"}, description, RETRY_AFTER if retry else None)


def _v1_error(description: str, retry: bool = False) -> dict[str, Any]:
    response = _json({"$ref": "#/components/schemas/V1Error"}, description, RETRY_AFTER if retry else None)
    response["content"]["application/msgpack"] = {"schema": {"$ref": "#/components/schemas/V1Error"}}
    return response


# Every route: over --max-connections, a connection is answered 503 and closed (server.py).
CONNECTIONS = "Too many connections open (--max-connections); retry after Retry-After seconds"


def _model_params(model: str, versioned: bool) -> list[dict[str, Any]]:
    params = [
        {
            "name": "name",
            "in": "path",
            "required": True,
            "description": "The model this server serves (any other name: 404)",
            "schema": {"type": "string", "enum": [model]},
        }
    ]
    if versioned:
        params.append(
            {
                "name": "version",
                "in": "path",
                "required": True,
                "description": "The model's version (any other: 404)",
                "schema": {"type": "string", "enum": ["1"]},
            }
        )
    return params


def _inference_errors(error: Any) -> dict[str, Any]:
    """What a route that reads a body and queues inputs may answer besides 200 and 400."""
    return {
        "404": error("No such model or version"),
        "408": error("The body did not arrive within --body-timeout"),
        "413": error("The body is over --max-body-bytes, or holds more inputs (or V2 elements) than the server takes"),
        "422": error(
            "An input failed the type hint of the model's predict (or validate) method, or its validate() "
            "refused it; `detail` lists each error's location, message and type. Only that request fails."
        ),
        "429": error("The queue is full; retry after Retry-After seconds", retry=True),
        "500": error("predict raised, or answered something that cannot be encoded"),
        "503": error("The model is still loading, or too many connections are open", retry=True),
        "504": error("No answer within --request-timeout"),
    }


def _example_tensor(declared: object) -> dict[str, Any] | None:
    """A tensor that fits what the model declares in `inputs` (a -1 dimension taken as 1), zeros."""
    if not isinstance(declared, dict):
        return None
    name, datatype, shape = declared.get("name"), declared.get("datatype"), declared.get("shape")
    if not isinstance(name, str) or not name or datatype not in DTYPES or not isinstance(shape, list) or not shape:
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape):
        return None
    dims = [1 if d == -1 else d for d in shape]
    zero: Any = {"BOOL": False, "BYTES": ""}.get(datatype, 0.0 if str(datatype).startswith("FP") else 0)
    return {"name": name, "shape": dims, "datatype": datatype, "data": [zero] * math.prod(dims)}


def infer_example(inputs: list[Any]) -> dict[str, Any]:
    """An infer request for the examples phase: one row of the model's declared inputs, or one FP32 scalar."""
    tensors = [_example_tensor(t) for t in inputs]
    if inputs and all(t is not None for t in tensors):
        return {"inputs": tensors}
    return {"inputs": [{"name": "input-0", "shape": [1], "datatype": "FP32", "data": [0.0]}]}


def document(model: str, version: str, inputs: list[Any] | None = None) -> dict[str, Any]:
    """The OpenAPI document of a server serving `model` at `version`; `inputs`, the tensors the model
    declares, make the infer operations' example."""
    v2_ready = {
        "type": "object",
        "required": ["ready"],
        "properties": {"ready": {"type": "boolean"}},
    }
    model_ready = {
        "type": "object",
        "required": ["name", "ready"],
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    }
    unavailable = _v2_error(CONNECTIONS, retry=True)
    paths: dict[str, Any] = {
        "/v2": {
            "get": {
                "operationId": "server_metadata",
                "summary": "Server metadata",
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/ServerMetadata"}, "Server metadata"),
                    "503": unavailable,
                },
            }
        },
        "/v2/health/live": {
            "get": {
                "operationId": "server_live",
                "summary": "Liveness: 200 while the process serves",
                "responses": {
                    "200": _json(
                        {"type": "object", "required": ["live"], "properties": {"live": {"const": True}}}, "Live"
                    ),
                    "503": unavailable,
                },
            }
        },
        "/v2/health/ready": {
            "get": {
                "operationId": "server_ready",
                "summary": "Readiness: 200 once the model is loaded, 400 before (the protocol's 4xx for false)",
                "responses": {
                    "200": _json(v2_ready, "Ready"),
                    "400": _json(v2_ready, "Not ready (loading, or shutting down)"),
                    "503": unavailable,
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "503": unavailable,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document"), "503": unavailable},
            }
        },
        "/v1/models/{name}/predict": {
            "post": {
                "operationId": "predict",
                "summary": "One model input in, its output out",
                "description": "JSON, or msgpack with Content-Type application/msgpack (answered in kind, or as "
                "Accept asks). Errors are {error: {type, message, traceback?}}.",
                "parameters": _model_params(model, versioned=False),
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
                },
                "responses": {
                    "200": {
                        "description": "The model's output",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}},
                            "application/msgpack": {"schema": {"$ref": "#/components/schemas/PredictResponse"}},
                        },
                    },
                    "400": _v1_error("The body is not valid JSON (or msgpack), or not an object with `inputs`"),
                    **_inference_errors(_v1_error),
                },
            }
        },
    }
    for versioned in (False, True):
        base = "/v2/models/{name}" + ("/versions/{version}" if versioned else "")
        suffix = "_version" if versioned else ""
        params = _model_params(model, versioned)
        paths[base] = {
            "get": {
                "operationId": "model_metadata" + suffix,
                "summary": "Model metadata",
                "parameters": params,
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/ModelMetadata"}, "Model metadata"),
                    "404": _v2_error("No such model or version"),
                    "503": unavailable,
                },
            }
        }
        paths[base + "/ready"] = {
            "get": {
                "operationId": "model_ready" + suffix,
                "summary": "Model readiness: 200 once loaded, 400 before",
                "parameters": params,
                "responses": {
                    "200": _json(model_ready, "Ready"),
                    "400": _json(model_ready, "Not ready"),
                    "404": _v2_error("No such model or version"),
                    "503": unavailable,
                },
            }
        }
        paths[base + "/infer"] = {
            "post": {
                "operationId": "model_infer" + suffix,
                "summary": "Inference (Open Inference Protocol)",
                "description": "The first dimension of every input's shape is the batch: shape [N, ...] is N "
                "model inputs, and all inputs must have the same N. Besides what the schema says, the server "
                "answers 400 when a tensor's `data` does not hold exactly the elements its `shape` claims or "
                "does not fit its `datatype`, when the batch dimension is 0, when an input name repeats, when "
                "the inputs' batch sizes differ, or when a requested output is not one the model produces; and "
                "413 when the shapes together claim more than --max-elements elements. " + BINARY_BODY,
                "parameters": params,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/InferRequest"},
                            "example": infer_example(inputs or []),
                        },
                        "application/octet-stream": {"schema": BINARY},
                    },
                },
                "responses": {
                    "200": {
                        "description": "The outputs (application/octet-stream when some are in binary)",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/InferResponse"}},
                            "application/octet-stream": {"schema": BINARY},
                        },
                    },
                    "400": _v2_error("The body is not an infer request, or its tensors do not fit their shapes"),
                    **_inference_errors(_v2_error),
                },
            }
        }
    tensor_meta = {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    }
    schemas: dict[str, Any] = {
        "V2Error": V2_ERROR,
        "V1Error": V1_ERROR,
        "PredictRequest": {"type": "object", "required": ["inputs"], "properties": {"inputs": {}}},
        "PredictResponse": {"type": "object", "required": ["outputs"], "properties": {"outputs": {}}},
        "ServerMetadata": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "ModelMetadata": {
            "type": "object",
            "required": ["name", "versions", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": tensor_meta},
                "outputs": {"type": "array", "items": tensor_meta},
            },
        },
        "InferRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {**PARAMETERS, "properties": {"binary_data_output": {"type": "boolean"}}},
                "inputs": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/RequestInput"}},
                "outputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string"},
                            "parameters": {**PARAMETERS, "properties": {"binary_data": {"type": "boolean"}}},
                        },
                    },
                },
            },
        },
        "RequestInput": {
            "type": "object",
            "required": ["name", "shape", "datatype", "data"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "shape": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
                "datatype": DATATYPE,
                "parameters": PARAMETERS,
                "data": TENSOR_DATA,
            },
        },
        "InferResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "outputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "shape", "datatype", "data"],
                        "properties": {
                            "name": {"type": "string"},
                            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                            "datatype": DATATYPE,
                            "data": {"type": "array"},
                        },
                    },
                },
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"neutrino model server: {model}",
            "version": version,
            "description": "The Open Inference Protocol (KServe V2) REST API and neutrino's /v1 predict route, "
            "for one model.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
