"""`Client`: submit tasks to an orchestrator over ZeroMQ and wait for their replies, from any thread.

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

import itertools
import logging
import math
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from concurrent.futures import Future, InvalidStateError
from types import TracebackType
from typing import Any

import neutrino_protocol
import zmq
from neutrino_protocol import Message, Pong, TaskCatalog, TaskRejected, TaskReply

from . import _frontend, _mapping
from ._handshake import HandshakeWatch, read_events
from ._waker import Waker
from .codec import pack_args
from .errors import ClientClosedError, HandshakeError, NeutrinoTimeoutError
from .task import Task

__all__ = ["Client", "TaskFuture"]

_log = logging.getLogger("neutrino.client")

_POLL_IN = select.POLLIN
_decode = neutrino_protocol.decode
_recv_ready = _frontend.recv_ready
_NO_ARGS = _frontend.NO_ARGS

_Settled = list[tuple["Future[Any]", Message]]

# A submit() this recent means its thread is still submitting and draining: the I/O thread waits.
# Shorter than any round trip, so one submit().result() is never delayed by it.
_DEFER_TO_SUBMITTER_NS = 100_000


class TaskFuture(Future[Any]):
    """A `concurrent.futures.Future` for one submitted task; `task_id` is its id on the wire.

    `attempts` is None until the orchestrator answers, then the number of attempts it made (1 when
    the first one answered, 0 when the task never ran); a failed task's error carries it too.

    `cancel()` succeeds while no reply has arrived: the future is cancelled at once, and the
    orchestrator is asked to cancel the task (a queued task is dropped, a running one interrupted
    by killing its worker); a reply that still comes is discarded. To cancel and then learn how
    the task ended, use `Client.cancel(future.task_id)` instead.
    """

    def __init__(self, task_id: int, task: str, on_cancel: Callable[[int], None]) -> None:
        super().__init__()
        self.task_id = task_id
        self.task = task
        self.attempts: int | None = None
        self._on_cancel = on_cancel

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        self._on_cancel(self.task_id)
        return True

    def __repr__(self) -> str:
        return f"<TaskFuture {self.task!r} id={self.task_id} {self._state.lower()}>"


class _Stream:
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
        """What `Client._receive_until` waits for: a reply to hand out, or an error."""
        return bool(self.replies) or self.error is not None


class Client:
    """A connection to one orchestrator frontend (`tcp://host:port` or `ipc:///path`).

    `timeout_s` bounds how long `call()` waits for a reply (None: forever). `max_payload_bytes`
    caps the packed arguments of one task: larger ones raise PayloadTooLargeError before anything
    is sent; keep it at or below the orchestrator's --max-message-bytes. Thread-safe; use it as
    a context manager or call `close()`, which fails tasks still waiting with ClientClosedError.

    For a task pod that requires CURVE (SPEC.md §2.1), pass `curve_server_key` (the pod's
    NAME.key file, or its 40-character Z85 public key) and `curve_client_key` (this client's own
    NAME.key_secret file), or set NEUTRINO_CURVE_SERVER_KEY / NEUTRINO_CURVE_CLIENT_KEY; arguments
    win over the environment, and ipc:// addresses ignore both. A pod that refuses the handshake
    fails every waiting task, and every later one, with HandshakeError.
    """

    def __new__(cls, address: str, *args: Any, **kwargs: Any) -> Client:
        # An http(s):// address is a gateway: the same interface over HTTP (see _http.py), with an
        # optional `token=` (or NEUTRINO_TOKEN) for its bearer auth.
        if cls is Client and isinstance(address, str) and address.startswith(("http://", "https://")):
            from ._http import HttpClient

            return HttpClient(address, *args, **kwargs)  # type: ignore[return-value]
        return super().__new__(cls)

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float | None = None,
        max_payload_bytes: int = _frontend.DEFAULT_MAX_PAYLOAD_BYTES,
        curve_server_key: str | os.PathLike[str] | None = None,
        curve_client_key: str | os.PathLike[str] | None = None,
    ) -> None:
        self.address = _frontend.check_address(address)
        _frontend.check_options(timeout_s, None)
        self.timeout_s = timeout_s
        self.max_payload_bytes = _frontend.check_max_payload(max_payload_bytes)
        keys = _frontend.curve_keys(address, curve_server_key, curve_client_key)
        self._ctx, self._sock, self._monitor = _frontend.connect(address, keys)
        self._handshake = HandshakeWatch(address, keys)
        # Set when the pod refused the handshake: every later request raises it (see _refuse).
        self._refused: HandshakeError | None = None
        # Ids only need to be unique among this client's unanswered tasks (SPEC.md §4.2); a counter
        # never repeats, and next() on it is atomic under the GIL.
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, Future[Any]] = {}
        # map() tasks: task id -> its stream; and how many streams wait while another thread receives.
        self._streamed: dict[int, _Stream] = {}
        self._streams_waiting = 0
        self._frames = _frontend.SubmitFrames(self.max_payload_bytes)
        # Requests answered by nonce (Ping, DescribeTasks); their ids come from the same counter.
        self._pings: dict[int, Future[Any]] = {}
        self._closed = False
        # The future a call()/ping() thread (or the stream a map() thread) is receiving for, None
        # when no thread receives.
        self._receiver: Future[Any] | _Stream | None = None
        self._io_watching = False
        # When a submit() last sent (and drained); the I/O thread defers to a submitter in a burst.
        self._submitted_ns = 0

        zmq_fd: int = self._sock.getsockopt(zmq.FD)  # type: ignore[assignment]
        self._io_wake = Waker()
        self._rx_wake = Waker()
        self._poll_rx = select.poll()
        self._poll_rx.register(zmq_fd, _POLL_IN)
        self._poll_rx.register(self._rx_wake.fileno(), _POLL_IN)
        self._poll_io_watching = select.poll()
        self._poll_io_watching.register(zmq_fd, _POLL_IN)
        self._poll_io_watching.register(self._io_wake.fileno(), _POLL_IN)
        self._poll_io_idle = select.poll()
        self._poll_io_idle.register(self._io_wake.fileno(), _POLL_IN)
        # The I/O thread also reads the handshake monitor, idle or not: a refusal must fail the
        # futures that wait, whoever receives for them.
        self._monitor_fd: int | None = None
        if self._monitor is not None:
            monitor_fd: int = self._monitor.getsockopt(zmq.FD)  # type: ignore[assignment]
            self._poll_io_watching.register(monitor_fd, _POLL_IN)
            self._poll_io_idle.register(monitor_fd, _POLL_IN)
            self._monitor_fd = monitor_fd

        self._io_thread = threading.Thread(target=self._io_loop, name=f"neutrino-client {address}", daemon=True)
        self._io_thread.start()

    # -- public API -------------------------------------------------------------------------

    def call(self, name: str | Task[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run a task and return its value; raise its TaskError/RejectedError, or NeutrinoTimeoutError."""
        task = name if type(name) is str else _frontend.task_name(name)
        task_id = next(self._ids)
        frames = self._frames(task, task_id, args, kwargs)
        fut = TaskFuture(task_id, task, self._cancel)
        receiving = self._send(self._pending, task_id, fut, frames, become_receiver=True)
        try:
            return self._wait(fut, receiving, self.timeout_s)
        except NeutrinoTimeoutError:
            raise NeutrinoTimeoutError(
                f"no reply to task {task!r} (id {fut.task_id}) from {self.address} within {self.timeout_s}s; "
                "the orchestrator was asked to cancel it. Raise Client(timeout_s=...) or use submit()"
            ) from None
        except BaseException:
            # Interrupted (KeyboardInterrupt, ...): nobody will read the reply, so ask for a cancel.
            # A no-op when the task already answered, as its future left the pending table then.
            self._request_cancel(fut.task_id, forget=True)
            raise

    def submit(self, name: str | Task[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Send a task and return at once; the future resolves to its value or its error."""
        task = name if type(name) is str else _frontend.task_name(name)
        task_id = next(self._ids)
        frames = self._frames(task, task_id, args, kwargs)
        fut = TaskFuture(task_id, task, self._cancel)
        self._send(self._pending, task_id, fut, frames, become_receiver=False)
        return fut

    def submit_many(
        self,
        name: str | Task[..., Any],
        /,
        *iterables: Iterable[Any],
        timeout_s: float | None = None,
        retries: int | None = None,
    ) -> list[TaskFuture]:
        """Send one task per item and return their futures, in the items' order, sent in one go.

        Arguments as for `map()`: `submit_many("add", xs, ys)` sends add(x, y) for each pair.
        Cheaper than a loop of submit() (one lock and one drain for the batch), but every task
        is in flight at once: for a long or unbounded iterable, `map()` keeps a window instead.
        `timeout_s` and `retries` override the task's own, as in `submit_with()`.
        """
        _frontend.check_options(timeout_s, retries)
        items = _mapping.zip_arguments(iterables)
        encoder = _frontend.SubmitEncoder(_frontend.task_name(name), timeout_s, retries)
        task, limit = encoder.name, self.max_payload_bytes
        batch = []
        for args in items:
            payload = _NO_ARGS if not args else _frontend.check_payload(task, pack_args(args, {}), limit)
            task_id = next(self._ids)
            batch.append((TaskFuture(task_id, task, self._cancel), encoder.frames(task_id, payload)))
        with self._lock:
            self._check_usable_locked()
            pending = self._pending
            try:
                for fut, frames in batch:
                    pending[fut.task_id] = fut
                    self._send_locked(frames)
            except BaseException:
                for fut, _ in batch:
                    pending.pop(fut.task_id, None)
                raise
            self._submitted_ns = time.monotonic_ns()
            settled, wake = self._drain_locked(False)
            self._update_role_locked()
        if settled:
            self._settle(settled, wake)
        return [fut for fut, _ in batch]

    def map(
        self,
        name: str | Task[..., Any],
        /,
        *iterables: Iterable[Any],
        ordered: bool = True,
        window: int = _mapping.DEFAULT_WINDOW,
        return_exceptions: bool = False,
        timeout_s: float | None = None,
        retries: int | None = None,
    ) -> Generator[Any, None, None]:
        """Run the task once per item and iterate over the results, as the builtin `map` and
        `concurrent.futures.Executor.map` do: `map("add", xs, ys)` runs add(x, y) for each pair
        (stopping at the shortest iterable); `starmap()` takes the argument tuples ready-made.

        Streams: at most `window` tasks are in flight (sent, and their result not yet taken by
        you), and items are pulled from the iterables only as room frees, so a slow consumer holds
        the sending back instead of growing a buffer. Results come in the items' order, or as they
        complete with `ordered=False`. A task's error is raised where its result would be (the
        tasks still in flight are then cancelled), or yielded in its place with
        `return_exceptions=True`. Nothing is sent before the first `next()`. Closing the iterator
        (`close()`, a `for` loop left by `break` or an exception, the iterator dropped) cancels
        the tasks in flight, as `cancel()` does: queued ones are dropped, running ones interrupted
        (their workers replaced). The client's `timeout_s` bounds each wait for the next result:
        NeutrinoTimeoutError, the tasks in flight cancelled. `timeout_s` and `retries` here
        override the task's own, per task, as in `submit_with()`.

        No Future per task, and the meta map of its SubmitTask is packed once: the fastest way
        to run many tasks from one thread.
        """
        return self._map_with(
            name, _mapping.zip_arguments(iterables), ordered, window, return_exceptions, timeout_s, retries
        )

    def starmap(
        self,
        name: str | Task[..., Any],
        /,
        iterable: Iterable[Iterable[Any]],
        *,
        ordered: bool = True,
        window: int = _mapping.DEFAULT_WINDOW,
        return_exceptions: bool = False,
        timeout_s: float | None = None,
        retries: int | None = None,
    ) -> Generator[Any, None, None]:
        """`map()` with each item the positional arguments of one task, as `itertools.starmap`:
        `starmap("add", [(1, 2), (3, 4)])` runs add(1, 2) and add(3, 4); `()` calls without arguments."""
        return self._map_with(name, iter(iterable), ordered, window, return_exceptions, timeout_s, retries)

    def submit_with(
        self,
        name: str | Task[..., Any],
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
        retries: int | None = None,
    ) -> TaskFuture:
        """`submit()` with per-call overrides of the task's `timeout` (seconds per attempt) and `retries`."""
        _frontend.check_options(timeout_s, retries)
        task = _frontend.task_name(name)
        task_id = next(self._ids)
        frames = _frontend.submit_frames(
            task_id, task, args, kwargs or {}, timeout_s, retries, max_payload_bytes=self.max_payload_bytes
        )
        fut = TaskFuture(task_id, task, self._cancel)
        self._send(self._pending, task_id, fut, frames, become_receiver=False)
        return fut

    def ping(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """The orchestrator's load: queue_depth, workers, idle_workers, draining."""
        _frontend.check_options(timeout_s, None)
        try:
            result: dict[str, Any] = _frontend.pong_info(self._ask(_frontend.ping_frames, timeout_s))
        except NeutrinoTimeoutError:
            raise NeutrinoTimeoutError(
                f"orchestrator at {self.address} did not answer a ping within {timeout_s}s; "
                "check that it is running and listening on that address"
            ) from None
        return result

    def describe(self, timeout_s: float = 10.0) -> dict[str, dict[str, Any]]:
        """The tasks the orchestrator's app registered: task name -> {"params": JSON Schema of the
        named arguments, "result": JSON Schema of the return value, "doc", "options", "http",
        "positional_only"} (the shape is documented in `neutrino.schema`).

        Right after the orchestrator starts, its zygote may not have reported the catalog yet; this
        asks again until it has. Raises CatalogNotReadyError when it still has none after
        `timeout_s`, NeutrinoTimeoutError when the orchestrator does not answer at all.
        """
        _frontend.check_options(timeout_s, None)
        deadline = time.monotonic() + timeout_s
        retry_s = _frontend.DESCRIBE_RETRY_FIRST_S
        answered = False
        while True:
            try:
                msg = self._ask(_frontend.describe_frames, max(0.0, deadline - time.monotonic()))
            except NeutrinoTimeoutError:
                raise _frontend.describe_timeout(self.address, timeout_s, answered) from None
            catalog = _frontend.catalog_of(msg)
            if catalog is not None:
                return catalog
            answered = True
            left = deadline - time.monotonic()
            if left <= 0:
                raise _frontend.describe_timeout(self.address, timeout_s, answered)
            time.sleep(min(retry_s, left))
            retry_s = min(2 * retry_s, _frontend.DESCRIBE_RETRY_MAX_S)

    def cancel(self, task_id: int) -> None:
        """Ask the orchestrator to cancel a submitted task, whether queued or running (a running
        task is interrupted: its worker is killed and replaced).

        Unlike `TaskFuture.cancel()`, the task's future stays pending until the orchestrator
        answers: with TaskCancelledError when the cancel took effect, or with the task's own
        outcome when that came first. Ids of tasks already answered or cancelled, and calls on a
        closed client (whose futures have all failed already), are ignored.
        """
        self._request_cancel(_frontend.check_task_id(task_id), forget=False)

    def close(self) -> None:
        """Disconnect; tasks still waiting fail with ClientClosedError (a map() iterator raises it). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiting = [*self._pending.values(), *self._pings.values()]
            self._pending.clear()
            self._pings.clear()
            self._fail_streams_locked(
                ClientClosedError(f"the client for {self.address} was closed before a reply came")
            )
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
            _settle_one(fut, None, ClientClosedError(f"the client for {self.address} was closed before a reply came"))

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._pending)} pending"
        return f"<Client {self.address} {state}>"

    # -- sending and waiting ----------------------------------------------------------------

    def _check_usable_locked(self) -> None:
        if self._closed:
            raise ClientClosedError(f"the client for {self.address} is closed; create a new Client")
        if self._refused is not None:
            raise HandshakeError(str(self._refused), reason=self._refused.reason)

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

    def _ask(self, frames_for: Callable[[int], list[bytes]], timeout_s: float) -> Any:
        """Send a request answered by nonce (Ping, DescribeTasks) and return the answer message;
        a bare NeutrinoTimeoutError (the caller words it) when none comes within `timeout_s`."""
        nonce = next(self._ids)
        fut: Future[Any] = Future()
        receiving = self._send(self._pings, nonce, fut, frames_for(nonce), become_receiver=True)
        try:
            return self._wait(fut, receiving, timeout_s)
        except NeutrinoTimeoutError:
            with self._lock:
                self._pings.pop(nonce, None)
            raise

    def _wait(self, fut: Future[Any], receiving: bool, timeout_s: float | None) -> Any:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if receiving:
            try:
                self._receive_until(fut, deadline)
            finally:
                self._leave_receiver()
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            return fut.result(left)
        except TimeoutError:
            if isinstance(fut, TaskFuture):
                self._request_cancel(fut.task_id, forget=True)
            raise NeutrinoTimeoutError("timed out") from None

    def _receive_until(self, fut: Future[Any] | _Stream, deadline: float | None) -> None:
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

    def _send_locked(self, frames: list[bytes]) -> None:
        try:
            _frontend.send_nowait(self._sock, frames)
        except zmq.Again:
            raise _frontend.link_gone(self.address, self._refused) from None

    # -- map() streams ----------------------------------------------------------------------

    def _map_with(
        self,
        name: str | Task[..., Any],
        items: Iterator[Iterable[Any]],
        ordered: bool,
        window: int,
        return_exceptions: bool,
        timeout_s: float | None,
        retries: int | None,
    ) -> Generator[Any, None, None]:
        """Check everything before the first `next()`, so a bad argument raises at the call."""
        _frontend.check_options(timeout_s, retries)
        state = _mapping.MapState(
            _frontend.SubmitEncoder(_frontend.task_name(name), timeout_s, retries),
            items,
            window=_mapping.check_window(window),
            ordered=bool(ordered),
            return_exceptions=bool(return_exceptions),
            max_payload_bytes=self.max_payload_bytes,
        )
        with self._lock:
            self._check_usable_locked()
        return self._stream(state)

    def _stream(self, state: _mapping.MapState) -> Generator[Any, None, None]:
        stream = _Stream()
        try:
            while True:
                for value, exc in state.take(stream.replies):
                    if exc is None:
                        yield value
                    elif state.return_exceptions:
                        yield exc
                    else:
                        raise exc
                while batch := state.fill(self._ids):
                    self._send_stream(stream, batch)
                if state.finished:
                    return
                if not stream.replies:
                    self._wait_stream(stream, state)
        finally:
            if state.in_flight:
                self._cancel_stream(state.in_flight)

    def _send_stream(self, stream: _Stream, batch: list[tuple[int, list[bytes]]]) -> None:
        with self._lock:
            self._check_usable_locked()
            streamed, sock, send = self._streamed, self._sock, _frontend.send_nowait
            try:
                for task_id, frames in batch:
                    streamed[task_id] = stream
                    send(sock, frames)
            except zmq.Again:
                raise _frontend.link_gone(self.address, self._refused) from None
            settled, wake = self._drain_locked(False)
            self._update_role_locked()
        if settled:
            self._settle(settled, wake)

    def _wait_stream(self, stream: _Stream, state: _mapping.MapState) -> None:
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
            raise ClientClosedError(f"the client for {self.address} was closed before a reply came")
        if not stream.replies:
            raise NeutrinoTimeoutError(
                f"map over task {state.encoder.name!r}: no reply from {self.address} within {self.timeout_s}s; "
                f"the {len(state.in_flight)} tasks in flight were cancelled. Raise Client(timeout_s=...)"
            )

    def _cancel_stream(self, in_flight: dict[int, int]) -> None:
        """Ask the orchestrator to cancel a closed stream's tasks, and forget them."""
        with self._lock:
            if self._closed:
                return
            streamed = self._streamed
            live = [task_id for task_id in in_flight if streamed.pop(task_id, None) is not None]
            try:
                for task_id in live:
                    self._send_locked(_frontend.cancel_frames(task_id))
            except HandshakeError:
                return  # never delivered, so there is nothing to cancel
            settled, wake = self._drain_locked(False)
            self._update_role_locked()
        if settled:
            self._settle(settled, wake)

    def _fail_streams_locked(self, error: BaseException) -> None:
        for stream in set(self._streamed.values()):
            stream.fail(error)
        self._streamed.clear()

    # -- receiving --------------------------------------------------------------------------

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
                _settle_one(fut, msg, None)  # the asking thread reads it (see _ask)
                continue
            if type(msg) is TaskReply:
                # Before the future settles, so its callbacks and waiters see it.
                fut.attempts = msg.attempts  # type: ignore[attr-defined]
            _settle_one(fut, *_frontend.outcome(msg))  # type: ignore[arg-type]
        if wake_receiver:
            with self._lock:
                if not self._closed:
                    self._rx_wake.set()

    def _check_handshake(self) -> None:
        """Read the monitor's events (I/O thread); on a refused handshake, fail what waits (see _refuse)."""
        with self._lock:
            if self._closed or self._monitor is None:
                return
            error = None
            for event, value in read_events(self._monitor):
                error = error or self._handshake.feed(event, value)
            if error is None or self._refused is not None:
                return
            self._refused = error
            waiting = [*self._pending.values(), *self._pings.values()]
            self._pending.clear()
            self._pings.clear()
            self._fail_streams_locked(HandshakeError(str(error), reason=error.reason))
            # Drops the requests still queued for the pod, so none is delivered after its caller
            # was told it failed (libzmq would otherwise keep reconnecting and send them later).
            self._sock.disconnect(self.address)
            self._update_role_locked()
        # Raised to whoever waits; logged loudly only when nobody does (the next request raises it).
        _log.log(logging.DEBUG if waiting else logging.WARNING, "%s", error)
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


def _settle_one(fut: Future[Any], value: Any, exc: BaseException | None) -> None:
    try:
        if exc is None:
            fut.set_result(value)
        else:
            fut.set_exception(exc)
    except InvalidStateError:
        pass  # cancelled by its owner between the reply and now
