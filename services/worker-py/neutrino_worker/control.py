"""The zygote's end of the control link: u32 length-prefixed records over a Unix stream socket (SPEC §3).

A message is one record (header and meta), followed by a second (its payload) for the types that
carry one (`ZygoteCatalog`, which only the zygote sends)."""

from __future__ import annotations

import logging
import socket

from neutrino_protocol import (
    CONTROL_MAX_BYTES,
    CONTROL_MAX_PAYLOAD_BYTES,
    Message,
    ProtocolError,
    control_payload_follows,
    decode_control,
    encode_control,
)

MAX_BODY_BYTES = CONTROL_MAX_BYTES  # SPEC §3: a control message body is at most 1 MiB
_RECV_BYTES = 64 * 1024

log = logging.getLogger("neutrino.zygote")


class LinkClosed(Exception):
    """The orchestrator closed the control link, or broke the protocol so badly the stream cannot be trusted."""


class ControlLink:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    @classmethod
    def connect(cls, path: str) -> ControlLink:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        return cls(sock)

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, msg: Message) -> None:
        try:
            self._sock.sendall(encode_control(msg))
        except OSError as exc:
            raise LinkClosed(f"control link write failed: {exc}") from exc

    def receive(self) -> list[Message]:
        """Read what is available (call when the socket is readable) and return the complete messages.

        Raises LinkClosed on EOF, on a body over the size limit (the framing is lost) and on a peer
        that speaks another protocol version. Malformed messages and unknown types are logged and skipped:
        the length prefix keeps the stream in step, so one bad message does not poison the next."""
        try:
            data = self._sock.recv(_RECV_BYTES)
        except OSError as exc:
            raise LinkClosed(f"control link read failed: {exc}") from exc
        if not data:
            raise LinkClosed("the orchestrator closed the control link")
        buffer = self._buffer
        buffer += data
        messages: list[Message] = []
        while len(buffer) >= 4:
            size = int.from_bytes(buffer[:4], "big")
            if size > MAX_BODY_BYTES:
                raise LinkClosed(f"control message of {size} bytes exceeds the {MAX_BODY_BYTES}-byte limit")
            if len(buffer) < 4 + size:
                break
            end = 4 + size
            payload = None
            if size >= 4 and control_payload_follows(buffer[7]):
                if len(buffer) < end + 4:
                    break
                payload_size = int.from_bytes(buffer[end : end + 4], "big")
                if payload_size > CONTROL_MAX_PAYLOAD_BYTES:
                    raise LinkClosed(f"control payload of {payload_size} bytes exceeds the limit")
                if len(buffer) < end + 4 + payload_size:
                    break
                payload = bytes(buffer[end + 4 : end + 4 + payload_size])
                end += 4 + payload_size
            body = bytes(buffer[4 : 4 + size])
            del buffer[:end]
            try:
                messages.append(decode_control(body, payload))
            except ProtocolError as exc:
                if exc.kind == "version":
                    raise LinkClosed(str(exc)) from exc
                level = logging.DEBUG if exc.kind == "type" else logging.WARNING
                log.log(level, "ignoring control message: %s", exc)
        return messages
