"""The gateway's one error shape, `{"error": {"type", "message", "detail"}}`, and the HTTP status of each failure.

Handlers raise `ApiError`; the middleware in api.py renders it (JSON or msgpack, as negotiated).
`type` is a stable machine-readable name; `message` says what happened and what to do about it.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An HTTP error answer: `status`, a stable `type`, a human `message` and optional `detail`."""

    def __init__(
        self, status: int, type: str, message: str, detail: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.type, "message": self.message, "detail": self.detail}}


def bad_request(message: str, detail: Any = None) -> ApiError:
    return ApiError(400, "bad_request", message, detail)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="neutrino"'})


def not_found(type: str, message: str) -> ApiError:
    return ApiError(404, type, message)


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the request body is over the gateway's limit of {limit} bytes")


def validation_failed(errors: list[dict[str, Any]]) -> ApiError:
    return ApiError(422, "validation_error", "the request does not match the task's parameters", errors)


def busy(retry_after_s: int) -> ApiError:
    return ApiError(
        429,
        "busy",
        "every task pod's queue is full; retry after the delay in Retry-After",
        headers={"Retry-After": str(retry_after_s)},
    )


def unavailable(message: str) -> ApiError:
    return ApiError(503, "unavailable", message, headers={"Retry-After": "1"})
