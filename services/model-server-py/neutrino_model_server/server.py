"""`run(config, shutdown)`: the model server's parts wired together, started in order and stopped in reverse.

Start: import the app and build the model instance; listen (so health checks answer, `ready`
false); call `load()`; start the batch loop; mark ready. A failing `load()` raises `LoadFailed`
(the process exits with EXIT_LOAD_FAILED and the traceback). Stop (shutdown fires): mark not ready,
stop accepting and let handlers finish within a grace period (the batch loop still runs for them),
then stop the batch loop and the predict threads.

Slow clients: --header-timeout is aiohttp's keep-alive timer, which also runs from a connection's
opening until its first request head is complete; --max-connections caps the open connections in
the listener's protocol factory; --body-timeout is api.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

from .api import Api
from .batcher import Batcher
from .config import Config, ConfigError
from .loader import Served, find_model

log = logging.getLogger("neutrino.model_server")

SHUTDOWN_GRACE_S = 10.0
REFUSE_LINGER_S = 1.0  # how long a connection over --max-connections may take to read its 503


class LoadFailed(Exception):
    """The model's load() raised; `traceback` is its formatted traceback."""

    def __init__(self, model: str, exc: BaseException) -> None:
        super().__init__(f"load() of model {model!r} failed: {type(exc).__name__}: {exc}")
        self.traceback = "".join(traceback.format_exception(exc))


class ModelServer:
    def __init__(self, config: Config) -> None:
        self.config = config
        model = find_model(config)
        self.batch_size = config.max_batch_size or model.max_batch_size
        wait_ms = config.batch_wait_ms if config.batch_wait_ms is not None else model.batch_wait_ms
        concurrency = config.max_concurrency or model.max_concurrency
        if self.batch_size > 1 and not model.batched:
            raise ConfigError(
                f"--max-batch-size {self.batch_size}: model {model.name!r} is declared with max_batch_size=1, so its "
                "predict takes one input, not a list; declare max_batch_size > 1 in @app.model to batch it"
            )
        self.served = Served(model, max_concurrency=concurrency)
        self.batcher = Batcher(
            self.served.run_batch,
            max_batch_size=self.batch_size,
            batch_wait_s=wait_ms / 1000.0,
            max_concurrency=concurrency,
            max_queue=config.max_queue,
        )
        self.api = Api(config, self.served, self.batcher)
        metrics = self.api.metrics

        def on_batch(size: int, seconds: float) -> None:
            metrics.batch_size.observe(size)
            metrics.predict_seconds.observe(seconds)

        self.batcher.on_batch = on_batch
        self.bound: list[tuple[str, int]] = []

    async def run(self, shutdown: asyncio.Future[Any] | asyncio.Event, ready: asyncio.Event | None = None) -> None:
        name = self.served.name
        # handler_cancellation: a client that hangs up cancels its handler, and so its queued inputs,
        # which the batcher then drops instead of spending predict time on answers nobody reads.
        runner = web.AppRunner(
            self.api.app(),
            access_log=None,
            shutdown_timeout=SHUTDOWN_GRACE_S,
            handler_cancellation=True,
            keepalive_timeout=self.config.header_timeout_s,
        )
        await runner.setup()
        listener = await asyncio.get_running_loop().create_server(
            capped(runner.server, self.config.max_connections),
            self.config.host,
            self.config.port,
            backlog=1024,
            reuse_address=True,
        )
        self.bound = [sock.getsockname()[:2] for sock in listener.sockets]
        urls = ", ".join(f"http://{host}:{port}" for host, port in self.bound)
        log.info("model server for %r listening on %s", name, urls)
        batch_loop: asyncio.Task[None] | None = None
        try:
            started = time.perf_counter()
            try:
                await self.served.load()
            except Exception as exc:
                raise LoadFailed(name, exc) from exc
            batch_loop = asyncio.get_running_loop().create_task(self.batcher.run(), name="batcher")
            self.api.ready = True
            log.info(
                "model %r ready (load took %.0f ms; max_batch_size=%d, batch_wait_ms=%g, max_concurrency=%d)",
                name,
                (time.perf_counter() - started) * 1000,
                self.batch_size,
                self.batcher.batch_wait_s * 1000,
                self.batcher.max_concurrency,
            )
            if ready is not None:
                ready.set()
            if isinstance(shutdown, asyncio.Event):
                await shutdown.wait()
            else:
                await shutdown
        finally:
            log.info("model server stopping")
            self.api.ready = False
            listener.close()
            await runner.cleanup()
            if batch_loop is not None:
                batch_loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await batch_loop
            self.served.close()
            log.info("model server stopped")


def capped(server: web.Server | None, limit: int) -> Callable[[], asyncio.BaseProtocol]:
    """The listener's protocol factory: aiohttp's handler while fewer than `limit` connections are
    open, else one that answers a 503 in the protocol's error shape and closes."""
    assert server is not None

    def factory() -> asyncio.BaseProtocol:
        if len(server.connections) >= limit:
            return _Refuse()
        return server()

    return factory


_REFUSAL_BODY = b'{"error":"too many connections open (--max-connections); retry shortly"}'
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


class _Refuse(asyncio.Protocol):
    """Answers the 503 and closes its side at once; reads (and drops) what the client sends until it
    closes too, for at most REFUSE_LINGER_S: closing with its request unread would reset the
    connection, and the client could lose the answer."""

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's transports do not derive from asyncio's
        transport.write(_REFUSAL)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSE_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()


async def run(
    config: Config, shutdown: asyncio.Future[Any] | asyncio.Event, ready: asyncio.Event | None = None
) -> None:
    await ModelServer(config).run(shutdown, ready)
