"""Property tests of the decoder (hypothesis): random frames, and frames mutated from the golden
vectors, either decode or raise the library's typed `ProtocolError` with a known failure class,
never anything else; whatever decodes survives a round trip; every message encodes and decodes
back to itself, as frames and as a control-link record.

The Rust decoder has the same properties under cargo-fuzz (libs/protocol/rust/fuzz, `make fuzz`).
`NEUTRINO_FUZZ_EXAMPLES=N` sets how many examples each property tries (400 by default)."""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, get_args, get_origin

import msgpack
import neutrino_protocol as p
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from neutrino_protocol import frames as pf
from neutrino_protocol.frames import _REGISTRY, _TRACE, _U32

VECTORS = pathlib.Path(__file__).parents[2] / "vectors"
CLASSES = {"frame_count", "header", "version", "type", "meta"}
# NEUTRINO_FUZZ_EXAMPLES=100000 runs them longer.
SETTINGS = settings(
    max_examples=int(os.environ.get("NEUTRINO_FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def vector_frames() -> list[list[bytes]]:
    out = []
    for path in sorted(VECTORS.glob("*.json")):
        for case in json.loads(path.read_text())["cases"]:
            out.append([bytes.fromhex(f) for f in case["frames"]])
    return out


VECTOR_FRAMES = vector_frames()
HEADERS = [p.header(code) for code in _REGISTRY] + [b"NT\x01\x7f", b"NT\x02\x01", b"NT\x01", b""]

# msgpack values of every kind the decoder may meet where a field is expected.
msgpack_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    msgpack_ints,
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | msgpack_ints, inner, max_size=4),
    max_leaves=12,
)
FIELD_NAMES = sorted({name for cls in _REGISTRY.values() for name, _, _ in cls._FIELDS})
metas = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), values, max_size=8)


def pack(value: Any) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


def decode_or_typed_error(frames: list[bytes]) -> p.Message | None:
    """The contract: a message, or a ProtocolError of a known class; anything else fails the test."""
    try:
        msg = p.decode(frames)
    except p.ProtocolError as exc:
        assert exc.kind in CLASSES, exc.kind
        assert str(exc)
        return None
    assert isinstance(msg, p.Message)
    assert_round_trips(msg)
    return msg


def assert_round_trips(msg: p.Message) -> None:
    """encode -> decode -> encode gives the same bytes (bytes, so NaN compares too)."""
    frames = msg.encode()
    again = p.decode(frames)
    assert type(again) is type(msg)
    assert again.encode() == frames
    body, *payload = records(p.encode_control(msg))
    assert p.decode_control(body, *payload).encode() == frames


def records(stream: bytes) -> list[bytes]:
    out = []
    while stream:
        size = int.from_bytes(stream[:4], "big")
        out.append(stream[4 : 4 + size])
        stream = stream[4 + size :]
    return out


@SETTINGS
@given(st.lists(st.binary(max_size=40), max_size=5))
@example([])
@example([b"NT\x01"])
def test_random_frames_decode_or_raise_protocol_error(frames: list[bytes]) -> None:
    decode_or_typed_error(frames)


@SETTINGS
@given(
    st.sampled_from(HEADERS),
    metas | values,
    st.lists(st.binary(max_size=16), max_size=2),
)
def test_random_meta_maps_under_every_header(head: bytes, meta: Any, rest: list[bytes]) -> None:
    decode_or_typed_error([head, pack(meta), *rest])


def mutate(data: st.DataObject, frames: list[bytes]) -> list[bytes]:
    frames = list(frames)
    for _ in range(data.draw(st.integers(1, 3))):
        how = data.draw(st.sampled_from(["flip", "cut", "insert", "frames", "field", "trail"]))
        i = data.draw(st.integers(0, max(len(frames) - 1, 0)))
        if not frames:
            frames.append(b"")
        frame = bytearray(frames[i])
        if how == "flip" and frame:
            at = data.draw(st.integers(0, len(frame) - 1))
            frame[at] ^= data.draw(st.integers(1, 255))
        elif how == "cut":
            frame = frame[: data.draw(st.integers(0, len(frame)))]
        elif how == "insert":
            at = data.draw(st.integers(0, len(frame)))
            frame[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif how == "trail":
            frame += data.draw(st.binary(min_size=1, max_size=4))
        elif how == "frames":
            op = data.draw(st.sampled_from(["drop", "dup", "add"]))
            if op == "drop":
                del frames[i]
            elif op == "dup":
                frames.insert(i, frames[i])
            else:
                frames.append(data.draw(st.binary(max_size=8)))
            continue
        elif how == "field" and len(frames) > 1:
            # A well-formed map with one field replaced, removed or added: type confusion
            # rather than broken msgpack.
            try:
                meta = msgpack.unpackb(frames[1], raw=False)
            except Exception:
                continue
            if isinstance(meta, dict):
                key = data.draw(st.sampled_from(sorted(map(str, meta)) or ["id"]) | st.sampled_from(FIELD_NAMES))
                if data.draw(st.booleans()):
                    meta.pop(key, None)
                else:
                    meta[key] = data.draw(values)
                frames[1] = pack(meta)
            continue
        frames[i] = bytes(frame)
    return frames


@SETTINGS
@given(st.sampled_from(VECTOR_FRAMES), st.data())
def test_mutated_vectors_decode_or_raise_protocol_error(frames: list[bytes], data: st.DataObject) -> None:
    decode_or_typed_error(mutate(data, frames))


@SETTINGS
@given(st.binary(max_size=80))
def test_random_control_bodies_decode_or_raise_protocol_error(body: bytes) -> None:
    for payload in (None, body[:8]):
        try:
            msg = p.decode_control(body, payload)
        except p.ProtocolError as exc:
            assert exc.kind in CLASSES
        else:
            assert_round_trips(msg)


# ---- round trips of well-formed messages ----------------------------------------------------

u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
finite = st.floats(allow_nan=False)
errors = st.builds(p.ErrorInfo, st.text(max_size=10), st.text(max_size=10), st.text(max_size=20), st.none() | st.text())
options = st.builds(
    p.TaskOptions,
    st.none() | finite,
    st.none() | u32,
    st.none() | finite,
    st.none() | finite,
)


def field_strategy(kind: Any) -> st.SearchStrategy[Any]:
    if kind == _U32:
        return u32
    if kind is int:
        return u64
    if kind is float:
        return finite
    if kind is str:
        return st.text(max_size=16)
    if kind == _TRACE:  # at most 4 bytes a character: always within TRACE_MAX_BYTES
        return st.text(max_size=p.TRACE_MAX_BYTES // 4)
    if kind is bool:
        return st.booleans()
    if kind is p.ErrorInfo:
        return errors
    if get_origin(kind) is list:
        return st.lists(st.text(max_size=8), max_size=4)
    if get_origin(kind) is dict and get_args(kind)[1] is p.TaskOptions:
        return st.dictionaries(st.text(max_size=8), options, max_size=3)
    raise AssertionError(f"no strategy for {kind!r}")


@st.composite
def messages(draw: st.DrawFn) -> p.Message:
    cls = draw(st.sampled_from(sorted(_REGISTRY.values(), key=lambda c: c.TYPE)))
    fields = {}
    for name, kind, required in cls._FIELDS:
        strategy = field_strategy(kind)
        fields[name] = draw(strategy if required else st.none() | strategy)
    if cls.PAYLOAD == "when_ok" and fields["status"] not in ("ok", "error"):
        fields["status"] = draw(st.sampled_from(["ok", "error"]))
    if cls.PAYLOAD == "when_ok" and fields["status"] == "error" and fields["error"] is None:
        fields["error"] = draw(errors)
    msg = cls(**fields)
    if cls.PAYLOAD != "never" and msg._wants_payload():
        msg.payload = draw(st.binary(max_size=16))  # type: ignore[attr-defined]
    return msg


@SETTINGS
@given(messages())
def test_every_message_round_trips(msg: p.Message) -> None:
    assert p.decode(msg.encode()) == msg
    body, *payload = records(p.encode_control(msg))
    assert p.decode_control(body, *payload) == msg
    assert_round_trips(msg)


def test_nan_survives_a_round_trip_as_bytes() -> None:
    msg = p.SubmitTask(id=1, task="t", timeout_s=math.nan, payload=b"\x90")
    assert_round_trips(msg)


def test_the_contract_check_can_fail() -> None:
    """Guards the tests themselves: a decoder error that is not a ProtocolError is caught."""
    with_type_error = [p.header(p.MessageType.PING), pack({"nonce": 1})]
    original = pf._REGISTRY[p.MessageType.PING]._decode_meta  # type: ignore[attr-defined]

    def broken(meta: Any, frames: list[bytes]) -> p.Message:
        raise TypeError("a bug")

    pf._REGISTRY[p.MessageType.PING]._decode_meta = broken  # type: ignore[attr-defined]
    try:
        try:
            decode_or_typed_error(with_type_error)
        except TypeError:
            pass
        else:
            raise AssertionError("a TypeError from the decoder went unnoticed")
    finally:
        pf._REGISTRY[p.MessageType.PING]._decode_meta = original  # type: ignore[attr-defined]
