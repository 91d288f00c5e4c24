"""The model server's gRPC front (--grpc-port), driven by tritonclient.grpc unchanged against real
server processes: tensors of three datatypes both ways, batched and not, typed and raw contents,
health and metadata, the error codes, the limits, and the drain on SIGTERM.

This process imports tritonclient's copy of the protocol's messages only (never the server's:
neutrino_model_server/oip/__init__.py says why)."""

from __future__ import annotations

import asyncio
import re
import signal
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
from neutrino_model_server.testing import ServerProcess
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

APP = "grpc_app:app"
DIGITS_APP = "examples.models.app:app"


@pytest.fixture
def grpc_serve(serve: Callable[..., ServerProcess]) -> Iterator[Callable[..., tuple[ServerProcess, str]]]:
    """`grpc_serve(model, *flags, env=None, ready=True)` -> (server, its gRPC host:port), on free ports."""

    def _serve(
        model: str, *flags: str, app: str = APP, env: dict[str, str] | None = None, ready: bool = True
    ) -> tuple[ServerProcess, str]:
        server = serve(model, "--grpc-port", "0", *flags, app=app, env=env)
        if ready:
            server.wait_ready()
        return server, server.wait_grpc()

    yield _serve


@pytest.fixture
def client() -> Iterator[Callable[[str], grpcclient.InferenceServerClient]]:
    """`client(target)` -> a tritonclient.grpc client, closed at teardown."""
    opened: list[grpcclient.InferenceServerClient] = []

    def _client(target: str) -> grpcclient.InferenceServerClient:
        opened.append(grpcclient.InferenceServerClient(target))
        return opened[-1]

    yield _client
    for c in opened:
        c.close()


def rows(n: int, text: list[Any] | None = None) -> dict[str, np.ndarray[Any, Any]]:
    """`n` rows of the three tensors the echo models answer with: FP32 [n, 3], INT64 [n, 2], BYTES [n]."""
    f32 = (np.arange(n * 3, dtype=np.float32) / 7).reshape(n, 3)
    i64 = (np.arange(n * 2, dtype=np.int64) * 10**12 - 5).reshape(n, 2)
    texts = text if text is not None else [f"row {i}".encode() if i % 2 else b"\xff\x00 not utf-8" for i in range(n)]
    return {"f32": f32, "i64": i64, "text": np.array(texts, dtype=np.object_)}


def inputs(tensors: dict[str, np.ndarray[Any, Any]]) -> list[grpcclient.InferInput]:
    datatypes = {"f32": "FP32", "i64": "INT64", "text": "BYTES"}
    out = []
    for name, arr in tensors.items():
        tensor = grpcclient.InferInput(name, list(arr.shape), datatypes[name])
        tensor.set_data_from_numpy(arr)
        out.append(tensor)
    return out


def assert_echoed(result: Any, sent: dict[str, np.ndarray[Any, Any]]) -> None:
    for name, arr in sent.items():
        got = result.as_numpy(name)
        assert got.dtype == arr.dtype and got.shape == arr.shape, (name, got)
        assert got.tolist() == arr.tolist(), name


def rpc_error(call: Callable[[], Any]) -> tuple[str, str]:
    """The status code name and message of a tritonclient call that must fail."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value.status()).removeprefix("StatusCode."), caught.value.message()


def metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


@pytest.mark.parametrize("model", ["batched", "single"])
def test_fp32_int64_and_bytes_tensors_round_trip(
    grpc_serve: Callable[..., tuple[ServerProcess, str]], client: Callable[[str], Any], model: str
) -> None:
    _, target = grpc_serve(model)
    c = client(target)
    for n in (1, 5):
        sent = rows(n)
        result = c.infer(model, inputs(sent), request_id=f"req-{n}")
        assert_echoed(result, sent)
        response = result.get_response()
        assert (response.model_name, response.model_version, response.id) == (model, "1", f"req-{n}")
        assert len(response.raw_output_contents) == 3  # tritonclient reads raw outputs only
    # Asking for some outputs answers those only; for one the model does not produce, a clear refusal.
    only = c.infer(model, inputs(rows(2)), outputs=[grpcclient.InferRequestedOutput("i64")])
    assert [o.name for o in only.get_response().outputs] == ["i64"]
    code, message = rpc_error(lambda: c.infer(model, inputs(rows(1)), outputs=[grpcclient.InferRequestedOutput("x")]))
    assert code == "INVALID_ARGUMENT" and "['x']" in message


def test_every_datatype_decodes(
    grpc_serve: Callable[..., tuple[ServerProcess, str]], client: Callable[[str], Any]
) -> None:
    """All the protocol's datatypes in one raw request; outputs the model does not declare come back as
    what their Python values are (INT64, FP64, BOOL), holding the same values."""
    _, target = grpc_serve("batched")
    sent = {
        "BOOL": np.array([[True, False], [False, True]]),
        "UINT8": np.array([[0, 255], [1, 2]], dtype=np.uint8),
        "UINT16": np.array([[0, 65535], [1, 2]], dtype=np.uint16),
        "UINT32": np.array([[0, 2**32 - 1], [1, 2]], dtype=np.uint32),
        "UINT64": np.array([[0, 2**63 - 1], [1, 2]], dtype=np.uint64),
        "INT8": np.array([[-128, 127], [1, 2]], dtype=np.int8),
        "INT16": np.array([[-(2**15), 2**15 - 1], [1, 2]], dtype=np.int16),
        "INT32": np.array([[-(2**31), 2**31 - 1], [1, 2]], dtype=np.int32),
        "INT64": np.array([[-(2**63), 2**63 - 1], [1, 2]], dtype=np.int64),
        "FP16": np.array([[0.5, -65504], [1, 2]], dtype=np.float16),
        "FP32": np.array([[0.1, -3.4e38], [1, 2]], dtype=np.float32),
        "FP64": np.array([[0.1, -1.7e308], [1, 2]], dtype=np.float64),
        "BYTES": np.array([[b"", b"\0x"], [b"a", b"b"]], dtype=np.object_),
    }
    tensors = []
    for datatype, arr in sent.items():
        tensors.append(grpcclient.InferInput(datatype.lower(), list(arr.shape), datatype))
        tensors[-1].set_data_from_numpy(arr)
    result = client(target).infer("batched", tensors)
    kinds = {"b": "BOOL", "u": "INT64", "i": "INT64", "f": "FP64", "O": "BYTES"}
    for datatype, arr in sent.items():
        output = result.get_output(datatype.lower())
        assert output.datatype == kinds[arr.dtype.kind] and list(output.shape) == [2, 2], output
        assert result.as_numpy(datatype.lower()).tolist() == arr.tolist(), datatype


def test_health_and_metadata(
    grpc_serve: Callable[..., tuple[ServerProcess, str]], client: Callable[[str], Any]
) -> None:
    _, target = grpc_serve("batched")
    c = client(target)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("batched") and c.is_model_ready("batched", "1")
    server = c.get_server_metadata()
    assert server.name == "neutrino-model-server" and server.version == "1"
    meta = c.get_model_metadata("batched", as_json=True)
    assert meta["name"] == "batched" and meta["versions"] == ["1"] and meta["platform"] == "neutrino"
    assert meta["outputs"] == [
        {"name": "f32", "datatype": "FP32", "shape": ["-1", "-1"]},  # MessageToJson writes int64 as strings
        {"name": "i64", "datatype": "INT64", "shape": ["-1", "-1"]},
        {"name": "text", "datatype": "BYTES", "shape": ["-1"]},
    ]
    for call in (
        lambda: c.is_model_ready("other"),
        lambda: c.get_model_metadata("other"),
        lambda: c.get_model_metadata("batched", "2"),
    ):
        code, message = rpc_error(call)
        assert code == "NOT_FOUND" and ("serves model 'batched', not 'other'" in message or "'1' only" in message)


def test_concurrent_calls_are_batched_and_a_refused_input_fails_alone(
    grpc_serve: Callable[..., tuple[ServerProcess, str]],
) -> None:
    server, target = grpc_serve("batched")
    texts = [f"t{i}".encode() for i in range(24)]
    texts[7] = b"bad"

    async def scenario() -> list[Any]:
        c = grpcclient_aio.InferenceServerClient(target)
        try:
            calls = [c.infer("batched", inputs(rows(1, [t]))) for t in texts]
            return list(await asyncio.gather(*calls, return_exceptions=True))
        finally:
            await c.close()

    answers = asyncio.run(scenario())
    for text, answer in zip(texts, answers, strict=True):
        if text == b"bad":
            assert isinstance(answer, InferenceServerException)
            assert answer.status() == "StatusCode.INVALID_ARGUMENT"
            assert "text 'bad' is refused (on purpose)" in answer.message()
        else:
            assert not isinstance(answer, Exception), answer
            assert answer.as_numpy("text").tolist() == [text]
    batches = metric(server.url, "neutrino_model_batch_size_count")
    assert metric(server.url, "neutrino_model_batch_size_sum") == 23 and batches < 23 / 2, f"{batches} batches"
    assert metric(server.url, "neutrino_model_requests_in_flight") == 0


def test_typed_contents_in_are_answered_typed(grpc_serve: Callable[..., tuple[ServerProcess, str]]) -> None:
    """Clients that fill `contents` instead of raw_input_contents (tritonclient's own messages, by hand)."""
    _, target = grpc_serve("batched")
    with grpc.insecure_channel(target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="batched", id="typed")
        request.inputs.add(name="f32", datatype="FP32", shape=[2, 2]).contents.fp32_contents.extend([0.5, 1, 2, 3])
        request.inputs.add(name="i64", datatype="INT64", shape=[2, 1]).contents.int64_contents.extend([-(2**40), 7])
        request.inputs.add(name="text", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"a", b"\xff"])
        response = stub.ModelInfer(request, timeout=30)
        assert not response.raw_output_contents and response.id == "typed"
        f32, i64, text = response.outputs
        assert (f32.datatype, list(f32.shape), list(f32.contents.fp32_contents)) == ("FP32", [2, 2], [0.5, 1, 2, 3])
        assert (i64.datatype, list(i64.contents.int64_contents)) == ("INT64", [-(2**40), 7])
        assert (text.datatype, list(text.contents.bytes_contents)) == ("BYTES", [b"a", b"\xff"])

        more = service_pb2.ModelInferRequest(model_name="batched")
        more.inputs.add(name="int8", datatype="INT8", shape=[2]).contents.int_contents.extend([-128, 127])
        more.inputs.add(name="uint16", datatype="UINT16", shape=[2]).contents.uint_contents.extend([0, 65535])
        more.inputs.add(name="uint64", datatype="UINT64", shape=[2]).contents.uint64_contents.extend([0, 2**63 - 1])
        more.inputs.add(name="bool", datatype="BOOL", shape=[2]).contents.bool_contents.extend([True, False])
        more.inputs.add(name="fp64", datatype="FP64", shape=[2]).contents.fp64_contents.extend([0.1, -1e300])
        answer = {o.name: o for o in stub.ModelInfer(more, timeout=30).outputs}
        assert list(answer["int8"].contents.int64_contents) == [-128, 127]
        assert list(answer["uint16"].contents.int64_contents) == [0, 65535]
        assert list(answer["uint64"].contents.int64_contents) == [0, 2**63 - 1]
        assert list(answer["bool"].contents.bool_contents) == [True, False]
        assert list(answer["fp64"].contents.fp64_contents) == [0.1, -1e300]

        def refused(req: Any) -> tuple[grpc.StatusCode, str]:
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(req, timeout=30)
            return caught.value.code(), caught.value.details()

        wrong_field = service_pb2.ModelInferRequest(model_name="batched")
        wrong_field.inputs.add(name="f32", datatype="FP32", shape=[1]).contents.fp64_contents.append(1.0)
        assert refused(wrong_field) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "input 'f32': FP32 elements go in contents.fp32_contents, not fp64_contents",
        )
        too_big = service_pb2.ModelInferRequest(model_name="batched")
        too_big.inputs.add(name="int8", datatype="INT8", shape=[1]).contents.int_contents.append(300)
        code, message = refused(too_big)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "does not fit INT8" in message
        fp16 = service_pb2.ModelInferRequest(model_name="batched")
        fp16.inputs.add(name="h", datatype="FP16", shape=[1])
        assert refused(fp16) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "input 'h': FP16 has no typed contents field; send it in raw_input_contents",
        )
        unknown_type = service_pb2.ModelInferRequest(model_name="batched")
        unknown_type.inputs.add(name="x", datatype="FP8", shape=[1])
        code, message = refused(unknown_type)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "datatype 'FP8' is not one of" in message
        both = service_pb2.ModelInferRequest(model_name="batched", raw_input_contents=[b"\0\0\0\0"])
        both.inputs.add(name="f32", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
        code, message = refused(both)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "one or the other" in message
        short = service_pb2.ModelInferRequest(model_name="batched", raw_input_contents=[b"\0\0\0\0"])
        short.inputs.add(name="f32", datatype="FP32", shape=[1])
        short.inputs.add(name="i64", datatype="INT64", shape=[1])
        code, message = refused(short)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "1 entries for 2 inputs" in message
        no_inputs = service_pb2.ModelInferRequest(model_name="batched")
        assert refused(no_inputs)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_errors_map_to_status_codes(
    grpc_serve: Callable[..., tuple[ServerProcess, str]], client: Callable[[str], Any]
) -> None:
    _, target = grpc_serve("batched")
    c = client(target)
    code, message = rpc_error(lambda: c.infer("other", inputs(rows(1))))
    assert (code, message) == ("NOT_FOUND", "this server serves model 'batched', not 'other'")
    code, message = rpc_error(lambda: c.infer("batched", inputs(rows(1)), model_version="2"))
    assert (code, message) == ("NOT_FOUND", "model 'batched' has version '1' only, not '2'")
    # A tensor whose raw bytes do not match its shape: tritonclient checks shapes, so change it after.
    bad = inputs(rows(2))
    bad[0].set_shape([2, 4])
    code, message = rpc_error(lambda: c.infer("batched", bad))
    assert code == "INVALID_ARGUMENT" and "input 'f32': shape [2, 4] of FP32 is 32 bytes" in message
    code, message = rpc_error(lambda: c.infer("batched", inputs(rows(1, [b"boom"]))))
    assert (code, message) == ("INTERNAL", "boom in the batch (on purpose)")
    assert_echoed(c.infer("batched", inputs(rows(2))), rows(2))  # and the server carries on


def test_limits_are_rest_limits(
    grpc_serve: Callable[..., tuple[ServerProcess, str]], client: Callable[[str], Any]
) -> None:
    _, target = grpc_serve("batched", "--max-elements", "12", "--max-body-bytes", "4096")
    c = client(target)
    assert_echoed(c.infer("batched", inputs(rows(2))), rows(2))  # 2 rows: 6 + 4 + 2 elements, the most it takes
    code, message = rpc_error(lambda: c.infer("batched", inputs(rows(3))))
    assert code == "RESOURCE_EXHAUSTED" and "hold 18 elements" in message and "--max-elements" in message
    code, message = rpc_error(lambda: c.infer("batched", inputs(rows(1, [b"x" * 5000]))))
    assert code == "RESOURCE_EXHAUSTED" and "larger than max" in message  # gRPC's own refusal
    assert_echoed(c.infer("batched", inputs(rows(1))), rows(1))


def test_not_ready_while_loading_then_ready(
    grpc_serve: Callable[..., tuple[ServerProcess, str]], client: Callable[[str], Any], tmp_path: Path
) -> None:
    gate = tmp_path / "load-gate"
    server, target = grpc_serve("gated-load", env={"LOAD_GATE": str(gate)}, ready=False)
    c = client(target)
    assert c.is_server_live() and not c.is_server_ready() and not c.is_model_ready("gated-load")
    one = grpcclient.InferInput("x", [1], "INT64")
    one.set_data_from_numpy(np.array([3], dtype=np.int64))
    code, message = rpc_error(lambda: c.infer("gated-load", [one]))
    assert code == "UNAVAILABLE" and "loading" in message
    with grpc.insecure_channel(target) as channel:  # REST's Retry-After, as trailing metadata
        request = service_pb2.ModelInferRequest(model_name="gated-load", raw_input_contents=[b"\3" + b"\0" * 7])
        request.inputs.add(name="x", datatype="INT64", shape=[1])
        with pytest.raises(grpc.RpcError) as caught:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        assert ("retry-after", "1") in caught.value.trailing_metadata()
    gate.touch()
    server.wait_ready()
    assert c.is_server_ready() and c.infer("gated-load", [one]).as_numpy("output-0").tolist() == [3]


def test_deadline_exceeded(
    grpc_serve: Callable[..., tuple[ServerProcess, str]], client: Callable[[str], Any], tmp_path: Path
) -> None:
    gate = tmp_path / "predict-gate"
    _, target = grpc_serve("batched", "--request-timeout", "0.3", env={"PREDICT_GATE": str(gate)})
    c = client(target)
    code, message = rpc_error(lambda: c.infer("batched", inputs(rows(1, [b"wait"]))))
    assert (code, message) == ("DEADLINE_EXCEEDED", "no answer within 0.3s")
    gate.touch()  # let the stuck predict return, so the server stops promptly


def test_sigterm_drains_calls_in_flight(
    grpc_serve: Callable[..., tuple[ServerProcess, str]], client: Callable[[str], Any], tmp_path: Path
) -> None:
    gate = tmp_path / "predict-gate"
    server, target = grpc_serve("batched", env={"PREDICT_GATE": str(gate)})
    c = client(target)

    async def scenario() -> tuple[Any, tuple[str, str]]:
        aio_client = grpcclient_aio.InferenceServerClient(target)
        try:
            held = asyncio.ensure_future(aio_client.infer("batched", inputs(rows(1, [b"wait"]))))
            while metric(server.url, "neutrino_model_requests_in_flight") < 1:
                await asyncio.sleep(0.01)  # the server's own gauge: the call is in predict
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(server.wait_for, "model server stopping")
            # Draining: a new call is turned away, ServerReady included, while the held one goes on.
            refused = await asyncio.to_thread(rpc_error, lambda: c.infer("batched", inputs(rows(1))))
            ready = await asyncio.to_thread(rpc_error, c.is_server_ready)
            assert ready[0] == "UNAVAILABLE", ready
            assert not held.done()
            gate.touch()
            return await held, refused
        finally:
            await aio_client.close()

    result, refused = asyncio.run(scenario())
    assert refused[0] == "UNAVAILABLE"
    assert result.as_numpy("text").tolist() == [b"wait"]
    assert server.proc.wait(30) == 0


@pytest.mark.timeout(180)  # the digits model trains at load(): slow on a busy machine
def test_the_digits_model_over_grpc_matches_local_inference(
    grpc_serve: Callable[..., tuple[ServerProcess, str]], client: Callable[[str], Any]
) -> None:
    from sklearn.datasets import load_digits

    from examples.models.app import Digits  # the repository root is on sys.path (conftest.py)

    _, target = grpc_serve("digits", app=DIGITS_APP)
    images = load_digits().data[:16].astype(np.float32)
    local = Digits()
    local.load()
    pixels = grpcclient.InferInput("pixels", list(images.shape), "FP32")
    pixels.set_data_from_numpy(images)
    result = client(target).infer("digits", [pixels])
    assert result.as_numpy("digit").tolist() == local.predict(images.tolist())
