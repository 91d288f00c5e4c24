"""Model calls through the gateway: the model server's routes, proxied to the replicas of the model named.

`POST /v1/models/{name}/predict`, and the Open Inference Protocol's (KServe V2) `GET
/v2/models/{name}[/versions/{version}]`, `.../ready` and `POST .../infer`, go to one of model
`name`'s replicas (config.py says where they are), with the body, its Content-Type and the binary
tensor extension's `Inference-Header-Content-Length` passed through byte for byte, and the
replica's status, body and those headers passed back. `GET /v2/health/live` and
`/v2/health/ready` are answered here: a V2 client (tritonclient) asks them of the server it
talks to, and here that is the gateway; ready means every model named by --model has a ready
replica.

Each request starts at the next replica in turn; a replica that cannot be reached (refused,
reset, unknown host, no connection within CONNECT_TIMEOUT_S), answers 503 (loading, draining) or
429 (its queue is full), or has not answered within --model-attempt-timeout (it took the
connection and hangs), is passed over for the next, each one tried once, within the request
deadline the API's middleware holds. Model calls are taken to be free of side effects, as the
SDK's model client takes them, so a request whose connection broke or timed out mid-way goes to
the next replica too; a broken one earns the call one try more than there are replicas, and so
does a timed-out one when there is a single URL (a Kubernetes Service: another connection may
reach another pod). One aiohttp session with keep-alive connections serves every call, from
`start()` to `close()`; the gateway's own errors on /v2 routes take the protocol's shape (api.py).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from neutrino import _tracing

from . import errors, metrics
from .config import MODEL_NAME, Config
from .errors import ApiError

log = logging.getLogger("neutrino.gateway")

# (method, path, route label): the model server's own routes, served here under the same paths.
ROUTES = (
    ("POST", "/v1/models/{name}/predict", "predict"),
    ("GET", "/v2/models/{name}", "metadata"),
    ("GET", "/v2/models/{name}/ready", "ready"),
    ("POST", "/v2/models/{name}/infer", "infer"),
    ("GET", "/v2/models/{name}/versions/{version}", "metadata"),
    ("GET", "/v2/models/{name}/versions/{version}/ready", "ready"),
    ("POST", "/v2/models/{name}/versions/{version}/infer", "infer"),
)
# The binary tensor extension: the JSON part's length; the raw tensor bytes follow it in the body.
BINARY_HEADER = "Inference-Header-Content-Length"
# A replica on the same network accepts a connection in well under a millisecond; one that has not
# in 2 s is gone (a dead node, an address nothing answers), and the next replica may be fine.
CONNECT_TIMEOUT_S = 2.0
SKIP_STATUSES = frozenset({429, 503})
# Never the caller's Authorization; nor Content-Encoding: aiohttp has decoded a compressed body (and
# decodes the replica's answer), so the bytes that go on are plain.
REQUEST_HEADERS = ("Content-Type", "Accept", BINARY_HEADER, "traceparent", "tracestate")
RESPONSE_HEADERS = ("Content-Type", BINARY_HEADER, "Retry-After")
MAX_LABELLED_MODELS = 1000


class ModelProxy:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._turns: dict[tuple[str, ...], Iterator[int]] = {}
        self._answered: set[str] = set(config.models)  # names worth their own metric label

    async def start(self) -> None:
        # No connection limit: each request holds at most one connection at a time, so the
        # requests in flight bound them already; a limit would only queue calls in here.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=10)
        timeout = aiohttp.ClientTimeout(total=self.config.model_attempt_timeout_s, sock_connect=CONNECT_TIMEOUT_S)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v2/health/live", self.live)
        router.add_get("/v2/health/ready", self.ready)
        for method, path, route in ROUTES:
            router.add_route(method, path, self._handler(path, route))

    def _handler(self, path: str, route: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.forward(request, path, route)

        return handle

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        """200 when each model named by --model has a ready replica, else the protocol's 400 for false;
        `models` says which. Through a URL template any name may be a model: those are not waited for."""
        names = sorted(self.config.models)
        found = await asyncio.gather(*(self._model_ready(name) for name in names))
        ready = all(found)
        body = {"ready": ready, "models": dict(zip(names, found, strict=True))}
        return web.json_response(body, status=200 if ready else 400)

    async def _model_ready(self, name: str) -> bool:
        try:
            status, _, _ = await self._first_answer(
                name, self.config.models[name], "GET", f"/v2/models/{name}/ready", None, CIMultiDict(), "ready"
            )
        except ApiError:
            return False
        return status == 200

    def replicas(self, name: str) -> tuple[str, ...]:
        """Model `name`'s replica URLs; a 404 naming the fix when the name is not one or nothing says where."""
        if not MODEL_NAME.fullmatch(name):
            raise errors.not_found(
                "unknown_model", f"{name[:80]!r} is not a model name (letters, digits, '_', '.', '-'; at most 63)"
            )
        urls = self.config.model_replicas(name)
        if not urls:
            raise errors.not_found(
                "unknown_model",
                f"the gateway does not know where model {name!r} runs: start it with --model {name}=http://HOST:PORT "
                f"(env NEUTRINO_GATEWAY_MODEL), or --model-url-template 'http://{{service}}:8080' for every model",
            )
        return urls

    async def forward(self, request: web.Request, path: str, route: str) -> web.Response:
        name = request.match_info["name"]
        urls = self.replicas(name)
        version = request.match_info.get("version", "")
        if version and not MODEL_NAME.fullmatch(version):
            raise errors.not_found(
                "unknown_version",
                f"{version[:80]!r} is not a model version (letters, digits, '_', '.', '-'; at most 63)",
            )
        started = time.perf_counter()
        body = await request.read() if request.method == "POST" else None
        headers = CIMultiDict((key, request.headers[key]) for key in REQUEST_HEADERS if key in request.headers)
        headers.update(_tracing.headers())  # tracing on: the replica's span is a child of this request's
        try:
            status, data, kept = await self._first_answer(
                name, urls, request.method, path.format(name=name, version=version), body, headers, route
            )
        except ApiError as exc:
            self._observe(name, route, exc.status, started)
            raise
        self._observe(name, route, status, started)
        return web.Response(status=status, body=data, headers=kept)

    async def get_json(self, name: str, path: str) -> Any:
        """A GET on one of model `name`'s replicas, decoded, or None (for the docs page; never raises)."""
        try:
            status, data, _ = await self._first_answer(name, self.replicas(name), "GET", path, None, CIMultiDict(), "")
            return json.loads(data) if status == 200 else None
        except (ApiError, ValueError):
            return None

    async def _first_answer(
        self,
        name: str,
        urls: tuple[str, ...],
        method: str,
        path: str,
        body: bytes | None,
        headers: CIMultiDict[str],
        route: str,
    ) -> tuple[int, bytes, CIMultiDict[str]]:
        """The first answer that is not a refusal, trying each replica once from the next in turn."""
        assert self._session is not None, "ModelProxy.start() first"
        turn = self._turns.get(urls)
        if turn is None:
            turn = self._turns[urls] = itertools.count()
        first = next(turn)
        skip_auto = () if "Content-Type" in headers or body is None else ("Content-Type",)
        refusals: list[str] = []
        busy: list[float] = []
        hung = False
        not_ready: tuple[int, bytes, CIMultiDict[str]] | None = None
        tries = len(urls)
        for i in itertools.count():
            if i >= tries:
                break
            url = urls[(first + i) % len(urls)]
            try:
                async with self._session.request(
                    method, url + path, data=body, headers=headers, skip_auto_headers=skip_auto, allow_redirects=False
                ) as resp:
                    data = await resp.read()
                    status = resp.status
                    kept = CIMultiDict((k, resp.headers[k]) for k in RESPONSE_HEADERS if k in resp.headers)
            except aiohttp.ClientError as exc:
                self._skip(name, "unreachable")
                refusals.append(f"{url}: {_why(exc)}")
                if tries == len(urls) and _broke(exc):
                    # Once per call, a connection that broke mid-way buys one more try: it may have been
                    # a kept-alive connection the replica had just closed, and with one replica there is
                    # no other to go to.
                    tries += 1
                continue
            except TimeoutError:
                # Connected, and no whole answer within --model-attempt-timeout: the replica hangs (or
                # is far slower than its own --request-timeout allows); the next one may answer.
                self._skip(name, "timeout")
                refusals.append(f"{url}: no answer within {self.config.model_attempt_timeout_s:g}s")
                hung = True
                if tries == len(urls) == 1:
                    # A lone URL is often a Kubernetes Service: another connection to it may reach
                    # another pod, so it gets one more try.
                    tries += 1
                continue
            if status in SKIP_STATUSES:
                self._skip(name, "busy" if status == 429 else "unavailable")
                refusals.append(f"{url}: HTTP {status}")
                if status == 429:
                    busy.append(_seconds(kept.get("Retry-After")))
                continue
            if 200 <= status < 300 and name not in self._answered and len(self._answered) < MAX_LABELLED_MODELS:
                self._answered.add(name)
            if route == "ready" and status != 200:
                # Ready through the gateway means some replica is ready; a loading one says 400.
                not_ready = (status, data, kept)
                continue
            return status, data, kept
        if not_ready is not None:
            return not_ready
        if busy:
            raise ApiError(
                429,
                "busy",
                f"every replica of model {name!r} is busy or unavailable; retry after the delay in Retry-After",
                headers={"Retry-After": str(max(1, round(max(busy))))},
            )
        log.debug("no replica of model %r took the request: %s", name, "; ".join(refusals))
        if hung:
            raise ApiError(
                504,
                "replica_timeout",
                f"no replica of model {name!r} answered within the gateway's --model-attempt-timeout: "
                + "; ".join(refusals),
            )
        raise errors.unavailable(f"no replica of model {name!r} took the request: {'; '.join(refusals)}")

    def _observe(self, name: str, route: str, status: int, started: float) -> None:
        label = self._label(name)
        metrics.MODEL_REQUESTS.labels(label, route, str(status)).inc()
        metrics.MODEL_LATENCY.labels(label, route).observe(time.perf_counter() - started)

    def _skip(self, name: str, reason: str) -> None:
        metrics.MODEL_REPLICA_SKIPS.labels(self._label(name), reason).inc()

    def _label(self, name: str) -> str:
        """A configured model's name, or one a replica has answered 2xx for; other names are "_other"."""
        return name if name in self._answered else "_other"


def _broke(exc: aiohttp.ClientError) -> bool:
    """A connection that was made and then broke (closed, reset, cut short), not one that could not be made."""
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ServerTimeoutError)):
        return False
    return isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError))


def _why(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return str(exc.os_error.strerror or exc.os_error) if exc.os_error else "cannot connect"
    return type(exc).__name__ if not str(exc) else str(exc)


def _seconds(value: str | None) -> float:
    try:
        return float(value) if value else 1.0
    except ValueError:
        return 1.0
