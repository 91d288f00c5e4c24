"""Typed inputs: a model's type hints checked with pydantic per input, as FastAPI checks a body. A
bad input gets a 422 with each error's location and message (FastAPI's `detail` inside the
server's error shape), alone: the requests batched beside it are served. V2 metadata comes from
the hints when the class declares no tensors."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from neutrino import App
from neutrino_model_server import typed
from neutrino_model_server.testing import ServerProcess
from pydantic import BaseModel, Field
from test_binary_tensors import queued, wait_until
from tritonclient.utils import InferenceServerException

APP = "tensor_app:app"


def post(url: str, path: str, body: Any) -> tuple[int, Any]:
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# -- which types, from which hints (no server) ----------------------------------------------------


AtLeastTwo = Annotated[list[int], Field(min_length=2)]


class Pair(BaseModel):
    a: int
    b: list[str]


def io_types(cls: type[Any], batch: int) -> tuple[Any, Any]:
    app = App("t")
    app.model(name="m", max_batch_size=batch)(cls)
    return app.models.m.io_types()


def test_input_and_output_types_come_from_predict_or_validate() -> None:
    class Batched:
        def load(self) -> None: ...
        def predict(self, xs: list[Pair]) -> list[float]: ...

    class Single:
        def load(self) -> None: ...
        def predict(self, x: Pair) -> dict[str, int]: ...

    class ByValidate:
        def load(self) -> None: ...
        def validate(self, x: AtLeastTwo) -> None: ...
        def predict(self, xs: list[Any]) -> list[Any]: ...

    class Untyped:
        def load(self) -> None: ...
        def predict(self, xs): ...  # type: ignore[no-untyped-def]

    assert io_types(Batched, 8) == (Pair, float)
    assert io_types(Single, 1) == (Pair, dict[str, int])
    assert io_types(ByValidate, 8)[0] == AtLeastTwo
    assert io_types(Untyped, 8) == (Any, Any)


def test_tensors_described_by_hints() -> None:
    pixels = Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=4, max_length=4)]
    assert typed.tensors(pixels, "input-0") == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert typed.tensors(list[list[int]], "x") == [{"name": "x", "datatype": "INT64", "shape": [-1, -1, -1]}]
    assert typed.tensors(Pair, "input-0") == [
        {"name": "a", "datatype": "INT64", "shape": [-1]},
        {"name": "b", "datatype": "BYTES", "shape": [-1, -1]},
    ]
    assert typed.tensors(bool, "output-0") == [{"name": "output-0", "datatype": "BOOL", "shape": [-1]}]
    for vague in (Any, int | str, dict[str, int], tuple[int, str]):  # no one datatype
        assert typed.tensors(vague, "input-0") == []


def test_a_hint_pydantic_cannot_check_leaves_inputs_unchecked() -> None:
    assert typed.adapter("m", np.ndarray) is None
    assert typed.adapter("m", Any) is None
    assert typed.adapter("m", list[int]) is not None


# -- the native API (/v1) -------------------------------------------------------------------------


@pytest.fixture
def points(serve: Callable[..., ServerProcess]) -> str:
    return serve("points", app=APP).wait_ready()


def test_a_bad_input_gets_422_with_fastapi_style_detail(points: str) -> None:
    status, body = post(points, "/v1/models/points/predict", {"inputs": {"x": "1.5", "y": 2}})
    assert (status, body) == (200, {"outputs": {"sum": 3.5, "batch": 1}})  # "1.5": coerced, as FastAPI does

    status, body = post(points, "/v1/models/points/predict", {"inputs": {"x": "abc", "y": -1}})
    assert status == 422, body
    error = body["error"]
    assert error["type"] == "validation_error"
    assert error["detail"] == [
        {"loc": ["inputs", "x"], "msg": "Input should be a valid number, unable to parse string as a number",
         "type": "float_parsing"},
        {"loc": ["inputs", "y"], "msg": "Input should be greater than or equal to 0", "type": "greater_than_equal"},
    ]  # fmt: skip
    assert "x: Input should be a valid number" in error["message"]
    assert "y: Input should be greater than or equal to 0" in error["message"]

    status, body = post(points, "/v1/models/points/predict", {"inputs": {"x": 1}})
    assert status == 422 and body["error"]["detail"][0]["loc"] == ["inputs", "y"], body
    assert body["error"]["detail"][0]["type"] == "missing"

    # validate() runs after the hint's check, on the validated value; its ValueError is a 422 too.
    status, body = post(points, "/v1/models/points/predict", {"inputs": {"x": 13, "y": 0}})
    assert status == 422, body
    assert body["error"]["type"] == "ValueError"
    assert body["error"]["detail"] == [{"loc": ["inputs"], "msg": "x must not be 13", "type": "value_error"}]


def test_a_bad_input_fails_alone_while_its_batch_is_served(tmp_path: Path, serve: Callable[..., ServerProcess]) -> None:
    gate = tmp_path / "gate"
    url = serve("points", app=APP, env={"TENSOR_GATE": str(gate)}).wait_ready()
    with ThreadPoolExecutor(4) as pool:
        good = [pool.submit(post, url, "/v1/models/points/predict", {"inputs": {"x": i, "y": 1}}) for i in range(4)]
        # The first holds predict at the gate, the other three queue behind it.
        wait_until(lambda: queued(url) == 3)
        # Meanwhile a bad input is answered at once: it never joins a batch.
        status, body = post(url, "/v1/models/points/predict", {"inputs": {"x": 1, "y": "nope"}})
        assert status == 422 and body["error"]["detail"][0]["loc"] == ["inputs", "y"], body
        assert queued(url) == 3
        gate.touch()
        answers = [f.result(timeout=30) for f in good]
    assert [status for status, _ in answers] == [200] * 4
    assert sorted(body["outputs"]["sum"] for _, body in answers) == [1.0, 2.0, 3.0, 4.0]
    assert sorted(body["outputs"]["batch"] for _, body in answers) == [1, 3, 3, 3]


# -- the Open Inference Protocol (/v2), tritonclient unchanged ------------------------------------


def test_v2_metadata_comes_from_the_hints(serve: Callable[..., ServerProcess]) -> None:
    url = serve("scores", app=APP).wait_ready()
    meta = httpclient.InferenceServerClient(url.removeprefix("http://")).get_model_metadata("scores")
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "output-0", "datatype": "FP64", "shape": [-1]}]


def scores_request(rows: list[list[float]]) -> list[httpclient.InferInput]:
    array = np.array(rows, dtype=np.float32)
    tensor = httpclient.InferInput("input-0", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return [tensor]


def test_v2_bad_rows_get_422_with_their_tensor_row_and_place(serve: Callable[..., ServerProcess]) -> None:
    url = serve("scores", app=APP).wait_ready()
    triton = httpclient.InferenceServerClient(url.removeprefix("http://"))
    result = triton.infer("scores", scores_request([[1, 2, 3, 4], [0, 0, 0, 16]]))
    np.testing.assert_array_equal(result.as_numpy("output-0"), [10.0, 16.0])

    with pytest.raises(InferenceServerException) as caught:
        triton.infer("scores", scores_request([[1, 2, 3, 4], [0, 20, 0, 0]]))
    assert caught.value.status() == "422"
    assert "less than or equal to 16" in caught.value.message()

    # The same request in JSON, to read the whole answer.
    body = {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4, 0, 20, -1, 0]}]}
    status, answer = post(url, "/v2/models/scores/infer", body)
    assert status == 422, answer
    assert answer["detail"] == [
        {"loc": ["inputs", "input-0", 1, 1], "msg": "Input should be less than or equal to 16",
         "type": "less_than_equal"},
        {"loc": ["inputs", "input-0", 1, 2], "msg": "Input should be greater than or equal to 0",
         "type": "greater_than_equal"},
    ]  # fmt: skip
    assert "(row 1)" in answer["error"]

    body = {"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    status, answer = post(url, "/v2/models/scores/infer", body)
    assert status == 422 and answer["detail"][0]["loc"] == ["inputs", "input-0", 0], answer
    assert answer["detail"][0]["type"] == "too_short"


def test_v2_bad_request_fails_alone_in_a_batch(tmp_path: Path, serve: Callable[..., ServerProcess]) -> None:
    gate = tmp_path / "gate"
    url = serve("scores", app=APP, env={"TENSOR_GATE": str(gate)}).wait_ready()

    def infer(rows: list[list[float]]) -> Any:
        try:
            client = httpclient.InferenceServerClient(url.removeprefix("http://"))
            return client.infer("scores", scores_request(rows)).as_numpy("output-0").tolist()
        except InferenceServerException as exc:
            return exc.status()

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(infer, [[1, 1, 1, 1]])
        wait_until(lambda: queued(url) == 0 and in_predict(url))
        rest = [pool.submit(infer, [[i, 0, 0, 0], [0, i, 0, 0]]) for i in (2, 3)]
        wait_until(lambda: queued(url) == 4)
        assert infer([[1, 1, 1, 99]]) == "422"  # answered while the others wait
        gate.touch()
        assert first.result(timeout=30) == [4.0]
        assert [f.result(timeout=30) for f in rest] == [[2.0, 2.0], [3.0, 3.0]]


def in_predict(url: str) -> bool:
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return 'neutrino_model_requests_in_flight{model="scores"} 1.0' in text


def test_v2_tensors_fill_a_pydantic_model_field_by_field(points: str) -> None:
    triton = httpclient.InferenceServerClient(points.removeprefix("http://"))
    meta = triton.get_model_metadata("points")
    assert meta["inputs"] == [
        {"name": "x", "datatype": "FP64", "shape": [-1]},
        {"name": "y", "datatype": "FP64", "shape": [-1]},
    ]
    assert meta["outputs"] == []  # dict[str, float]: no one datatype per tensor

    def tensors(x: list[float], y: list[float]) -> list[httpclient.InferInput]:
        out = []
        for name, values in (("x", x), ("y", y)):
            tensor = httpclient.InferInput(name, [len(values)], "FP64")
            tensor.set_data_from_numpy(np.array(values, dtype=np.float64))
            out.append(tensor)
        return out

    result = triton.infer("points", tensors([1.0, 2.0], [0.5, 0.25]))
    np.testing.assert_array_equal(result.as_numpy("sum"), [1.5, 2.25])
    with pytest.raises(InferenceServerException, match=r"y: Input should be greater than or equal to 0 \(row 1\)"):
        triton.infer("points", tensors([1.0, 2.0], [0.5, -1.0]))
    body = {
        "inputs": [
            {"name": "x", "shape": [2], "datatype": "FP64", "data": [1, 13]},
            {"name": "y", "shape": [2], "datatype": "FP64", "data": [1, 1]},
        ]
    }
    status, answer = post(points, "/v2/models/points/infer", body)
    assert status == 422, answer
    assert answer["detail"] == [{"loc": ["inputs", 1], "msg": "x must not be 13", "type": "value_error"}]
