"""The task pods: which ones exist (static addresses, or a DNS name re-resolved for Kubernetes headless
Services), which are usable, and where a run goes: the less loaded of two picked at random.

Power of two choices (Mitzenmacher): nearly as good as asking every pod for its load, with no
herd on the single least-loaded one when several gateways route at once.
Every pod it makes reports to the two sinks the pool is made with (pod.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from collections.abc import Iterable
from typing import Any

import zmq
from neutrino.keys import CurveKeys

from .pod import CatalogEvents, Pod, RunEvents

log = logging.getLogger("neutrino.gateway")


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    return host.strip("[]"), int(port)


def is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class PodPool:
    def __init__(
        self,
        addresses: Iterable[str],
        runs: RunEvents,
        catalogs: CatalogEvents,
        ping_interval_s: float,
        pod_timeout_s: float,
        resolve_interval_s: float,
        curve: CurveKeys | None = None,
    ) -> None:
        self._addresses = list(addresses)
        self._runs = runs
        self._catalogs = catalogs
        self._ping_interval_s = ping_interval_s
        self._pod_timeout_s = pod_timeout_s
        self._resolve_interval_s = resolve_interval_s
        self._curve = curve
        self._ctx: zmq.Context[Any] = zmq.Context(io_threads=1)
        self.pods: dict[str, Pod] = {}
        self._resolver: asyncio.Task[None] | None = None
        self._resolved: set[str] = set()  # pods that came from DNS names (the others are static)
        self._rng = random.Random()

    async def start(self) -> None:
        names = []
        for address in self._addresses:
            host, _ = split_address(address)
            if is_literal(host):
                self._add(address)
            else:
                names.append(address)
        if names:
            await self._resolve(names)
            self._resolver = asyncio.get_running_loop().create_task(self._resolve_loop(names), name="resolve pods")

    def close(self) -> None:
        if self._resolver is not None:
            self._resolver.cancel()
        for pod in self.pods.values():
            pod.close()
        self._ctx.term()

    def usable(self) -> list[Pod]:
        return [pod for pod in self.pods.values() if pod.usable]

    def any_usable(self) -> bool:
        """`bool(usable())` without the list (asked once per run)."""
        return any(pod.usable for pod in self.pods.values())

    def choose(self, exclude: set[str] | frozenset[str] = frozenset()) -> Pod | None:
        """The less loaded of two usable pods picked at random (not in `exclude`); None if none is usable."""
        if len(self.pods) == 1 and not exclude:  # one orchestrator: no list, no draw
            (only,) = self.pods.values()
            return only if only.usable else None
        pods = [pod for pod in self.pods.values() if pod.usable and pod.address not in exclude]
        if len(pods) <= 1:
            return pods[0] if pods else None
        first, second = self._rng.sample(pods, 2)
        return first if first.load <= second.load else second

    def _add(self, address: str) -> None:
        if address in self.pods:
            return
        pod = Pod(
            address,
            self._ctx,
            self._runs,
            self._catalogs,
            self._ping_interval_s,
            self._pod_timeout_s,
            self._curve,
        )
        self.pods[address] = pod
        pod.start()
        log.info("task pod %s added", address)

    async def _resolve_loop(self, names: list[str]) -> None:
        while True:
            await asyncio.sleep(self._resolve_interval_s)
            try:
                await self._resolve(names)
            except Exception:
                log.exception("re-resolving task pods failed (keeping the current set)")

    async def _resolve(self, names: list[str]) -> None:
        loop = asyncio.get_running_loop()
        found: set[str] = set()
        for address in names:
            host, port = split_address(address)
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                log.warning("cannot resolve %s: %s", host, exc)
                continue
            v4 = [info for info in infos if info[0] == socket.AF_INET]
            for info in v4 or infos:
                ip = str(info[4][0])
                found.add(f"tcp://[{ip}]:{port}" if ":" in ip else f"tcp://{ip}:{port}")
        if not found:
            return  # a DNS hiccup must not empty the pool: keep what we had
        for address in found - self._resolved:
            self._add(address)
        for address in self._resolved - found:
            # Gone from DNS: no new runs; the runs it still holds are handed back as lost.
            log.info("task pod %s no longer resolves; removing it", address)
            self.pods.pop(address).retire()
        self._resolved = found
