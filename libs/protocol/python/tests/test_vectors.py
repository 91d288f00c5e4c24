"""The golden vectors (libs/protocol/vectors/*.json), byte for byte (SPEC.md §9)."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import neutrino_protocol as p
import pytest

VECTORS = pathlib.Path(__file__).parents[2] / "vectors"
FAMILIES = ("frontend", "backend", "control", "header")


def load(kind: str) -> list[Any]:
    out = []
    for family in FAMILIES:
        doc = json.loads((VECTORS / f"{family}.json").read_text())
        assert doc["protocol_version"] == p.PROTOCOL_VERSION
        out += [pytest.param(c, id=f"{family}-{c['id']}-{c['name']}") for c in doc["cases"] if c["result"] == kind]
    return out


def build(case: dict[str, Any]) -> p.Message:
    fields = dict(case["fields"])
    if "payload_hex" in fields:
        fields["payload"] = bytes.fromhex(fields.pop("payload_hex"))
    if "error" in fields:
        fields["error"] = p.ErrorInfo(**fields["error"])
    if "task_options" in fields:
        fields["task_options"] = {k: p.TaskOptions(**v) for k, v in fields["task_options"].items()}
    cls: type[p.Message] = getattr(p, case["message"])
    return cls(**fields)


@pytest.mark.parametrize("case", load("valid"))
def test_valid_case_encodes_to_exact_bytes(case: dict[str, Any]) -> None:
    msg = build(case)
    assert [f.hex() for f in msg.encode()] == case["frames"]
    if "stream" in case:
        assert p.encode_control(msg).hex() == case["stream"]


@pytest.mark.parametrize("case", load("valid"))
def test_valid_case_decodes_to_fields(case: dict[str, Any]) -> None:
    frames = [bytes.fromhex(f) for f in case["frames"]]
    assert p.decode(frames) == build(case)
    if "stream" in case:
        records = split_records(bytes.fromhex(case["stream"]))
        body, *payload = records
        assert p.control_payload_follows(body[3]) == bool(payload)
        assert p.decode_control(body, *payload) == build(case)


def split_records(stream: bytes) -> list[bytes]:
    """A control-link byte stream as its u32 length-prefixed records (SPEC.md §3)."""
    records = []
    while stream:
        size = int.from_bytes(stream[:4], "big")
        assert len(stream) >= 4 + size
        records.append(stream[4 : 4 + size])
        stream = stream[4 + size :]
    return records


@pytest.mark.parametrize("case", load("invalid"))
def test_invalid_case_is_rejected(case: dict[str, Any]) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.decode([bytes.fromhex(f) for f in case["frames"]])
    assert err.value.kind == case["error"]


def test_decoders_ignore_unknown_fields() -> None:
    import msgpack

    meta = msgpack.packb({"nonce": 5, "from_the_future": [1, 2]})
    assert p.decode([p.header(p.MessageType.PING), meta]) == p.Ping(nonce=5)


def test_a_changed_byte_fails() -> None:
    """Guards the test itself: flipping one byte of a vector must break the comparison."""
    case = load("valid")[0].values[0]
    frames = list(case["frames"])
    frames[1] = frames[1][:-2] + format(int(frames[1][-2:], 16) ^ 1, "02x")
    assert [f.hex() for f in build(case).encode()] != frames


@pytest.mark.parametrize("message", [p.SubmitTask, p.TaskAssignment])
@pytest.mark.parametrize("field", ["traceparent", "tracestate"])
def test_trace_context_is_bounded_in_utf8_bytes(message: type[p.Message], field: str) -> None:
    """SPEC.md §4.5: at most TRACE_MAX_BYTES once encoded, whatever the characters; longer is malformed."""
    required = {"id": 1, "task": "t"} if message is p.SubmitTask else {"task_id": 1, "task": "t", "attempt": 1}
    limit = p.TRACE_MAX_BYTES
    for fits in ("a" * limit, "é" * (limit // 2), "€" * 100 + "a" * (limit - 300)):
        msg = message(**required, **{field: fits}, payload=b"\x90")  # type: ignore[call-arg]
        assert p.decode(msg.encode()) == msg
    for over in ("a" * (limit + 1), "é" * (limit // 2) + "a", "€" * 171):
        frames = message(**required, **{field: over}, payload=b"\x90").encode()  # type: ignore[call-arg]
        with pytest.raises(p.ProtocolError, match=f"'{field}' must be a string of at most {limit} bytes"):
            p.decode(frames)
