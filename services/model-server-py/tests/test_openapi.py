"""The model server's OpenAPI document and the request checks it declares (issue 17), one test per
class of finding the schemathesis run (test_schemathesis_model_server.py) had or guards against:

- a request the document refuses is a 400, whatever else is wrong with it (a huge shape beside a
  negative dimension was a 413, a `datatype` object a 500);
- the fields the document types (`id`, `outputs`, `parameters`, `data`) are refused when they are
  of another type, null included (they were ignored or taken as empty);
- a number no JSON answer can carry (NaN, Infinity, beyond a float's range, or beyond the
  datatype's range, 70000 as FP16) is a 400, not a 500 `bad_output` once predict echoes it.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from neutrino_model_server import api, openapi, v2
from neutrino_model_server.testing import ServerProcess


def tensor(**fields: Any) -> dict[str, Any]:
    return {"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0], **fields}


def test_a_request_the_document_refuses_is_a_400_never_a_413_or_500() -> None:
    huge = [10**9, 10**9]
    for bad in (
        tensor(shape=[*huge, -1]),  # a negative dimension, beside a product over the limit
        tensor(shape=huge, datatype="FP33"),
        tensor(shape=huge, datatype={}),  # was a TypeError (unhashable dict): 500
        tensor(shape=huge, name=""),
        tensor(shape=huge, data="not a list"),
    ):
        with pytest.raises(v2.InferError) as caught:
            v2.parse_request({"inputs": [bad]}, max_elements=1000)
        assert not isinstance(caught.value, v2.TooManyElements), bad
    for doc in ({"inputs": [tensor(shape=huge)], "id": None}, {"inputs": [tensor(shape=huge)], "outputs": None}):
        with pytest.raises(v2.InferError) as caught:
            v2.parse_request(doc, max_elements=1000)
        assert not isinstance(caught.value, v2.TooManyElements), doc
    # A well-formed request over the limit is still the 413.
    with pytest.raises(v2.TooManyElements):
        v2.parse_request({"inputs": [tensor(shape=huge)]}, max_elements=1000)


@pytest.mark.parametrize(
    "doc",
    [
        {"inputs": [tensor()], "id": None},
        {"inputs": [tensor()], "id": 7},
        {"inputs": [tensor()], "outputs": None},
        {"inputs": [tensor()], "outputs": {}},
        {"inputs": [tensor()], "outputs": ""},
        {"inputs": [tensor()], "parameters": 5},
        {"inputs": [tensor()], "parameters": None},
        {"inputs": [tensor(parameters=[])]},
        {"inputs": [tensor()], "outputs": [{"name": "y", "parameters": "p"}]},
        {"inputs": [tensor(shape=[1], data=1.0)]},  # `data` is an array in the protocol
        {"inputs": [tensor(shape=[1], data=None)]},
    ],
)
def test_typed_fields_of_another_type_are_refused(doc: dict[str, Any]) -> None:
    with pytest.raises(v2.InferError):
        v2.parse_request(doc)


def test_the_protocols_optional_fields_are_taken() -> None:
    doc = {
        "id": "r1",
        "parameters": {"k": 1},
        "inputs": [tensor(parameters={})],
        "outputs": [{"name": "output-0", "parameters": {}}],
    }
    req = v2.parse_request(doc)
    assert (req.id, v2.rows_from_tensors(req.inputs), req.outputs) == ("r1", [1.0, 2.0], ("output-0",))


@pytest.mark.parametrize("datatype, value", [("FP16", 70000.0), ("FP32", 1e300), ("FP16", -(10**6))])
def test_a_value_beyond_the_datatypes_range_is_a_400(datatype: str, value: float) -> None:
    with pytest.raises(v2.InferError, match="does not fit"):
        v2.parse_request({"inputs": [tensor(shape=[1], datatype=datatype, data=[value])]})


@pytest.mark.parametrize("body", [b'{"inputs": NaN}', b'{"inputs": -Infinity}', b'{"inputs": [1e400]}'])
def test_json_that_is_not_rfc_8259_or_not_finite_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        api.loads(body)
    assert api.loads(b'{"inputs": [1.5e308, 12345678901234567890123]}') == {
        "inputs": [1.5e308, 12345678901234567890123]
    }


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": [0.0, 6.0, 16.0, -1, 12345678901234567890123]}',  # pydantic-core's parser reads these
        b'{"a": 1, "a": [true, null, "caf\xc3\xa9", "\\u00e9\\ud83d\\ude00"]}',  # the last key wins, as in Python's
        b'\xef\xbb\xbf{"inputs": 1}',  # the rest it refuses, and Python's parser reads: a UTF-8 BOM,
        '{"inputs": "x"}'.encode("utf-16"),  # UTF-16,
        b'{"inputs": "\\ud800"}',  # a lone surrogate,
        b'{"inputs": ' + b"[" * 300 + b"]" * 300 + b"}",  # nesting deeper than 200
    ],
)
def test_json_reads_as_pythons_parser_reads_it(body: bytes) -> None:
    assert repr(api.loads(body)) == repr(json.loads(body))


@pytest.mark.parametrize("body", [b"", b"[1,]", b'{"inputs": 01}', b'"\xff"', b'{"inputs": [1]} x'])
def test_malformed_json_is_refused_with_pythons_message(body: bytes) -> None:
    with pytest.raises(ValueError) as python:
        json.loads(body)
    with pytest.raises(ValueError, match=re.escape(str(python.value))):
        api.loads(body)


def test_the_infer_example_fits_the_declared_inputs() -> None:
    declared = [
        {"name": "pixels", "datatype": "FP32", "shape": [-1, 64]},
        {"name": "on", "datatype": "BOOL", "shape": [-1]},
    ]
    example = openapi.infer_example(declared)
    assert [t["shape"] for t in example["inputs"]] == [[1, 64], [1]]
    assert len(v2.rows_from_tensors(v2.parse_request(example).inputs)) == 1
    assert v2.rows_from_tensors(v2.parse_request(openapi.infer_example([])).inputs) == [0.0]


def _http(method: str, url: str, body: bytes | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_openapi_json_lists_every_route_and_non_finite_numbers_are_400s(serve: Callable[..., ServerProcess]) -> None:
    server = serve("noop")
    url = server.wait_ready()
    status, doc = _http("GET", url + "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {
        "/v1/models/{name}/predict",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/versions/{version}/ready",
        "/v2/models/{name}/versions/{version}/infer",
        "/metrics",
        "/openapi.json",
    }
    infer = doc["paths"]["/v2/models/{name}/infer"]["post"]
    assert infer["parameters"][0]["schema"]["enum"] == ["noop"]
    assert {"200", "400", "404", "408", "413", "422", "429", "500", "503", "504"} <= set(infer["responses"])
    # noop echoes its input: these were 500 `bad_output` answers (no JSON could carry the value).
    status, body = _http("POST", url + "/v1/models/noop/predict", b'{"inputs": NaN}')
    assert status == 400 and body["error"]["type"] == "bad_request", body
    fp16 = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP16", "data": [70000]}]}
    status, body = _http("POST", url + "/v2/models/noop/infer", json.dumps(fp16).encode())
    assert status == 400 and "FP16" in body["error"], body
    status, body = _http("POST", url + "/v2/models/noop/infer", b'{"inputs": [{"data": [1e400]}]}')
    assert status == 400 and "error" in body, body
