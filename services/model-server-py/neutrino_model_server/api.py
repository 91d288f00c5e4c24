"""HTTP routes of the model server, content negotiation, and the error shapes.

- `POST /v1/models/{name}/predict`: `{"inputs": x}` -> `{"outputs": y}`, JSON or msgpack (by
  Content-Type; answered in kind, or as `Accept` asks). Errors: `{"error": {"type", "message"}}`
  (+ `traceback` for a predict failure): 400 unreadable body, 422 input refused by `validate`,
  404 other model, 408 body not sent within --body-timeout, 413 body over --max-body-bytes (or
  more inputs than the queue holds), 429 queue full (Retry-After), 503 not ready (Retry-After),
  504 deadline, 500 predict raised (every request of that batch).
- Open Inference Protocol (KServe V2): `GET /v2`, `/v2/health/live`, `/v2/health/ready`,
  `/v2/models/{name}[/versions/{v}]`, `.../ready`, `POST .../infer` (see v2.py); errors
  `{"error": "<message>"}`.
- `GET /metrics`: Prometheus text. `GET /openapi.json`: the OpenAPI document of all these (openapi.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
from aiohttp import web
from neutrino._http_limits import answer_and_close

from . import openapi, v2
from .batcher import Batcher, DeadlineExceeded, QueueFull
from .config import Config
from .loader import Served
from .metrics import Metrics

log = logging.getLogger("neutrino.model_server")

MSGPACK = "application/msgpack"
VERSION = "1"
SERVER_NAME = "neutrino-model-server"
RETRY_AFTER_BUSY_S = "1"
RETRY_AFTER_LOADING_S = "1"
# The Open Inference Protocol: "HTTP status code 200 indicates true and a 4xx status code indicates
# false" for the health and readiness routes; Triton answers 400, and so do we.
NOT_READY = 400


class HttpError(Exception):
    def __init__(self, status: int, type: str, message: str, *, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.retry_after = status, type, message, retry_after


class Api:
    def __init__(self, config: Config, served: Served, batcher: Batcher) -> None:
        self.config = config
        self.served = served
        self.batcher = batcher
        self.ready = False
        self.in_flight = 0
        self.metrics = Metrics(served.name, lambda: batcher.queued, lambda: self.in_flight)
        self._declared = {
            o["name"]: o.get("datatype", "")
            for o in getattr(served.model.cls, "outputs", [])
            if isinstance(o, dict) and "name" in o
        }
        self._openapi = openapi.document(served.name, VERSION, list(getattr(served.model.cls, "inputs", [])))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        name = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        app.router.add_post("/v1/models/{name}/predict", self._timed("predict", self.predict))
        app.router.add_get("/v2", self.server_metadata)
        app.router.add_get("/v2/health/live", self.live)
        app.router.add_get("/v2/health/ready", self.server_ready)
        for base in (name, versioned):
            app.router.add_get(base, self.model_metadata)
            app.router.add_get(base + "/ready", self.model_ready)
            app.router.add_post(base + "/infer", self._timed("infer", self.infer))
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_get("/openapi.json", self.openapi)
        return app

    def _timed(
        self, route: str, handler: Callable[[web.Request], Awaitable[web.Response]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        v1 = route == "predict"

        async def wrapped(request: web.Request) -> web.Response:
            started = time.perf_counter()
            self.in_flight += 1
            try:
                await self._read_body(request)
                response = await handler(request)
            except HttpError as err:
                response = self._error(request, err, v1)
            except Exception as exc:  # a bug or an odd input nobody foresaw: still the documented shape
                log.exception("%s %s failed", request.method, request.path)
                response = self._error(request, HttpError(500, type(exc).__name__, str(exc) or "internal error"), v1)
            finally:
                self.in_flight -= 1
            if response.status == 408:
                await answer_and_close(request, response)
            elif response.status == 413:
                response.force_close()  # the body was not read to its end
            self.metrics.observe(route, response.status, time.perf_counter() - started)
            return response

        return wrapped

    async def _read_body(self, request: web.Request) -> None:
        """The whole body, within --body-timeout and --max-body-bytes (handlers then get aiohttp's cached copy)."""
        try:
            async with asyncio.timeout(self.config.body_timeout_s):
                await request.read()
        except TimeoutError:
            limit = self.config.body_timeout_s
            message = f"the request body did not arrive within --body-timeout {limit:g}s"
            raise HttpError(408, "body_timeout", message) from None
        except web.HTTPRequestEntityTooLarge:
            raise HttpError(
                413,
                "payload_too_large",
                f"the request body is over this server's --max-body-bytes of {self.config.max_body_bytes} bytes",
            ) from None

    # -- the two inference routes ----------------------------------------------------------------

    async def predict(self, request: web.Request) -> web.Response:
        self._check_model(request)
        body = await request.read()
        as_msgpack = request.content_type == MSGPACK
        try:
            doc = msgpack.unpackb(body, raw=False) if as_msgpack else loads(body)
        except Exception as exc:
            raise HttpError(
                400, "bad_request", f"the body is not valid {'msgpack' if as_msgpack else 'JSON'}: {exc}"
            ) from None
        if not isinstance(doc, dict) or "inputs" not in doc:
            raise HttpError(400, "bad_request", 'the body must be an object {"inputs": <one model input>}')
        (output,) = await self.run([doc["inputs"]])
        return self._answer(request, {"outputs": output}, as_msgpack)

    async def infer(self, request: web.Request) -> web.Response:
        self._check_model(request)
        try:
            doc = loads(await request.read())
        except (ValueError, RecursionError) as exc:
            raise HttpError(400, "bad_request", f"the body is not valid JSON: {exc}") from None
        try:
            req = v2.parse_request(doc, self.config.max_elements)
        except v2.TooManyElements as exc:
            raise HttpError(413, "too_many_elements", str(exc)) from None
        except v2.InferError as exc:
            raise HttpError(400, "bad_request", str(exc)) from None
        outputs = await self.run(req.rows)
        try:
            answer = v2.encode_response(self.served.name, VERSION, req, outputs, self._declared)
        except v2.InferError as exc:  # the request named outputs the model does not produce
            raise HttpError(400, "bad_request", str(exc)) from None
        except ValueError as exc:
            raise HttpError(500, "bad_output", str(exc)) from None
        return web.json_response(answer, dumps=_dumps)

    async def run(self, values: list[Any]) -> list[Any]:
        """Validate each input, queue them all, and wait for their outputs within the request deadline:
        the inference path every front end (REST, gRPC) shares; failures are `HttpError`s."""
        if not self.ready:
            raise HttpError(503, "not_ready", "the model is still loading", retry_after=RETRY_AFTER_LOADING_S)
        if self.served.validate is not None:
            for i, value in enumerate(values):
                try:
                    self.served.validate(value)
                except (ValueError, TypeError) as exc:
                    where = f" (row {i})" if len(values) > 1 else ""
                    raise HttpError(422, type(exc).__name__, f"{exc}{where}") from None
        if len(values) > self.batcher.max_queue:
            raise HttpError(
                413,
                "too_many_inputs",
                f"{len(values)} inputs in one request; this server queues {self.batcher.max_queue}",
            )
        deadline = time.monotonic() + self.config.request_timeout_s
        deadline_passed = HttpError(504, "deadline_exceeded", f"no answer within {self.config.request_timeout_s:g}s")
        try:
            async with asyncio.timeout(self.config.request_timeout_s) as within:
                return await self.batcher.call(values, deadline)
        except QueueFull as exc:
            raise HttpError(429, "busy", f"queue full: {exc}", retry_after=RETRY_AFTER_BUSY_S) from None
        except DeadlineExceeded:
            raise deadline_passed from None
        except TimeoutError as exc:
            if within.expired():
                raise deadline_passed from None
            raise _PredictFailed(exc) from exc  # predict's own TimeoutError (a database, say): a 500
        except Exception as exc:
            raise _PredictFailed(exc) from exc

    # -- health and metadata ---------------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def server_ready(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": self.ready}, status=200 if self.ready else NOT_READY)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"name": SERVER_NAME, "version": VERSION, "extensions": []})

    async def model_metadata(self, request: web.Request) -> web.Response:
        if (err := self._model_mismatch(request)) is not None:
            return err
        return web.json_response(v2.metadata(self.served.name, VERSION, self.served.model.cls))

    async def model_ready(self, request: web.Request) -> web.Response:
        if (err := self._model_mismatch(request)) is not None:
            return err
        body = {"name": self.served.name, "ready": self.ready}
        return web.json_response(body, status=200 if self.ready else NOT_READY)

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self._openapi)

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    # -- helpers ---------------------------------------------------------------------------------

    def _model_mismatch(self, request: web.Request) -> web.Response | None:
        try:
            self._check_model(request)
        except HttpError as err:
            return web.json_response({"error": err.message}, status=err.status)
        return None

    def _check_model(self, request: web.Request) -> None:
        name = request.match_info["name"]
        if name != self.served.name:
            raise HttpError(404, "unknown_model", f"this server serves model {self.served.name!r}, not {name!r}")
        version = request.match_info.get("version")
        if version is not None and version != VERSION:
            raise HttpError(404, "unknown_version", f"model {name!r} has version {VERSION!r} only, not {version!r}")

    def _answer(self, request: web.Request, doc: dict[str, Any], as_msgpack: bool) -> web.Response:
        accept = request.headers.get("Accept", "")
        try:
            if MSGPACK in accept or (as_msgpack and "json" not in accept):
                return web.Response(body=msgpack.packb(doc, default=_default, use_bin_type=True), content_type=MSGPACK)
            return web.Response(body=_dumps(doc).encode(), content_type="application/json")
        except (TypeError, ValueError) as exc:
            raise HttpError(500, "bad_output", f"predict returned a value that cannot be encoded: {exc}") from None

    def _error(self, request: web.Request, err: HttpError, v1: bool) -> web.Response:
        headers = {"Retry-After": err.retry_after} if err.retry_after else None
        if not v1:
            return web.json_response({"error": err.message}, status=err.status, headers=headers)
        error: dict[str, Any] = {"type": err.type, "message": err.message}
        if isinstance(err, _PredictFailed) and err.traceback and self.config.include_traceback:
            error["traceback"] = err.traceback
        response = self._answer(request, {"error": error}, request.content_type == MSGPACK)
        response.set_status(err.status)
        if headers:
            response.headers.update(headers)
        return response


class _PredictFailed(HttpError):
    """predict raised for the batch this request was in (or answered it with the wrong shape): 500."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(500, type(exc).__name__, str(exc))
        self.traceback = "".join(traceback.format_exception(exc))


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of the range of a 64-bit float")
    return value


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(body: bytes) -> Any:
    """JSON as RFC 8259 has it: Python's parser also takes NaN, Infinity and -Infinity, and reads
    numbers beyond a float's range as infinite; none of these could be answered in JSON (a 500
    `bad_output` later), so they are a 400 here."""
    return json.loads(body, parse_constant=_not_json, parse_float=_finite)


def _dumps(doc: Any) -> str:
    # allow_nan=False: NaN/Infinity are not JSON, and strict parsers (JS, Go) reject them; such an
    # output becomes a 500 `bad_output` instead (msgpack answers carry them as floats).
    return json.dumps(doc, separators=(",", ":"), default=_default, allow_nan=False)


def _default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")
