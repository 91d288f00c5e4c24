"""`Client`: submit tasks to an orchestrator over ZeroMQ and wait for their replies, from any thread.

The interface lives here; how the threads that use one `Client` share its socket (who receives,
who is woken, the invariant that keeps every reply from being lost) is `_thread_io.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any

import zmq

from . import _frontend, _mapping
from ._thread_io import ThreadIO, ThreadStream
from .errors import HandshakeError, NeutrinoTimeoutError
from .task import Task

__all__ = ["Client", "TaskFuture"]


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


class Client(ThreadIO):
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
            raise self._call_timeout(task, task_id) from None
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
        task, encoded = self._encode_many(name, iterables, timeout_s, retries)
        cancel = self._cancel
        batch = [(TaskFuture(task_id, task, cancel), frames) for task_id, frames in encoded]
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
    ) -> Generator[Any, None, None]:
        """`map()` with each item the positional arguments of one task, as `itertools.starmap`:
        `starmap("add", [(1, 2), (3, 4)])` runs add(1, 2) and add(3, 4); `()` calls without arguments."""
        items = iter(iterable)
        return self._stream(self._map_state(name, items, ordered, window, return_exceptions, timeout_s, retries))

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
            raise self._ping_timeout(timeout_s) from None
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
        self._close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._pending)} pending"
        return f"<Client {self.address} {state}>"

    # -- map() streams ----------------------------------------------------------------------

    def _stream(self, state: _mapping.MapState) -> Generator[Any, None, None]:
        stream = ThreadStream()
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

    def _send_stream(self, stream: ThreadStream, batch: list[tuple[int, list[bytes]]]) -> None:
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

    def _cancel_stream(self, in_flight: dict[int, int]) -> None:
        """Ask the orchestrator to cancel a closed stream's tasks, and forget them."""
        with self._lock:
            if self._closed:
                return
            try:
                for task_id in self._forget_streamed(in_flight):
                    self._send_locked(_frontend.cancel_frames(task_id))
            except HandshakeError:
                return  # never delivered, so there is nothing to cancel
            settled, wake = self._drain_locked(False)
            self._update_role_locked()
        if settled:
            self._settle(settled, wake)

    # -- waiting for one reply --------------------------------------------------------------

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
