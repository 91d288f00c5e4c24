"""Connection limits shared by Neutrino's aiohttp servers (the gateway, the model servers).

aiohttp bounds header sizes but not how many connections are open or how long a client may take to
send its body. `capped` is a listener's protocol factory that answers a 503 past --max-connections;
`answer_and_close` sends an answer (the 408 of a body past --body-timeout) and closes at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from aiohttp import web

__all__ = ["REFUSE_LINGER_S", "answer_and_close", "capped"]

REFUSE_LINGER_S = 1.0  # how long a connection over --max-connections may take to read its 503


def capped(server: web.Server | None, limit: int, refusal_body: bytes) -> Callable[[], asyncio.BaseProtocol]:
    """The listener's protocol factory: aiohttp's handler while fewer than `limit` connections are
    open, else one that answers a 503 with the JSON `refusal_body` and closes (slow clients holding
    many connections cannot take every file descriptor)."""
    assert server is not None
    refusal = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(refusal_body), refusal_body)
    )

    def factory() -> asyncio.BaseProtocol:
        if len(server.connections) >= limit:
            return _Refuse(refusal)
        return server()

    return factory


class _Refuse(asyncio.Protocol):
    """Answers the 503 and closes its side at once; reads (and drops) what the client sends until it
    closes too, for at most REFUSE_LINGER_S: closing with its request unread would reset the
    connection, and the client could lose the answer."""

    def __init__(self, refusal: bytes) -> None:
        self._refusal = refusal

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's transports do not derive from asyncio's
        transport.write(self._refusal)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSE_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()


async def answer_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send `response` now and close the connection: aiohttp would otherwise read ("linger" over)
    the rest of an unread body for up to 10 s more, which a client trickling it would use."""
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        pass  # the client is gone already
    finally:
        request.protocol.force_close()
