"""The V2 REST binary tensor extension, both ways: `tritonclient.http` unchanged (its defaults send
inputs as binary and, with no outputs named, ask for binary outputs) against real model servers,
every datatype's raw layout against tritonclient's own encoders and decoders, and the limits that
hold for binary bodies (each a clear 400 or 413)."""

from __future__ import annotations

import json
import re
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from neutrino_model_server import v2
from neutrino_model_server.testing import ServerProcess
from tritonclient.utils import InferenceServerException

APP = "tensor_app:app"
NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]


def sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    """Values that use each datatype's range (extremes included), in its numpy dtype."""
    n = int(np.prod(shape))
    if datatype == "BYTES":
        items = [f"tëxt {i}".encode() if i % 2 else bytes([0, 255, i % 256]) for i in range(n)]
        return np.array(items, dtype=np.object_).reshape(shape)
    dtype = np.dtype(v2.DTYPES[datatype])
    if datatype == "BOOL":
        return (np.arange(n) % 3 == 0).reshape(shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = [info.min, info.max, 0, 1, info.max // 3][:n] + list(range(n - 5))
        return np.array(values[:n], dtype=dtype).reshape(shape)
    values = [np.finfo(dtype).max, np.finfo(dtype).tiny, -1.5, 0.25, 3.0][:n] + [i / 7 for i in range(n - 5)]
    return np.array(values[:n], dtype=dtype).reshape(shape)


# -- element types and output datatypes (no server) ------------------------------------------------


@pytest.mark.parametrize(
    "datatype, good, bad",
    [
        ("FP32", [1, 2.5], [1.0, True]),  # a bool is not a number
        ("INT64", [1, 2, 3], [1, 2.0]),
        ("BOOL", [True, False], [True, 1]),
        ("BYTES", ["a", b"b"], ["a", 1]),
    ],
)
def test_elements_of_another_type_are_refused(datatype: str, good: list[Any], bad: list[Any]) -> None:
    assert v2.tensor_from_values("x", datatype, [len(good)], good).array.tolist() == [
        v.decode() if isinstance(v, bytes) else v for v in good
    ]
    with pytest.raises(v2.InferError, match="data must be"):
        v2.tensor_from_values("x", datatype, [len(bad)], bad)


def test_outputs_take_their_declared_datatype() -> None:
    (digits,) = v2.tensors_from_outputs([7, 3], (), {"digit": "INT64"})
    assert (digits.datatype, digits.array.dtype, digits.array.tolist()) == ("INT64", np.int64, [7, 3])
    (text,) = v2.tensors_from_outputs([1.5, 2.0], (), {"out": "BYTES"})  # float64 numbers, declared BYTES
    assert (text.datatype, text.array.tolist()) == ("BYTES", ["1.5", "2.0"])
    (narrow,) = v2.tensors_from_outputs([1.5, 2.0], (), {"out": "FP32"})
    assert (narrow.datatype, narrow.array.dtype) == ("FP32", np.float32)


# -- the raw layout, against tritonclient's own code (no server) ----------------------------------


@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
def test_every_datatype_reads_what_tritonclient_writes_and_writes_what_it_reads(datatype: str) -> None:
    array = sample(datatype, (3, 2))
    sent = httpclient.InferInput("x", list(array.shape), datatype)
    sent.set_data_from_numpy(array)  # binary_data=True, tritonclient's default
    raw = sent._get_binary_data()
    assert sent._get_tensor()["parameters"]["binary_data_size"] == len(raw)
    tensor = v2.tensor_from_bytes("x", datatype, list(array.shape), raw)
    assert tensor.shape == [3, 2]
    if datatype == "BYTES":
        # Valid UTF-8 arrives as str (as JSON would carry it), anything else as bytes.
        expected = [b.decode() if b[:1] == b"t" else b for b in array.ravel().tolist()]
        assert tensor.array.ravel().tolist() == expected
    else:
        assert tensor.array.dtype == array.dtype
        np.testing.assert_array_equal(tensor.array, array)

    doc = {
        "inputs": [{"name": "x", "shape": [3, 2], "datatype": datatype, "parameters": {"binary_data_size": len(raw)}}]
    }
    req = v2.parse_request({**doc, "parameters": {"binary_data_output": True}}, None, raw)
    header, body = v2.encode_response("m", "1", req, [tensor])
    text = json.dumps(header).encode()
    assert body is not None
    result = httpclient.InferResult.from_response_body(text + body, header_length=len(text))
    back = result.as_numpy("x")
    assert back is not None and back.shape == (3, 2)
    if datatype == "BYTES":
        assert back.ravel().tolist() == array.ravel().tolist()
    else:
        assert back.dtype == array.dtype
        np.testing.assert_array_equal(back, array)


# -- real servers, tritonclient unchanged ---------------------------------------------------------


@pytest.fixture
def tensors(serve: Callable[..., ServerProcess]) -> Iterator[tuple[ServerProcess, str]]:
    server = serve("tensors", app=APP)
    url = server.wait_ready()
    yield server, url


def client(url: str, concurrency: int = 1) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(url.removeprefix("http://"), concurrency=concurrency)


def tensors_inputs(rows: int, offset: int = 0) -> tuple[list[httpclient.InferInput], dict[str, np.ndarray[Any, Any]]]:
    arrays = {
        "x": (np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) + offset) / 4,
        "n": np.arange(rows, dtype=np.int64) + 2**40 + offset,
        "s": np.array([f"row {offset + i} é".encode() for i in range(rows)], dtype=np.object_),
    }
    datatypes = {"x": "FP32", "n": "INT64", "s": "BYTES"}
    inputs = []
    for name, array in arrays.items():
        tensor = httpclient.InferInput(name, list(array.shape), datatypes[name])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs, arrays


def check_outputs(result: httpclient.InferResult, arrays: dict[str, np.ndarray[Any, Any]]) -> None:
    doubled, nxt, upper = result.as_numpy("doubled"), result.as_numpy("next"), result.as_numpy("upper")
    assert doubled is not None and doubled.dtype == np.float32
    np.testing.assert_array_equal(doubled, arrays["x"] * 2)
    assert nxt is not None and nxt.dtype == np.int64
    np.testing.assert_array_equal(nxt, arrays["n"] + 1)
    assert upper is not None and upper.dtype == np.object_
    # tritonclient gives bytes from binary outputs, str from JSON ones
    assert [u if isinstance(u, bytes) else u.encode() for u in upper.tolist()] == [
        s.decode().upper().encode() for s in arrays["s"]
    ]


@pytest.mark.parametrize("rows", [1, 5])
def test_tritonclient_with_its_defaults_fp32_int64_bytes(tensors: tuple[ServerProcess, str], rows: int) -> None:
    _, url = tensors
    triton = client(url)
    assert triton.is_server_ready() and triton.is_model_ready("tensors")
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]
    inputs, arrays = tensors_inputs(rows)
    result = triton.infer("tensors", inputs)  # binary inputs, and no outputs named: all binary
    check_outputs(result, arrays)
    response = result.get_response()
    assert all("binary_data_size" in o["parameters"] and "data" not in o for o in response["outputs"])


def test_outputs_binary_or_json_as_each_asks(tensors: tuple[ServerProcess, str]) -> None:
    _, url = tensors
    inputs, arrays = tensors_inputs(3)
    outputs = [
        httpclient.InferRequestedOutput("doubled", binary_data=True),
        httpclient.InferRequestedOutput("upper", binary_data=False),
    ]
    result = client(url).infer("tensors", inputs, outputs=outputs)
    by_name = {o["name"]: o for o in result.get_response()["outputs"]}
    assert set(by_name) == {"doubled", "upper"}  # only what was asked for
    assert "data" not in by_name["doubled"] and by_name["upper"]["data"] == ["ROW 0 É", "ROW 1 É", "ROW 2 É"]
    np.testing.assert_array_equal(result.as_numpy("doubled"), arrays["x"] * 2)

    # JSON inputs (binary_data=False) and JSON outputs: the plain protocol still works as before.
    for tensor, name in zip(inputs, arrays, strict=True):
        tensor.set_data_from_numpy(arrays[name], binary_data=False)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("doubled", "next", "upper")]
    check_outputs(client(url).infer("tensors", inputs, outputs=outputs), arrays)


def test_concurrent_binary_requests_are_batched(tmp_path: Path, serve: Callable[..., ServerProcess]) -> None:
    gate = tmp_path / "gate"
    server = serve("tensors", app=APP, env={"TENSOR_GATE": str(gate)})
    url = server.wait_ready()
    sent = [tensors_inputs(2, offset=10 * i) for i in range(4)]
    # One client per thread: tritonclient's async_infer runs on gevent, which needs the caller to yield.
    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(lambda inputs: client(url).infer("tensors", inputs), inputs) for inputs, _ in sent]
        # The first request holds predict (at the gate); the other three wait for it, queued.
        wait_until(lambda: queued(url) == 6)
        gate.touch()
        results = [p.result(timeout=30) for p in pending]
    for result, (_, arrays) in zip(results, sent, strict=True):
        check_outputs(result, arrays)
    batches = sorted(int(r.as_numpy("batch")[0]) for r in results)
    assert batches == [2, 6, 6, 6], batches


def queued(url: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    match = re.search(r"^neutrino_model_queue_depth\{[^}]*\} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition not met in time")


def test_every_datatype_round_trips_through_a_server(serve: Callable[..., ServerProcess]) -> None:
    url = serve("cast", app=APP).wait_ready()
    triton = client(url)
    for datatype in [*NUMERIC, "BYTES"]:
        for shape in [(1, 3), (4, 3)]:  # one row, and a batch of four
            array = sample(datatype, shape)
            x = httpclient.InferInput("x", list(shape), datatype)
            x.set_data_from_numpy(array)
            to = httpclient.InferInput("to", [shape[0]], "BYTES")
            to.set_data_from_numpy(np.array([datatype.encode()] * shape[0], dtype=np.object_))
            y = triton.infer("cast", [x, to]).as_numpy("y")
            assert y is not None and y.shape == shape, (datatype, y)
            if datatype == "BYTES":
                assert y.tolist() == array.tolist(), datatype  # bytes that are not UTF-8 included
            else:
                assert y.dtype == array.dtype, datatype
                np.testing.assert_array_equal(y, array)


def test_bytes_that_are_not_utf8_cannot_be_answered_in_json(serve: Callable[..., ServerProcess]) -> None:
    url = serve("cast", app=APP).wait_ready()
    x = httpclient.InferInput("x", [1, 1], "BYTES")
    x.set_data_from_numpy(np.array([[b"\xff\xfe"]], dtype=np.object_))
    to = httpclient.InferInput("to", [1], "BYTES")
    to.set_data_from_numpy(np.array([b"as-is"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match=r"not UTF-8 text.*binary_data"):
        client(url).infer("cast", [x, to], outputs=[httpclient.InferRequestedOutput("y", binary_data=False)])


# -- limits and malformed binary bodies: clear 400s and 413s --------------------------------------


def post(url: str, header: dict[str, Any], raw: bytes = b"", header_length: str | None = None) -> tuple[int, Any]:
    text = json.dumps(header).encode()
    length = str(len(text)) if header_length is None else header_length
    req = urllib.request.Request(
        url + "/v2/models/tensors/infer",
        text + raw,
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": length},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, body, headers = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as err:
        status, body, headers = err.code, err.read(), err.headers
    if "Inference-Header-Content-Length" in headers:
        body = body[: int(headers["Inference-Header-Content-Length"])]
    return status, json.loads(body)


def tensor(name: str, datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}


def good_request(rows: int = 1) -> tuple[list[dict[str, Any]], bytes]:
    x = np.ones((rows, 4), dtype=np.float32).tobytes()
    n = np.ones(rows, dtype=np.int64).tobytes()
    s = b"".join(struct.pack("<I", 2) + b"ab" for _ in range(rows))
    return [
        tensor("x", "FP32", [rows, 4], len(x)),
        tensor("n", "INT64", [rows], len(n)),
        tensor("s", "BYTES", [rows], len(s)),
    ], x + n + s


def test_malformed_binary_bodies_are_clear_400s(serve: Callable[..., ServerProcess]) -> None:
    server = serve("tensors", "--max-elements", "100", "--max-body-bytes", "4096", app=APP)
    url = server.wait_ready()
    inputs, raw = good_request()
    status, body = post(url, {"inputs": inputs}, raw)
    assert status == 200 and [o["name"] for o in body["outputs"]] == ["doubled", "next", "upper", "batch"], body

    cases: list[tuple[dict[str, Any], bytes, str | None, str]] = [
        ({"inputs": inputs}, raw, str(10**6), "Inference-Header-Content-Length must be the byte length"),
        ({"inputs": inputs}, raw, "-3", "Inference-Header-Content-Length must be"),
        ({"inputs": inputs}, raw, "12", "not valid JSON"),  # a header cut inside the JSON
        ({"inputs": inputs}, raw[:-3], None, "runs past the end of the body"),  # fewer bytes than promised
        ({"inputs": inputs}, raw + b"xyz", None, "3 bytes after the JSON header"),  # more bytes than declared
        # a shape that promises more bytes than its binary_data_size
        ({"inputs": [tensor("x", "FP32", [2, 4], 16), *inputs[1:]]}, raw, None, "is 32 bytes"),
        # a BYTES element whose length runs past its tensor's data
        (
            {"inputs": [*inputs[:2], tensor("s", "BYTES", [1], 6)]},
            raw[:-6] + struct.pack("<I", 9) + b"ab",
            None,
            "element 0 says it is 9 bytes long",
        ),
        ({"inputs": [{**inputs[0], "data": [1, 2, 3, 4]}, *inputs[1:]]}, raw, None, "both `data` and"),
        ({"inputs": [tensor("x", "FP32", [1, 4], -16), *inputs[1:]]}, raw, None, "binary_data_size must be"),
        ({"inputs": inputs, "parameters": {"binary_data_output": "yes"}}, raw, None, "must be true or false"),
        ({"inputs": inputs, "parameters": {"binary_data_output": None}}, raw, None, "must be true or false, got null"),
        ({"inputs": [tensor("b", "BOOL", [1], 1)]}, b"\x02", None, "BOOL elements must be bytes 0 or 1"),
    ]
    for header, data, length, message in cases:
        status, body = post(url, header, data, length)
        assert status == 400, (header, body)
        assert message in body["error"], (message, body)

    # Binary inputs without the header: the whole body is taken as JSON, and nothing follows it.
    req = urllib.request.Request(url + "/v2/models/tensors/infer", json.dumps({"inputs": inputs}).encode())
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=30)
    assert caught.value.code == 400 and "Inference-Header-Content-Length header missing" in caught.value.read().decode()

    # --max-elements holds for shapes whatever carries the data (checked before any is read) ...
    status, body = post(url, {"inputs": [tensor("x", "FP32", [26, 4], 26 * 16)]}, b"\0" * 26 * 16)
    assert status == 413 and "--max-elements" in body["error"], body
    status, body = post(url, {"inputs": [tensor("x", "FP32", [10**12, 4], 16)]}, b"\0" * 16)
    assert status == 413, body
    # ... and --max-body-bytes for the whole body, binary part included.
    status, body = post(url, {"inputs": [tensor("x", "UINT8", [1, 5000], 5000)]}, b"\0" * 5000)
    assert status == 413 and "--max-body-bytes" in body["error"], body
