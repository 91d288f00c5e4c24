"""How an `AsyncClient` uses its socket: sending, and settling replies from the event loop's reader.

Everything runs on the loop's thread, so no locks. The socket keeps the invariant of the threaded
client (see `_thread_io.py`): whoever touches it drains it until `zmq.EVENTS` shows no POLLIN, so
every send is followed by a drain, and the loop's reader callback on the edge-triggered `zmq.FD`
drains too.

Why not zmq.asyncio with a reader task: with a receive pending, zmq.asyncio schedules an event
check after every send (a timer and an EVENTS round per submit); measured on 20,000 submits it
settled ~19k replies/s against ~30k/s for the threaded Client. Reading the FD directly costs one
callback per wake-up and no Future per message. Needs a loop with `add_reader` (the default
selector loop on Unix, uvloop). The client binds to the loop that first uses it.

`map()` streams have no Future per task: their task ids map to the stream in `_streamed`, the
reader appends each reply to its stream, and the stream's one waiter Future (there only while its
consumer waits for a result) wakes the consumer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import neutrino_protocol
import zmq
from neutrino_protocol import Pong, TaskCatalog, TaskRejected, TaskReply

from . import _frontend, _mapping
from ._client_core import ClientCore
from .errors import HandshakeError, NeutrinoTimeoutError

_log = logging.getLogger("neutrino.client")


class LoopStream:
    """The replies of one `map()` waiting for its consumer; `waiter` is set while it waits."""

    __slots__ = ("error", "replies", "waiter")

    def __init__(self) -> None:
        self.replies: deque[TaskReply | TaskRejected] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None

    def put(self, msg: TaskReply | TaskRejected) -> None:
        self.replies.append(msg)
        self._wake()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class LoopIO(ClientCore[asyncio.Future[Any], LoopStream]):
    """The loop the client is bound to, sending, and the reader callbacks; `AsyncClient` builds its
    interface on these."""

    _kind = "AsyncClient"

    def _open(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        if self._closed or self._refused is not None:
            raise self._unusable()
        loop = asyncio.get_running_loop()
        if self._loop is None:
            loop.add_reader(self._fd, self._drain)
            self._loop = loop
            if self._monitor_fd is not None:
                loop.add_reader(self._monitor_fd, self._check_handshake)
                # Events from before the loop was bound do not fire the edge-triggered FD again.
                loop.call_soon(self._check_handshake)
        elif self._loop is not loop:
            raise RuntimeError("this AsyncClient belongs to another event loop; create one client per loop")
        return loop

    # -- sending ----------------------------------------------------------------------------

    def _send(
        self, table: dict[int, asyncio.Future[Any]], key: int, fut: asyncio.Future[Any], frames: list[bytes]
    ) -> None:
        table[key] = fut
        try:
            self._send_frames(frames)
        except BaseException:
            del table[key]
            raise
        self._drain()

    def _send_frames(self, frames: list[bytes]) -> None:
        try:
            _frontend.send_nowait(self._sock, frames)
        except zmq.Again:
            self._check_handshake()
            raise _frontend.link_gone(self.address, self._refused) from None

    def _cancel(self, task_id: int) -> None:
        """AsyncTaskFuture.cancel() hook: forget the task and ask the orchestrator to cancel it."""
        if self._pending.pop(task_id, None) is not None and not self._closed and self._refused is None:
            try:
                self._send_frames(_frontend.cancel_frames(task_id))
            except HandshakeError:
                return  # never delivered: nothing to cancel
            self._drain()

    async def _wait_stream(self, stream: LoopStream, state: _mapping.MapState, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the reader hands the stream a reply (or fails it)."""
        if stream.error is None:
            stream.waiter = loop.create_future()
            try:
                await wait(stream.waiter, self.timeout_s)
            except NeutrinoTimeoutError:
                raise self._map_timeout(state) from None
            finally:
                stream.waiter = None
        if stream.error is not None:
            raise stream.error

    # -- the reader callbacks ---------------------------------------------------------------

    def _check_handshake(self) -> None:
        """The monitor's reader callback: on a refused handshake, fail every waiting future with
        HandshakeError and drop the queued requests (see `ClientCore._refuse`)."""
        if self._closed or self._monitor is None or self._refused is not None:
            return
        error = self._read_refusal()
        if error is None:
            return
        waiting, anyone = self._refuse(error)
        # Raised to whoever waits; logged loudly only when nobody does (the next request raises it).
        _log.log(logging.DEBUG if anyone else logging.WARNING, "%s", error)
        for fut in waiting:
            if not fut.done():
                fut.set_exception(HandshakeError(str(error), reason=error.reason))

    def _drain(self) -> None:
        """Settle every queued reply (the loop's reader callback, and the tail of every send)."""
        if self._closed:
            return
        for frames in _frontend.recv_ready(self._sock):
            try:
                self._handle(frames)
            except Exception:  # pragma: no cover - a bug; keep serving the other futures
                _log.exception("neutrino client reader error (continuing)")

    def _handle(self, frames: list[bytes]) -> None:
        try:
            msg = neutrino_protocol.decode(frames)
        except neutrino_protocol.ProtocolError as exc:
            level = logging.DEBUG if exc.kind == "type" else logging.WARNING
            _log.log(level, "ignoring malformed message from %s: %s", self.address, exc)
            return
        if isinstance(msg, (TaskReply, TaskRejected)):
            fut = self._pending.pop(msg.id, None)
            if fut is None and (stream := self._streamed.pop(msg.id, None)) is not None:
                stream.put(msg)
                return
            value, error = _frontend.outcome(msg) if fut is not None else (None, None)
            if fut is not None and type(msg) is TaskReply:
                fut.attempts = msg.attempts  # type: ignore[attr-defined]
        elif isinstance(msg, (Pong, TaskCatalog)):
            fut = self._pings.pop(msg.nonce, None)
            value, error = msg, None  # the asking coroutine reads it (see AsyncClient._ask)
        else:
            _log.debug("ignoring %s from %s", type(msg).__name__, self.address)
            return
        if fut is None:
            _log.debug("dropping %s for unknown id from %s", type(msg).__name__, self.address)
        elif not fut.done():
            if error is None:
                fut.set_result(value)
            else:
                fut.set_exception(error)

    def _close(self) -> None:
        """`AsyncClient.aclose()`: stop reading, close the sockets, fail what waits. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
            if self._monitor_fd is not None:
                self._loop.remove_reader(self._monitor_fd)
        if self._monitor is not None:
            self._monitor.close(linger=0)
        self._sock.close(linger=0)
        self._ctx.term()
        for fut in self._abandon(self._closed_error()):
            if not fut.done():
                fut.set_exception(self._closed_error())


async def wait(fut: asyncio.Future[Any], timeout_s: float | None) -> Any:
    """`fut`'s result; a bare NeutrinoTimeoutError (the caller words it) after `timeout_s`."""
    if timeout_s is None:
        return await fut
    try:
        async with asyncio.timeout(timeout_s):
            return await fut
    except TimeoutError:
        raise NeutrinoTimeoutError("timed out") from None
