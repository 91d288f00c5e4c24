"""`map()`'s wire and edge cases against the stand-in orchestrator (tests/sdk_peer.py): the frames it
sends, timeouts, a closed client, rejections and stray replies. Behaviour against the real
orchestrator (ordering, cancellation, back-pressure) is in tests/test_map.py."""

from __future__ import annotations

import asyncio
import threading

import msgpack
import pytest
import zmq
from neutrino import AsyncClient, BusyError, Client, ClientClosedError, HandshakeError, NeutrinoTimeoutError
from neutrino._frontend import SubmitEncoder, pack_uint
from neutrino.codec import unpack_args
from neutrino_protocol import SubmitTask
from sdk_peer import Peer


@pytest.mark.parametrize(
    "n", [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0xFFFFFFFF, 0x100000000, 0xFFFFFFFFFFFFFFFF]
)
def test_pack_uint_is_msgpacks_smallest_form(n: int) -> None:
    assert pack_uint(n) == msgpack.packb(n)


OVERRIDES = [(None, None), (2.5, None), (None, 3), (1, 0)]


@pytest.mark.parametrize(("timeout_s", "retries"), OVERRIDES, ids=["plain", "timeout", "retries", "both"])
@pytest.mark.parametrize("task_id", [1, 200, 70_000, 2**40])
def test_submit_encoder_writes_what_neutrino_protocol_writes(task_id: int, timeout_s: float, retries: int) -> None:
    payload = msgpack.packb([[1, "x"], {}])
    ours = SubmitEncoder("add", timeout_s, retries).frames(task_id, payload)
    timeout = None if timeout_s is None else float(timeout_s)
    assert ours == SubmitTask(id=task_id, task="add", timeout_s=timeout, retries=retries, payload=payload).encode()


def test_map_sends_one_submit_per_item_with_the_overrides(client: Client, peer: Peer) -> None:
    assert list(client.map("add", [1, 2, 3], [10, 20, 30], timeout_s=4, retries=2)) == [11, 22, 33]
    assert [unpack_args(m.payload or b"") for m in peer.submits] == [([1, 10], {}), ([2, 20], {}), ([3, 30], {})]
    assert {(m.task, m.timeout_s, m.retries) for m in peer.submits} == {("add", 4.0, 2)}
    assert list(client.starmap("echo", [("a",), ["b"], iter(["c"])])) == ["a", "b", "c"]


def test_a_window_larger_than_one_fill(client: Client, peer: Peer) -> None:
    xs = range(5000)
    assert sorted(client.map("add", xs, window=3000, ordered=False)) == list(xs)
    assert len(peer.submits) == 5000


def test_rejections_and_stray_replies(client: Client) -> None:
    with pytest.raises(BusyError):
        list(client.map("reject:busy", [1]))
    # Malformed frames and replies to ids nobody waits for cost only themselves.
    assert list(client.map("garbage", ["a", "b"])) == ["a", "b"]


def test_no_reply_within_the_clients_timeout_cancels_what_is_in_flight(peer: Peer) -> None:
    with Client(peer.address, timeout_s=0.3) as client:
        with pytest.raises(NeutrinoTimeoutError, match="3 tasks in flight were cancelled"):
            list(client.map("hold", [1, 2, 3, 4], window=3))
        peer.wait_for(lambda p: len(p.cancels) == 3)
        assert sorted(peer.cancels) == sorted(m.id for m in peer.submits)
        assert client.call("add", 1, 2) == 3


def test_closing_the_client_fails_a_map_waiting_behind_another_receiver(peer: Peer) -> None:
    """Two maps in two threads: one receives for both, the other waits for its replies to be
    handed over; close() must wake both."""
    client = Client(peer.address)
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            list(client.map("hold", [1, 2]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=consume) for _ in range(2)]
    for thread in threads:
        thread.start()
    peer.wait_for(lambda p: len(p.submits) == 4)
    client.close()
    for thread in threads:
        thread.join(10)
    assert len(errors) == 2 and all(isinstance(e, ClientClosedError) for e in errors)


def test_a_map_waiting_behind_another_receiver_gets_its_replies(client: Client, peer: Peer) -> None:
    """A call() that receives (it holds the role) settles a map's replies; the map, not receiving,
    must be woken by them."""
    held = client.submit("hold", "released")
    receiving = threading.Thread(target=lambda: held.result(10))
    receiving.start()
    results: list[object] = []
    mapper = threading.Thread(target=lambda: results.extend(client.map("hold", ["x", "y"])))
    mapper.start()
    peer.wait_for(lambda p: len(p.submits) == 3)
    peer.release_held()
    mapper.join(10)
    receiving.join(10)
    assert results == ["x", "y"] and held.result() == "released"


def test_async_map_timeout_and_close(peer: Peer) -> None:
    async def main() -> None:
        async with AsyncClient(peer.address, timeout_s=0.3) as client:
            with pytest.raises(NeutrinoTimeoutError, match="2 tasks in flight were cancelled"):
                [x async for x in client.map("hold", [1, 2])]
            assert await client.call("add", 1, 2) == 3
            results = client.map("hold", [1])
            waiting = asyncio.ensure_future(anext(results))
            await asyncio.sleep(0)  # lets the map send before the client closes
        with pytest.raises(ClientClosedError):
            await waiting
        with pytest.raises(ClientClosedError):
            client.map("add", [1])

    asyncio.run(main())
    peer.wait_for(lambda p: len(p.cancels) == 2)


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")
def test_a_refused_handshake_fails_a_map_and_every_later_one() -> None:
    """A plain-text client at a CURVE pod: the map raises HandshakeError instead of waiting forever."""
    ctx = zmq.Context()
    server = ctx.socket(zmq.ROUTER)
    server.linger = 0
    server.curve_server = True
    server.curve_secretkey = zmq.curve_keypair()[1]
    address = f"tcp://127.0.0.1:{server.bind_to_random_port('tcp://127.0.0.1')}"
    try:
        with Client(address, timeout_s=30) as client:
            with pytest.raises(HandshakeError):
                list(client.map("add", [1, 2], [3, 4]))
            with pytest.raises(HandshakeError):
                client.map("add", [1], [2])

        async def refused() -> None:
            async with AsyncClient(address, timeout_s=30) as client:
                with pytest.raises(HandshakeError):
                    [x async for x in client.map("add", [1, 2], [3, 4])]

        asyncio.run(refused())
    finally:
        server.close()
        ctx.term()
