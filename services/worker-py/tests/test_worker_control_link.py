"""ControlLink unit tests over a socketpair: framing, partial reads, and what ends the link."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from neutrino_protocol import Fork, Forked, Shutdown, ZygoteCatalog, encode_control
from neutrino_worker.control import MAX_BODY_BYTES, ControlLink, LinkClosed


@pytest.fixture
def pair() -> Iterator[tuple[ControlLink, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.settimeout(5)
    yield ControlLink(ours), theirs
    ours.close()
    theirs.close()


def test_send_writes_a_length_prefixed_message(pair: tuple[ControlLink, socket.socket]) -> None:
    link, peer = pair
    link.send(Forked("w-1", 42))
    expected = encode_control(Forked("w-1", 42))
    assert peer.recv(1024) == expected


def test_messages_split_and_batched_arbitrarily(pair: tuple[ControlLink, socket.socket]) -> None:
    link, peer = pair
    stream = encode_control(Fork(["a", "b"])) + encode_control(Shutdown(graceful=True))
    peer.sendall(stream[:3])
    assert link.receive() == []
    peer.sendall(stream[3:10])
    assert link.receive() == []
    peer.sendall(stream[10:])
    assert link.receive() == [Fork(["a", "b"]), Shutdown(graceful=True)]


def test_malformed_and_unknown_messages_are_skipped(pair: tuple[ControlLink, socket.socket]) -> None:
    link, peer = pair
    garbage = b"NT\x01\x22\xc1"  # Fork header, invalid meta
    unknown = b"NT\x01\x7f\x80"  # unknown type, empty map
    frames = [garbage, unknown, b"xy"]
    peer.sendall(b"".join(len(f).to_bytes(4, "big") + f for f in frames) + encode_control(Shutdown(graceful=False)))
    assert link.receive() == [Shutdown(graceful=False)]


def test_eof_closes_the_link(pair: tuple[ControlLink, socket.socket]) -> None:
    link, peer = pair
    peer.close()
    with pytest.raises(LinkClosed):
        link.receive()


def test_oversized_message_closes_the_link(pair: tuple[ControlLink, socket.socket]) -> None:
    link, peer = pair
    peer.sendall((MAX_BODY_BYTES + 1).to_bytes(4, "big"))
    with pytest.raises(LinkClosed, match="limit"):
        link.receive()


def test_other_protocol_version_closes_the_link(pair: tuple[ControlLink, socket.socket]) -> None:
    link, peer = pair
    body = b"NT\x02\x22\x80"
    peer.sendall(len(body).to_bytes(4, "big") + body)
    with pytest.raises(LinkClosed, match="version"):
        link.receive()


def test_a_payload_record_follows_its_message(pair: tuple[ControlLink, socket.socket]) -> None:
    link, peer = pair
    catalog = ZygoteCatalog(tasks=["add"], build_ms=1.5, payload=b"\x81\xa3add\x80")
    stream = encode_control(catalog) + encode_control(Shutdown(graceful=True))
    body_end = int.from_bytes(stream[:4], "big") + 4
    peer.sendall(stream[: body_end + 2])  # the message, and part of its payload record
    assert link.receive() == []
    peer.sendall(stream[body_end + 2 :])
    assert link.receive() == [catalog, Shutdown(graceful=True)]


def test_send_writes_the_payload_as_a_second_record(pair: tuple[ControlLink, socket.socket]) -> None:
    link, peer = pair
    link.send(ZygoteCatalog(tasks=[], build_ms=0.5, payload=b"\x80"))
    data = peer.recv(1024)
    size = int.from_bytes(data[:4], "big")
    assert data[4 + size :] == b"\x00\x00\x00\x01\x80"
