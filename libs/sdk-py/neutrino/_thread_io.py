"""How every thread that uses a `Client` shares its one socket: sending, receiving, and who waits.

How the socket is shared (the why; every rule below prevents a lost reply or a hang)
----------------------------------------------------------------------------------
One DEALER socket carries every request and reply. ZeroMQ sockets are not thread-safe, so
`_lock` guards every use of it; a socket may move between threads behind the full memory
barrier a lock gives.

Nobody waits *inside* ZeroMQ while holding the lock (that would stall every other thread for a
whole round trip). A thread that waits for replies, "the receiver", polls the socket's `zmq.FD`
without the lock, then takes the lock and drains with NOBLOCK. `zmq.FD` is edge-triggered: it
signals that the socket's state may have changed, and *any* operation on the socket (a send, or
reading `zmq.EVENTS`) may consume that signal while leaving messages queued. Hence the one
invariant everything relies on:

    Whoever operates on the socket drains it before releasing the lock, until `zmq.EVENTS`
    shows no POLLIN. Afterwards the FD is guaranteed to fire on the next arrival.

So a `submit()` that sends also drains, settling whatever replies it meets (outside the lock,
because settling runs user callbacks, which may call back into the client).

Who is the receiver:
- a `call()` (or `ping()`, `describe()`) thread, when no other call is receiving: it polls and
  drains on its own thread until its reply arrives. This saves the thread hop of waiting on a
  Future: against a raw pyzmq send+recv loop, measured ~1.35-1.7x with the hop and ~1.1-1.3x
  without;
- otherwise the background I/O thread, but only while futures are pending and no call receives.
  An idle I/O thread polls only its wake-up fd, so a loop of `call()`s never wakes it.

A non-receiver that drains the receiving call's own reply wakes it through `_rx_wake`. `close()`
wakes both, fails pending futures with ClientClosedError, and each wake-up fd is closed by the
last thread that may poll it.

`map()` streams have no Future per task: their task ids map to the stream in `_streamed`, and a
drain appends each reply to its stream's deque. A stream's thread receives like a `call()` while it
waits for replies, and holds no role while its consumer has a result in hand: its tasks do not
make the I/O thread watch (a consumer that pauses just leaves its replies queued in the socket),
unless the stream waits while another thread receives (`_streams_waiting`).
"""

from __future__ import annotations

import logging
import math
import select
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from typing import Any

import neutrino_protocol
import zmq
from neutrino_protocol import Message, Pong, TaskCatalog, TaskRejected, TaskReply

from . import _frontend, _mapping
from ._client_core import ClientCore
from ._waker import Waker
from .errors import HandshakeError

_log = logging.getLogger("neutrino.client")

_POLL_IN = select.POLLIN
_decode = neutrino_protocol.decode
_recv_ready = _frontend.recv_ready

_Settled = list[tuple["Future[Any]", Message]]

# A submit() this recent means its thread is still submitting and draining: the I/O thread waits.
# Shorter than any round trip, so one submit().result() is never delayed by it.
_DEFER_TO_SUBMITTER_NS = 100_000


class ThreadStream:
    """The replies of one `map()` waiting for its thread. A drain (on any thread, under the client's
    lock) appends to `replies`, and sets `event` only while the stream's thread waits on it."""

    __slots__ = ("error", "event", "replies", "waiting")

    def __init__(self) -> None:
        self.replies: deque[TaskReply | TaskRejected] = deque()
        self.waiting = False
        self.event = threading.Event()
        self.error: BaseException | None = None

    def put(self, msg: TaskReply | TaskRejected) -> None:
        self.replies.append(msg)
        if self.waiting:
            self.event.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.event.set()

    def done(self) -> bool:
        """What `ThreadIO._receive_until` waits for: a reply to hand out, or an error."""
        return bool(self.replies) or self.error is not None


class ThreadIO(ClientCore[Future[Any], ThreadStream]):
    """The socket, its lock and wake-ups, the receiver role and the I/O thread; `Client` builds its
    interface on these (see the module's docstring for the rules they keep)."""

    def _open(self) -> None:
        self._lock = threading.Lock()
        # How many map() streams wait while another thread receives (the I/O thread watches for them).
        self._streams_waiting = 0
        # The future a call()/ping() thread (or the stream a map() thread) is receiving for, None
        # when no thread receives.
        self._receiver: Future[Any] | ThreadStream | None = None
        self._io_watching = False
        # When a submit() last sent (and drained); the I/O thread defers to a submitter in a burst.
        self._submitted_ns = 0

        self._io_wake = Waker()
        self._rx_wake = Waker()
        self._poll_rx = select.poll()
        self._poll_rx.register(self._fd, _POLL_IN)
        self._poll_rx.register(self._rx_wake.fileno(), _POLL_IN)
        self._poll_io_watching = select.poll()
        self._poll_io_watching.register(self._fd, _POLL_IN)
        self._poll_io_watching.register(self._io_wake.fileno(), _POLL_IN)
        self._poll_io_idle = select.poll()
        self._poll_io_idle.register(self._io_wake.fileno(), _POLL_IN)
        if self._monitor_fd is not None:
            # The I/O thread also reads the handshake monitor, idle or not: a refusal must fail the
            # futures that wait, whoever receives for them.
            self._poll_io_watching.register(self._monitor_fd, _POLL_IN)
            self._poll_io_idle.register(self._monitor_fd, _POLL_IN)

        self._io_thread = threading.Thread(target=self._io_loop, name=f"neutrino-client {self.address}", daemon=True)
        self._io_thread.start()

    # -- sending ----------------------------------------------------------------------------

    def _check_usable_locked(self) -> None:
        if self._closed or self._refused is not None:
            raise self._unusable()

    def _send(
        self, table: dict[int, Future[Any]], key: int, fut: Future[Any], frames: list[bytes], *, become_receiver: bool
    ) -> bool:
        """Register `fut`, send, drain. Returns True when this thread became the receiver."""
        with self._lock:
            self._check_usable_locked()
            table[key] = fut
            try:
                self._send_locked(frames)
            except BaseException:
                del table[key]
                raise
            receiving = become_receiver and self._receiver is None
            if receiving:
                self._receiver = fut
            else:
                self._submitted_ns = time.monotonic_ns()
            settled, wake = self._drain_locked(receiving)
            self._update_role_locked()
        if settled:
            self._settle(settled, wake)
        return receiving

    def _send_locked(self, frames: list[bytes]) -> None:
        try:
            _frontend.send_nowait(self._sock, frames)
        except zmq.Again:
            raise _frontend.link_gone(self.address, self._refused) from None

    def _cancel(self, task_id: int) -> None:
        """TaskFuture.cancel() hook: forget the task and ask the orchestrator to cancel it."""
        self._request_cancel(task_id, forget=True)

    def _request_cancel(self, task_id: int, *, forget: bool) -> None:
        """Send CancelTask for a pending task. `forget`: nobody will read the reply (a cancelled
        future, an abandoned call), so drop the future now; otherwise it waits for the reply."""
        with self._lock:
            if self._closed:
                return
            fut = self._pending.pop(task_id, None) if forget else self._pending.get(task_id)
            if fut is None:  # answered, or cancelled already
                return
            try:
                self._send_locked(_frontend.cancel_frames(task_id))
            except HandshakeError:
                return  # never delivered, so there is nothing to cancel; the monitor fails the future
            settled, wake = self._drain_locked(False)
            self._update_role_locked()
        if settled:
            self._settle(settled, wake)

    # -- receiving on a waiting thread ------------------------------------------------------

    def _receive_until(self, fut: Future[Any] | ThreadStream, deadline: float | None) -> None:
        """Poll and drain on this thread until `fut` settles, the deadline passes or the client closes."""
        poll = self._poll_rx.poll
        wake_fd = self._rx_wake.fileno()
        while not fut.done():
            timeout_ms: int | None = None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                timeout_ms = math.ceil(left * 1000)
            events = poll(timeout_ms)
            with self._lock:
                if self._closed:
                    return
                if any(fd == wake_fd for fd, _ in events):
                    self._rx_wake.clear()
                settled, _ = self._drain_locked(True)
            if settled:
                self._settle(settled, False)

    def _leave_receiver(self) -> None:
        with self._lock:
            self._receiver = None
            if self._closed:
                self._rx_wake.close()
            else:
                # Futures other threads wait on may still be pending: hand them to the I/O thread.
                self._update_role_locked()

    # -- map() streams ----------------------------------------------------------------------

    def _wait_stream(self, stream: ThreadStream, state: _mapping.MapState) -> None:
        """Block until the stream has a reply: receiving on this thread when no other thread does,
        else waiting for whoever receives to hand the replies over."""
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        receiving: bool | None  # None: a reply came meanwhile, no wait
        with self._lock:
            self._check_usable_locked()
            if stream.done():
                receiving = None
            elif self._receiver is None:
                self._receiver = stream
                self._update_role_locked()  # the I/O thread stops watching while this thread receives
                receiving = True
            else:
                stream.event.clear()
                stream.waiting = True
                self._streams_waiting += 1
                self._update_role_locked()
                receiving = False
        if receiving:
            try:
                self._receive_until(stream, deadline)
            finally:
                self._leave_receiver()
        elif receiving is False:
            try:
                if not stream.replies:
                    stream.event.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
            finally:
                with self._lock:
                    stream.waiting = False
                    self._streams_waiting -= 1
                    if not self._closed:
                        self._update_role_locked()
        if stream.error is not None:
            raise stream.error
        if self._closed:
            raise self._closed_error()
        if not stream.replies:
            raise self._map_timeout(state)

    # -- draining and settling --------------------------------------------------------------

    def _drain_locked(self, receiving: bool) -> tuple[_Settled, bool]:
        """Read every queued message (see the invariant at the top). Returns the futures to settle
        and whether the receiving call's own reply is among them (it must then be woken)."""
        settled: _Settled = []
        wake = False
        pending, streamed, receiver = self._pending, self._streamed, self._receiver
        for frames in _recv_ready(self._sock):
            try:
                msg = _decode(frames)
            except neutrino_protocol.ProtocolError as exc:
                # A bad frame from the peer must cost that message only, never the client.
                level = logging.DEBUG if exc.kind == "type" else logging.WARNING
                _log.log(level, "ignoring malformed message from %s: %s", self.address, exc)
                continue
            kind = type(msg)
            if kind is TaskReply or kind is TaskRejected:
                fut = pending.pop(msg.id, None)  # type: ignore[attr-defined]
                if fut is None and (stream := streamed.pop(msg.id, None)) is not None:  # type: ignore[attr-defined]
                    stream.put(msg)  # type: ignore[arg-type]
                    if stream is receiver and not receiving:
                        wake = True
                    continue
            elif kind is Pong or kind is TaskCatalog:
                fut = self._pings.pop(msg.nonce, None)  # type: ignore[attr-defined]
            else:  # TaskAccepted (we never ask for acks) or a message type meant for someone else
                _log.debug("ignoring %s from %s", kind.__name__, self.address)
                continue
            if fut is None:
                # Answered after a timeout or cancel, or a duplicate; nobody is waiting.
                _log.debug("dropping %s for unknown id from %s", kind.__name__, self.address)
                continue
            if fut is receiver and not receiving:
                wake = True
            settled.append((fut, msg))
        return settled, wake

    def _settle(self, settled: _Settled, wake_receiver: bool) -> None:
        for fut, msg in settled:
            if type(msg) is Pong or type(msg) is TaskCatalog:
                _settle_one(fut, msg, None)  # the asking thread reads it (see Client._ask)
                continue
            if type(msg) is TaskReply:
                # Before the future settles, so its callbacks and waiters see it.
                fut.attempts = msg.attempts  # type: ignore[attr-defined]
            _settle_one(fut, *_frontend.outcome(msg))  # type: ignore[arg-type]
        if wake_receiver:
            with self._lock:
                if not self._closed:
                    self._rx_wake.set()

    # -- the I/O thread ---------------------------------------------------------------------

    def _check_handshake(self) -> None:
        """Read the monitor's events (I/O thread); on a refused handshake, fail what waits (see _refuse)."""
        with self._lock:
            if self._closed or self._monitor is None:
                return
            error = self._read_refusal()
            if error is None or self._refused is not None:
                return
            waiting, anyone = self._refuse(error)
            self._update_role_locked()
        # Raised to whoever waits; logged loudly only when nobody does (the next request raises it).
        _log.log(logging.DEBUG if anyone else logging.WARNING, "%s", error)
        for fut in waiting:
            _settle_one(fut, None, HandshakeError(str(error), reason=error.reason))
        with self._lock:
            if not self._closed and self._receiver is not None:
                self._rx_wake.set()

    def _update_role_locked(self) -> None:
        """The I/O thread watches the socket exactly while futures (or streams that cannot receive
        themselves) wait and no thread is receiving."""
        want = self._receiver is None and bool(self._pending or self._pings or self._streams_waiting)
        if want != self._io_watching:
            self._io_watching = want
            if want:
                self._io_wake.set()
            # Turning it off needs no wake-up: it re-reads the flag on its next wake and goes idle.

    def _io_loop(self) -> None:
        watching = False
        wake_fd = self._io_wake.fileno()
        monitor_fd = self._monitor_fd
        if monitor_fd is not None:
            # A zmq.FD fires only for what arrives after someone read zmq.EVENTS: read it once first.
            self._check_handshake()
        while True:
            try:
                events = (self._poll_io_watching if watching else self._poll_io_idle).poll()
                woken = any(fd == wake_fd for fd, _ in events)
                if monitor_fd is not None and any(fd == monitor_fd for fd, _ in events):
                    self._check_handshake()
                if watching and not woken and time.monotonic_ns() - self._submitted_ns < _DEFER_TO_SUBMITTER_NS:
                    # A thread is submitting right now, and it drains replies as it sends (see
                    # _send): stepping in would only fight it for the lock and the GIL (measured:
                    # 20k submits ran at 15-22k/s with, 26-29k/s without). Look again in a moment;
                    # the FD stays readable until someone drains, so no reply is missed. The wait
                    # ends early on close() or a role change.
                    self._poll_io_idle.poll(1)
                    continue
                with self._lock:
                    if self._closed:
                        self._io_wake.close()
                        return
                    if woken:
                        self._io_wake.clear()
                    settled: _Settled = []
                    wake = False
                    if self._io_watching:
                        settled, wake = self._drain_locked(False)
                        self._update_role_locked()
                    watching = self._io_watching
                if settled:
                    self._settle(settled, wake)
            except Exception:  # pragma: no cover - a bug; keep serving the other futures
                _log.exception("neutrino client I/O thread error (continuing)")

    def _close(self) -> None:
        """`Client.close()`: wake every thread, close the sockets, fail what waits. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiting = self._abandon(self._closed_error())
            self._io_wake.set()
            if self._receiver is None:
                self._rx_wake.close()
            else:
                self._rx_wake.set()  # the receiving call closes it on its way out
            if self._monitor is not None:
                self._monitor.close(linger=0)
            self._sock.close(linger=0)
        if threading.current_thread() is not self._io_thread:
            self._io_thread.join()
        self._ctx.term()
        for fut in waiting:
            _settle_one(fut, None, self._closed_error())


def _settle_one(fut: Future[Any], value: Any, exc: BaseException | None) -> None:
    try:
        if exc is None:
            fut.set_result(value)
        else:
            fut.set_exception(exc)
    except InvalidStateError:
        pass  # cancelled by its owner between the reply and now
