"""One task pod: a DEALER to its orchestrator's frontend, its load from pings, and the runs sent to it.

Like the SDK's AsyncClient, the socket is read from the event loop's reader on `zmq.FD`
(edge-triggered: whoever touches the socket drains it until `zmq.EVENTS` shows no POLLIN), which
costs one callback per wake-up and no Future per message. Payloads pass through as bytes: the
arguments were packed by the gateway, and results go back to HTTP clients undecoded when they
asked for msgpack.

Liveness: a ping every `ping_interval_s`; a pod that has not answered any for `pod_timeout_s` is
lost, and the runs it held are handed back (runs.py decides: retry or fail). So is one whose
pongs carry a new `instance`: the orchestrator restarted and forgot them.

What a pod hears goes to the sinks it is made with: replies, refusals and lost runs to its
`RunEvents` (runs.Runs), catalogs and "up" to its `CatalogEvents` (server.Gateway), which hears first.

With CURVE keys every link is a CURVE client (SPEC.md §2.1). A pod that refuses the handshake
never answers a ping, so it never becomes usable and no run is sent to it; the socket monitor says
why in the log (once per cause), rather than leaving only "no pong". libzmq does not reconnect
after such a refusal, so the link is made again every RECONNECT_AFTER_REFUSAL_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from typing import Any, Protocol

import neutrino_protocol
import zmq
from neutrino._frontend import SubmitEncoder, recv_ready, send_nowait
from neutrino._handshake import HandshakeWatch, read_events, watch
from neutrino.keys import CurveKeys
from neutrino.keys import apply as apply_keys
from neutrino_protocol import (
    CancelTask,
    Ping,
    Pong,
    SubmitTask,
    TaskCatalog,
    TaskRejected,
    TaskReply,
)

log = logging.getLogger("neutrino.gateway")

# libzmq gives a link up for good when the pod refuses the handshake (a key not in its allowlist,
# CURVE on one side only); the pod tries it again this often, so a fixed allowlist is picked up.
RECONNECT_AFTER_REFUSAL_S = 5.0


# (task, timeout_s, retries) -> its SubmitTask encoder (the SDK's: the meta packed once, a run adds
# its id and trace). Bounded: the options come from callers (`?timeout=`); past the bound a run
# gets an encoder of its own.
_encoders: dict[tuple[str, float | None, int | None], SubmitEncoder] = {}
_ENCODERS_MAX = 1024


def submit_frames(
    wire_id: int,
    task: str,
    timeout_s: float | None,
    retries: int | None,
    traceparent: str | None,
    tracestate: str | None,
    payload: bytes,
) -> list[bytes]:
    """SubmitTask frames, the bytes `SubmitTask(...).encode()` makes (tests compare the two) at a
    fraction of its cost."""
    key = (task, timeout_s, retries)
    encoder = _encoders.get(key)
    if encoder is None:
        encoder = SubmitEncoder(task, timeout_s, retries)
        if len(_encoders) < _ENCODERS_MAX:
            _encoders[key] = encoder
    if traceparent is None:
        if tracestate is not None:  # not sent without a traceparent: encoded whole, as given
            return SubmitTask(
                id=wire_id, task=task, timeout_s=timeout_s, retries=retries, tracestate=tracestate, payload=payload
            ).encode()
        return encoder.frames_traced(wire_id, payload, None)
    return encoder.frames_traced(wire_id, payload, (traceparent, tracestate))


class RunEvents(Protocol):
    """What a pod tells about the runs sent to it; `run` is what `submit` was given."""

    def on_reply(self, pod: Pod, run: Any, reply: TaskReply) -> None: ...

    def on_rejected(self, pod: Pod, run: Any, rejected: TaskRejected) -> None: ...

    def on_drained(self) -> None:
        """After a batch of messages was handled: the outcomes can be written in one go."""

    def on_pod_up(self, pod: Pod) -> None: ...

    def on_pod_lost(self, pod: Pod, runs: list[Any]) -> None:
        """`pod` went down (`pod.lost_reason` says why) holding `runs`, which it no longer tracks."""


class CatalogEvents(Protocol):
    """What a pod tells about itself: that it came up (before its runs' sink hears), and its catalog."""

    def on_pod_up(self, pod: Pod) -> None: ...

    def on_catalog(self, pod: Pod, catalog: TaskCatalog) -> None: ...


class Pod:
    """The link to one orchestrator; `submit` and `cancel` never block, answers arrive via callbacks."""

    def __init__(
        self,
        address: str,
        ctx: zmq.Context[Any],
        runs: RunEvents,
        catalogs: CatalogEvents,
        ping_interval_s: float,
        pod_timeout_s: float,
        curve: CurveKeys | None = None,
    ) -> None:
        self.address = address
        self._runs = runs
        self._catalogs = catalogs
        self._ping_interval_s = ping_interval_s
        self._pod_timeout_s = pod_timeout_s
        self._sock = ctx.socket(zmq.DEALER)
        # Our own routing id survives reconnects, so replies in flight still find us (SPEC.md §4.2).
        self._sock.setsockopt(zmq.ROUTING_ID, b"g-" + uuid.uuid4().bytes[:12])
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 0)
        self._sock.setsockopt(zmq.RCVHWM, 0)
        if address.startswith("tcp://["):
            self._sock.setsockopt(zmq.IPV6, 1)
        if curve is not None:
            apply_keys(self._sock, curve)
        self._monitor = watch(self._sock)
        self._monitor_fd: int = self._monitor.getsockopt(zmq.FD)  # type: ignore[assignment]
        self._handshake = HandshakeWatch(address, curve)
        self.refused: str | None = None  # HandshakeError.reason while the pod refuses the handshake
        self._sock.connect(address)
        self._fd: int = self._sock.getsockopt(zmq.FD)
        self._ids = itertools.count(1)
        self.in_flight: dict[int, Any] = {}  # wire id -> the caller's run
        self.up = False  # answered a ping within pod_timeout_s
        self.draining = False
        self.queue_depth = 0
        self.workers = 0
        self.idle_workers = 0
        self.last_pong = 0.0
        self.instance: int | None = None  # the orchestrator process's Pong.instance
        self.lost_reason = "stopped answering"  # why it went down, for the runs it held
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._closed = False
        self._outbox: list[tuple[int | None, list[bytes]]] = []  # this loop turn's, sent at its end (_send)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self.drain)
        self._loop.add_reader(self._monitor_fd, self._check_handshake)
        self._check_handshake()  # the monitor's FD fires only for events after a first read
        self._pinger = self._loop.create_task(self._ping_loop(), name=f"ping {self.address}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pinger is not None:
            self._pinger.cancel()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
            self._loop.remove_reader(self._monitor_fd)
        self._monitor.close(linger=0)
        self._sock.close(linger=0)

    @property
    def load(self) -> int:
        """What routing compares: runs this gateway has there, plus what waits in its queue."""
        return len(self.in_flight) + self.queue_depth

    @property
    def usable(self) -> bool:
        return self.up and not self.draining and not self._closed

    # -- sending ------------------------------------------------------------------------------

    def new_id(self) -> int:
        return next(self._ids)

    def submit(
        self,
        wire_id: int,
        run: Any,
        task: str,
        payload: bytes,
        timeout_s: float | None,
        retries: int | None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> None:
        """Send a run under `wire_id` (from new_id()), at the end of this loop turn. Its answer may be
        handled as soon as this returns (the socket is read then, or sooner by its reader), so the
        caller records where the run is first."""
        self.in_flight[wire_id] = run
        self._send(submit_frames(wire_id, task, timeout_s, retries, traceparent, tracestate, payload), wire_id)

    def cancel(self, wire_id: int) -> None:
        if wire_id in self.in_flight:
            self._send(CancelTask(id=wire_id).encode())

    def send_raw(self, frames: list[bytes]) -> None:
        self._send(frames)

    def retire(self) -> None:
        """Gone from the pool (its name no longer resolves to it): its runs are handed back as lost."""
        self.up = False
        self._state_changed()
        self.close()

    def _send(self, frames: list[bytes], wire_id: int | None = None) -> None:
        """Send `frames` (a SubmitTask's for the run under `wire_id`) at the end of this loop turn."""
        if self._closed:
            return
        # With every other message of the turn: a burst of sends wakes libzmq's I/O thread once and
        # leaves in one TCP write, where a send at a time costs a wake-up, an epoll round and a
        # write each (most of the link's CPU per run).
        self._outbox.append((wire_id, frames))
        if self._loop is None:  # not started: nothing to batch with
            self._flush()
        elif len(self._outbox) == 1:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        for wire_id, frames in outbox:
            if self._closed:
                return
            if wire_id is not None and wire_id not in self.in_flight:
                continue  # handed back meanwhile (the pod was lost): it must not run here too
            try:
                send_nowait(self._sock, frames)
            except zmq.Again:
                # No link to queue on: the pod refused the handshake (with no high-water mark,
                # nothing else makes a send wait). A run sent now stays in in_flight and is handed
                # back when the pod is marked down, which the monitor does next.
                self._check_handshake()
        # A send can consume the edge of the socket's FD, so the socket is read after the sends;
        # once per loop turn, shared by every message sent in it (not a zmq.EVENTS syscall per send).
        self.drain()

    # -- receiving ----------------------------------------------------------------------------

    def _check_handshake(self) -> None:
        if self._closed:
            return
        for event, value in read_events(self._monitor):
            error = self._handshake.feed(event, value)
            if error is not None and error.reason != self.refused:
                self.refused = error.reason
                log.error("%s", error)
            if error is not None and error.reason != "closed" and self._loop is not None:
                # A refusal ends the link for good in libzmq: make it again later.
                self._loop.call_later(RECONNECT_AFTER_REFUSAL_S, self._reconnect)
            if error is not None and self.up:
                self.up = False
                self.lost_reason = f"refused the handshake ({error.reason})"
                self._state_changed()
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and self.refused is not None:
                log.info("task pod %s accepted the handshake", self.address)
                self.refused = None

    def drain(self) -> None:
        if self._closed:
            return
        # recv_ready: a burst of answers costs two zmq.EVENTS syscalls, not one per answer; it leaves
        # the socket drained, so its edge-triggered FD fires on the next arrival.
        try:
            messages = recv_ready(self._sock)
        except zmq.ZMQError:
            log.exception("task pod %s: reader error (continuing)", self.address)
            return
        for frames in messages:
            try:
                self._handle(frames)
            except Exception:  # a bug in a handler; keep serving the other runs
                log.exception("task pod %s: reader error (continuing)", self.address)
        if messages:
            self._runs.on_drained()

    def _handle(self, frames: list[bytes]) -> None:
        try:
            msg = neutrino_protocol.decode(frames)
        except neutrino_protocol.ProtocolError as exc:
            level = logging.DEBUG if exc.kind == "type" else logging.WARNING
            log.log(level, "task pod %s: ignoring malformed message: %s", self.address, exc)
            return
        if type(msg) is TaskReply:
            run = self.in_flight.pop(msg.id, None)
            if run is not None:  # else an answer to a run handed back already (lost, or never ours)
                self._runs.on_reply(self, run, msg)
        elif type(msg) is Pong:
            self._on_pong(msg)
        elif type(msg) is TaskRejected:
            run = self.in_flight.pop(msg.id, None)
            if run is not None:
                self._runs.on_rejected(self, run, msg)
        elif type(msg) is TaskCatalog:
            self._catalogs.on_catalog(self, msg)
        else:
            log.debug("task pod %s: ignoring %s", self.address, type(msg).__name__)

    def _state_changed(self) -> None:
        if self.up:
            self._catalogs.on_pod_up(self)
            self._runs.on_pod_up(self)
            return
        lost = list(self.in_flight.values())
        self.in_flight.clear()
        self._runs.on_pod_lost(self, lost)

    def _on_pong(self, msg: Pong) -> None:
        was_up = self.up
        if msg.instance is not None and msg.instance != self.instance:
            if self.instance is not None and was_up:
                # Another orchestrator process behind the same address: it never heard of our runs.
                log.warning("task pod %s restarted; the runs it held are lost", self.address)
                self.up, was_up = False, False
                self.lost_reason = "restarted"
                self._state_changed()
            self.instance = msg.instance
        self.last_pong = time.monotonic()
        self.queue_depth, self.workers, self.idle_workers = msg.queue_depth, msg.workers, msg.idle_workers
        self.draining = msg.draining
        self.up = True
        if not was_up:
            log.info("task pod %s is up (%d workers)", self.address, msg.workers)
            self._state_changed()

    def _reconnect(self) -> None:
        if self._closed:
            return
        with contextlib.suppress(zmq.ZMQError):  # already gone with the refused session
            self._sock.disconnect(self.address)
        self._sock.connect(self.address)

    async def _ping_loop(self) -> None:
        nonce = itertools.count(1)
        started = time.monotonic()
        while True:
            self._send(Ping(nonce=next(nonce)).encode())
            await asyncio.sleep(self._ping_interval_s)
            silent_since = self.last_pong or started
            if self.up and time.monotonic() - silent_since > self._pod_timeout_s:
                self.up = False
                self.lost_reason = "stopped answering"
                log.warning("task pod %s lost: no pong for %.1f s", self.address, time.monotonic() - silent_since)
                self._state_changed()
