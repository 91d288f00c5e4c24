"""Turning a refused ZeroMQ handshake into an error, instead of the silence ZeroMQ gives.

A task pod that refuses a client (its CURVE key is not allowed, or one side speaks CURVE and the
other plain text) closes the connection during the handshake; the client's messages wait in its
pipe forever and no reply ever comes. libzmq reports the failure only on a socket monitor, so every
tcp:// client socket gets one (`watch`), and `HandshakeWatch.feed` reads its events into a
`HandshakeError` that names the key and the fix. Socket-free apart from `watch`/`read_events`: the
clients and the gateway decide what a failure does to their tasks.
"""

from __future__ import annotations

from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from .errors import HandshakeError
from .keys import CLIENT_KEY_ENV, SERVER_KEY_ENV, CurveKeys

_SUCCEEDED = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)
_FAILED_NO_DETAIL = int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_FAILED_PROTOCOL = int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
_FAILED_AUTH = int(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_EVENTS = _SUCCEEDED | _FAILED_NO_DETAIL | _FAILED_PROTOCOL | _FAILED_AUTH
_MECHANISM_MISMATCH = int(zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
_ZMQ_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)

# A server that cannot decrypt our HELLO (we hold the wrong server key) just hangs up: the client
# sees "handshake failed, no detail", as it would if the pod died mid-handshake. One of those can be
# a restart; this many in a row (libzmq reconnects every 100 ms) is the key.
CLOSED_MID_HANDSHAKE_LIMIT = 3


def watch(sock: zmq.Socket[Any]) -> zmq.Socket[Any]:
    """A PAIR socket receiving `sock`'s handshake events; create it before `sock` connects."""
    monitor: zmq.Socket[Any] = sock.get_monitor_socket(_EVENTS)
    monitor.setsockopt(zmq.LINGER, 0)
    return monitor


def read_events(monitor: zmq.Socket[Any]) -> list[tuple[int, int]]:
    """Every queued (event, value), without blocking. Reads until the queue is empty, so the
    monitor's edge-triggered zmq.FD fires again on the next event. The FD fires only for events
    that come after a read: call this once before the first wait on it."""
    events = []
    while monitor.getsockopt(_ZMQ_EVENTS) & _POLLIN:  # type: ignore[operator]
        msg = recv_monitor_message(monitor, _NOBLOCK)
        events.append((int(msg["event"]), int(msg["value"])))
    return events


class HandshakeWatch:
    """Reads one socket's handshake events; `feed` returns the error once the link is refused."""

    def __init__(self, address: str, keys: CurveKeys | None) -> None:
        self.address = address
        self.keys = keys
        self.closed_in_a_row = 0

    def feed(self, event: int, value: int) -> HandshakeError | None:
        if event == _SUCCEEDED:
            self.closed_in_a_row = 0
            return None
        if event == _FAILED_AUTH:
            return self._refused(value)
        if event == _FAILED_PROTOCOL:
            if value == _MECHANISM_MISMATCH:
                return self._mismatch()
            return HandshakeError(
                f"the ZeroMQ handshake with the task pod at {self.address} failed (protocol error {value:#x}); "
                "check that both sides run a current Neutrino and the same security (CURVE or plain)",
                reason="protocol",
            )
        if event == _FAILED_NO_DETAIL:
            self.closed_in_a_row += 1
            if self.closed_in_a_row >= CLOSED_MID_HANDSHAKE_LIMIT:
                return self._closed()
        return None

    def _refused(self, status: int) -> HandshakeError:
        key = self.keys.public_key.decode() if self.keys is not None else "(none)"
        return HandshakeError(
            f"the task pod at {self.address} refused this client's CURVE key {key} (ZAP status {status}): "
            "add this client's NAME.key file to the pod's --curve-clients allowlist (NEUTRINO_CURVE_CLIENTS), "
            f"or use a key pair that is in it ({CLIENT_KEY_ENV} / curve_client_key)",
            reason="refused",
        )

    def _mismatch(self) -> HandshakeError:
        if self.keys is None:
            return HandshakeError(
                f"the task pod at {self.address} requires CURVE encryption and this client speaks plain text: "
                f"pass curve_server_key= (the pod's NAME.key) and curve_client_key= (this client's "
                f"NAME.key_secret), or set {SERVER_KEY_ENV} and {CLIENT_KEY_ENV}",
                reason="mechanism",
            )
        return HandshakeError(
            f"the task pod at {self.address} speaks plain text and this client CURVE (server key "
            f"{self.keys.server_key.decode()}): start the pod with --curve-secret-key and --curve-clients, "
            f"or drop this client's keys ({SERVER_KEY_ENV} / {CLIENT_KEY_ENV})",
            reason="mechanism",
        )

    def _closed(self) -> HandshakeError:
        if self.keys is None:
            return HandshakeError(
                f"the task pod at {self.address} closed the connection during the ZeroMQ handshake "
                f"{self.closed_in_a_row} times in a row, most likely because it requires CURVE and this client "
                f"speaks plain text: pass curve_server_key= (the pod's NAME.key) and curve_client_key= (this "
                f"client's NAME.key_secret), or set {SERVER_KEY_ENV} and {CLIENT_KEY_ENV}",
                reason="closed",
            )
        return HandshakeError(
            f"the task pod at {self.address} closed the connection during the CURVE handshake "
            f"{self.closed_in_a_row} times in a row: the server key {self.keys.server_key.decode()} is most "
            f"likely not this pod's; give the pod's own NAME.key ({SERVER_KEY_ENV} / curve_server_key)",
            reason="closed",
        )
