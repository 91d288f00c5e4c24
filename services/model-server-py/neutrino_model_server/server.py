"""`run(config, shutdown)`: the model server's parts wired together, started in order and stopped in reverse.

Start: import the app and build the model instance; listen, on HTTP and (--grpc-port) gRPC, so
health checks answer, `ready` false; call `load()`; start the batch loop; mark ready. A failing
`load()` raises `LoadFailed` (the process exits with EXIT_LOAD_FAILED and the traceback). Stop
(shutdown fires): mark not ready, stop accepting on both and let their handlers finish within one
grace period, together (the batch loop still runs for them), then stop the batch loop and the
predict threads.

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
from typing import TYPE_CHECKING, Any

from aiohttp import web
from neutrino._http_limits import capped

from .api import Api
from .batcher import Batcher
from .config import Config, ConfigError
from .loader import Served, find_model

if TYPE_CHECKING:
    from grpc import aio

log = logging.getLogger("neutrino.model_server")

SHUTDOWN_GRACE_S = 10.0


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
        self.batcher.on_batch = self.api.metrics.batch
        self.bound: list[tuple[str, int]] = []
        self.grpc_address = ""  # host:port, once gRPC listens

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
            capped(runner.server, self.config.max_connections, _REFUSAL_BODY),
            self.config.host,
            self.config.port,
            backlog=1024,
            reuse_address=True,
        )
        self.bound = [sock.getsockname()[:2] for sock in listener.sockets]
        urls = ", ".join(f"http://{host}:{port}" for host, port in self.bound)
        log.info("model server for %r listening on %s", name, urls)
        batch_loop: asyncio.Task[None] | None = None
        grpc_listener: aio.Server | None = None
        try:
            if self.config.grpc_port is not None:
                # Imported only when served: its messages take the protocol's names in protobuf's pool,
                # where a client's (tritonclient's) copy of them would clash (oip/__init__.py).
                from . import grpc_server

                grpc_listener, self.grpc_address = await grpc_server.start(self.api, self.config, self.config.grpc_port)
                log.info("model server for %r: gRPC listening on %s", name, self.grpc_address)
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
            drains = [runner.cleanup()]
            if grpc_listener is not None:  # gRPC refuses new calls at once and gives running ones the grace
                drains.append(grpc_listener.stop(SHUTDOWN_GRACE_S))
            await asyncio.gather(*drains)
            if batch_loop is not None:
                batch_loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await batch_loop
            self.served.close()
            log.info("model server stopped")


_REFUSAL_BODY = b'{"error":"too many connections open (--max-connections); retry shortly"}'


async def run(
    config: Config, shutdown: asyncio.Future[Any] | asyncio.Event, ready: asyncio.Event | None = None
) -> None:
    await ModelServer(config).run(shutdown, ready)
