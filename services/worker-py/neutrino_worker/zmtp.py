"""A ZeroMQ DEALER for the worker's backend link, spoken directly on a socket: ZMTP 3.0 (RFC 23)
with the NULL mechanism, in this one thread.

Why not pyzmq here: a worker is forked again for every `--max-tasks-per-worker` recycle, and a
`zmq.Context` costs each one two libzmq threads (I/O and reaper), their stacks, and a wake-up of
the I/O thread for every message sent or received. Once a process has a second thread, every
copy-on-write fault it takes also flushes the TLB of the other CPUs. Measured on the quickstart
app (issue 11), the context, its threads and its connection were a third of a recycled worker's
CPU. This module is the whole of what a worker needs instead: connect, one handshake, then
blocking reads and writes of whole messages, in the calling thread.

It is the same wire: the orchestrator's ROUTER (libzmq) sees a DEALER whose routing id is the
`Identity` of its READY command (SPEC.md §2). It speaks only what that link uses: `ipc://`
(and `tcp://`, for tests), the NULL mechanism, no CURVE. A command from the peer is ignored,
except a ZMTP 3.1 PING, which is answered with PONG.
"""

from __future__ import annotations

import socket
import struct

# The greeting (RFC 23 §"Greeting"): signature, version 3.0, mechanism NULL, as-server 0, filler.
_SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"
GREETING = _SIGNATURE + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31
_GREETING_SIZE = 64
_MECHANISM = slice(12, 32)

_MORE = 0x01
_LONG = 0x02
_COMMAND = 0x04
_SHORT_MAX = 255
_LONG_SIZE = struct.Struct(">Q")
_RECV_CHUNK = 65536
_PING = b"\x04PING"


class ZmtpError(Exception):
    """The peer does not speak the ZMTP this module speaks, or broke the framing."""


class ConnectionClosed(Exception):
    """The peer closed or reset the connection (the orchestrator is gone, or dropped this peer)."""


def connect(endpoint: str, routing_id: bytes, timeout_s: float | None = None) -> Dealer:
    """Connect to a ROUTER at `endpoint` as a DEALER with `routing_id`, and complete the handshake.

    `timeout_s` bounds the connect and the handshake; the returned socket blocks without limit."""
    dealer = open_connection(endpoint, routing_id, timeout_s)
    try:
        dealer.complete_handshake(timeout_s)
    except BaseException:
        dealer.close()
        raise
    return dealer


def open_connection(endpoint: str, routing_id: bytes, timeout_s: float | None = None) -> Dealer:
    """Connect and send our half of the handshake (greeting and READY, one write), without waiting
    for the peer's: `Dealer.complete_handshake` reads it, in this process or in a child forked
    meanwhile, which is how the zygote starts a worker's connection before forking it.
    `timeout_s` 0: fail (BlockingIOError) rather than wait for anything."""
    if len(routing_id) > _SHORT_MAX or routing_id.startswith(b"\x00"):
        raise ValueError(f"routing id {routing_id!r}: at most 255 bytes, not starting with a zero byte")
    sock = _open(endpoint, timeout_s)
    dealer = Dealer(sock)
    try:
        greeting = hello(b"DEALER", routing_id)
        dealer._send_parts([greeting], len(greeting))
    except BaseException:
        sock.close()
        raise
    return dealer


def _open(endpoint: str, timeout_s: float | None) -> socket.socket:
    scheme, sep, address = endpoint.partition("://")
    if not sep:
        raise ValueError(f"backend endpoint {endpoint!r} has no scheme; expected ipc://PATH or tcp://HOST:PORT")
    if scheme == "ipc":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A Unix connect completes at once, or fails with EAGAIN while the listener's backlog is
        # full: blocking, the kernel waits for room instead (any timeout but 0 does, then).
        sock.settimeout(0.0 if timeout_s == 0 else None)
        # libzmq's abstract-namespace spelling: ipc://@name
        path = "\0" + address[1:] if address.startswith("@") else address
        try:
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return sock
    if scheme == "tcp":
        host, _, port = address.rpartition(":")
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise ValueError(f"backend endpoint {endpoint!r}: only ipc:// and tcp:// are supported")


def hello(socket_type: bytes, routing_id: bytes | None = None) -> bytes:
    """The greeting and READY command a peer of `socket_type` opens a connection with."""
    properties = _property(b"Socket-Type", socket_type)
    if routing_id is not None:
        properties += _property(b"Identity", routing_id)
    return GREETING + _command(b"READY", properties)


def _command(name: bytes, body: bytes) -> bytes:
    data = bytes([len(name)]) + name + body
    if len(data) <= _SHORT_MAX:
        return bytes([_COMMAND, len(data)]) + data
    return bytes([_COMMAND | _LONG]) + _LONG_SIZE.pack(len(data)) + data


def _property(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + struct.pack(">I", len(value)) + value


def _properties(body: bytes) -> dict[bytes, bytes]:
    props = {}
    pos = 0
    while pos < len(body):
        size = body[pos]
        name = body[pos + 1 : pos + 1 + size]
        pos += 1 + size
        if pos + 4 > len(body):
            raise ZmtpError("truncated property in READY")
        (length,) = struct.unpack_from(">I", body, pos)
        pos += 4
        props[name.lower()] = body[pos : pos + length]
        pos += length
    if pos != len(body):
        raise ZmtpError("truncated property value in READY")
    return props


def _frame_header(size: int, more: bool) -> bytes:
    """The flags and size that precede a message frame of `size` bytes."""
    if size <= _SHORT_MAX:
        return bytes((_MORE if more else 0, size))
    return bytes((_LONG | _MORE if more else _LONG,)) + _LONG_SIZE.pack(size)


def _framed(frames: list[bytes]) -> tuple[list[bytes], int]:
    """A multipart message as the buffers to write (each frame after its header), and their size."""
    parts: list[bytes] = []
    total = 0
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        header = _frame_header(len(frame), i < last)
        parts.append(header)
        parts.append(frame)
        total += len(header) + len(frame)
    return parts, total


class Dealer:
    """One connected DEALER: `send` and `recv` whole multipart messages, blocking.

    Not thread-safe: one thread owns it (the heartbeat thread opens a Dealer of its own)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()
        self._pos = 0

    def settimeout(self, timeout_s: float | None) -> None:
        self._sock.settimeout(timeout_s)

    def complete_handshake(self, timeout_s: float | None = None) -> None:
        """Read and check the peer's greeting and READY (within `timeout_s`); after it, reads and
        writes block without limit.

        No message may be sent before the peer's READY is in: libzmq drops a connection whose
        first frame after READY arrives while it is still sending its own (measured)."""
        self._sock.settimeout(timeout_s)
        greeting = self._take(_GREETING_SIZE)
        if greeting[0] != 0xFF or greeting[9] != 0x7F:
            raise ZmtpError("the peer is not a ZeroMQ socket (no ZMTP signature)")
        if greeting[10] < 3:
            raise ZmtpError(f"the peer speaks ZMTP {greeting[10]}.x; 3.0 or later is needed")
        mechanism = greeting[_MECHANISM].rstrip(b"\x00")
        if mechanism != b"NULL":
            raise ZmtpError(
                f"the peer wants the {mechanism.decode(errors='replace')} mechanism; only NULL is spoken here"
            )
        flags, body = self._frame()
        if not flags & _COMMAND or not body.startswith(b"\x05READY"):
            raise ZmtpError("the peer's first frame is not a READY command")
        socket_type = _properties(body[6:]).get(b"socket-type")
        if socket_type != b"ROUTER":
            raise ZmtpError(f"the peer is a {socket_type!r} socket, not a ROUTER")
        self._sock.settimeout(None)

    def send(self, frames: list[bytes]) -> None:
        """Send one multipart message (one write when the kernel takes it all)."""
        self._send_parts(*_framed(frames))

    def _send_parts(self, parts: list[bytes], total: int) -> None:
        try:
            sent = self._sock.sendmsg(parts)
            if sent != total:
                # A partial write (a large message, a full socket buffer): the rest as one buffer.
                self._sock.sendall(b"".join(parts)[sent:])
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ConnectionClosed(f"the peer closed the connection ({exc})") from exc

    def recv(self) -> list[bytes]:
        """The next multipart message; commands (PING) are handled on the way."""
        frames = []
        while True:
            flags, body = self._frame()
            if flags & _COMMAND:
                if body.startswith(_PING):
                    # RFC 37: PONG echoes the PING's context (after its 2-byte TTL).
                    pong = _command(b"PONG", body[len(_PING) + 2 :])
                    self._send_parts([pong], len(pong))
                continue
            frames.append(body)
            if not flags & _MORE:
                return frames

    def close(self) -> None:
        self._sock.close()

    def _frame(self) -> tuple[int, bytes]:
        head = self._take(2)
        flags = head[0]
        if flags & ~(_MORE | _LONG | _COMMAND):
            raise ZmtpError(f"reserved frame flags set: {flags:#04x}")
        if flags & _LONG:
            (size,) = _LONG_SIZE.unpack(bytes([head[1]]) + self._take(7))
        else:
            size = head[1]
        return flags, self._take(size)

    def _take(self, size: int) -> bytes:
        """Exactly `size` bytes from the stream."""
        buf = self._buf
        pos = self._pos
        end = pos + size
        if len(buf) < end and size > _RECV_CHUNK:
            return self._take_large(size)
        while len(buf) < end:
            if pos:
                del buf[:pos]
                end -= pos
                pos = 0
            buf += self._recv(_RECV_CHUNK)
        data = bytes(buf[pos:end])
        if end == len(buf):
            buf.clear()
            self._pos = 0
        else:
            self._pos = end
        return data

    def _take_large(self, size: int) -> bytes:
        """A frame larger than one read, received straight into a buffer of its size."""
        out = bytearray(size)
        have = len(self._buf) - self._pos
        out[:have] = self._buf[self._pos :]
        self._buf.clear()
        self._pos = 0
        with memoryview(out) as view:
            while have < size:
                try:
                    got = self._sock.recv_into(view[have:])
                except ConnectionResetError as exc:
                    raise ConnectionClosed(f"the peer reset the connection ({exc})") from exc
                if not got:
                    raise ConnectionClosed("the peer closed the connection")
                have += got
        return bytes(out)

    def _recv(self, most: int) -> bytes:
        try:
            chunk = self._sock.recv(most)
        except ConnectionResetError as exc:
            raise ConnectionClosed(f"the peer reset the connection ({exc})") from exc
        if not chunk:
            raise ConnectionClosed("the peer closed the connection")
        return chunk
