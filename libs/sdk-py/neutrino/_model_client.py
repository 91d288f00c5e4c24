"""`ModelClient`: `POST /v1/models/{name}/predict` to a model's replicas, spread round robin, with retries.

Requests and answers are msgpack (`{"inputs": x}` -> `{"outputs": y}`; numpy arrays go as lists).
The blocking side keeps one keep-alive `http.client` connection per thread and replica (standard
library only); the async side one aiohttp session per event loop (aiohttp is imported on the first
async call; the model server's package depends on it). Each request starts at the next replica in
turn; a replica that refuses (connection refused or reset, 429, 503) or has not answered within the
per-attempt timeout (it took the connection and hangs) is left for the next one, and after a full
round without an answer the client backs off briefly (honouring `Retry-After`, capped), until the
request's deadline. Predict is taken to be free of side effects, so a request whose connection broke
or timed out mid-way is sent again: that is what saves requests when a replica dies or hangs.

The per-attempt timeout is `attempt_timeout_s`, else `$NEUTRINO_MODEL_ATTEMPT_TIMEOUT` (seconds),
else a third of the call's timeout: a hung replica leaves the call time for two more tries, and a
call given a long timeout for a slow model gives each try a long one too.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import math
import os
import threading
import time
import urllib.parse
from typing import Any

import msgpack

from . import _tracing
from .errors import (
    ModelBusyError,
    ModelError,
    ModelInputError,
    NeutrinoTimeoutError,
    ProtocolError,
    UnavailableError,
)

MSGPACK = "application/msgpack"
DEFAULT_TIMEOUT_S = 30.0
# After a full round of refusals: wait base * 2**round, capped, before the next round. Short, because
# the usual cause is one replica restarting while the others answer.
BACKOFF_BASE_S = 0.01
BACKOFF_MAX_S = 0.5
RETRY_STATUSES = frozenset({429, 503})
ATTEMPT_TIMEOUT_ENV = "NEUTRINO_MODEL_ATTEMPT_TIMEOUT"
ATTEMPTS_PER_TIMEOUT = 3  # without a per-attempt timeout set: each try gets this fraction of the call's


def _default(obj: Any) -> Any:
    tolist = getattr(obj, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return tolist()
    raise TypeError(f"cannot send a {type(obj).__name__} to a model; use lists, numbers, str, bytes, dicts")


def encode(x: Any) -> bytes:
    return msgpack.packb({"inputs": x}, default=_default, use_bin_type=True)  # type: ignore[no-any-return]


def _pause(last: _Refused | None, round_: int, deadline: float) -> float:
    """Seconds to wait after a round in which every replica refused: backoff, or the Retry-After
    a replica asked for when longer, never past the deadline."""
    pause: float = min(max(last.retry_after_s if last else 0.0, BACKOFF_BASE_S * 2.0**round_), BACKOFF_MAX_S)
    return max(0.0, min(pause, deadline - time.monotonic()))


class _Refused(Exception):
    """One replica did not take the request; try another."""

    def __init__(self, why: str, retry_after_s: float = 0.0, busy: bool = False, timed_out: bool = False) -> None:
        super().__init__(why)
        self.retry_after_s = retry_after_s
        self.busy = busy
        self.timed_out = timed_out


def attempt_timeout_from_env() -> float | None:
    """`$NEUTRINO_MODEL_ATTEMPT_TIMEOUT` in seconds, or None when unset; a ValueError naming it when not a
    positive number."""
    raw = os.environ.get(ATTEMPT_TIMEOUT_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{ATTEMPT_TIMEOUT_ENV}={raw!r}: write a positive number of seconds, e.g. 5")
    return value


def decode_answer(status: int, body: bytes, retry_after: str | None) -> Any:
    """The output for a 200, `_Refused` for a status worth another replica, else the matching ModelError."""
    if status in RETRY_STATUSES:
        try:
            wait = float(retry_after) if retry_after else 0.0
        except ValueError:
            wait = 0.0
        raise _Refused(f"HTTP {status}", wait, busy=status == 429)
    try:
        doc = msgpack.unpackb(body, raw=False)
    except Exception as exc:
        raise ProtocolError(f"model server sent an unreadable answer (HTTP {status}): {exc}") from None
    if status == 200 and isinstance(doc, dict) and "outputs" in doc:
        return doc["outputs"]
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        raise ProtocolError(f"model server answered HTTP {status} without outputs or error: {doc!r:.200}")
    cls = ModelInputError if status in (400, 422) else ModelError
    if status == 504:
        raise NeutrinoTimeoutError(f"model server deadline passed: {error.get('message')}")
    raise cls(
        str(error.get("message", "")),
        status=status,
        type=str(error.get("type", "error")),
        traceback=error.get("traceback"),
    )


class ModelClient:
    def __init__(
        self,
        name: str,
        urls: tuple[str, ...],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        attempt_timeout_s: float | None = None,
    ) -> None:
        if not urls:
            raise ValueError(f"model {name!r} has no replica URLs")
        if attempt_timeout_s is not None and not (math.isfinite(attempt_timeout_s) and attempt_timeout_s > 0):
            raise ValueError(f"attempt_timeout_s must be a positive number of seconds, got {attempt_timeout_s!r}")
        self.name = name
        self.urls = urls
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s if attempt_timeout_s is not None else attempt_timeout_from_env()
        self.path = f"/v1/models/{urllib.parse.quote(name)}/predict"
        self._targets = [urllib.parse.urlsplit(u) for u in urls]
        self._turn = itertools.count()
        self._local = threading.local()
        self._sessions: dict[int, tuple[asyncio.AbstractEventLoop, Any]] = {}

    # -- shared retry loop -------------------------------------------------------------------------

    def _order(self) -> list[int]:
        n = len(self.urls)
        start = next(self._turn) % n
        return [(start + i) % n for i in range(n)]

    def _attempt_s(self, budget_s: float, left_s: float) -> float:
        """How long the next try may take: the per-attempt timeout, within what is left of the call's."""
        return min(left_s, self.attempt_timeout_s or budget_s / ATTEMPTS_PER_TIMEOUT)

    def _give_up(self, last: _Refused | None, timeout_s: float) -> Exception:
        if last is not None and last.timed_out:
            return NeutrinoTimeoutError(f"model {self.name!r} did not answer within {timeout_s:g}s ({last})")
        if last is not None and last.busy:
            return ModelBusyError(
                f"every replica of model {self.name!r} stayed busy (429) for {timeout_s:g}s", status=429, type="busy"
            )
        return UnavailableError(
            f"no replica of model {self.name!r} answered within {timeout_s:g}s ({last}): {self.urls}"
        )

    # -- blocking --------------------------------------------------------------------------------

    @_tracing.model_call
    def predict(self, x: Any, *, timeout_s: float | None = None) -> Any:
        body = encode(x)
        budget = timeout_s or self.timeout_s
        deadline = time.monotonic() + budget
        last: _Refused | None = None
        for round_ in itertools.count():
            for i in self._order():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._give_up(last, budget)
                try:
                    return self._post(i, body, self._attempt_s(budget, left))
                except _Refused as exc:
                    last = exc
            time.sleep(_pause(last, round_, deadline))
        raise AssertionError("unreachable")

    def _post(self, i: int, body: bytes, timeout_s: float) -> Any:
        conns: dict[int, http.client.HTTPConnection] | None = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(i)
        if conn is None:
            target = self._targets[i]
            conn = conns[i] = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port or 80)
        conn.timeout = timeout_s
        if conn.sock is not None:
            conn.sock.settimeout(timeout_s)
        try:
            conn.request("POST", self.path, body, {"Content-Type": MSGPACK, "Accept": MSGPACK, **_tracing.headers()})
            resp = conn.getresponse()
            data = resp.read()
        except TimeoutError:  # connected and silent (or no connection) for the whole try: the next replica
            conn.close()
            del conns[i]
            raise _Refused(f"{self.urls[i]}: no answer within {timeout_s:.3g}s", timed_out=True) from None
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, closed mid-way
            conn.close()
            del conns[i]
            raise _Refused(f"{self.urls[i]}: {type(exc).__name__}: {exc}") from None
        if resp.will_close:
            conn.close()
            del conns[i]
        return decode_answer(resp.status, data, resp.getheader("Retry-After"))

    # -- async -----------------------------------------------------------------------------------

    @_tracing.amodel_call
    async def apredict(self, x: Any, *, timeout_s: float | None = None) -> Any:
        body = encode(x)
        budget = timeout_s or self.timeout_s
        deadline = time.monotonic() + budget
        session = self._session()
        last: _Refused | None = None
        for round_ in itertools.count():
            for i in self._order():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._give_up(last, budget)
                try:
                    return await self._apost(session, i, body, self._attempt_s(budget, left))
                except _Refused as exc:
                    last = exc
            await asyncio.sleep(_pause(last, round_, deadline))
        raise AssertionError("unreachable")

    def _session(self) -> Any:
        import aiohttp

        loop = asyncio.get_running_loop()
        entry = self._sessions.get(id(loop))
        if entry is not None and entry[0] is loop and not entry[1].closed:
            return entry[1]
        for key, (old_loop, _) in list(self._sessions.items()):
            if old_loop.is_closed():
                del self._sessions[key]
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), headers={"Content-Type": MSGPACK, "Accept": MSGPACK}
        )
        self._sessions[id(loop)] = (loop, session)
        return session

    async def _apost(self, session: Any, i: int, body: bytes, timeout_s: float) -> Any:
        import aiohttp

        try:
            async with session.post(
                self.urls[i] + self.path,
                data=body,
                headers=_tracing.headers(),
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                data = await resp.read()
                status, retry_after = resp.status, resp.headers.get("Retry-After")
        except TimeoutError:  # connected and no whole answer for the whole try: the next replica
            raise _Refused(f"{self.urls[i]}: no answer within {timeout_s:.3g}s", timed_out=True) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise _Refused(f"{self.urls[i]}: {type(exc).__name__}: {exc}") from None
        return decode_answer(status, data, retry_after)

    async def aclose(self) -> None:
        """Close this event loop's session (the blocking connections close with their threads)."""
        entry = self._sessions.pop(id(asyncio.get_running_loop()), None)
        if entry is not None:
            await entry[1].close()
