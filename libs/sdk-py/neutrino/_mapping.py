"""One `map()` stream's bookkeeping, shared by `Client.map` and `AsyncClient.map`; socket-free.

A stream sends at most `window` tasks ahead of its consumer: a task holds its credit from the
moment it is sent until its result is handed to the consumer, so results that wait for their turn
(`ordered=True`) hold credit too, and a consumer that stops taking results stops the sending
instead of growing a buffer. There is no Future per task: the client routes each reply to the
stream by task id (its `in_flight` table), and the stream turns it into a value or an exception
when the consumer comes for it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from neutrino_protocol import TaskRejected, TaskReply
from neutrino_protocol import payload as _payload

from . import _frontend
from .codec import pack_args

# Tasks a map keeps in flight by default: enough to keep a pod's workers and the link busy between
# two of the consumer's turns (a few ms of no-op tasks), few enough to bound what a stream holds.
DEFAULT_WINDOW = 1000
# Most tasks one `fill()` returns, whatever the window: bounds the frames built ahead of sending and
# how long a client holds its lock to send them (a stream fills again while room is left).
FILL_BATCH = 1024

_Outcome = tuple[Any, BaseException | None]


def check_window(window: int) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1 (the most tasks in flight at once), got {window!r}")
    return window


def zip_arguments(iterables: tuple[Iterable[Any], ...]) -> Iterator[tuple[Any, ...]]:
    """`map(task, *iterables)`'s argument tuples: one positional argument from each iterable, as the
    builtin `map` and `Executor.map` take them (stopping at the shortest)."""
    if not iterables:
        raise TypeError("map() needs at least one iterable of arguments: map(task, xs) calls task(x) for each x")
    return zip(*iterables, strict=False)


class MapState:
    """What one stream has sent, what its consumer has taken, and the replies in between."""

    __slots__ = (
        "_early",
        "_items",
        "_max_payload_bytes",
        "_packer",
        "encoder",
        "exhausted",
        "in_flight",
        "ordered",
        "return_exceptions",
        "sent",
        "taken",
        "window",
    )

    def __init__(
        self,
        encoder: _frontend.SubmitEncoder,
        items: Iterator[Iterable[Any]],
        *,
        window: int,
        ordered: bool,
        return_exceptions: bool,
        max_payload_bytes: int,
    ) -> None:
        self.encoder = encoder
        self.window = window
        self.ordered = ordered
        self.return_exceptions = return_exceptions
        # Task id -> the item's index, for every task sent whose reply the consumer has not taken.
        self.in_flight: dict[int, int] = {}
        self.sent = 0
        self.taken = 0
        self.exhausted = False
        self._items = items
        self._max_payload_bytes = max_payload_bytes
        # ordered: outcomes that arrived before their turn, by index (they still hold credit).
        self._early: dict[int, _Outcome] = {}
        # One Packer per stream, used only by the thread that iterates it (Packers are not shared).
        self._packer = _payload.new_packer()

    @property
    def finished(self) -> bool:
        return self.exhausted and self.sent == self.taken

    def fill(self, ids: Iterator[int]) -> list[tuple[int, list[bytes]]]:
        """The next tasks to send, as many as the window has room for (at most FILL_BATCH):
        (task id, frames) each; empty when there is no room or no item left.

        Items are pulled from the caller's iterable here, so a slow consumer also stops the pulling.
        Raises what the iterable raises, TypeError for an argument msgpack cannot encode, or
        PayloadTooLargeError."""
        batch: list[tuple[int, list[bytes]]] = []
        room = min(FILL_BATCH, self.window - (self.sent - self.taken))
        if room <= 0 or self.exhausted:
            return batch
        items, encoder, in_flight, pack = self._items, self.encoder, self.in_flight, self._packer.pack
        index = self.sent
        try:
            for _ in range(room):
                try:
                    args = next(items)
                except StopIteration:
                    self.exhausted = True
                    break
                payload = _frontend.NO_ARGS if type(args) is tuple and not args else self._pack(pack, args)
                task_id = next(ids)
                batch.append((task_id, encoder.frames(task_id, payload)))
                in_flight[task_id] = index
                index += 1
        finally:
            self.sent = index
        return batch

    def _pack(self, pack: Any, args: Iterable[Any]) -> bytes:
        if type(args) is not tuple and type(args) is not list:
            args = tuple(args)  # starmap's items may be any iterable of arguments
        try:
            payload: bytes = pack([args, {}])
        except (TypeError, ValueError, OverflowError):
            self._packer.reset()
            payload = pack_args(args, {})  # raises TypeError naming the argument at fault
        return _frontend.check_payload(self.encoder.name, payload, self._max_payload_bytes)

    def take(self, replies: deque[TaskReply | TaskRejected]) -> list[_Outcome]:
        """The outcomes the consumer may have now, in the order it gets them; counted as taken."""
        ready: list[_Outcome] = []
        in_flight, outcome = self.in_flight, _frontend.outcome
        if not self.ordered:
            while replies:
                msg = replies.popleft()
                if in_flight.pop(msg.id, None) is not None:
                    ready.append(outcome(msg))
        else:
            early = self._early
            while replies:
                msg = replies.popleft()
                index = in_flight.pop(msg.id, None)
                if index is not None:
                    early[index] = outcome(msg)
            turn = self.taken
            while turn in early:
                ready.append(early.pop(turn))
                turn += 1
        self.taken += len(ready)
        return ready
