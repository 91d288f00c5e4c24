"""`run(config, shutdown)`: the gateway's parts wired together, started in order and stopped in reverse.

Start: open the run store, connect to the task pods, open the model client session, serve HTTP
(with the slow-client limits: --header-timeout is aiohttp's keep-alive timer, which also runs from
a connection's opening until its first request head is complete; --max-connections caps the open
connections in the listener's protocol factory; --body-timeout is api.py's).
A pod that comes up is asked for its task catalog (the Gateway is the pods' `CatalogEvents`; their
runs' news goes straight to runs.py); the first catalog lets the runs a previous gateway left
unfinished be dealt with (runs.py). Stop (shutdown fires): stop accepting HTTP, let
handlers finish within a grace period, close the model client session and the pod links, write
the store and close it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from typing import Any

from aiohttp import web
from neutrino._http_limits import capped
from neutrino_protocol import DescribeTasks, PayloadError, TaskCatalog, payload

from .api import Api
from .catalog import Catalog
from .config import Config
from .models import ModelProxy
from .pod import Pod, RunEvents
from .pool import PodPool
from .runs import Runs
from .store import RunStore

log = logging.getLogger("neutrino.gateway")

GC_GEN0_THRESHOLD = 10_000  # see run()
CATALOG_RETRY_S = 1.0  # ask a pod again when its catalog is not ready (its zygote is still importing)
CATALOG_REFRESH_S = 30.0  # and now and then anyway: a redeployed app may have new tasks
SHUTDOWN_GRACE_S = 10.0


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = RunStore(config.db_path)
        self.catalog = Catalog()
        self._catalog_asked: dict[str, float] = {}
        self._catalog_from: dict[str, float] = {}
        self._nonce = 0

        def pods(runs: RunEvents) -> PodPool:
            return PodPool(
                config.orchestrators,
                runs,
                self,
                config.ping_interval_s,
                config.pod_timeout_s,
                config.resolve_interval_s,
                config.curve,
            )

        self.runs = Runs(self.store, self.catalog, config.run_ttl_s, pods, config.max_active_runs)
        self.pool = self.runs.pool
        self.models = ModelProxy(config)
        self.api = Api(config, self.runs, self.catalog, self.pool, self.models)
        self._tasks: list[asyncio.Task[Any]] = []
        self.bound: list[tuple[str, int]] = []

    # -- pod.CatalogEvents: what the pods say about themselves --------------------------------

    def on_pod_up(self, pod: Pod) -> None:
        self._ask_catalog(pod)

    def _ask_catalog(self, pod: Pod) -> None:
        self._nonce += 1
        self._catalog_asked[pod.address] = time.monotonic()
        pod.send_raw(DescribeTasks(nonce=self._nonce).encode())

    def on_catalog(self, pod: Pod, msg: TaskCatalog) -> None:
        if not msg.ready or msg.payload is None:
            return  # asked again by the catalog loop
        try:
            # Not payload.unpack_catalog: that refuses a whole catalog for one malformed entry, which
            # Catalog.update skips on its own (with a warning), keeping the pod's other tasks.
            entries = payload.unpack_value(msg.payload, "task catalog")
        except PayloadError as exc:
            log.warning("task pod %s sent an unreadable task catalog: %s", pod.address, exc)
            return
        if not isinstance(entries, dict):
            log.warning("task pod %s sent a task catalog that is not a map", pod.address)
            return
        first = not self.catalog.known
        self.catalog.update(pod.address, entries)
        self._catalog_from[pod.address] = time.monotonic()
        if first:
            self.runs.recover()

    async def _catalog_loop(self) -> None:
        while True:
            await asyncio.sleep(CATALOG_RETRY_S)
            now = time.monotonic()
            for pod in self.pool.usable():
                got = self._catalog_from.get(pod.address)
                asked = self._catalog_asked.get(pod.address, 0.0)
                due = CATALOG_RETRY_S if got is None else CATALOG_REFRESH_S
                if now - max(asked, got or 0.0) >= due:
                    self._ask_catalog(pod)

    async def run(self, shutdown: asyncio.Future[Any] | asyncio.Event, ready: asyncio.Event | None = None) -> None:
        await self.runs.start()
        await self.pool.start()
        await self.models.start()
        self._tasks.append(asyncio.get_running_loop().create_task(self._catalog_loop(), name="catalog"))
        runner = web.AppRunner(
            self.api.app(),
            access_log=None,
            shutdown_timeout=SHUTDOWN_GRACE_S,
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
        # What start-up made (modules, the app, the routes, the catalog's validators) lives as long as
        # the process: out of the collector's way, a full collection no longer walks it while serving.
        gc.freeze()
        # The collector's youngest generation collected every GC_GEN0_THRESHOLD allocations, not
        # CPython's 700: a request allocates a few dozen tracked objects and 64 in flight keep
        # theirs alive, so at 700 a collection came every few requests and walked them all, 6 µs
        # of each run's CPU at 64 connections; at 10,000, 3 µs (measured with gc.callbacks).
        # Cycles are still collected, a few milliseconds later.
        gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
        log.info("gateway listening on %s", ", ".join(f"http://{host}:{port}" for host, port in self.bound) or "?")
        if ready is not None:
            ready.set()
        try:
            if isinstance(shutdown, asyncio.Event):
                await shutdown.wait()
            else:
                await shutdown
        finally:
            log.info("gateway stopping")
            listener.close()
            await runner.cleanup()
            await self.models.close()  # after the HTTP handlers: none is left to call a model
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self.runs.close()
            self.pool.close()
            self.store.close()
            log.info("gateway stopped")


_REFUSAL_BODY = json.dumps(
    {
        "error": {
            "type": "too_many_connections",
            "message": "the gateway has as many connections open as --max-connections allows; retry shortly",
            "detail": None,
        }
    }
).encode()


async def run(
    config: Config, shutdown: asyncio.Future[Any] | asyncio.Event, ready: asyncio.Event | None = None
) -> None:
    await Gateway(config).run(shutdown, ready)
