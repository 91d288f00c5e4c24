"""`AsyncClient`: the asyncio twin of `Client`, driven by the event loop's reader on the socket's FD.

The interface lives here; how it sends, and settles replies from the loop's reader callback without
a Future per message, is `_loop_io.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

from . import _frontend, _mapping
from ._loop_io import LoopIO, LoopStream, wait
from .errors import HandshakeError, NeutrinoTimeoutError
from .task import Task

__all__ = ["AsyncClient", "AsyncTaskFuture"]


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


class AsyncClient(LoopIO):
    """A connection to one orchestrator frontend for asyncio code; see `Client` for the semantics
    (CURVE keys included: `curve_server_key`, `curve_client_key`, HandshakeError)."""

    # -- public API -------------------------------------------------------------------------

    async def call(self, name: str | Task[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run a task and return its value; raise its TaskError/RejectedError, or NeutrinoTimeoutError."""
        fut = self.submit_with(name, args, kwargs)
        try:
            return await wait(fut, self.timeout_s)
        except NeutrinoTimeoutError:
            raise self._call_timeout(fut.task, fut.task_id) from None

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
        loop = self._bind_loop()
        task, encoded = self._encode_many(name, iterables, timeout_s, retries)
        cancel = self._cancel
        batch = [(AsyncTaskFuture(task_id, task, cancel, loop=loop), frames) for task_id, frames in encoded]
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
        return self._stream(self._map_state(name, items, ordered, window, return_exceptions, timeout_s, retries))

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
        items = iter(iterable)
        return self._stream(self._map_state(name, items, ordered, window, return_exceptions, timeout_s, retries))

    async def ping(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """The orchestrator's load: queue_depth, workers, idle_workers, draining."""
        _frontend.check_options(timeout_s, None)
        try:
            result: dict[str, Any] = _frontend.pong_info(await self._ask(_frontend.ping_frames, timeout_s))
        except NeutrinoTimeoutError:
            raise self._ping_timeout(timeout_s) from None
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
        self._close()

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
            return await wait(fut, timeout_s)
        except NeutrinoTimeoutError:
            self._pings.pop(nonce, None)
            raise

    async def _stream(self, state: _mapping.MapState) -> AsyncGenerator[Any, None]:
        loop = self._bind_loop()
        stream = LoopStream()
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

    def _send_stream(self, stream: LoopStream, batch: list[tuple[int, list[bytes]]]) -> None:
        self._bind_loop()  # raises once the client is closed or refused
        streamed = self._streamed
        for task_id, frames in batch:
            streamed[task_id] = stream
            self._send_frames(frames)
        self._drain()

    def _cancel_stream(self, in_flight: dict[int, int]) -> None:
        """Ask the orchestrator to cancel a closed stream's tasks, and forget them."""
        if self._closed or self._refused is not None:
            return
        try:
            for task_id in self._forget_streamed(in_flight):
                self._send_frames(_frontend.cancel_frames(task_id))
        except HandshakeError:
            return  # never delivered: nothing to cancel
        self._drain()
