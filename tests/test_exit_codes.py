"""Exit codes are not a control channel (SPEC.md §7): a task that ends its worker, with any code
the runtime reserves for itself or a signal, or a worker killed from outside, costs that task one
typed answer (or a retry) and the pod one worker, which is replaced. A worker that cannot start
says why in a message and is backed off; nothing a worker does stops the pod.

Every task here goes through a bare DEALER that records every reply, so "exactly one answer" is
checked, not assumed."""

from __future__ import annotations

import itertools
import os
import re
import signal
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import neutrino_protocol as p
import pytest
import zmq
from neutrino import Client, ShuttingDownError

from .conftest import ROOT, Orchestrator, start_orchestrator, wait_until

APP = "tests.apps.exit_codes_app:app"
WORKERS = 2
# Every exit code of SPEC.md §7 (3 once meant "the app failed to import" and stopped the pod),
# and signals a task can send itself.
INSIDE = [("exit", c) for c in (0, 1, 2, 3, 4)] + [
    ("signal", int(s)) for s in (signal.SIGKILL, signal.SIGSEGV, signal.SIGTERM)
]
OUTSIDE = [int(signal.SIGKILL), int(signal.SIGTERM)]
REPLY_TIMEOUT_MS = 30_000


class Recorder:
    """A bare frontend client that keeps every reply it receives, by task id."""

    def __init__(self, address: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(address)
        self.replies: dict[int, list[p.TaskReply]] = defaultdict(list)
        self.others: list[p.Message] = []
        self._ids = itertools.count(1)

    def submit(self, task: str, *args: Any) -> int:
        task_id = next(self._ids)
        payload = msgpack.packb([list(args), {}], use_bin_type=True)
        self.sock.send_multipart(p.SubmitTask(id=task_id, task=task, payload=payload).encode())
        return task_id

    def reply(self, task_id: int) -> p.TaskReply:
        """The first reply to `task_id`, waiting for it."""
        while not self.replies[task_id]:
            self._receive_one()
        return self.replies[task_id][0]

    def ping(self) -> p.Pong:
        nonce = next(self._ids)
        self.sock.send_multipart(p.Ping(nonce=nonce).encode())
        while True:
            msg = self._receive_one()
            if isinstance(msg, p.Pong) and msg.nonce == nonce:
                return msg

    def _receive_one(self) -> p.Message:
        assert self.sock.poll(REPLY_TIMEOUT_MS), "no message from the orchestrator"
        msg = p.decode(self.sock.recv_multipart())
        if isinstance(msg, p.TaskReply):
            self.replies[msg.id].append(msg)
        elif not isinstance(msg, p.Pong):
            self.others.append(msg)
        return msg

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def pod() -> Iterator[Orchestrator]:
    """One pod for the whole module: each case leaves it whole for the next, which is the point."""
    orch = start_orchestrator(workers=WORKERS, app=APP)
    yield orch
    assert orch.stop() == 0, f"the pod stopped on its own or uncleanly:\n{orch.log}"


@pytest.fixture
def recorder(pod: Orchestrator) -> Iterator[Recorder]:
    rec = Recorder(pod.address)
    yield rec
    rec.close()


def ready_workers(pod: Orchestrator) -> int:
    return len(re.findall(r"Worker worker-\d+ ready!", pod.log))


def check_pod_whole(pod: Orchestrator, rec: Recorder, started_before: int) -> None:
    """The dead worker was replaced, the pod serves, the orchestrator never meant to stop, and
    every task the recorder sent has exactly one reply."""
    wait_until(lambda: ready_workers(pod) > started_before, what="a replacement worker ready")
    wait_until(lambda: rec.ping().workers == WORKERS, what=f"{WORKERS} workers again")
    after = rec.submit("add", 20, 22)
    assert rec.reply(after).status == "ok"
    rec.ping()  # anything still in flight to us arrives before the Pong
    assert pod.proc.poll() is None, pod.log
    assert "stopping" not in pod.log.lower() and "Draining" not in pod.log, pod.log
    counts = {task_id: len(replies) for task_id, replies in rec.replies.items()}
    assert set(counts.values()) == {1}, f"replies per task: {counts}"
    assert not rec.others, rec.others


def death_text(how: str, value: int) -> str:
    return f"exit code {value}" if how == "exit" else f"killed by signal {value}"


@pytest.mark.parametrize(("how", "value"), INSIDE, ids=[f"{h}-{v}" for h, v in INSIDE])
def test_a_task_that_ends_its_worker_gets_one_worker_died_answer(
    pod: Orchestrator, recorder: Recorder, how: str, value: int
) -> None:
    started_before = ready_workers(pod)
    victim = recorder.submit("end", how, value)
    others = [recorder.submit("add", i, 1) for i in range(20)]
    reply = recorder.reply(victim)
    assert (reply.status, reply.attempts) == ("error", 1), reply
    assert reply.error is not None and reply.error.kind == "worker_died", reply.error
    assert death_text(how, value) in reply.error.evalue, reply.error.evalue
    for i, task_id in enumerate(others):
        answer = recorder.reply(task_id)
        assert answer.status == "ok" and answer.payload is not None, answer
        assert msgpack.unpackb(answer.payload) == i + 1
    check_pod_whole(pod, recorder, started_before)


@pytest.mark.parametrize(("how", "value"), INSIDE, ids=[f"{h}-{v}" for h, v in INSIDE])
def test_a_task_with_retries_that_ends_its_worker_succeeds_on_its_retry(
    pod: Orchestrator, recorder: Recorder, tmp_path: Path, how: str, value: int
) -> None:
    started_before = ready_workers(pod)
    marker = tmp_path / "first-attempt"
    task_id = recorder.submit("end_once", how, value, str(marker))
    reply = recorder.reply(task_id)
    assert (reply.status, reply.attempts) == ("ok", 2), reply
    assert reply.payload is not None and msgpack.unpackb(reply.payload) != int(marker.read_text())
    check_pod_whole(pod, recorder, started_before)


@pytest.mark.parametrize("sig", OUTSIDE, ids=[signal.Signals(s).name for s in OUTSIDE])
def test_a_worker_killed_from_outside_answers_its_task_once(
    pod: Orchestrator, recorder: Recorder, tmp_path: Path, sig: int
) -> None:
    started_before = ready_workers(pod)
    marker = tmp_path / "running"
    task_id = recorder.submit("hang", str(marker))
    wait_until(marker.exists, what="the task running")
    os.kill(int(marker.read_text()), sig)
    reply = recorder.reply(task_id)
    assert (reply.status, reply.attempts) == ("error", 1), reply
    assert reply.error is not None and reply.error.kind == "worker_died"
    assert death_text("signal", sig) in reply.error.evalue, reply.error.evalue
    check_pod_whole(pod, recorder, started_before)


@pytest.mark.parametrize("sig", OUTSIDE, ids=[signal.Signals(s).name for s in OUTSIDE])
def test_a_worker_killed_from_outside_retries_its_task(
    pod: Orchestrator, recorder: Recorder, tmp_path: Path, sig: int
) -> None:
    started_before = ready_workers(pod)
    marker = tmp_path / "running"
    task_id = recorder.submit("hang_once", str(marker))
    wait_until(marker.exists, what="the first attempt running")
    os.kill(int(marker.read_text()), sig)
    reply = recorder.reply(task_id)
    assert (reply.status, reply.attempts) == ("ok", 2), reply
    check_pod_whole(pod, recorder, started_before)


def test_a_worker_that_cannot_start_is_reported_and_backed_off_and_its_tasks_answered_once(tmp_path: Path) -> None:
    apps = ROOT / "services" / "worker-py" / "tests" / "apps"  # the worker runtime's own test app
    orch = start_orchestrator("--app-dir", str(apps), workers=1, app="broken_worker_app:app", wait_ready=False)
    try:
        orch.wait_for(r"Worker worker-001 \(pid=\d+\) failed to start: OSError: no backend connection", timeout=30)
        orch.wait_for(r"3 time\(s\) in a row before it was ready; next replacement in", timeout=30)
        delays = re.findall(r"in a row before it was ready; next replacement in ([\d.]+)ms", orch.log)
        assert delays[:3] == ["100.0", "200.0", "400.0"], "backed off, doubling"
        assert orch.log.count("Traceback (most recent call last)") == 1, "the traceback once, then one line each"
        assert "broken on purpose" in orch.log
        assert orch.proc.poll() is None, "a worker that cannot start does not stop the pod"
        with Client(orch.address) as client:
            queued = client.submit("noop")
            assert client.ping()["workers"] == 0
            orch.proc.send_signal(signal.SIGTERM)
            with pytest.raises(ShuttingDownError):
                queued.result(timeout=30)
        assert orch.proc.wait(timeout=30) == 0
    finally:
        orch.stop()
