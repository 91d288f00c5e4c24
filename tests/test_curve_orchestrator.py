"""CURVE on the orchestrator's tcp:// frontend, at the wire: the real orchestrator binary and raw
pyzmq sockets (the client-side CURVE plumbing of `neutrino.Client` and the gateway is tested in
test_curve.py). Keys are certificate files written by pyzmq's `zmq.auth.create_certificates`.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgpack
import neutrino_protocol as p
import pytest
import zmq
import zmq.auth

from .conftest import BINARY, QUICKSTART, Orchestrator, free_port, start_orchestrator, wait_until

REFUSED = "neutrino_curve_refused_total"
FAILED = "neutrino_curve_failed_handshakes_total"


class Keys:
    def __init__(self, root: Path) -> None:
        self.allowed = root / "allowed"  # the --curve-clients directory
        self.allowed.mkdir()
        other = root / "other"
        other.mkdir()
        _, self.server = map(Path, zmq.auth.create_certificates(root, "server"))
        _, self.client = map(Path, zmq.auth.create_certificates(self.allowed, "client"))
        _, self.stranger = map(Path, zmq.auth.create_certificates(other, "stranger"))


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


@pytest.fixture
def pod(keys: Keys) -> Iterator[tuple[Orchestrator, str, int]]:
    """An orchestrator with a CURVE tcp frontend beside its plain ipc one; (orch, tcp, metrics port)."""
    tcp, metrics = f"tcp://127.0.0.1:{free_port()}", free_port()
    orch = start_orchestrator(
        "--frontend",
        tcp,
        "--metrics",
        f"127.0.0.1:{metrics}",
        "--curve-secret-key",
        str(keys.server),
        "--curve-clients",
        str(keys.allowed),
    )
    try:
        yield orch, tcp, metrics
    finally:
        orch.stop()


def dealer(address: str, server: Path | None = None, client: Path | None = None) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    if server is not None and client is not None:
        sock.curve_serverkey = zmq.auth.load_certificate(server)[0]
        sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(client)
    sock.connect(address)
    return sock


def call_add(sock: zmq.Socket[bytes], task_id: int, timeout_ms: int) -> int | None:
    """`add(task_id, 1)` over `sock`; the result, or None if no reply came within `timeout_ms`."""
    sock.send_multipart(p.SubmitTask(id=task_id, task="add", payload=msgpack.packb([[task_id, 1], {}])).encode())
    if not sock.poll(timeout_ms):
        return None
    reply = p.decode(sock.recv_multipart())
    assert isinstance(reply, p.TaskReply) and reply.id == task_id and reply.status == "ok", reply
    return int(msgpack.unpackb(reply.payload))


def counter(metrics_port: int, name: str = REFUSED) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    match = re.search(rf"^{name} (\S+)$", body, re.MULTILINE)
    assert match, f"{name} missing from /metrics:\n{body}"
    return float(match.group(1))


@pytest.mark.timeout(60)
def test_listed_key_is_served_and_ipc_stays_plain(keys: Keys, pod: tuple[Orchestrator, str, int]) -> None:
    orch, tcp, metrics = pod
    good = dealer(tcp, keys.server, keys.client)
    plain_ipc = dealer(orch.address)
    try:
        # Interleaved on both sockets: every reply comes back on the socket its request came in on.
        for i in range(1, 51):
            assert call_add(good, i, 20_000) == i + 1
            assert call_add(plain_ipc, 1000 + i, 20_000) == 1000 + i + 1
    finally:
        good.close()
        plain_ipc.close()
    assert counter(metrics) == 0
    assert counter(metrics, FAILED) == 0
    assert "server public key " + zmq.auth.load_certificate(keys.server)[0].decode() in orch.log


def submit_unanswerable(sock: zmq.Socket[bytes], task_id: int) -> None:
    """Queue a task on a socket whose handshake is refused, never blocking: once a refusal reaches
    the client, libzmq drops the connection's pipe and a DEALER without one would block on send.
    A task that cannot even be queued is as unanswered as one that is."""
    task = p.SubmitTask(id=task_id, task="add", payload=msgpack.packb([[task_id, 1], {}]))
    with contextlib.suppress(zmq.Again):
        sock.send_multipart(task.encode(), zmq.NOBLOCK)


@pytest.mark.timeout(60)
def test_unknown_key_and_plain_text_get_nothing_and_are_counted(keys: Keys, pod: tuple[Orchestrator, str, int]) -> None:
    orch, tcp, metrics = pod
    stranger = dealer(tcp, keys.server, keys.stranger)
    wrong_server = dealer(tcp, keys.client, keys.client)  # a client that trusts another server key
    good = dealer(tcp, keys.server, keys.client)
    plain_text_failure = "failed the CURVE handshake: the client does not use CURVE"

    def plain_text_attempt() -> bool:
        """One plain-text client. libzmq's client gives up for good after a mechanism mismatch,
        and whether the server reads the client's greeting before it hangs up is a race, so each
        attempt is a fresh socket, until the server has logged one."""
        if plain_text_failure in orch.log:
            return True
        plain = dealer(tcp)
        try:
            submit_unanswerable(plain, 3)
            assert not plain.poll(200), "a plain-text client got a reply"
        finally:
            plain.close()
        return False

    try:
        submit_unanswerable(stranger, 1)
        submit_unanswerable(wrong_server, 2)
        # The stranger's handshake reaches the ZAP handler: the counter moves.
        wait_until(lambda: counter(metrics) >= 1, timeout=20, what=f"{REFUSED} >= 1")
        stranger_key = zmq.auth.load_certificate(keys.stranger)[0].decode()
        orch.wait_for(re.escape(f"its public key {stranger_key} is not in --curve-clients"))
        # The plain-text client and the one expecting another server key fail before ZAP.
        wait_until(plain_text_attempt, timeout=20, what="a plain-text handshake failure logged")
        orch.wait_for(r"failed the CURVE handshake: the client expects another server public key")
        wait_until(lambda: counter(metrics, FAILED) >= 2, timeout=20, what=f"{FAILED} >= 2")
        # A listed client is served meanwhile; the broker saw its one task and none of the others'.
        assert call_add(good, 99, 20_000) == 100
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
        assert re.findall(r"^neutrino_orchestrator_tasks_total\{.*", body, re.MULTILINE) == [
            'neutrino_orchestrator_tasks_total{outcome="ok"} 1'
        ]
        assert "neutrino_orchestrator_queue_depth 0" in body
        for sock in (stranger, wrong_server):
            assert not sock.poll(100), "a refused client got a reply"
    finally:
        for sock in (stranger, wrong_server, good):
            sock.close()
    assert orch.log.count(f"its public key {stranger_key}") == 1, "a refused key is logged once a minute"
    assert orch.log.count("the client does not use CURVE") == 1, "a kind of failure is logged once a minute"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--curve-clients", "{allowed}"], "--curve-clients needs --curve-secret-key"),
        (["--curve-secret-key", "{server}"], "--curve-secret-key needs --curve-clients"),
        (["--curve-secret-key", "{client_public}", "--curve-clients", "{allowed}"], "needs both public-key and"),
        (["--curve-secret-key", "{server}", "--curve-clients", "{empty}"], "empty allowlist"),
        (["--curve-secret-key", "{server}", "--curve-clients", "{missing}"], "missing"),
    ],
)
def test_bad_curve_flags_stop_start_up_with_a_clear_message(
    keys: Keys, tmp_path: Path, flags: list[str], message: str
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    paths = {
        "allowed": keys.allowed,
        "server": keys.server,
        "client_public": keys.client.with_suffix(".key"),
        "empty": empty,
        "missing": tmp_path / "missing",
    }
    argv = [str(BINARY), "--app", QUICKSTART, "--frontend", f"tcp://127.0.0.1:{free_port()}"]
    argv += [f.format(**paths) for f in flags]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 2, done.stderr  # SPEC.md §7: a usage error, before anything started
    assert message in done.stderr
    assert "Zygote" not in done.stderr
