"""The payload vectors (libs/protocol/vectors/payload.json) through neutrino_protocol.payload (SPEC.md §3.2)."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import msgpack
import pytest
from neutrino_protocol import ProtocolError, payload

DOC = json.loads((pathlib.Path(__file__).parents[2] / "vectors" / "payload.json").read_text())


def cases(result: str) -> list[Any]:
    return [pytest.param(c, id=f"payload-{c['id']}-{c['name']}") for c in DOC["cases"] if c["result"] == result]


def value_of(obj: Any) -> Any:
    """A case's value from its JSON form (the file's `value_encoding`)."""
    if isinstance(obj, list):
        return [value_of(v) for v in obj]
    if isinstance(obj, dict):
        if obj.keys() == {"$bin"}:
            return bytes.fromhex(obj["$bin"])
        if obj.keys() == {"$tuple"}:
            return tuple(value_of(v) for v in obj["$tuple"])
        if obj.keys() == {"$map"}:
            return {value_of(k): value_of(v) for k, v in obj["$map"]}
        return {k: value_of(v) for k, v in obj.items()}
    return obj


def strict(value: Any) -> Any:
    """`value` with every node tagged by its type, so True != 1, 1.0 != 1 and b"a" != "a" when compared."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [strict(v) for v in value])
    if isinstance(value, dict):
        return ("dict", [(strict(k), strict(v)) for k, v in value.items()])
    return (type(value).__name__, value)


def pack(case: dict[str, Any], value: Any) -> bytes:
    if case["codec"] == "args":
        return payload.pack_args(value["args"], value["kwargs"])
    if case["codec"] == "result":
        return payload.pack_result(value)
    return payload.pack_catalog(value)


def unpack(case: dict[str, Any], data: bytes) -> Any:
    if case["codec"] == "args":
        args, kwargs = payload.unpack_args(data)
        return {"args": args, "kwargs": kwargs}
    if case["codec"] == "result":
        return payload.unpack_result(data)
    return payload.unpack_catalog(data)


def test_the_file_is_the_payload_family() -> None:
    assert DOC["protocol_version"] == 1 and DOC["family"] == "payload"
    ids = [c["id"] for c in DOC["cases"]]
    assert len(ids) == len(set(ids))
    assert {c["codec"] for c in DOC["cases"]} == {"args", "result", "catalog"}
    assert {c.get("error") for c in DOC["cases"]} == {None, "msgpack", "shape", "encode"}


@pytest.mark.parametrize("case", cases("valid"))
def test_valid_case_packs_to_exact_bytes_and_back(case: dict[str, Any]) -> None:
    value = value_of(case["value"])
    (expected,) = case["frames"]
    assert pack(case, value).hex() == expected
    decoded = value_of(case.get("decoded", case["value"]))
    assert strict(unpack(case, bytes.fromhex(expected))) == strict(decoded)


@pytest.mark.parametrize("case", cases("invalid"))
def test_invalid_case_is_refused(case: dict[str, Any]) -> None:
    if case["error"] == "encode":
        assert case["frames"] == []
        with pytest.raises(TypeError):
            pack(case, value_of(case["value"]))
        return
    (data,) = case["frames"]
    with pytest.raises(payload.PayloadError) as err:
        unpack(case, bytes.fromhex(data))
    assert err.value.kind == case["error"]
    assert isinstance(err.value, ProtocolError)


def test_constants_are_what_the_codec_packs() -> None:
    assert payload.NO_ARGS == payload.pack_args((), {}) == bytes.fromhex("929080")
    assert payload.pack_result(None) == payload.NONE
    assert payload.new_packer().pack(b"a") == payload.pack_result(b"a") == b"\xc4\x01a"
    assert msgpack.unpackb(b"\x81\x01\xa1a", **payload.UNPACK_OPTIONS) == {1: "a"}


def test_errors_name_the_argument_and_the_payload() -> None:
    with pytest.raises(TypeError, match=r"positional argument 1 of type object cannot be encoded.*plain data"):
        payload.pack_args((1, object()), {})
    with pytest.raises(TypeError, match=r"keyword argument 'big' of type int"):
        payload.pack_args((), {"big": 2**70})
    with pytest.raises(TypeError, match="keyword argument names must be str"):
        payload.pack_args((), {1: "x"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="return value of type complex"):
        payload.pack_result(1j)
    with pytest.raises(TypeError, match="task names"):
        payload.pack_catalog({"add": 1})  # type: ignore[dict-item]
    with pytest.raises(payload.PayloadError, match=r"^widget payload is not valid msgpack \("):
        payload.unpack_value(b"\xc1", "widget")
