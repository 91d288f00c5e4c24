"""The worker's own ZMTP DEALER (zmtp.py) against libzmq's ROUTER, the orchestrator's backend socket
type: the handshake, routing ids, multipart messages of every frame size both ways, the peer going
away, and peers that are not a ZeroMQ ROUTER."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from neutrino_worker import zmtp

TIMEOUT_MS = 5000


@pytest.fixture
def router(tmp_path: Path) -> Iterator[tuple[zmq.Socket[Any], str]]:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    endpoint = f"ipc://{tmp_path}/backend.sock"
    sock.bind(endpoint)
    yield sock, endpoint
    sock.close()
    ctx.term()


def recv(router: zmq.Socket[Any]) -> list[bytes]:
    assert router.poll(TIMEOUT_MS), "nothing arrived at the ROUTER"
    frames: list[bytes] = router.recv_multipart()
    return frames


def test_messages_both_ways_under_the_routing_id(router: tuple[zmq.Socket[Any], str]) -> None:
    sock, endpoint = router
    dealer = zmtp.connect(endpoint, b"worker-001", timeout_s=5)
    try:
        dealer.send([b"hello", b"", b"world"])
        assert recv(sock) == [b"worker-001", b"hello", b"", b"world"]
        sock.send_multipart([b"worker-001", b"a", b"bc"])
        sock.send_multipart([b"worker-001", b"single"])
        assert dealer.recv() == [b"a", b"bc"]
        assert dealer.recv() == [b"single"]
    finally:
        dealer.close()


@pytest.mark.parametrize("size", [0, 255, 256, 65_536, 70_000, 3 * 2**20])
def test_frames_of_every_size_class(router: tuple[zmq.Socket[Any], str], size: int) -> None:
    """255 is the last short frame, 256 the first long one; larger than one read and than the socket buffer."""
    sock, endpoint = router
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    dealer = zmtp.connect(endpoint, b"w", timeout_s=5)
    try:
        dealer.send([b"head", payload])
        assert recv(sock) == [b"w", b"head", payload]
        sock.send_multipart([b"w", payload, b"tail"])
        assert dealer.recv() == [payload, b"tail"]
    finally:
        dealer.close()


def test_two_connections_are_two_peers(router: tuple[zmq.Socket[Any], str]) -> None:
    """The heartbeat's own connection (`<id>/hb`) is routed apart from the worker's."""
    sock, endpoint = router
    main, beat = zmtp.connect(endpoint, b"w-1", timeout_s=5), zmtp.connect(endpoint, b"w-1/hb", timeout_s=5)
    try:
        beat.send([b"beat"])
        main.send([b"result"])
        assert sorted([recv(sock), recv(sock)]) == [[b"w-1", b"result"], [b"w-1/hb", b"beat"]]
    finally:
        main.close()
        beat.close()


def test_the_peer_closing_is_reported(router: tuple[zmq.Socket[Any], str], tmp_path: Path) -> None:
    sock, endpoint = router
    dealer = zmtp.connect(endpoint, b"w", timeout_s=5)
    dealer.send([b"ready"])
    recv(sock)
    sock.close()  # the orchestrator going away
    with pytest.raises(zmtp.ConnectionClosed):
        dealer.recv()
    dealer.close()


def test_nothing_listening_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        zmtp.connect(f"ipc://{tmp_path}/nothing.sock", b"w", timeout_s=1)


@pytest.mark.parametrize(
    ("endpoint", "match"),
    [("backend.sock", "no scheme"), ("inproc://backend", "only ipc:// and tcp://")],
)
def test_unsupported_endpoints_are_refused_clearly(endpoint: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        zmtp.connect(endpoint, b"w", timeout_s=1)


def test_a_routing_id_libzmq_would_refuse_is_refused(router: tuple[zmq.Socket[Any], str]) -> None:
    _, endpoint = router
    with pytest.raises(ValueError, match="routing id"):
        zmtp.connect(endpoint, b"\x00generated", timeout_s=1)


def fake_peer(tmp_path: Path, reply: bytes) -> tuple[str, threading.Thread]:
    """A Unix socket server that answers any connection with `reply` and then waits for EOF."""
    path = tmp_path / "fake.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.sendall(reply)
                while conn.recv(4096):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"ipc://{path}", thread


def ready_command(socket_type: bytes) -> bytes:
    body = b"\x05READY" + b"\x0bSocket-Type" + len(socket_type).to_bytes(4, "big") + socket_type
    return bytes([0x04, len(body)]) + body


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n" + b" " * 64, "not a ZeroMQ socket"),
        (zmtp.GREETING[:10] + b"\x02\x00" + zmtp.GREETING[12:], "ZMTP 2"),
        (zmtp.GREETING[:12] + b"CURVE".ljust(20, b"\x00") + zmtp.GREETING[32:], "CURVE mechanism"),
        (zmtp.GREETING + ready_command(b"PUB"), "not a ROUTER"),
        (zmtp.GREETING + bytes([0x00, 2]) + b"hi", "not a READY command"),
        (zmtp.GREETING + bytes([0x84, 0]), "reserved frame flags"),
    ],
)
def test_a_peer_that_is_not_a_null_router_fails_the_handshake(tmp_path: Path, reply: bytes, match: str) -> None:
    endpoint, thread = fake_peer(tmp_path, reply)
    with pytest.raises(zmtp.ZmtpError, match=match):
        zmtp.connect(endpoint, b"w", timeout_s=5)
    thread.join(timeout=5)


def test_a_peer_that_hangs_up_mid_handshake(tmp_path: Path) -> None:
    path = tmp_path / "hangup.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        accepted: list[socket.socket] = []
        thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True)
        thread.start()
        dealer_error: list[BaseException] = []

        def connect() -> None:
            try:
                zmtp.connect(f"ipc://{path}", b"w", timeout_s=5)
            except BaseException as exc:
                dealer_error.append(exc)

        client = threading.Thread(target=connect, daemon=True)
        client.start()
        thread.join(timeout=5)
        accepted[0].sendall(zmtp.GREETING[:20])
        accepted[0].close()
        client.join(timeout=5)
    assert len(dealer_error) == 1 and isinstance(dealer_error[0], zmtp.ConnectionClosed), dealer_error


def test_a_ping_is_answered_with_its_context(tmp_path: Path) -> None:
    """libzmq pings even a ZMTP 3.0 peer when its socket has ZMQ_HEARTBEAT_IVL, and drops one that
    never answers; the backend ROUTER sets none, but a PING read meanwhile is answered (RFC 37)."""
    path = tmp_path / "ping.sock"
    ping = b"\x04PING" + b"\x00\x00" + b"ctx"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        received = bytearray()

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(
                    zmtp.GREETING + ready_command(b"ROUTER") + bytes([0x04, len(ping)]) + ping + b"\x00\x05hello"
                )
                while b"PONG" not in received and (chunk := conn.recv(4096)):
                    received.extend(chunk)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        dealer = zmtp.connect(f"ipc://{path}", b"w", timeout_s=5)
        try:
            assert dealer.recv() == [b"hello"]
            thread.join(timeout=5)
        finally:
            dealer.close()
    pong = b"\x04PONG" + b"ctx"
    assert bytes(received).endswith(bytes([0x04, len(pong)]) + pong)
