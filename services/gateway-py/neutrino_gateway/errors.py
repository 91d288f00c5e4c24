"""The gateway's one error shape, `{"error": {"type", "message", "detail"}}`, and the HTTP status of each failure.

Handlers raise `ApiError`; the middleware in api.py renders it (JSON or msgpack, as negotiated).
`type` is a stable machine-readable name; `message` says what happened and what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from multidict import CIMultiDict

BEARER_CHALLENGE = 'Bearer realm="neutrino"'
# For the pages a browser opens (/docs, /openapi.json): a Basic challenge makes it ask for the token.
BASIC_CHALLENGE = 'Basic realm="neutrino", charset="UTF-8"'


class ApiError(Exception):
    """An HTTP error answer: `status`, a stable `type`, a human `message` and optional `detail`."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        detail: Any = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.detail = detail
        self.headers: CIMultiDict[str] = CIMultiDict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.type, "message": self.message, "detail": self.detail}}


def bad_request(message: str, detail: Any = None) -> ApiError:
    return ApiError(400, "bad_request", message, detail)


def unauthorized(message: str, browser: bool = False) -> ApiError:
    """401; with `browser`, a Basic challenge first (browsers answer only that one), then the Bearer one."""
    challenges = [BASIC_CHALLENGE, BEARER_CHALLENGE] if browser else [BEARER_CHALLENGE]
    return ApiError(401, "unauthorized", message, headers=[("WWW-Authenticate", c) for c in challenges])


def not_found(type: str, message: str) -> ApiError:
    return ApiError(404, type, message)


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the request body is over the gateway's limit of {limit} bytes")


def body_timeout(limit_s: float) -> ApiError:
    return ApiError(
        408, "body_timeout", f"the request body did not arrive within the gateway's --body-timeout of {limit_s:g}s"
    )


def store_unavailable(reason: str) -> ApiError:
    return ApiError(
        503,
        "store_unavailable",
        f"the gateway cannot write its run records ({reason}); nothing was accepted, retry after Retry-After",
        headers={"Retry-After": "5"},
    )


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
