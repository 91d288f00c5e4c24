"""The task route's way past aiohttp's router and middleware chain (`shortcut`), for the requests
the gateway serves most: a POST to a known task."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import UrlMappingMatchInfo

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def shortcut(app: web.Application, method: str, prefix: str, takes: Callable[[str], bool], handler: Handler) -> None:
    """Send `method prefix<name>` requests for which `takes(name)` straight to `handler`, past
    aiohttp's router and middleware chain, with the match info the router would have given them.

    For the gateway's hot route: resolving the URL, then wrapping the handler in the middlewares
    and aiohttp's own current-app fixer, cost about 10 µs of the ~120 µs of CPU a run takes at 64
    connections (measured, issue 15), so `handler` does the middleware's work itself. Any other
    request goes the usual way, as does one with an `Expect` header (aiohttp answers 100-continue
    on that way) or a name `takes` refuses (a 404 from the usual route). It replaces the
    application's request handler, `Application._handle`, which aiohttp's AppRunner hands to its
    server: services/gateway-py/tests/test_gateway_hot_path.py pins that."""
    (route,) = [
        route
        for route in app.router.routes()
        if route.method == method and route.resource is not None and route.resource.canonical == prefix + "{name}"
    ]
    usual = app._handle

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        if request.method == method and path.startswith(prefix) and hdrs.EXPECT not in request.headers:
            name = path[len(prefix) :]
            if takes(name):
                match_info = UrlMappingMatchInfo({"name": name}, route)
                match_info.add_app(app)
                match_info.freeze()
                request._match_info = match_info
                return await handler(request)
        return await usual(request)

    app._handle = handle  # type: ignore[method-assign]
