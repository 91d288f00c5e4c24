"""The HTTP API (aiohttp): routes, auth, the error shape, and runs as their answers show them.

Bodies, query parameters and content negotiation are bodies.py's (JSON by default, msgpack when
asked for; a body labelled with curl's default form type is read as JSON when it is a JSON object,
so `curl -d '{"x": 1}'` works). In msgpack answers the task's result goes out as the bytes the
worker packed, never decoded here. Model routes are models.py's; the /docs page is docs.py's.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import re
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import msgpack
from aiohttp import web
from neutrino._http_limits import answer_and_close
from neutrino_protocol import payload
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import dashboard, docs, errors, metrics, openapi, tracing
from .bodies import (
    JSON_HEADERS,
    MSGPACK_HEADERS,
    integer,
    json_bytes,
    number,
    read_object,
    respond,
    wants_msgpack,
)
from .catalog import Catalog
from .config import Config
from .deadlines import Deadlines
from .errors import ApiError
from .models import ModelProxy
from .pool import PodPool
from .run import Run
from .runs import Runs
from .shortcut import Handler, shortcut

log = logging.getLogger("neutrino.gateway")

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"}) | dashboard.PAGES  # the page asks for the token
# Pages a browser opens: there the token may also be the password of HTTP Basic auth (any user
# name), which a browser asks for by itself. Only for GET: a browser sends remembered Basic
# credentials along with other sites' requests too, and these two change nothing.
BROWSER_PATHS = frozenset({"/docs", "/openapi.json"})
DOCS_METADATA_WAIT_S = 1.0  # how long /docs waits for a model replica's metadata before leaving it out
CANCEL_WAIT_S = 2.0  # how long a cancel waits for the run to stop before answering 202
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
MAX_RETRIES = openapi.MAX_RETRIES
MAX_TIMEOUT_S = openapi.MAX_TIMEOUT_S
MAX_KEY_LENGTH = openapi.IDEMPOTENCY_KEY_MAX_LENGTH
_KEY = re.compile(openapi.IDEMPOTENCY_KEY_PATTERN)  # what /openapi.json declares is what is checked
# Task failure kinds (SPEC.md §5) that are the caller's doing get a 4xx; the rest are the task's: 500.
# `too_large`: the task pod refused the arguments as over its --max-message-bytes.
STATUS_OF_KIND = {"bad_arguments": 422, "unknown_task": 404, "cancelled": 409, "too_large": 413}

# The constant parts of a msgpack success answer, `{"id": <id>, "status": "succeeded", "result": <result>}`,
# packed once: a map of 3 and the key "id"; then "status": "succeeded" and the key "result".
_SUCCESS_HEAD = b"\x83" + msgpack.packb("id")
_SUCCESS_MIDDLE = msgpack.packb("status") + msgpack.packb("succeeded") + msgpack.packb("result")
# The same answer in JSON, `{"id":<id>,"status":"succeeded","result":<result>}`, as json_bytes writes it.
_JSON_SUCCESS_HEAD = b'{"id":'
_JSON_SUCCESS_MIDDLE = b',"status":"succeeded","result":'
_NO_QUERY: dict[str, str] = {}


class Api:
    def __init__(self, config: Config, runs: Runs, catalog: Catalog, pool: PodPool, models: ModelProxy) -> None:
        self.config = config
        self.runs = runs
        self.catalog = catalog
        self.pool = pool
        self.models = models
        self._tokens = [token.encode() for token in config.auth_tokens]
        self._openapi: tuple[int, bytes] | None = None
        self.dashboard = dashboard.Dashboard(config, runs, pool)
        self._deadlines = Deadlines(config.request_deadline_s)

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.config.max_body_bytes, middlewares=[*tracing.middlewares(), self.middleware]
        )
        app.router.add_post("/v1/tasks/{name}", self.run_task)
        app.router.add_get("/v1/tasks", self.list_tasks)
        app.router.add_get("/v1/runs/{id}", self.get_run)
        app.router.add_delete("/v1/runs/{id}", self.delete_run)
        app.router.add_post("/v1/runs/{id}/cancel", self.cancel_run)
        app.router.add_get("/v1/runs", self.list_runs)
        app.router.add_get("/v1/status", self.status)
        self.dashboard.install(app)
        self.models.add_routes(app.router)
        app.router.add_get("/openapi.json", self.openapi)
        app.router.add_get("/docs", self.docs)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        if not tracing.middlewares():  # with tracing on, every request goes through its middleware
            shortcut(app, "POST", "/v1/tasks/", self.catalog.__contains__, self._run_task_directly)
        return app

    async def _run_task_directly(self, request: web.Request) -> web.StreamResponse:
        return await self.middleware(request, self.run_task)

    # -- middleware: auth, deadline, error shape, metrics ---------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        try:
            if request.method == "POST" and "Origin" in request.headers:
                self._check_origin(request)
            if not self.config.no_auth and request.path not in OPEN_PATHS:
                self._check_token(request)
            task = self._deadlines.start()
            try:
                if request.method == "POST" and request.body_exists:  # the routes that read a body
                    await self._read_body(request)
                response = await handler(request)
            except asyncio.CancelledError:
                if not self._deadlines.passed(task):
                    raise
                raise TimeoutError from None
            finally:
                self._deadlines.end(task)
        except ApiError as exc:
            response = self._error(request, exc)
        except web.HTTPRequestEntityTooLarge:
            response = self._error(request, errors.too_large(self.config.max_body_bytes))
            response.force_close()  # the rest of the body is not read: the connection cannot carry another request
        except sqlite3.Error as exc:
            # The run store cannot be written (a full disk, a file-size limit, a lost volume) or read:
            # nothing was accepted; what was written before stays (store.py).
            log.error("%s %s: the run store failed: %s", request.method, request.path, exc)
            response = self._error(request, errors.store_unavailable(str(exc)))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}  # not its text/plain type
            response = self._error(request, ApiError(exc.status, kind, exc.reason, headers=allow))
        except TimeoutError:
            response = self._error(
                request, ApiError(504, "deadline_exceeded", "the request ran past the gateway's per-request deadline")
            )
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = self._error(
                request, ApiError(500, "internal", "the gateway failed on this request; see its log")
            )
        if response.status == 408:
            await answer_and_close(request, response)
        metrics.observe_request(route, response.status, time.perf_counter() - started)
        return response

    async def _read_body(self, request: web.Request) -> None:
        """Read the whole body now, within --body-timeout (handlers then get it from aiohttp's cache):
        a client that trickles its body cannot hold the connection for the whole request deadline."""
        try:
            if request.content.is_eof():  # it all came with the head (the usual small body): no timer to set
                await request.read()
            else:
                async with asyncio.timeout(self.config.body_timeout_s):
                    await request.read()
        except TimeoutError:
            raise errors.body_timeout(self.config.body_timeout_s) from None
        except web.RequestPayloadError as exc:  # e.g. a Content-Encoding the body does not decode under
            why = getattr(exc.__cause__, "message", None) or str(exc)
            raise errors.bad_request(f"the request body cannot be read: {why}") from None

    def _check_token(self, request: web.Request) -> None:
        browser = request.path in BROWSER_PATHS and request.method in ("GET", "HEAD")
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if browser and scheme.lower() == "basic" and token:
            try:
                token = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                token = ""
            scheme = "bearer"
        if scheme.lower() != "bearer" or not token:
            hint = " (a browser: any user name, the token as password)" if browser else ""
            raise errors.unauthorized(f"send Authorization: Bearer <token>{hint}", browser=browser)
        presented = token.strip().encode("utf-8", "surrogateescape")  # header bytes that are not UTF-8
        # compare_digest against every token: the time taken says nothing about which one nearly matched.
        if not any([hmac.compare_digest(presented, known) for known in self._tokens]):
            raise errors.unauthorized("the bearer token is not one this gateway accepts", browser=browser)

    @staticmethod
    def _check_origin(request: web.Request) -> None:
        """A browser names the page behind every POST in `Origin`. A page on another site may send a POST
        with a form type or none without asking first (no CORS preflight), and with --no-auth nothing else
        would stop it running tasks; the gateway serves no cross-origin callers (it answers no preflight)."""
        origin = urlsplit(request.headers["Origin"])
        if origin.netloc.lower() != request.host.lower():
            raise ApiError(
                403,
                "cross_origin",
                f"a browser page from {request.headers['Origin'][:100]!r} may not call this gateway; "
                "call it from a server, a script or curl (they send no Origin header)",
            )

    def _error(self, request: web.Request, exc: ApiError) -> web.Response:
        # Under /v2/ the Open Inference Protocol's shape, `{"error": "<message>"}`: V2 clients read
        # `error` as a string (tritonclient fails on printing its exception for any other shape).
        body = {"error": exc.message} if request.path.startswith("/v2/") else exc.body()
        response = respond(request, body, exc.status)
        response.headers.extend(exc.headers)
        return response

    # -- tasks -------------------------------------------------------------------------------

    async def run_task(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        info = self.catalog.get(name)
        if info is None:
            if not self.catalog.known:
                raise errors.unavailable("the task list is not known yet: no task pod has answered; retry shortly")
            raise errors.not_found("unknown_task", f"no task named {name!r}; GET /v1/tasks lists the tasks")
        query = request.query if request.query_string else _NO_QUERY  # the usual call: nothing to parse
        wait_s = number(query, "wait", self.config.default_wait_s, minimum=0.0, maximum=self.config.max_wait_s)
        if "respond-async" in request.headers.get("Prefer", ""):
            wait_s = 0.0
        timeout_s = number(query, "timeout", None, minimum=0.0, maximum=MAX_TIMEOUT_S, exclusive=True)
        retries = integer(query, "retries", None, minimum=0, maximum=MAX_RETRIES)
        key = request.headers.get("Idempotency-Key")
        if key is not None and not (0 < len(key) <= MAX_KEY_LENGTH and _KEY.fullmatch(key)):
            raise errors.validation_failed(
                [
                    {
                        "loc": ["header", "Idempotency-Key"],
                        "msg": f"must be 1 to {MAX_KEY_LENGTH} printable ASCII characters, no space at either end",
                        "type": "string_length",
                    }
                ]
            )
        body = await read_object(request)
        problems = info.errors(body)
        if problems:
            raise errors.validation_failed(problems)
        run = self.runs.by_idempotency_key(key) if key is not None else None
        if run is not None and run.task != name:
            raise ApiError(
                409, "idempotency_conflict", f"Idempotency-Key {key!r} was used for task {run.task!r}; use a new key"
            )
        if run is None:
            # A run whose id may go out before its outcome is sent once on disk (wait_for_post
            # answers nothing before that: one wake-up for both); a sync call's without a key is
            # sent at once and written with its outcome (runs.py).
            run = self.runs.submit_nowait(
                name,
                body,
                timeout_s,
                retries,
                key,
                tracing.run_context(request.headers),
                write_first=key is not None or wait_s <= 0,
            )
        finished = await self.runs.wait_for_post(run, wait_s)  # every answer below carries the run id
        if not finished:
            response = respond(request, self._record(run), 202)
            response.headers["Location"] = f"/v1/runs/{run.id}"
            return response
        if run.status == "succeeded":
            return self._success(request, run)
        raise self._failure(run)

    async def list_tasks(self, request: web.Request) -> web.StreamResponse:
        if not self.catalog.known:
            raise errors.unavailable("the task list is not known yet: no task pod has answered; retry shortly")
        tasks = [self.catalog.tasks[name].describe() for name in sorted(self.catalog.tasks)]
        return respond(request, {"tasks": tasks})

    # -- runs --------------------------------------------------------------------------------

    async def get_run(self, request: web.Request) -> web.StreamResponse:
        run = self._find(request)
        wait_s = number(request.query, "wait", 0.0, minimum=0.0, maximum=self.config.max_wait_s)
        if wait_s > 0 and not run.finished:
            await self.runs.wait(run, wait_s)
        return respond(request, self._record(run))

    async def cancel_run(self, request: web.Request) -> web.StreamResponse:
        """`POST /v1/runs/{id}/cancel`: an action on the run (Celery's revoke, Ray's cancel); asking
        again, or after it finished, changes nothing and answers the run as it is."""
        run = self._find(request)
        if not run.finished:
            self.runs.cancel(run)
            await self.runs.wait(run, CANCEL_WAIT_S)
        return respond(request, self._record(run), 200 if run.finished else 202)

    async def delete_run(self, request: web.Request) -> web.StreamResponse:
        """`DELETE /v1/runs/{id}`: the run's record goes (REST: DELETE removes the resource); after it,
        GET answers 404 and the run's Idempotency-Key is free. Only a finished run: one still queued
        or running would go on without a record, so it must be cancelled first."""
        run = self._find(request)
        if not run.finished or run.finishing:
            raise ApiError(
                409,
                "run_not_finished",
                f"run {run.id!r} is {run.status}: cancel it first (POST /v1/runs/{run.id}/cancel), "
                "then DELETE its record once it has finished",
                {"run_id": run.id, "status": run.status},
            )
        await self.runs.delete(run)
        return web.Response(status=204)

    async def list_runs(self, request: web.Request) -> web.StreamResponse:
        """`GET /v1/runs`: the runs created last, newest first, without results (`GET /v1/runs/{id}` has it)."""
        limit = integer(request.query, "limit", openapi.RECENT_RUNS, minimum=1, maximum=openapi.MAX_RECENT_RUNS)
        assert limit is not None
        runs = [self._record(run, result=False) for run in self.dashboard.recent(limit)]
        return respond(request, {"runs": runs})

    async def status(self, request: web.Request) -> web.StreamResponse:
        """`GET /v1/status`: task pods, workers, queue depth, run rates, model replicas (dashboard.py)."""
        return respond(request, await self.dashboard.status())

    def _find(self, request: web.Request) -> Run:
        run = self.runs.get(request.match_info["id"])
        if run is None:
            raise errors.not_found("unknown_run", f"no run with id {request.match_info['id']!r} (or it expired)")
        return run

    # -- operations --------------------------------------------------------------------------

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        if self._openapi is None or self._openapi[0] != self.catalog.version:
            document = openapi.build(self.catalog, auth=not self.config.no_auth, max_wait_s=self.config.max_wait_s)
            self._openapi = (self.catalog.version, json.dumps(document).encode())
        return web.Response(body=self._openapi[1], content_type="application/json")

    async def docs(self, request: web.Request) -> web.StreamResponse:
        names = sorted(self.config.models)
        try:
            async with asyncio.timeout(DOCS_METADATA_WAIT_S):
                found = await asyncio.gather(*(self.models.get_json(n, f"/v2/models/{n}") for n in names))
        except TimeoutError:
            found = [None] * len(names)
        page = docs.render(
            base_url=self._base_url(request),
            catalog=self.catalog,
            auth=not self.config.no_auth,
            models=[docs.ModelDoc(n, m if isinstance(m, dict) else None) for n, m in zip(names, found, strict=True)],
            model_url_template=self.config.model_url_template,
        )
        response = web.Response(text=page, content_type="text/html")
        response.headers["Content-Security-Policy"] = docs.CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    def _base_url(self, request: web.Request) -> str:
        """This gateway's URL as the caller reached it (the Host header, when it is a plain host[:port])."""
        scheme = request.headers.get("X-Forwarded-Proto", request.scheme).lower()
        host = request.host if _HOST.fullmatch(request.host) else f"{self.config.host}:{self.config.port}"
        return f"{scheme if scheme in ('http', 'https') else 'http'}://{host}"

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        usable = [pod.address for pod in self.pool.usable()]
        ready = bool(usable) and self.catalog.known
        body = {
            "ready": ready,
            "task_pods": usable,
            "task_pods_known": len(self.pool.pods),
            "catalog": self.catalog.known,
        }
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        metrics.observe_pods(self.pool.pods.values())
        metrics.RUNS_ACTIVE.set(len(self.runs.active))
        response = web.Response(body=generate_latest())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    # -- bodies and answers ------------------------------------------------------------------

    def _success(self, request: web.Request, run: Run) -> web.Response:
        if wants_msgpack(request):
            # The result's bytes go out as the worker packed them: a 3-entry map spliced by hand.
            body = _SUCCESS_HEAD + msgpack.packb(run.id) + _SUCCESS_MIDDLE + (run.result or payload.NONE)
            return web.Response(body=body, headers=MSGPACK_HEADERS)
        return web.Response(body=json_success(run.id, run.result), headers=JSON_HEADERS)

    def _failure(self, run: Run) -> ApiError:
        error = run.error or {}
        kind = str(error.get("kind", "task_error"))
        detail: dict[str, Any] = {"run_id": run.id, "kind": kind, "attempts": run.attempts}
        if self.config.include_traceback and error.get("traceback"):
            detail["traceback"] = error["traceback"]
        return ApiError(
            STATUS_OF_KIND.get(kind, 500), str(error.get("type", kind)), str(error.get("message", "")), detail
        )

    def _record(self, run: Run, *, result: bool = True) -> dict[str, Any]:
        record: dict[str, Any] = {
            "id": run.id,
            "task": run.task,
            "status": run.status,
            "attempts": run.attempts,
            "created_at": _iso(run.created_at),
            "started_at": _iso(run.started_at),
            "finished_at": _iso(run.finished_at),
            "trace_id": run.trace_id,
        }
        if run.status == "succeeded":
            if result:
                record["result"] = _result(run)
        elif run.error is not None:
            error = dict(run.error)
            if not self.config.include_traceback:
                error.pop("traceback", None)
            record["error"] = error
        return record


def json_success(run_id: str, result: bytes | None) -> bytes:
    """The JSON success answer, `{"id":<id>,"status":"succeeded","result":<result>}` as json_bytes
    writes it, spliced from constant parts (tests compare the two)."""
    # A task that returns nothing (None, msgpack nil, no bytes) needs no decoding and no encoder.
    value = b"null" if not result or result == payload.NONE else json_bytes(payload.unpack_result(result))
    # A run id is hex (runs.new_run_id): JSON as it is, in quotes; json_bytes for any other.
    quoted = b'"' + run_id.encode() + b'"' if run_id.isalnum() and run_id.isascii() else json_bytes(run_id)
    return _JSON_SUCCESS_HEAD + quoted + _JSON_SUCCESS_MIDDLE + value + b"}"


def _result(run: Run) -> Any:
    return payload.unpack_result(run.result) if run.result else None


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")
