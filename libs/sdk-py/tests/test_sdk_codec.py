"""neutrino.codec: msgpack payloads for arguments and results."""

from __future__ import annotations

import enum

import msgpack
import pytest
from neutrino.codec import pack_args, pack_result, unpack_args, unpack_catalog, unpack_result
from neutrino.errors import ProtocolError


def test_pack_args_writes_the_spec_layout() -> None:
    # SPEC.md §4.2 example: SubmitTask{id: 7, task: "add"} with payload [[1, 2], {}].
    assert pack_args((1, 2), {}) == bytes.fromhex("9292010280")
    assert unpack_args(pack_args([1], {"y": "z"})) == ([1], {"y": "z"})


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -1, 2**64 - 1, -(2**63), 1.5, "text", "ünïcode", b"\x00b", [1, [2]], {"a": {"b": None}}, {1: "x"}],
)
def test_results_round_trip(value: object) -> None:
    assert unpack_result(pack_result(value)) == value


def test_bytes_and_str_stay_distinct_and_tuples_become_lists() -> None:
    assert unpack_result(pack_result([b"ab", "ab"])) == [b"ab", "ab"]
    assert unpack_result(pack_result((1, (2, 3)))) == [1, [2, 3]]
    args, kwargs = unpack_args(pack_args(((1, 2),), {"t": (3,)}))
    assert args == [[1, 2]] and kwargs == {"t": [3]}


def test_subclasses_of_plain_types_encode_as_their_base() -> None:
    class Color(enum.IntEnum):
        RED = 1

    assert unpack_result(pack_result(Color.RED)) == 1


def test_unencodable_positional_argument_is_named() -> None:
    with pytest.raises(TypeError, match=r"positional argument 1 of type object cannot be encoded.*plain data"):
        pack_args((1, object()), {})


def test_unencodable_keyword_argument_is_named() -> None:
    with pytest.raises(TypeError, match=r"keyword argument 'tags' of type set"):
        pack_args((), {"ok": 1, "tags": {"a"}})
    with pytest.raises(TypeError, match=r"keyword argument 'big' of type int"):
        pack_args((), {"big": 2**70})


def test_keyword_names_must_be_strings() -> None:
    with pytest.raises(TypeError, match="keyword argument names must be str"):
        pack_args((), {1: "x"})  # type: ignore[dict-item]


def test_unencodable_result_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="return value of type complex"):
        pack_result(1j)


def test_bad_payloads_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="result payload is not valid msgpack"):
        unpack_result(b"\xc1")
    with pytest.raises(ProtocolError, match=r"must be \[args: array, kwargs: map\]"):
        unpack_args(msgpack.packb({"a": 1}))


def test_pickle_is_never_involved() -> None:
    # A pickle stream is not msgpack: decoding it must fail or give inert data, never run code.
    import pickle

    payload = pickle.dumps(print)
    try:
        value = unpack_result(payload)
    except ProtocolError:
        return
    assert not callable(value)


def test_unpack_catalog_checks_the_shape() -> None:
    catalog = {"add": {"params": {"type": "object"}, "result": {}}}
    assert unpack_catalog(msgpack.packb(catalog)) == catalog
    for bad in (msgpack.packb([1]), msgpack.packb({"add": 1}), msgpack.packb({1: {}}), b"\xc1"):
        with pytest.raises(ProtocolError, match="task catalog"):
            unpack_catalog(bad)
