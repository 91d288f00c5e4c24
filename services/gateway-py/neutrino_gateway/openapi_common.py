"""The pieces every part of the OpenAPI document shares: the gateway's Error schema and the
responses built on it."""

from __future__ import annotations

from typing import Any

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


def error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def json_response(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


# What any POST that reads a body may answer; operations add their own. A GET or DELETE reads no
# body, so it declares only 401 of these.
COMMON_ERRORS = {
    "400": error_response("Malformed body or query parameter"),
    "401": error_response("Missing or wrong bearer token"),
    "413": error_response("Body over the size limit"),
}
UNAUTHORIZED = {"401": COMMON_ERRORS["401"]}
