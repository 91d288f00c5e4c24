"""neutrino._frontend: address checks, per-call options and reply mapping, without sockets."""

from __future__ import annotations

import pytest
from neutrino import AddressError, BusyError, Client, NotSupportedError, PayloadTooLargeError, TaskError
from neutrino._frontend import check_address, check_max_payload, check_options, outcome, submit_frames
from neutrino.codec import pack_result
from neutrino.errors import ProtocolError
from neutrino_protocol import ErrorInfo, SubmitTask, TaskRejected, TaskReply, decode


@pytest.mark.parametrize(
    "address", ["tcp://127.0.0.1:5555", "tcp://orchestrator.svc:1", "tcp://[::1]:5555", "ipc:///run/n/frontend.sock"]
)
def test_good_addresses(address: str) -> None:
    assert check_address(address) == address


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("localhost:5555", "use tcp://HOST:PORT or ipc://"),
        ("udp://x:1", "use tcp://HOST:PORT"),
        ("tcp://localhost", "write tcp://HOST:PORT"),
        ("tcp://localhost:70000", "write tcp://HOST:PORT"),
        ("ipc://", "no socket path"),
        ("ipc:///" + "x" * 120, "107-byte limit"),
    ],
)
def test_bad_addresses_say_what_to_write(address: str, words: str) -> None:
    with pytest.raises(AddressError, match=words):
        check_address(address)


def test_http_gateway_addresses_give_the_http_client() -> None:
    from neutrino import AsyncClient
    from neutrino._http import HttpClient

    for address in ("http://gateway:8000", "https://gateway"):
        client = Client(address)
        assert isinstance(client, HttpClient) and client.address == address
        client.close()
    with pytest.raises(AddressError, match="gateway URL"):
        Client("http://")
    with pytest.raises(NotSupportedError, match=r"only the threaded Client"):
        AsyncClient("http://gateway:8000")


def test_per_call_options_are_checked() -> None:
    check_options(1.5, 0)
    check_options(None, None)
    with pytest.raises(ValueError, match="timeout_s"):
        check_options(0, None)
    with pytest.raises(ValueError, match="retries"):
        check_options(None, -1)
    check_options(None, 2**32 - 2)
    with pytest.raises(ValueError, match="retries must be an int from 0 to 4294967294"):
        check_options(None, 2**32 - 1)  # attempts (retries + 1) travel as a uint32


def test_submit_frames_carry_the_overrides() -> None:
    msg = decode(submit_frames(7, "add", (1, 2), {}, timeout_s=3, retries=2, max_payload_bytes=5))
    assert msg == SubmitTask(id=7, task="add", timeout_s=3.0, retries=2, payload=bytes.fromhex("9292010280"))


def test_payload_over_the_limit_is_refused_with_the_fix() -> None:
    assert decode(submit_frames(1, "echo", [b"x" * 97], {}, max_payload_bytes=102))  # exactly at the limit
    with pytest.raises(PayloadTooLargeError) as info:
        submit_frames(1, "echo", [b"x" * 98], {}, max_payload_bytes=102)
    err = info.value
    assert err.reason == "too_large"
    assert "103 bytes" in err.message and "limit of 102" in err.message and "nothing was sent" in err.message
    assert "a URL" in err.message and "--max-message-bytes" in err.message


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None, "64"])
def test_max_payload_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ValueError, match="max_payload_bytes must be an int >= 1"):
        check_max_payload(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_payload_bytes"):
        Client("tcp://127.0.0.1:5555", max_payload_bytes=bad)  # type: ignore[arg-type]


def test_outcome_maps_replies() -> None:
    assert outcome(TaskReply(id=1, status="ok", attempts=1, payload=pack_result([1, "a"]))) == ([1, "a"], None)
    _, err = outcome(TaskReply(id=2, status="error", attempts=2, error=ErrorInfo("task_error", "KeyError", "'k'")))
    assert isinstance(err, TaskError) and err.task_id == 2 and err.attempts == 2
    _, err = outcome(TaskRejected(id=3, reason="busy", message="full"))
    assert isinstance(err, BusyError)
    _, err = outcome(TaskReply(id=4, status="ok", attempts=1, payload=b"\xc1"))
    assert isinstance(err, ProtocolError)
