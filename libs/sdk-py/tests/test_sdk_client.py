"""neutrino.client: the threaded Client against a stand-in orchestrator speaking the real protocol."""

from __future__ import annotations

import collections
import threading
from concurrent.futures import Future, ThreadPoolExecutor, as_completed, wait
from pathlib import Path
from typing import Any

import pytest
from neutrino import (
    App,
    BusyError,
    CatalogNotReadyError,
    Client,
    ClientClosedError,
    DrainingError,
    NeutrinoTimeoutError,
    PayloadTooLargeError,
    TaskCancelledError,
    TaskError,
    TaskFuture,
    TaskTimeoutError,
    UnknownTaskError,
    WorkerDiedError,
)
from neutrino.codec import unpack_args
from sdk_peer import Peer


def test_call_returns_values(client: Client) -> None:
    assert client.call("add", 1, 2) == 3
    assert client.call("echo", x=1, y=[b"\x00", "s"]) == {"x": 1, "y": [b"\x00", "s"]}
    assert client.call("echo", (1, 2)) == [1, 2]  # tuples travel as lists


def test_call_accepts_a_task_object(client: Client) -> None:
    app = App("demo")

    @app.task(name="add")
    def add_numbers(*xs: int) -> int:
        return sum(xs)

    assert client.call(add_numbers, 2, 3) == 5


def test_ipc_address(tmp_path: Path) -> None:
    peer = Peer(f"ipc://{tmp_path}/frontend.sock")
    try:
        with Client(peer.address) as client:
            assert client.call("add", 40, 2) == 42
    finally:
        peer.stop()


def test_error_keeps_type_message_and_traceback(client: Client, peer: Peer) -> None:
    with pytest.raises(TaskError) as info:
        client.call("fail", "bad input")
    err = info.value
    assert type(err) is TaskError
    assert (err.kind, err.type, err.message, err.attempts) == ("task_error", "ValueError", "bad input", 2)
    assert err.traceback is not None and err.traceback.endswith("ValueError: bad input\n")
    assert err.task_id == peer.submits[-1].id
    assert str(err) == "ValueError: bad input"


@pytest.mark.parametrize(
    ("kind", "cls"),
    [("unknown_task", UnknownTaskError), ("worker_died", WorkerDiedError), ("timeout", TaskTimeoutError)],
)
def test_error_kinds_map_to_subclasses(client: Client, kind: str, cls: type[TaskError]) -> None:
    with pytest.raises(cls, match="it went wrong"):
        client.call(f"error:{kind}")


def test_rejections_raise_rejected_errors(client: Client) -> None:
    with pytest.raises(BusyError, match=r"task rejected \(busy\)"):
        client.call("reject:busy")
    fut = client.submit("reject:draining")
    assert isinstance(fut.exception(timeout=10), DrainingError)


def test_ping_returns_the_load(client: Client) -> None:
    assert client.ping() == {"queue_depth": 3, "workers": 2, "idle_workers": 1, "draining": False}


def test_malformed_frames_and_stray_replies_do_not_break_the_client(client: Client) -> None:
    assert client.call("garbage", "fine") == "fine"
    fut = client.submit("garbage", "also fine")  # this time through the I/O thread
    assert fut.result(timeout=10) == "also fine"
    assert [client.call("add", i, 1) for i in range(100)] == list(range(1, 101))


def test_submit_with_carries_per_call_options(client: Client, peer: Peer) -> None:
    fut = client.submit_with("add", (1, 2), timeout_s=2.5, retries=4)
    assert isinstance(fut, TaskFuture) and fut.result(timeout=10) == 3
    sent = peer.submits[-1]
    assert (sent.id, sent.task, sent.timeout_s, sent.retries) == (fut.task_id, "add", 2.5, 4)
    client.submit("add", 1).result(timeout=10)
    assert peer.submits[-1].timeout_s is None and peer.submits[-1].retries is None


def test_thousands_of_submits_from_one_thread_resolve_exactly_once(client: Client, peer: Peer) -> None:
    n = 5000
    settled: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()

    def count(f: Future[Any]) -> None:
        with lock:
            settled[f.task_id] += 1  # type: ignore[attr-defined]

    futures = []
    for i in range(n):
        fut = client.submit("add", i, 1)
        fut.add_done_callback(count)
        futures.append(fut)
    _, not_done = wait(futures, timeout=50)
    assert not not_done
    assert [f.result() for f in futures] == [i + 1 for i in range(n)]
    assert len({f.task_id for f in futures}) == n
    with lock:
        assert set(settled.values()) == {1} and len(settled) == n
    assert len(peer.submits) == n


def test_as_completed_yields_every_future(client: Client) -> None:
    futures = {client.submit("add", i, i): i for i in range(200)}
    seen = [(futures[f], f.result()) for f in as_completed(futures, timeout=30)]
    assert sorted(seen) == [(i, 2 * i) for i in range(200)]


def test_calls_from_many_threads(client: Client) -> None:
    def worker(k: int) -> list[int]:
        return [client.call("add", k, i) for i in range(200)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(8)))
    assert results == [[k + i for i in range(200)] for k in range(8)]


def test_calls_while_submits_are_in_flight(client: Client, peer: Peer) -> None:
    held = [client.submit("hold", i) for i in range(50)]
    peer.wait_for(lambda p: len(p.submits) == 50)
    assert [client.call("add", i, 1) for i in range(50)] == list(range(1, 51))
    peer.release_held()
    assert [f.result(timeout=10) for f in held] == list(range(50))


def test_close_fails_pending_futures(peer: Peer) -> None:
    client = Client(peer.address)
    futures = [client.submit("hold", i) for i in range(10)]
    peer.wait_for(lambda p: len(p.submits) == 10)
    client.close()
    for fut in futures:
        assert isinstance(fut.exception(timeout=10), ClientClosedError)
    with pytest.raises(ClientClosedError, match="create a new Client"):
        client.submit("add", 1)
    client.close()  # idempotent
    assert client.closed


def test_close_wakes_a_receiving_call(peer: Peer) -> None:
    client = Client(peer.address)
    errors: list[BaseException] = []

    def blocked_call() -> None:
        try:
            client.call("hold", 1)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=blocked_call)
    thread.start()
    peer.wait_for(lambda p: len(p.submits) == 1)
    client.close()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ClientClosedError)


def test_call_timeout_cancels_the_task(peer: Peer) -> None:
    with Client(peer.address, timeout_s=0.2) as client:
        with pytest.raises(NeutrinoTimeoutError, match=r"no reply to task 'hold'.*timeout_s") as info:
            client.call("hold", 1)
        assert isinstance(info.value, TimeoutError)
        task_id = peer.submits[-1].id
        peer.wait_for(lambda p: task_id in p.cancels)
        # The late reply is dropped and the client carries on.
        peer.release_held()
        assert client.call("add", 1, 1) == 2


def test_cancelling_a_future_sends_cancel_task(client: Client, peer: Peer) -> None:
    fut = client.submit("hold", 1)
    assert fut.cancel()
    assert fut.cancelled()
    peer.wait_for(lambda p: fut.task_id in p.cancels)
    peer.release_held()
    assert client.call("add", 2, 2) == 4


def test_cancel_sends_cancel_task_and_the_future_gets_the_answer(client: Client, peer: Peer) -> None:
    fut = client.submit("hold", 1)
    client.cancel(fut.task_id)
    err = fut.exception(timeout=10)
    assert isinstance(err, TaskCancelledError) and err.task_id == fut.task_id
    assert not fut.cancelled() and fut.attempts == err.attempts == 0
    assert peer.cancels == [fut.task_id]


def test_cancel_after_the_answer_sends_nothing(client: Client, peer: Peer) -> None:
    done = client.submit("add", 1, 1)
    assert done.result(timeout=10) == 2
    client.cancel(done.task_id)
    client.cancel(10**6)  # never submitted
    local = client.submit("hold", 1)
    assert local.cancel()  # sends its own CancelTask and forgets the task ...
    client.cancel(local.task_id)  # ... so this one has nothing left to cancel
    assert client.call("add", 2, 2) == 4  # sent after them all, so the peer saw whatever they sent first
    assert peer.cancels == [local.task_id]


def test_cancel_loses_to_an_answer_already_on_its_way(client: Client) -> None:
    fut = client.submit("add", 20, 22)
    client.cancel(fut.task_id)  # the peer does not hold "add": the reply wins, as with a finished task
    assert fut.result(timeout=10) == 42


def test_cancel_checks_its_argument_and_ignores_a_closed_client(peer: Peer) -> None:
    client = Client(peer.address)
    fut = client.submit("hold", 1)
    with pytest.raises(TypeError, match=r"task id.*future\.task_id"):
        client.cancel(fut)  # type: ignore[arg-type]
    client.close()
    client.cancel(fut.task_id)
    assert isinstance(fut.exception(timeout=10), ClientClosedError)


def test_futures_report_attempts(client: Client) -> None:
    seen: list[int | None] = []
    fut = client.submit("retried", "v")
    fut.add_done_callback(lambda f: seen.append(f.attempts))  # type: ignore[attr-defined]
    assert fut.result(timeout=10) == "v" and fut.attempts == 3
    assert seen == [3]
    failed = client.submit("fail", "x")
    assert isinstance(failed.exception(timeout=10), TaskError) and failed.attempts == 2
    rejected = client.submit("reject:busy")
    assert isinstance(rejected.exception(timeout=10), BusyError) and rejected.attempts is None
    held = client.submit("hold", 1)
    assert held.attempts is None and held.cancel() and held.attempts is None


def test_unencodable_arguments_fail_before_sending(client: Client, peer: Peer) -> None:
    with pytest.raises(TypeError, match="positional argument 0 of type object"):
        client.submit("echo", object())
    assert client.call("add", 1) == 1
    assert [m.task for m in peer.submits] == ["add"]


def test_oversized_arguments_fail_before_sending(peer: Peer) -> None:
    with Client(peer.address, max_payload_bytes=100) as client:
        assert client.max_payload_bytes == 100
        with pytest.raises(PayloadTooLargeError, match=r"pack to \d+ bytes.*limit of 100"):
            client.submit("echo", b"x" * 200)
        with pytest.raises(PayloadTooLargeError):
            client.call("echo", data=b"x" * 200)
        assert client.call("echo", b"x" * 50) == b"x" * 50
    # Had either oversized request gone out, it would have reached the peer before the last one.
    assert [unpack_args(m.payload or b"") for m in peer.submits] == [([b"x" * 50], {})]


def test_default_payload_limit_is_the_orchestrators_default(peer: Peer) -> None:
    with Client(peer.address) as client:
        assert client.max_payload_bytes == 64 * 2**20


def test_each_client_has_its_own_routing_id(peer: Peer) -> None:
    with Client(peer.address) as a, Client(peer.address) as b:
        assert a.call("add", 1) == 1
        assert b.call("add", 2) == 2
        assert a.call("add", 3) == 3
    first, second, third = peer.senders
    assert first != second and first == third
    assert all(ident.startswith(b"c-") and len(ident) == 14 for ident in (first, second))


def test_routing_id_survives_a_reconnect() -> None:
    # The orchestrator routes replies by identity; a client that came back under a new one after
    # a reconnect would never get the replies to its tasks in flight.
    peer = Peer("tcp://")
    with Client(peer.address) as client:
        assert client.call("add", 1) == 1
        identity = peer.senders[-1]
        peer.stop()
        again = Peer(peer.address)  # the same port, as an orchestrator that is back
        try:
            # A request written before the client noticed the old connection close is lost with
            # it; ping until one gets through the new connection.
            for _ in range(50):
                try:
                    client.ping(timeout_s=0.2)
                    break
                except NeutrinoTimeoutError:
                    continue
            assert client.call("add", 2) == 2
            assert set(again.senders) == {identity}
        finally:
            again.stop()


def test_ping_timeout(tmp_path: Path) -> None:
    with Client(f"ipc://{tmp_path}/nobody.sock") as client, pytest.raises(NeutrinoTimeoutError, match="a ping"):
        client.ping(timeout_s=0.1)


CATALOG = {
    "add": {"params": {"type": "object", "title": "add"}, "result": {"type": "integer"}, "doc": "", "options": {}}
}


def test_describe_returns_the_catalog(client: Client, peer: Peer) -> None:
    peer.catalog = CATALOG
    assert client.describe() == CATALOG
    assert client.call("add", 1, 2) == 3, "describe shares the socket with calls"


def test_describe_asks_again_until_the_catalog_is_ready(client: Client, peer: Peer) -> None:
    peer.catalog, peer.not_ready_answers = CATALOG, 3
    assert client.describe(timeout_s=10) == CATALOG
    assert peer.describes == 4


def test_describe_gives_up_on_a_catalog_that_never_comes(client: Client, peer: Peer) -> None:
    peer.not_ready_answers = 10**6
    with pytest.raises(CatalogNotReadyError, match="no task catalog yet") as info:
        client.describe(timeout_s=0.2)
    assert isinstance(info.value, NeutrinoTimeoutError)


def test_describe_without_an_answer_times_out(client: Client, peer: Peer) -> None:
    peer.catalog = None  # an orchestrator that does not know DescribeTasks ignores it
    with pytest.raises(NeutrinoTimeoutError, match="DescribeTasks") as info:
        client.describe(timeout_s=0.2)
    assert not isinstance(info.value, CatalogNotReadyError)
