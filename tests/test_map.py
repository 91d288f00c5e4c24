"""`Client.map` / `AsyncClient.map` and `submit_many` against the real orchestrator and workers.

Back-pressure is measured by instrumenting the iterable a map pulls its items from: when item k is
pulled, the consumer has taken c results, so k - c tasks are in flight or buffered (never timing).
"in flight at the orchestrator" is its own `Pong`: queue depth and idle workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from neutrino import AsyncClient, Client, ClientClosedError, TaskError, UnknownTaskError

from .conftest import Orchestrator, wait_until


class Source:
    """An iterable of task arguments that records, at each pull, how far ahead of the consumer
    the map is (`consumed` is advanced by the test as it takes results)."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.pulled = 0
        self.consumed = 0
        self.ahead: list[int] = []

    def __iter__(self) -> Iterator[Any]:
        for item in self.items:
            self.pulled += 1
            self.ahead.append(self.pulled - self.consumed)
            yield item


def nothing_in_flight(client: Client, workers: int = 2) -> bool:
    load = client.ping()
    return bool(load["queue_depth"] == 0 and load["idle_workers"] == workers)


# -- ordering and exactly one answer per item ---------------------------------------------------


def test_ordered_results_follow_the_items_and_as_completed_follows_the_workers(start) -> None:
    orch = start("--window", "1")  # no pipelining: each worker holds one task, so the order is known
    with Client(orch.address, timeout_s=30) as client:
        durations = [1.5, 0.0, 0.0, 0.0]
        assert list(client.map("sleep", durations)) == durations
        assert list(client.map("sleep", durations, ordered=False)) == [0.0, 0.0, 0.0, 1.5]


def test_every_item_gets_exactly_one_answer(start) -> None:
    orch = start()
    with Client(orch.address, timeout_s=30) as client:
        xs = range(3000)
        assert list(client.map("add", xs, xs, window=64)) == [2 * x for x in xs]
        unordered = list(client.map("add", xs, xs, window=7, ordered=False))
        assert sorted(unordered) == [2 * x for x in xs]
        assert list(client.starmap("noop", [()] * 500)) == [None] * 500
        assert list(client.map("add", [], [])) == []
        assert client.call("add", 1, 2) == 3, "the client is left clean"
        assert nothing_in_flight(client)


def test_submit_many_returns_futures_in_item_order(start) -> None:
    orch = start()
    with Client(orch.address, timeout_s=30) as client:
        futures = client.submit_many("add", range(100), range(100))
        assert [f.result(timeout=30) for f in futures] == [2 * x for x in range(100)]
        assert len({f.task_id for f in futures}) == 100
        assert client.submit_many("add", [], []) == []
        [bad] = client.submit_many("add", ["a"], [1])
        with pytest.raises(TaskError, match="str"):
            bad.result(timeout=30)


# -- errors ----------------------------------------------------------------------------------------


def test_an_error_is_raised_in_place_and_ends_the_map(start) -> None:
    orch = start()
    with Client(orch.address, timeout_s=30) as client:
        results = client.map("add", [1, "a", 3], [1, 1, 1])
        assert next(results) == 2
        with pytest.raises(TaskError, match="str") as info:
            next(results)
        assert info.value.type == "TypeError"
        assert list(results) == [], "the iterator is finished after raising"
        wait_until(lambda: nothing_in_flight(client), what="the rest cancelled or answered")


def test_return_exceptions_yields_errors_in_their_place(start) -> None:
    orch = start()
    with Client(orch.address, timeout_s=30) as client:
        results = list(client.map("add", [1, "a", 3], [1, 1, 1], return_exceptions=True))
        assert results[0] == 2 and results[2] == 4
        assert isinstance(results[1], TaskError) and results[1].type == "TypeError"


def test_bad_input_is_refused_before_anything_is_sent(start) -> None:
    orch = start(workers=1)
    with Client(orch.address, timeout_s=30) as client:
        for window in (0, -1, True, 1.5, "8"):
            with pytest.raises(ValueError, match="window must be an int >= 1"):
                client.map("add", [1], [2], window=window)
        with pytest.raises(TypeError, match="at least one iterable"):
            client.map("add")
        with pytest.raises(ValueError, match="retries"):
            client.map("add", [1], [2], retries=-1)
        with pytest.raises(TypeError, match="task name"):
            client.map("", [1])
        with pytest.raises(UnknownTaskError, match="nope"):
            list(client.map("nope", [1, 2]))
        [error] = client.map("nope", [1], return_exceptions=True)
        assert isinstance(error, UnknownTaskError)
        with pytest.raises(TypeError, match="positional argument 0 of type object"):
            list(client.map("echo", [object()]))
        assert client.call("add", 1, 2) == 3
    with pytest.raises(ClientClosedError):
        client.map("add", [1], [2])


# -- cancellation ----------------------------------------------------------------------------------


def test_closing_the_iterator_stops_sending_and_cancels_what_is_in_flight(start) -> None:
    orch = start()
    with Client(orch.address, timeout_s=30) as client:
        source = Source([0.0] + [30.0] * 20)
        results = client.map("sleep", source, window=4)
        assert next(results) == 0.0
        assert source.pulled == 4
        results.close()
        assert source.pulled == 4, "nothing pulled after the close"
        wait_until(lambda: nothing_in_flight(client), what="cancelled tasks gone from the orchestrator")
        assert client.call("add", 1, 2) == 3


def test_breaking_out_of_a_for_loop_cancels_too(start) -> None:
    orch = start()
    with Client(orch.address, timeout_s=30) as client:
        source = Source([0.0] + [30.0] * 20)
        for result in client.map("sleep", source, window=3):
            assert result == 0.0
            break
        assert source.pulled == 3
        wait_until(lambda: nothing_in_flight(client), what="cancelled tasks gone from the orchestrator")


def test_closing_the_client_ends_a_waiting_map(start) -> None:
    orch = start()
    client = Client(orch.address, timeout_s=30)
    results = client.map("sleep", [30.0, 30.0])
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            next(results)
        except BaseException as exc:
            errors.append(exc)

    waiter = threading.Thread(target=consume)
    waiter.start()
    wait_until(lambda: client.ping()["idle_workers"] == 0, what="both tasks running")
    client.close()
    waiter.join(10)
    assert len(errors) == 1 and isinstance(errors[0], ClientClosedError)


# -- back-pressure ---------------------------------------------------------------------------------


def test_a_slow_consumer_holds_the_sending_back(start) -> None:
    orch = start()
    with Client(orch.address, timeout_s=30) as client:
        window = 8
        source = Source(list(range(400)))
        depths = []
        for index, result in enumerate(client.map("add", source, source.items, window=window, ordered=False)):
            source.consumed += 1
            assert 0 <= result < 800
            if index % 50 == 0:
                depths.append(client.ping()["queue_depth"])  # the consumer is slow: it pings per result
        assert source.consumed == 400
        assert max(source.ahead) <= window, "never more than `window` tasks sent and not taken"
        assert max(depths) <= window


def test_results_waiting_for_their_turn_hold_credit(start) -> None:
    orch = start()
    with Client(orch.address, timeout_s=30) as client:
        source = Source([0.5] + [0.0] * 50)
        results = client.map("sleep", source, window=8)
        assert next(results) == 0.5
        # The 7 quick tasks finished long before the slow head, yet nothing more was sent for them.
        assert source.pulled == 8
        source.consumed = 1
        for result in results:
            assert result == 0.0
            source.consumed += 1
        assert source.consumed == 51 and max(source.ahead) <= 8


def test_maps_and_calls_share_a_client_across_threads(start) -> None:
    orch = start()
    with Client(orch.address, timeout_s=30) as client:
        outcomes: dict[str, Any] = {}

        def mapper(name: str, offset: int) -> None:
            xs = range(offset, offset + 1500)
            outcomes[name] = list(client.map("add", xs, xs, window=32)) == [2 * x for x in xs]

        def caller() -> None:
            outcomes["calls"] = all(client.call("add", i, 1) == i + 1 for i in range(200))

        threads = [
            threading.Thread(target=mapper, args=("map1", 0)),
            threading.Thread(target=mapper, args=("map2", 10_000)),
            threading.Thread(target=caller),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(50)
        assert outcomes == {"map1": True, "map2": True, "calls": True}


# -- AsyncClient -------------------------------------------------------------------------------------


def run_async(orch: Orchestrator, body: Any) -> Any:
    async def main() -> Any:
        async with AsyncClient(orch.address, timeout_s=30) as client:
            return await body(client)

    return asyncio.run(main())


async def collect(results: AsyncIterator[Any]) -> list[Any]:
    return [result async for result in results]


def test_async_map_orders_streams_and_reports_errors(start) -> None:
    orch = start("--window", "1")

    async def body(client: AsyncClient) -> None:
        durations = [1.5, 0.0, 0.0, 0.0]
        assert await collect(client.map("sleep", durations)) == durations
        assert await collect(client.map("sleep", durations, ordered=False)) == [0.0, 0.0, 0.0, 1.5]
        xs = range(2000)
        assert await collect(client.map("add", xs, xs, window=50)) == [2 * x for x in xs]
        assert await collect(client.starmap("noop", [()] * 100)) == [None] * 100
        mixed = await collect(client.map("add", [1, "a", 3], [1, 1, 1], return_exceptions=True))
        assert mixed[0] == 2 and isinstance(mixed[1], TaskError) and mixed[2] == 4
        with pytest.raises(TaskError, match="str"):
            await collect(client.map("add", [1, "a", 3], [1, 1, 1]))
        with pytest.raises(UnknownTaskError):
            await collect(client.map("nope", [1]))
        with pytest.raises(ValueError, match="window"):
            client.map("add", [1], [1], window=0)
        futures = client.submit_many("add", [1, 2], [3, 4])
        assert await asyncio.gather(*futures) == [4, 6]

    run_async(orch, body)


def test_async_map_cancels_on_aclose_break_and_task_cancel(start) -> None:
    orch = start()

    async def idle(client: AsyncClient) -> None:
        while True:
            load = await client.ping()
            if load["queue_depth"] == 0 and load["idle_workers"] == 2:
                return
            await asyncio.sleep(0.01)  # a polling interval; the loop ends on the orchestrator's answer

    async def body(client: AsyncClient) -> None:
        source = Source([0.0] + [30.0] * 20)
        results = client.map("sleep", source, window=4)
        assert await anext(results) == 0.0
        await results.aclose()
        assert source.pulled == 4
        await asyncio.wait_for(idle(client), 30)

        source = Source([0.0] + [30.0] * 20)
        async with contextlib.aclosing(client.map("sleep", source, window=3)) as results:
            async for result in results:
                assert result == 0.0
                break
        assert source.pulled == 3
        await asyncio.wait_for(idle(client), 30)

        source = Source([30.0] * 20)
        consumer = asyncio.ensure_future(collect(client.map("sleep", source, window=5)))
        while (await client.ping())["idle_workers"] > 0:
            await asyncio.sleep(0.01)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        assert source.pulled == 5
        await asyncio.wait_for(idle(client), 30)
        assert await client.call("add", 1, 2) == 3

    run_async(orch, body)


def test_async_map_holds_back_for_a_slow_consumer(start) -> None:
    orch = start()

    async def body(client: AsyncClient) -> None:
        source = Source(list(range(300)))
        async for result in client.map("add", source, source.items, window=6, ordered=False):
            source.consumed += 1
            assert 0 <= result < 600
            await asyncio.sleep(0)
        assert source.consumed == 300 and max(source.ahead) <= 6

    run_async(orch, body)
