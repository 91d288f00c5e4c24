"""What `Client` and `AsyncClient` share: one frontend connection, the tables of what waits for a
reply on it, the checks made before anything is sent, and the errors both raise.

The two differ only in how they wait: threads sharing the socket behind a lock (`_thread_io.py`),
or the event loop's reader on it (`_loop_io.py`). Nothing here runs per task, so the hot paths
stay in those modules.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import zmq

from . import _frontend, _mapping
from ._handshake import HandshakeWatch, read_events
from .codec import pack_args
from .errors import ClientClosedError, HandshakeError, NeutrinoError, NeutrinoTimeoutError
from .task import Task


class Failable(Protocol):
    """A map() stream, as the shared code sees it: it can be failed as a whole."""

    def fail(self, error: BaseException) -> None: ...


FutureT = TypeVar("FutureT")
StreamT = TypeVar("StreamT", bound=Failable)


class ClientCore(Generic[FutureT, StreamT]):
    """The connection and its tables; `FutureT` is the clients' future type, `StreamT` their map() stream."""

    # The public class's name, for the messages that tell the user what to create or raise.
    _kind = "Client"

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
        # What the clients poll: the socket's edge-triggered FD, and the handshake monitor's.
        self._fd: int = self._sock.getsockopt(zmq.FD)  # type: ignore[assignment]
        self._monitor_fd: int | None = None if self._monitor is None else self._monitor.getsockopt(zmq.FD)  # type: ignore[assignment]
        # Set when the pod refused the handshake: every later request raises it (see _refuse).
        self._refused: HandshakeError | None = None
        # Ids only need to be unique among this client's unanswered tasks (SPEC.md §4.2); a counter
        # never repeats, and next() on it is atomic under the GIL.
        self._ids = itertools.count(1)
        # Task id -> its future; nonce -> the future of a request answered by nonce (Ping,
        # DescribeTasks), numbered from the same counter; map() task id -> its stream.
        self._pending: dict[int, FutureT] = {}
        self._pings: dict[int, FutureT] = {}
        self._streamed: dict[int, StreamT] = {}
        self._frames = _frontend.SubmitFrames(self.max_payload_bytes)
        self._closed = False
        self._open()

    def _open(self) -> None:
        """Set up how this client waits (its threads, or its event loop): the last step of `__init__`."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        return self._closed

    # -- before sending ---------------------------------------------------------------------

    def _unusable(self) -> NeutrinoError:
        """What a request on a closed client, or one whose pod refused the handshake, raises."""
        if self._closed:
            return ClientClosedError(f"the client for {self.address} is closed; create a new {self._kind}")
        assert self._refused is not None
        return HandshakeError(str(self._refused), reason=self._refused.reason)

    def _map_state(
        self,
        name: str | Task[..., Any],
        items: Iterator[Iterable[Any]],
        ordered: bool,
        window: int,
        return_exceptions: bool,
        timeout_s: float | None,
        retries: int | None,
    ) -> _mapping.MapState:
        """A map()'s state, every argument checked: a bad one raises at the call, not at the first `next()`."""
        _frontend.check_options(timeout_s, retries)
        state = _mapping.MapState(
            _frontend.SubmitEncoder(_frontend.task_name(name), timeout_s, retries),
            items,
            window=_mapping.check_window(window),
            ordered=bool(ordered),
            return_exceptions=bool(return_exceptions),
            max_payload_bytes=self.max_payload_bytes,
        )
        if self._closed or self._refused is not None:
            raise self._unusable()
        return state

    def _encode_many(
        self,
        name: str | Task[..., Any],
        iterables: tuple[Iterable[Any], ...],
        timeout_s: float | None,
        retries: int | None,
    ) -> tuple[str, list[tuple[int, list[bytes]]]]:
        """submit_many()'s task name and its (task id, frames) per item, all encoded before any is sent."""
        _frontend.check_options(timeout_s, retries)
        items = _mapping.zip_arguments(iterables)
        encoder = _frontend.SubmitEncoder(_frontend.task_name(name), timeout_s, retries)
        task, limit, ids, no_args = encoder.name, self.max_payload_bytes, self._ids, _frontend.NO_ARGS
        encoded = []
        for args in items:
            payload = no_args if not args else _frontend.check_payload(task, pack_args(args, {}), limit)
            task_id = next(ids)
            encoded.append((task_id, encoder.frames(task_id, payload)))
        return task, encoded

    # -- when no reply will come ------------------------------------------------------------

    def _closed_error(self) -> ClientClosedError:
        return ClientClosedError(f"the client for {self.address} was closed before a reply came")

    def _call_timeout(self, task: str, task_id: int) -> NeutrinoTimeoutError:
        return NeutrinoTimeoutError(
            f"no reply to task {task!r} (id {task_id}) from {self.address} within {self.timeout_s}s; "
            f"the orchestrator was asked to cancel it. Raise {self._kind}(timeout_s=...) or use submit()"
        )

    def _ping_timeout(self, timeout_s: float) -> NeutrinoTimeoutError:
        return NeutrinoTimeoutError(
            f"orchestrator at {self.address} did not answer a ping within {timeout_s}s; "
            "check that it is running and listening on that address"
        )

    def _map_timeout(self, state: _mapping.MapState) -> NeutrinoTimeoutError:
        return NeutrinoTimeoutError(
            f"map over task {state.encoder.name!r}: no reply from {self.address} within {self.timeout_s}s; "
            f"the {len(state.in_flight)} tasks in flight were cancelled. Raise {self._kind}(timeout_s=...)"
        )

    def _abandon(self, error: BaseException) -> list[FutureT]:
        """Empty the tables: every stream fails with `error`; returns the futures that waited, for
        the caller to fail (each with its own exception, outside any lock)."""
        waiting = [*self._pending.values(), *self._pings.values()]
        self._pending.clear()
        self._pings.clear()
        for stream in set(self._streamed.values()):
            stream.fail(error)
        self._streamed.clear()
        return waiting

    def _forget_streamed(self, in_flight: dict[int, int]) -> list[int]:
        """The ids among a closed stream's tasks still waiting for a reply, forgotten: to be cancelled."""
        streamed = self._streamed
        return [task_id for task_id in in_flight if streamed.pop(task_id, None) is not None]

    # -- the handshake ----------------------------------------------------------------------

    def _read_refusal(self) -> HandshakeError | None:
        """Read the monitor's events (there is a monitor); the refusal they report, if any."""
        assert self._monitor is not None
        error = None
        for event, value in read_events(self._monitor):
            error = error or self._handshake.feed(event, value)
        return error

    def _refuse(self, error: HandshakeError) -> tuple[list[FutureT], bool]:
        """The pod refused the handshake: every later request raises `error`, and what waits fails.
        Returns the futures to fail with it, and whether anyone (a future or a stream) waited."""
        self._refused = error
        # Drops the requests still queued for the pod, so none is delivered after its caller was
        # told it failed (libzmq would otherwise keep reconnecting and send them later).
        self._sock.disconnect(self.address)
        anyone = bool(self._pending or self._pings or self._streamed)
        return self._abandon(HandshakeError(str(error), reason=error.reason)), anyone
