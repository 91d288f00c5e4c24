"""neutrino.aio: AsyncClient against the stand-in orchestrator (each test runs its own event loop)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from neutrino import (
    AsyncClient,
    AsyncTaskFuture,
    BusyError,
    CatalogNotReadyError,
    ClientClosedError,
    NeutrinoTimeoutError,
    PayloadTooLargeError,
    TaskCancelledError,
    TaskError,
    UnknownTaskError,
)
from neutrino.codec import unpack_args
from sdk_peer import Peer


def run(peer: Peer, body: Callable[[AsyncClient], Awaitable[Any]], **options: Any) -> Any:
    async def main() -> Any:
        async with AsyncClient(peer.address, **options) as client:
            return await body(client)

    return asyncio.run(main())


def test_call_and_ping(peer: Peer) -> None:
    async def body(client: AsyncClient) -> None:
        assert await client.call("add", 1, 2) == 3
        assert await client.call("echo", k=b"v") == {"k": b"v"}
        assert await client.ping() == {"queue_depth": 3, "workers": 2, "idle_workers": 1, "draining": False}

    run(peer, body)


def test_describe_waits_for_the_catalog(peer: Peer) -> None:
    catalog = {"noop": {"params": {"type": "object"}, "result": {"type": "null"}, "doc": "", "options": {}}}
    peer.catalog, peer.not_ready_answers = catalog, 2

    async def body(client: AsyncClient) -> None:
        assert await client.describe() == catalog
        assert peer.describes == 3
        peer.not_ready_answers = 10**6
        with pytest.raises(CatalogNotReadyError):
            await client.describe(timeout_s=0.1)

    run(peer, body)


def test_errors_and_rejections(peer: Peer) -> None:
    async def body(client: AsyncClient) -> None:
        with pytest.raises(TaskError) as info:
            await client.call("fail", "nope")
        assert (info.value.type, info.value.message, info.value.attempts) == ("ValueError", "nope", 2)
        assert info.value.traceback is not None and "ValueError: nope" in info.value.traceback
        with pytest.raises(UnknownTaskError):
            await client.call("error:unknown_task")
        with pytest.raises(BusyError):
            await client.call("reject:busy")
        assert await client.call("garbage", "survived") == "survived"

    run(peer, body)


def test_many_submits_resolve(peer: Peer) -> None:
    async def body(client: AsyncClient) -> list[Any]:
        futures = [client.submit("add", i, 1) for i in range(2000)]
        assert all(isinstance(f, AsyncTaskFuture) for f in futures)
        assert len({f.task_id for f in futures}) == 2000
        return await asyncio.gather(*futures)

    assert run(peer, body) == [i + 1 for i in range(2000)]


def test_submit_with_options(peer: Peer) -> None:
    async def body(client: AsyncClient) -> None:
        assert await client.submit_with("add", [2, 3], timeout_s=1.5, retries=1) == 5
        assert (peer.submits[-1].timeout_s, peer.submits[-1].retries) == (1.5, 1)

    run(peer, body)


def test_oversized_arguments_fail_before_sending(peer: Peer) -> None:
    async def body(client: AsyncClient) -> None:
        assert client.max_payload_bytes == 100
        with pytest.raises(PayloadTooLargeError, match=r"pack to \d+ bytes.*limit of 100"):
            client.submit("echo", b"x" * 200)
        with pytest.raises(PayloadTooLargeError):
            await client.call("echo", data=b"x" * 200)
        assert await client.call("echo", b"x" * 50) == b"x" * 50
        assert [unpack_args(m.payload or b"") for m in peer.submits] == [([b"x" * 50], {})]

    run(peer, body, max_payload_bytes=100)


def test_timeout_cancels_the_task(peer: Peer) -> None:
    async def body(client: AsyncClient) -> None:
        with pytest.raises(NeutrinoTimeoutError, match="no reply to task 'hold'"):
            await client.call("hold", 1)
        task_id = peer.submits[-1].id
        await asyncio.to_thread(peer.wait_for, lambda p: task_id in p.cancels)
        peer.release_held()
        assert await client.call("add", 1, 1) == 2

    run(peer, body, timeout_s=0.2)


def test_cancel_and_attempts(peer: Peer) -> None:
    async def body(client: AsyncClient) -> None:
        fut = client.submit("hold", 1)
        client.cancel(fut.task_id)  # not a coroutine: it only sends
        with pytest.raises(TaskCancelledError) as info:
            await fut
        assert fut.attempts == info.value.attempts == 0
        assert peer.cancels == [fut.task_id]
        client.cancel(fut.task_id)  # answered: ignored
        with pytest.raises(TypeError, match="task id"):
            client.cancel("1")  # type: ignore[arg-type]
        retried = client.submit("retried", "v")
        assert await retried == "v" and retried.attempts == 3
        local = client.submit("hold", 2)
        assert local.cancel() and local.attempts is None
        await client.call("add", 1)  # sent after the cancel, so the peer has seen it
        assert peer.cancels == [fut.task_id, local.task_id]

    run(peer, body)


def test_aclose_fails_pending_futures(peer: Peer) -> None:
    async def main() -> None:
        client = AsyncClient(peer.address)
        futures = [client.submit("hold", i) for i in range(5)]
        await asyncio.to_thread(peer.wait_for, lambda p: len(p.submits) == 5)
        await client.aclose()
        for fut in futures:
            with pytest.raises(ClientClosedError):
                await fut
        with pytest.raises(ClientClosedError):
            client.submit("add", 1)
        await client.aclose()  # idempotent

    asyncio.run(main())


def test_a_client_belongs_to_one_event_loop(peer: Peer) -> None:
    client = AsyncClient(peer.address)

    async def use() -> Any:
        return await client.call("add", 1, 2)

    assert asyncio.run(use()) == 3
    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(use())
    asyncio.run(client.aclose())
