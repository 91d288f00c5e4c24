"""HTTP routes of the model server, content negotiation, and the error shapes.

- `POST /v1/models/{name}/predict`: `{"inputs": x}` -> `{"outputs": y}`, JSON or msgpack (by
  Content-Type; answered in kind, or as `Accept` asks). Errors: `{"error": {"type", "message"}}`
  (+ `traceback` for a predict failure; + `detail`, FastAPI's `[{loc, msg, type}]`, for a 422):
  400 unreadable body, 422 input refused by its type hint or `validate`,
  404 other model, 408 body not sent within --body-timeout, 413 body over --max-body-bytes (or
  more inputs than the queue holds), 429 queue full (Retry-After), 503 not ready (Retry-After),
  504 deadline, 500 predict raised (every request of that batch).
- Open Inference Protocol (KServe V2): `GET /v2`, `/v2/health/live`, `/v2/health/ready`,
  `/v2/models/{name}[/versions/{v}]`, `.../ready`, `POST .../infer` (see v2.py), JSON or the
  binary tensor extension, both ways; errors `{"error": "<message>"}` (+ `detail` for a 422).
- `GET /metrics`: Prometheus text. `GET /openapi.json`: the OpenAPI document of all these (openapi.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgpack
from aiohttp import web
from neutrino._http_limits import answer_and_close
from pydantic_core import from_json

from . import openapi, tracing, typed, v2
from .batcher import Batcher, DeadlineExceeded, QueueFull
from .config import Config
from .loader import Served
from .metrics import Metrics

log = logging.getLogger("neutrino.model_server")

MSGPACK = "application/msgpack"
VERSION = "1"
SERVER_NAME = "neutrino-model-server"
EXTENSIONS = ["binary_tensor_data"]
# The binary tensor extension: the body's first N bytes are the JSON request, the rest raw tensors.
HEADER_LENGTH = "Inference-Header-Content-Length"
OCTET_STREAM = "application/octet-stream"
RETRY_AFTER_BUSY_S = "1"
RETRY_AFTER_LOADING_S = "1"
# The Open Inference Protocol: "HTTP status code 200 indicates true and a 4xx status code indicates
# false" for the health and readiness routes; Triton answers 400, and so do we.
NOT_READY = 400


class HttpError(Exception):
    """A request's failure, as every front end (REST, gRPC) reports it.

    `errors` (a 422 only, else None): FastAPI's `detail` entries, `{"loc": [row, *path], "msg",
    "type"}`, `row` the index into the values given to `Api.run`, `path` the place inside that value.
    """

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        *,
        retry_after: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.message, self.retry_after = status, type, message, retry_after
        self.errors = errors


class Api:
    def __init__(self, config: Config, served: Served, batcher: Batcher) -> None:
        self.config = config
        self.served = served
        self.batcher = batcher
        self.ready = False
        self.in_flight = 0
        self.metrics = Metrics(served.name, lambda: batcher.queued, lambda: self.in_flight)
        cls = served.model.cls
        # Declared tensors win; else what the type hints describe (typed.py).
        inputs = list(getattr(cls, "inputs", None) or typed.tensors(served.input_type, "input-0"))
        outputs = list(getattr(cls, "outputs", None) or typed.tensors(served.output_type, v2.DEFAULT_OUTPUT))
        self._metadata = v2.metadata(served.name, VERSION, inputs, outputs)
        self._declared = {o["name"]: o.get("datatype", "") for o in outputs if isinstance(o, dict) and "name" in o}
        self._openapi = openapi.document(served.name, VERSION, inputs)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes, middlewares=tracing.middlewares())
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
            if request.content.is_eof():  # all in already (a small body is): no timer to arm and cancel
                await request.read()
                return
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
        as_msgpack = _is_msgpack(request)
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
        body = await request.read()
        header, binary = _split_binary(body, request.headers.get(HEADER_LENGTH))
        try:
            doc = loads(header)
        except (ValueError, RecursionError) as exc:
            raise HttpError(400, "bad_request", f"the body is not valid JSON: {exc}") from None
        try:
            req = v2.parse_request(doc, self.config.max_elements, binary)
        except v2.TooManyElements as exc:
            raise HttpError(413, "too_many_elements", str(exc)) from None
        except v2.InferError as exc:
            raise HttpError(400, "bad_request", str(exc)) from None
        try:
            tensors = await self.infer_tensors(req.inputs, req.outputs)
        except HttpError as err:
            if err.errors is not None:  # where in the request: the tensor, then the row
                names = [t.name for t in req.inputs]
                err.errors = [_v2_location(e, names) for e in err.errors]
            raise
        try:
            answer, raw = v2.encode_response(self.served.name, VERSION, req, tensors)
            text = _dumps(answer).encode()
        except ValueError as exc:
            raise HttpError(500, "bad_output", str(exc)) from None
        if raw is None:
            return web.Response(body=text, content_type="application/json")
        headers = {HEADER_LENGTH: str(len(text))}
        return web.Response(body=text + raw, content_type=OCTET_STREAM, headers=headers)

    async def infer_tensors(self, inputs: Sequence[v2.Tensor], requested: Sequence[str] = ()) -> list[v2.Tensor]:
        """The V2 inference path every front end shares: input tensors to rows, `run`, the outputs as
        tensors (the `requested` ones; none named: all). Failures are `HttpError`s."""
        try:
            rows = v2.rows_from_tensors(inputs)
        except v2.InferError as exc:
            raise HttpError(400, "bad_request", str(exc)) from None
        outputs = await self.run(rows)
        try:
            return v2.tensors_from_outputs(outputs, requested, self._declared)
        except v2.InferError as exc:  # the request named outputs the model does not produce
            raise HttpError(400, "bad_request", str(exc)) from None
        except ValueError as exc:
            raise HttpError(500, "bad_output", str(exc)) from None

    async def run(self, values: list[Any]) -> list[Any]:
        """Validate each input, queue them all, and wait for their outputs within the request deadline:
        the inference path every front end (REST, gRPC) shares; failures are `HttpError`s."""
        if not self.ready:
            raise HttpError(503, "not_ready", "the model is still loading", retry_after=RETRY_AFTER_LOADING_S)
        if self.served.checks_inputs:
            values = self._checked(values)
        if len(values) > self.batcher.max_queue:
            raise HttpError(
                413,
                "too_many_inputs",
                f"{len(values)} inputs in one request; this server queues {self.batcher.max_queue}",
            )
        try:  # the batcher keeps the deadline (its rule 8)
            return await self.batcher.call(values, time.monotonic() + self.config.request_timeout_s)
        except QueueFull as exc:
            raise HttpError(429, "busy", f"queue full: {exc}", retry_after=RETRY_AFTER_BUSY_S) from None
        except DeadlineExceeded:
            limit = self.config.request_timeout_s
            raise HttpError(504, "deadline_exceeded", f"no answer within {limit:g}s") from None
        except Exception as exc:  # predict's own TimeoutError (a database, say) too: a 500
            raise _PredictFailed(exc) from exc

    def _checked(self, values: list[Any]) -> list[Any]:
        """Each value as predict gets it; a 422 listing every refused row's errors (`HttpError.errors`)."""
        checked, errors, messages, kind = [], [], [], ""
        for i, value in enumerate(values):
            try:
                checked.append(self.served.check(value))
            except typed.InputRefused as exc:
                kind = kind or exc.type
                errors += [{**e, "loc": [i, *e["loc"]]} for e in exc.errors]
                messages.append(f"{exc} (row {i})" if len(values) > 1 else str(exc))
        if errors:
            raise HttpError(422, kind, "; ".join(messages), errors=errors)
        return checked

    # -- health and metadata ---------------------------------------------------------------------

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def server_ready(self, request: web.Request) -> web.Response:
        return web.json_response({"ready": self.ready}, status=200 if self.ready else NOT_READY)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"name": SERVER_NAME, "version": VERSION, "extensions": EXTENSIONS})

    async def model_metadata(self, request: web.Request) -> web.Response:
        if (err := self._model_mismatch(request)) is not None:
            return err
        return web.json_response(self.metadata())

    def metadata(self) -> dict[str, Any]:
        """The model's V2 metadata: its declared `inputs`/`outputs`, else what its type hints describe."""
        return self._metadata

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
            doc: dict[str, Any] = {"error": err.message}
            if err.errors is not None:
                doc["detail"] = err.errors
            return web.json_response(doc, status=err.status, headers=headers)
        error: dict[str, Any] = {"type": err.type, "message": err.message}
        if err.errors is not None:  # one input per request: "inputs" in place of its row
            error["detail"] = [{**e, "loc": ["inputs", *e["loc"][1:]]} for e in err.errors]
        if isinstance(err, _PredictFailed) and err.traceback and self.config.include_traceback:
            error["traceback"] = err.traceback
        response = self._answer(request, {"error": error}, _is_msgpack(request))
        response.set_status(err.status)
        if headers:
            response.headers.update(headers)
        return response


class _PredictFailed(HttpError):
    """predict raised for the batch this request was in (or answered it with the wrong shape): 500."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(500, type(exc).__name__, str(exc))
        self.traceback = "".join(traceback.format_exception(exc))


def _is_msgpack(request: web.Request) -> bool:
    """Whether the body is msgpack by its Content-Type; the usual JSON one without aiohttp's parse of
    the header (parameters, case), a microsecond or two per request."""
    raw = request.headers.get("Content-Type")
    return raw == MSGPACK or (raw != "application/json" and request.content_type == MSGPACK)


def _split_binary(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON part of an infer body and the raw tensor bytes after it (none without the header)."""
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.isdigit() or int(header_length) > len(body):
        raise HttpError(
            400,
            "bad_request",
            f"{HEADER_LENGTH} must be the byte length of the JSON part of the body, at most the body's "
            f"{len(body)} bytes; got {header_length!r}",
        )
    view = memoryview(body)
    return bytes(view[: int(header_length)]), view[int(header_length) :]


def _v2_location(error: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """An error's place in a V2 request: `["inputs", tensor, row, *path]`; with several tensors a
    row is a dict, so its path's first step is the tensor."""
    row, *path = error["loc"]
    if len(names) == 1:
        loc = ["inputs", names[0], row, *path]
    elif path and path[0] in names:
        loc = ["inputs", path[0], row, *path[1:]]
    else:
        loc = ["inputs", row, *path]
    return {**error, "loc": loc}


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of the range of a 64-bit float")
    return value


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# A JSON number is beyond a float's range only with an exponent or an integer part of 309 digits or
# more. With every digit mapped to 0 and E to e, a body holds such a number only if it holds "0e"
# or 309 zeros in a row (JSON puts a digit before every exponent).
_NUMBER_SHAPES = bytes.maketrans(b"123456789E", b"000000000e")
_FLOAT_DIGITS = b"0" * 309


def loads(body: bytes) -> Any:
    """JSON as RFC 8259 has it: Python's parser also takes NaN, Infinity and -Infinity, and reads
    numbers beyond a float's range as infinite; none of these could be answered in JSON (a 500
    `bad_output` later), so they are a 400 here. The range check calls Python once per number,
    which doubles the parse time of an image's worth of floats, so it runs only on bodies that
    could hold such a number.

    Other bodies go to pydantic-core's parser first: an image's worth of floats in 2 µs where
    Python's takes 12, a tenth of a request's CPU on the server. Where it parses a body it gives
    what Python's parser does; what it refuses (a BOM, UTF-16, a lone surrogate, nesting deeper
    than 200, and every malformed body) goes to Python's, for the same value or the same error."""
    shapes = body.translate(_NUMBER_SHAPES)
    if b"0e" in shapes or _FLOAT_DIGITS in shapes:
        decoder = _CHECKED_DECODER
    else:
        try:
            return from_json(body, allow_inf_nan=False)
        except ValueError:
            decoder = _DECODER
    return decoder.decode(body.decode(json.detect_encoding(body), "surrogatepass"))  # what json.loads does


def _dumps(doc: Any) -> str:
    return _ENCODER.encode(doc)


def _default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


# Built once: json.loads and json.dumps with any option build a new decoder or encoder per call.
_DECODER = json.JSONDecoder(parse_constant=_not_json)
_CHECKED_DECODER = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)
# allow_nan=False: NaN/Infinity are not JSON, and strict parsers (JS, Go) reject them; such an
# output becomes a 500 `bad_output` instead (msgpack answers carry them as floats).
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_default, allow_nan=False)
