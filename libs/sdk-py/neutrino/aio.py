"""`AsyncClient`: the asyncio twin of `Client`, driven by the event loop's reader on the socket's FD.

Everything runs on the loop's thread, so no locks. The socket keeps the `Client` invariant (see
client.py): whoever touches it drains it until `zmq.EVENTS` shows no POLLIN, so every send is
followed by a drain, and the loop's reader callback on the edge-triggered `zmq.FD` drains too.

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
import itertools
import logging
import os
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

import neutrino_protocol
import zmq
from neutrino_protocol import Pong, TaskCatalog, TaskRejected, TaskReply

from . import _frontend, _mapping
from ._handshake import HandshakeWatch, read_events
from .codec import pack_args
from .errors import ClientClosedError, HandshakeError, NeutrinoTimeoutError
from .task import Task

__all__ = ["AsyncClient", "AsyncTaskFuture"]

_log = logging.getLogger("neutrino.client")

_NO_ARGS = _frontend.NO_ARGS


class AsyncTaskFuture(asyncio.Future[Any]):
    """An asyncio Future for one submitted task; `task_id` is its id on the wire, `attempts` as
    on `TaskFuture` (None until the orchestrator answers).

    Cancelling it (directly, or by cancelling or timing out a coroutine awaiting it) also asks the
    orchestrator to cancel the task: a queued task is dropped, a running one interrupted.
    """

    def __init__(
        self, task_id: int, task: str, on_cancel: Callable[[int], None], *, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(loop=loop)
        self.task_id = task_id
        self.task = task
        self.attempts: int | None = None
        self._on_cancel = on_cancel

    def cancel(self, msg: Any | None = None) -> bool:
        if not super().cancel(msg):
            return False
        self._on_cancel(self.task_id)
        return True


class _AsyncStream:
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


class AsyncClient:
    """A connection to one orchestrator frontend for asyncio code; see `Client` for the semantics
    (CURVE keys included: `curve_server_key`, `curve_client_key`, HandshakeError)."""

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
        self._refused: HandshakeError | None = None
        self._monitor_fd: int | None = None if self._monitor is None else self._monitor.getsockopt(zmq.FD)  # type: ignore[assignment]
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._pings: dict[int, asyncio.Future[Any]] = {}
        self._streamed: dict[int, _AsyncStream] = {}
        self._frames = _frontend.SubmitFrames(self.max_payload_bytes)
        self._fd: int = self._sock.getsockopt(zmq.FD)  # type: ignore[assignment]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # -- public API -------------------------------------------------------------------------

    async def call(self, name: str | Task[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run a task and return its value; raise its TaskError/RejectedError, or NeutrinoTimeoutError."""
        fut = self.submit_with(name, args, kwargs)
        try:
            return await _wait(fut, self.timeout_s)
        except NeutrinoTimeoutError:
            raise NeutrinoTimeoutError(
                f"no reply to task {fut.task!r} (id {fut.task_id}) from {self.address} within {self.timeout_s}s; "
                "the orchestrator was asked to cancel it. Raise AsyncClient(timeout_s=...) or use submit()"
            ) from None

    def submit(self, name: str | Task[..., Any], /, *args: Any, **kwargs: Any) -> AsyncTaskFuture:
        """Send a task now and return a future for its value (call from a coroutine)."""
        return self.submit_with(name, args, kwargs)

    def submit_with(
        self,
        name: str | Task[..., Any],
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout_s: float | None = None,
        retries: int | None = None,
    ) -> AsyncTaskFuture:
        """`submit()` with per-call overrides of the task's `timeout` (seconds per attempt) and `retries`."""
        task = _frontend.task_name(name)
        task_id = next(self._ids)
        if timeout_s is None and retries is None and type(args) is tuple:
            frames = self._frames(task, task_id, args, kwargs or {})
        else:
            _frontend.check_options(timeout_s, retries)
            frames = _frontend.submit_frames(
                task_id, task, args, kwargs or {}, timeout_s, retries, max_payload_bytes=self.max_payload_bytes
            )
        fut = AsyncTaskFuture(task_id, task, self._cancel, loop=self._bind_loop())
        self._send(self._pending, task_id, fut, frames)
        return fut

    def submit_many(
        self,
        name: str | Task[..., Any],
        /,
        *iterables: Iterable[Any],
        timeout_s: float | None = None,
        retries: int | None = None,
    ) -> list[AsyncTaskFuture]:
        """Send one task per item and return their futures (call from a coroutine); see `Client.submit_many`."""
        _frontend.check_options(timeout_s, retries)
        items = _mapping.zip_arguments(iterables)
        encoder = _frontend.SubmitEncoder(_frontend.task_name(name), timeout_s, retries)
        loop = self._bind_loop()
        task, limit = encoder.name, self.max_payload_bytes
        batch = []
        for args in items:
            payload = _NO_ARGS if not args else _frontend.check_payload(task, pack_args(args, {}), limit)
            task_id = next(self._ids)
            batch.append((AsyncTaskFuture(task_id, task, self._cancel, loop=loop), encoder.frames(task_id, payload)))
        try:
            for fut, frames in batch:
                self._pending[fut.task_id] = fut
                self._send_frames(frames)
        except BaseException:
            for fut, _ in batch:
                self._pending.pop(fut.task_id, None)
            raise
        self._drain()
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
    ) -> AsyncGenerator[Any, None]:
        """Run the task once per item and iterate (`async for`) over the results; see `Client.map`.

        Closing the iterator (`await it.aclose()`, or `contextlib.aclosing`), leaving an `async for`
        (the iterator is finalized once dropped), or cancelling the task that iterates cancels the
        tasks in flight."""
        items = _mapping.zip_arguments(iterables)
        return self._map_with(name, items, ordered, window, return_exceptions, timeout_s, retries)

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
    ) -> AsyncGenerator[Any, None]:
        """`map()` with each item the positional arguments of one task; see `Client.starmap`."""
        return self._map_with(name, iter(iterable), ordered, window, return_exceptions, timeout_s, retries)

    async def ping(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """The orchestrator's load: queue_depth, workers, idle_workers, draining."""
        _frontend.check_options(timeout_s, None)
        try:
            result: dict[str, Any] = _frontend.pong_info(await self._ask(_frontend.ping_frames, timeout_s))
        except NeutrinoTimeoutError:
            raise NeutrinoTimeoutError(
                f"orchestrator at {self.address} did not answer a ping within {timeout_s}s; "
                "check that it is running and listening on that address"
            ) from None
        return result

    async def describe(self, timeout_s: float = 10.0) -> dict[str, dict[str, Any]]:
        """The tasks the orchestrator's app registered, with their JSON Schemas; see `Client.describe`."""
        _frontend.check_options(timeout_s, None)
        loop = self._bind_loop()
        deadline = loop.time() + timeout_s
        retry_s = _frontend.DESCRIBE_RETRY_FIRST_S
        answered = False
        while True:
            try:
                msg = await self._ask(_frontend.describe_frames, max(0.0, deadline - loop.time()))
            except NeutrinoTimeoutError:
                raise _frontend.describe_timeout(self.address, timeout_s, answered) from None
            catalog = _frontend.catalog_of(msg)
            if catalog is not None:
                return catalog
            answered = True
            left = deadline - loop.time()
            if left <= 0:
                raise _frontend.describe_timeout(self.address, timeout_s, answered)
            await asyncio.sleep(min(retry_s, left))
            retry_s = min(2 * retry_s, _frontend.DESCRIBE_RETRY_MAX_S)

    def cancel(self, task_id: int) -> None:
        """Ask the orchestrator to cancel a submitted task, queued or running; see `Client.cancel`.

        Not a coroutine: it only sends. The task's future stays pending until the orchestrator
        answers (TaskCancelledError, or the task's own outcome when that came first); cancelling
        the future itself instead settles it at once and discards the reply.
        """
        task_id = _frontend.check_task_id(task_id)
        if not self._closed and task_id in self._pending:
            self._send_frames(_frontend.cancel_frames(task_id))
            self._drain()

    async def aclose(self) -> None:
        """Disconnect; tasks still waiting fail with ClientClosedError. Idempotent."""
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
        waiting = [*self._pending.values(), *self._pings.values()]
        self._pending.clear()
        self._pings.clear()
        self._fail_streams(ClientClosedError(f"the client for {self.address} was closed before a reply came"))
        for fut in waiting:
            if not fut.done():
                fut.set_exception(ClientClosedError(f"the client for {self.address} was closed before a reply came"))

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- internals --------------------------------------------------------------------------

    async def _ask(self, frames_for: Callable[[int], list[bytes]], timeout_s: float) -> Any:
        """Send a request answered by nonce (Ping, DescribeTasks) and return the answer message;
        a bare NeutrinoTimeoutError (the caller words it) when none comes within `timeout_s`."""
        nonce = next(self._ids)
        fut: asyncio.Future[Any] = self._bind_loop().create_future()
        self._send(self._pings, nonce, fut, frames_for(nonce))
        try:
            return await _wait(fut, timeout_s)
        except NeutrinoTimeoutError:
            self._pings.pop(nonce, None)
            raise

    def _map_with(
        self,
        name: str | Task[..., Any],
        items: Iterator[Iterable[Any]],
        ordered: bool,
        window: int,
        return_exceptions: bool,
        timeout_s: float | None,
        retries: int | None,
    ) -> AsyncGenerator[Any, None]:
        """Check everything before the first `__anext__`, so a bad argument raises at the call."""
        _frontend.check_options(timeout_s, retries)
        state = _mapping.MapState(
            _frontend.SubmitEncoder(_frontend.task_name(name), timeout_s, retries),
            items,
            window=_mapping.check_window(window),
            ordered=bool(ordered),
            return_exceptions=bool(return_exceptions),
            max_payload_bytes=self.max_payload_bytes,
        )
        if self._closed:
            raise ClientClosedError(f"the client for {self.address} is closed; create a new AsyncClient")
        if self._refused is not None:
            raise HandshakeError(str(self._refused), reason=self._refused.reason)
        return self._stream(state)

    async def _stream(self, state: _mapping.MapState) -> AsyncGenerator[Any, None]:
        loop = self._bind_loop()
        stream = _AsyncStream()
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
                    await self._wait_stream(stream, state, loop)
        finally:
            if state.in_flight:
                self._cancel_stream(state.in_flight)

    def _send_stream(self, stream: _AsyncStream, batch: list[tuple[int, list[bytes]]]) -> None:
        self._bind_loop()  # raises once the client is closed or refused
        streamed = self._streamed
        for task_id, frames in batch:
            streamed[task_id] = stream
            self._send_frames(frames)
        self._drain()

    async def _wait_stream(
        self, stream: _AsyncStream, state: _mapping.MapState, loop: asyncio.AbstractEventLoop
    ) -> None:
        if stream.error is None:
            stream.waiter = loop.create_future()
            try:
                await _wait(stream.waiter, self.timeout_s)
            except NeutrinoTimeoutError:
                raise NeutrinoTimeoutError(
                    f"map over task {state.encoder.name!r}: no reply from {self.address} within {self.timeout_s}s; "
                    f"the {len(state.in_flight)} tasks in flight were cancelled. Raise AsyncClient(timeout_s=...)"
                ) from None
            finally:
                stream.waiter = None
        if stream.error is not None:
            raise stream.error

    def _cancel_stream(self, in_flight: dict[int, int]) -> None:
        """Ask the orchestrator to cancel a closed stream's tasks, and forget them."""
        if self._closed or self._refused is not None:
            return
        streamed = self._streamed
        try:
            for task_id in in_flight:
                if streamed.pop(task_id, None) is not None:
                    self._send_frames(_frontend.cancel_frames(task_id))
        except HandshakeError:
            return  # never delivered: nothing to cancel
        self._drain()

    def _fail_streams(self, error: BaseException) -> None:
        for stream in set(self._streamed.values()):
            stream.fail(error)
        self._streamed.clear()

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        if self._closed:
            raise ClientClosedError(f"the client for {self.address} is closed; create a new AsyncClient")
        if self._refused is not None:
            raise HandshakeError(str(self._refused), reason=self._refused.reason)
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
        if self._pending.pop(task_id, None) is not None and not self._closed and self._refused is None:
            try:
                self._send_frames(_frontend.cancel_frames(task_id))
            except HandshakeError:
                return  # never delivered: nothing to cancel
            self._drain()

    def _check_handshake(self) -> None:
        """The monitor's reader callback: on a refused handshake, fail every waiting future with
        HandshakeError and drop the queued requests (see `Client._check_handshake`)."""
        if self._closed or self._monitor is None or self._refused is not None:
            return
        error = None
        for event, value in read_events(self._monitor):
            error = error or self._handshake.feed(event, value)
        if error is None:
            return
        self._refused = error
        self._sock.disconnect(self.address)
        waiting = [*self._pending.values(), *self._pings.values()]
        # Raised to whoever waits; logged loudly only when nobody does (the next request raises it).
        _log.log(logging.DEBUG if waiting or self._streamed else logging.WARNING, "%s", error)
        self._pending.clear()
        self._pings.clear()
        self._fail_streams(HandshakeError(str(error), reason=error.reason))
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
            value, error = msg, None  # the asking coroutine reads it (see _ask)
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


async def _wait(fut: asyncio.Future[Any], timeout_s: float | None) -> Any:
    if timeout_s is None:
        return await fut
    try:
        async with asyncio.timeout(timeout_s):
            return await fut
    except TimeoutError:
        raise NeutrinoTimeoutError("timed out") from None
