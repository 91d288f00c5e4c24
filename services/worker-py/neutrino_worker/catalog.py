"""The task catalog the zygote sends once its first workers are forked (`ZygoteCatalog`, SPEC §4.4).

Building it imports pydantic and makes a JSON Schema per task (100-400 ms, once), so the zygote
does it only when the control link has gone quiet after the first `Fork` (see `CatalogTimer`);
ZygoteReady and the first workers never wait for it. Building never fails the zygote: on any
error the traceback is logged and an empty catalog is sent, so the orchestrator still learns
that none is coming.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import TYPE_CHECKING

from neutrino_protocol import CONTROL_MAX_PAYLOAD_BYTES, ZygoteCatalog
from neutrino_protocol import payload as _payload

if TYPE_CHECKING:
    from neutrino import App

log = logging.getLogger("neutrino.zygote")

# How long the control link must stay quiet after a Fork before the catalog is built. The
# orchestrator sends its initial Forks the moment ZygoteReady arrives (within a millisecond or
# two), so they are served first, and the workers they start run their first tasks while the
# catalog is built (measured on 2 vCPUs: start to first result 171 ms median before the catalog
# existed, 168 ms after, 40 interleaved cold starts each).
QUIET_S = 0.02
# Built this long after ZygoteReady at the latest, for a pool that starts with no workers or a
# control link that never goes quiet.
LATEST_S = 1.0
_EMPTY = _payload.pack_catalog({})


class CatalogTimer:
    """When the zygote's loop builds the catalog: `wait_ms()` is its poll timeout (None: block,
    nothing left to build), `due()` is asked after the events of each poll were handled."""

    def __init__(self, now: float) -> None:
        self._deadline = now + LATEST_S
        self._forked = False
        self.sent = False

    def forked(self) -> None:
        self._forked = True

    def done(self) -> None:
        self.sent = True

    def wait_ms(self, now: float) -> int | None:
        if self.sent:
            return None
        left = self._deadline - now
        if self._forked:
            left = min(left, QUIET_S)
        return max(0, round(left * 1000))

    def due(self, now: float, quiet: bool) -> bool:
        """Whether to build now: the poll came back empty (`quiet`) once forked, or time is up."""
        return not self.sent and ((quiet and self._forked) or now >= self._deadline)


def build_catalog(app: App) -> ZygoteCatalog:
    """The app's catalog as a ZygoteCatalog message; an empty one if building it failed."""
    started = time.perf_counter()
    try:
        catalog = app.catalog()
        payload = _payload.pack_catalog(catalog)
        if len(payload) > CONTROL_MAX_PAYLOAD_BYTES:
            raise ValueError(
                f"the task catalog packs to {len(payload)} bytes, over the control link's "
                f"{CONTROL_MAX_PAYLOAD_BYTES}-byte limit for a payload (SPEC §3)"
            )
        tasks = list(catalog)
    except Exception:
        log.exception("could not build the task catalog; sending an empty one (clients see no task schemas)")
        payload, tasks = _EMPTY, []
    # Schema building leaves cyclic garbage behind, and the zygote runs with the collector off:
    # collect it now, before the next fork freezes it into every worker.
    gc.collect()
    build_ms = (time.perf_counter() - started) * 1000.0
    log.info("task catalog built in %.1f ms (%d tasks, %d bytes)", build_ms, len(tasks), len(payload))
    return ZygoteCatalog(tasks=tasks, build_ms=build_ms, payload=payload)
