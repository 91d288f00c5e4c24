"""`Client("http://gateway:8000")`: the same `call`/`submit`/`cancel` as over ZeroMQ, through the HTTP gateway.

Each thread keeps its own keep-alive connection (http.client from the standard library: no extra
dependency). `submit()` runs the request on a small thread pool and returns a
`concurrent.futures.Future`. Arguments go as msgpack (bytes stay bytes) and results come back as
msgpack. The gateway takes named arguments only, so positional ones are named from the task's
parameter list (GET /v1/tasks, fetched once). A run not finished within one request's wait is
followed with `GET /v1/runs/{id}?wait=` until it is, or until the client's `timeout_s`.

Every POST carries a fresh `Idempotency-Key`, so the one resend after a dropped keep-alive
connection can never run a task twice.

Errors map to the same exceptions as over ZeroMQ: a task's failure to its TaskError subclass
(kind from the answer), 429 to BusyError, 422 to BadArgumentsError, 404 to UnknownTaskError;
401 is AuthenticationError and 503 UnavailableError.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

import msgpack

from . import _frontend
from .errors import (
    AddressError,
    AuthenticationError,
    BadArgumentsError,
    BusyError,
    ClientClosedError,
    NeutrinoError,
    NeutrinoTimeoutError,
    PayloadTooLargeError,
    ProtocolError,
    UnavailableError,
    UnknownTaskError,
    error_from_reply,
)
from .task import Task

MSGPACK = "application/msgpack"
TOKEN_ENV = "NEUTRINO_TOKEN"
# One request waits at most this long for a result; longer runs are followed by polling.
LONG_POLL_S = 30.0
# A socket timeout above the longest wait one request asks the gateway for.
CONNECTION_TIMEOUT_S = LONG_POLL_S + 30


class HttpClient:
    """A client of a Neutrino gateway; see `Client` for the interface (this is what it returns for http(s)://)."""

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float | None = None,
        max_payload_bytes: int = _frontend.DEFAULT_MAX_PAYLOAD_BYTES,
        token: str | None = None,
        max_workers: int = 16,
    ) -> None:
        url = urllib.parse.urlsplit(address)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise AddressError(f"{address!r} is not a gateway URL; write http://HOST:PORT or https://HOST")
        _frontend.check_options(timeout_s, None)
        self.address = address
        self.timeout_s = timeout_s
        self.max_payload_bytes = _frontend.check_max_payload(max_payload_bytes)
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._prefix = url.path.rstrip("/")
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        self._headers = {"Accept": MSGPACK}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="neutrino-http")
        self._params: dict[str, list[str]] | None = None
        self._ids = itertools.count(1)
        self._closed = False

    # -- the Client interface -----------------------------------------------------------------

    def call(self, name: str | Task[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return self._run(_frontend.task_name(name), args, kwargs, None, None)

    def submit(self, name: str | Task[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self.submit_with(name, args, kwargs)

    def submit_with(
        self,
        name: str | Task[..., Any],
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
        retries: int | None = None,
    ) -> Future[Any]:
        _frontend.check_options(timeout_s, retries)
        self._check_open()
        task = _frontend.task_name(name)
        return self._pool.submit(self._run, task, tuple(args), dict(kwargs or {}), timeout_s, retries)

    def cancel(self, run_id: str) -> None:
        """Cancel a run by its id (`POST /v1/runs/{id}/cancel`): dropped if queued, interrupted if running.
        Asking again, or after the run finished, changes nothing."""
        self._request("POST", f"/v1/runs/{urllib.parse.quote(run_id, safe='')}/cancel")

    def ping(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """The gateway's readiness: `ready`, the usable task pods."""
        status, body = self._request("GET", "/readyz", timeout=timeout_s, check=False)
        if status not in (200, 503) or not isinstance(body, dict):
            raise ProtocolError(f"unexpected /readyz answer from {self.address}: {status}")
        return body

    def describe(self, timeout_s: float = 10.0) -> dict[str, dict[str, Any]]:
        """The tasks the gateway knows, name -> {params, result, doc, options}."""
        _, body = self._request("GET", "/v1/tasks", timeout=timeout_s)
        return {task["name"]: task for task in body["tasks"]}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError(f"the client for {self.address} is closed; create a new Client")

    def _run(
        self, task: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout_s: float | None, retries: int | None
    ) -> Any:
        self._check_open()
        if args:
            kwargs = {**self._name_args(task, args), **kwargs}
        for key in kwargs:
            if not isinstance(key, str):
                raise TypeError(f"keyword argument names must be str, got {key!r}")
        try:
            body = msgpack.packb(kwargs, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"arguments of {task!r} cannot be sent: {exc}") from exc
        if len(body) > self.max_payload_bytes:
            raise PayloadTooLargeError(
                f"arguments of {task!r} pack to {len(body)} bytes, over max_payload_bytes={self.max_payload_bytes}"
            )
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        query = {"wait": f"{self._wait(deadline):g}"}
        if timeout_s is not None:
            query["timeout"] = f"{timeout_s:g}"
        if retries is not None:
            query["retries"] = str(retries)
        path = f"/v1/tasks/{urllib.parse.quote(task, safe='')}?{urllib.parse.urlencode(query)}"
        # A key per call: if a dropped keep-alive connection makes _request send the POST again,
        # the gateway returns the run the first one started instead of running the task twice.
        once = {"Idempotency-Key": uuid.uuid4().hex}
        status, answer = self._request("POST", path, body, content_type=MSGPACK, task=task, headers=once)
        while status == 202:
            run_id = answer["id"]
            if deadline is not None and time.monotonic() >= deadline:
                raise NeutrinoTimeoutError(
                    f"run {run_id} of {task!r} did not finish within {self.timeout_s}s; it goes on: "
                    f"GET /v1/runs/{run_id} on {self.address}, or cancel it with client.cancel({run_id!r})"
                )
            status, answer = self._request("GET", f"/v1/runs/{run_id}?wait={self._wait(deadline):g}", task=task)
            if status == 200 and answer.get("status") in ("queued", "running"):
                status = 202
            elif status == 200 and answer.get("status") != "succeeded":
                raise _run_error(answer, task)
        return answer.get("result")

    def _wait(self, deadline: float | None) -> float:
        if deadline is None:
            return LONG_POLL_S
        return max(0.0, min(LONG_POLL_S, deadline - time.monotonic()))

    def _name_args(self, task: str, args: tuple[Any, ...]) -> dict[str, Any]:
        if self._params is None or task not in self._params:
            self._params = {name: list(info["params"].get("properties", {})) for name, info in self.describe().items()}
        names = self._params.get(task)
        if names is None:
            raise UnknownTaskError(f"the gateway at {self.address} has no task {task!r}", kind="unknown_task")
        if len(args) > len(names):
            raise TypeError(f"{task}() takes {len(names)} arguments ({', '.join(names)}) but {len(args)} were given")
        return dict(zip(names, args, strict=False))

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=CONNECTION_TIMEOUT_S)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_type: str | None = None,
        timeout: float | None = None,
        check: bool = True,
        task: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        self._check_open()
        headers = {**self._headers, **(headers or {})}
        if content_type is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            conn = self._connection()
            # This request's timeout only: the connection keeps its own for the calls after it.
            conn.timeout = timeout if timeout is not None else CONNECTION_TIMEOUT_S
            if conn.sock is not None:
                conn.sock.settimeout(conn.timeout)
            try:
                conn.request(method, self._prefix + path, body=body, headers=headers)
                reply = conn.getresponse()
                raw = reply.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine) as exc:
                conn.close()  # a keep-alive connection the server closed: one fresh try (nothing was read)
                if attempt == 2:
                    raise UnavailableError(f"cannot reach the gateway at {self.address}: {exc}") from None
            except OSError as exc:
                conn.close()
                if isinstance(exc, TimeoutError):
                    raise NeutrinoTimeoutError(f"no answer from the gateway at {self.address}: {exc}") from None
                raise UnavailableError(f"cannot reach the gateway at {self.address}: {exc}") from None
        try:
            if not raw:
                answer = None
            elif (reply.getheader("Content-Type") or "").startswith("application/json"):
                answer = json.loads(raw)  # probes (/readyz) and errors from before negotiation answer JSON
            else:
                answer = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        except Exception:
            answer = None
        if check and reply.status >= 400:
            raise _http_error(reply.status, answer, reply.getheader("Retry-After"), task, self.address)
        return reply.status, answer


def _run_error(run: Mapping[str, Any], task: str) -> NeutrinoError:
    error = run.get("error") or {}
    return error_from_reply(
        str(error.get("kind", "task_error")),
        str(error.get("type", "TaskError")),
        str(error.get("message", "")),
        error.get("traceback"),
        int(run.get("attempts", 0)),
        None,
    )


def _http_error(status: int, answer: Any, retry_after: str | None, task: str | None, address: str) -> NeutrinoError:
    error = answer.get("error", {}) if isinstance(answer, dict) else {}
    kind, message = str(error.get("type", "")), str(error.get("message", f"HTTP {status}"))
    detail = error.get("detail")
    if status == 401:
        return AuthenticationError(f"{message} (pass Client(..., token=...) or set {TOKEN_ENV})")
    if status == 429:
        return BusyError(f"{message} (Retry-After: {retry_after or '?'} s)")
    if status == 413:
        return PayloadTooLargeError(message)
    if status == 503:
        return UnavailableError(message)
    if status == 422:
        return BadArgumentsError(f"{message}: {detail}", kind="bad_arguments", type="ValidationError")
    if status == 404 and kind == "unknown_task":
        return UnknownTaskError(message, kind="unknown_task")
    if isinstance(detail, dict) and "kind" in detail:
        return error_from_reply(
            str(detail["kind"]), kind, message, detail.get("traceback"), int(detail.get("attempts", 1)), None
        )
    return NeutrinoError(f"the gateway at {address} answered {status}: {message}")
