"""The Open Inference Protocol (KServe V2) REST tensors: checking an infer request, rows in, one tensor out.

An infer request names input tensors, each `{"name", "shape", "datatype", "data"}` with `data` flat
or nested in row-major order. The first dimension is the batch: a tensor of shape [N, ...] is N
inputs, and row i of it is what `predict` gets (a list, or a scalar for shape [N]). With several
input tensors, `predict` gets a dict {name: row} per row. Outputs come back as one tensor of
shape [N, ...] (or one tensor per key when predict returns dicts), data flattened row-major.
Errors are `{"error": "<message>"}` (the protocol's error shape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": object,
}
DEFAULT_OUTPUT = "output-0"


class InferError(ValueError):
    """The request does not follow the protocol; the message says which field and why (HTTP 400)."""


class TooManyElements(InferError):
    """The request's tensors hold more elements than the server's --max-elements (HTTP 413)."""


@dataclass(frozen=True, slots=True)
class InferRequest:
    id: str | None
    rows: list[Any]
    outputs: tuple[str, ...]  # requested output names; empty means all


def parse_request(doc: object, max_elements: int | None = None) -> InferRequest:
    """The request's rows; `max_elements` bounds the elements of all its tensors together, checked
    from their shapes before any data is converted, and after the whole request is checked against
    what the OpenAPI document (openapi.py) declares: a request the document refuses is a 400, never
    a 413."""
    if not isinstance(doc, dict):
        raise InferError("the infer request must be a JSON object with an `inputs` list")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InferError("`inputs` must be a non-empty list of tensors {name, shape, datatype, data}")
    request_id = doc.get("id")
    if "id" in doc and not isinstance(request_id, str):
        raise InferError("`id` must be a string")
    _check_parameters("the request", doc)
    wanted = doc.get("outputs", [])
    if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted):
        raise InferError("`outputs` must be a list of {name} objects")
    for o in wanted:
        _check_parameters(f"output {o['name']!r}", o)
    tensors = [_tensor_header(i, tensor) for i, tensor in enumerate(inputs)]
    if max_elements is not None:
        total = sum(math.prod(shape) for _, shape, _, _ in tensors)
        if total > max_elements:
            raise TooManyElements(
                f"the input tensors' shapes hold {total} elements; this server takes at most {max_elements} "
                "per request (--max-elements): send fewer rows per request"
            )
    columns: dict[str, np.ndarray[Any, Any]] = {}
    batch: int | None = None
    for name, shape, datatype, data in tensors:
        arr = _tensor(name, shape, datatype, data)
        if name in columns:
            raise InferError(f"input {name!r} appears twice")
        if batch is not None and arr.shape[0] != batch:
            raise InferError(f"input {name!r} has {arr.shape[0]} rows but the first input has {batch}")
        batch = arr.shape[0]
        columns[name] = arr
    assert batch is not None
    # tolist() on the whole array: a row of a 1-D array (BYTES of shape [N]) is a plain str, not an array.
    lists = {name: arr.tolist() for name, arr in columns.items()}
    if len(lists) == 1:
        (only,) = lists.values()
        rows: list[Any] = list(only)
    else:
        rows = [{name: values[r] for name, values in lists.items()} for r in range(batch)]
    return InferRequest(request_id, rows, tuple(o["name"] for o in wanted))


def _check_parameters(what: str, obj: dict[str, Any]) -> None:
    if "parameters" in obj and not isinstance(obj["parameters"], dict):
        raise InferError(f"{what}: `parameters` must be an object")


def _tensor_header(i: int, tensor: object) -> tuple[str, list[int], str, list[Any]]:
    """A tensor's name, shape, datatype and data, each checked as the OpenAPI document declares it."""
    if not isinstance(tensor, dict):
        raise InferError(f"inputs[{i}] must be an object {{name, shape, datatype, data}}")
    name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if not isinstance(name, str) or not name:
        raise InferError(f"inputs[{i}].name must be a non-empty string")
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise InferError(f"input {name!r}: datatype {datatype!r} is not one of {', '.join(DTYPES)}")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise InferError(f"input {name!r}: shape must be a list of sizes >= 0 with the batch first, e.g. [2, 64]")
    if "data" not in tensor:
        raise InferError(f"input {name!r} has no `data`")
    data = tensor["data"]
    if not isinstance(data, list):
        raise InferError(f"input {name!r}: `data` must be a list (flat, or nested in row-major order)")
    _check_parameters(f"input {name!r}", tensor)
    return name, shape, datatype, data


def _tensor(name: str, shape: list[int], datatype: str, data: list[Any]) -> np.ndarray[Any, Any]:
    if shape[0] < 1:
        raise InferError(f"input {name!r}: the batch dimension (shape[0]) must be at least 1")
    try:
        raw = np.asarray(data, dtype=object).ravel()
    except ValueError as exc:  # ragged nesting
        raise InferError(f"input {name!r}: data is not a regular array ({exc})") from None
    want = math.prod(shape)
    if raw.size != want:
        raise InferError(f"input {name!r}: shape {shape} holds {want} elements but data has {raw.size}")
    _check_elements(name, datatype, raw)
    try:
        with np.errstate(over="ignore"):  # an overflow is refused just below, with the input's name
            arr = raw.astype(DTYPES[datatype]) if datatype != "BYTES" else raw
    except (ValueError, OverflowError, TypeError) as exc:
        raise InferError(f"input {name!r}: data does not fit {datatype} ({exc})") from None
    if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
        # JSON numbers are finite: one that is not finite now was too large for this datatype
        # (70000 as FP16), and no JSON answer could carry it back.
        raise InferError(f"input {name!r}: data does not fit {datatype} (a value is out of its range)")
    return arr.reshape(shape)


def _check_elements(name: str, datatype: str, raw: np.ndarray[Any, Any]) -> None:
    if datatype == "BYTES":
        ok = all(isinstance(v, (str, bytes)) for v in raw)
        what = "strings"
    elif datatype == "BOOL":
        ok = all(isinstance(v, bool) for v in raw)
        what = "true/false"
    elif datatype.startswith(("INT", "UINT")):
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in raw)
        what = "integers"
    else:
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
        what = "numbers"
    if not ok:
        raise InferError(f"input {name!r}: {datatype} data must be {what}")


def _datatype(arr: np.ndarray[Any, Any], declared: str | None) -> str:
    if declared in DTYPES:
        return declared
    kind = arr.dtype.kind
    return {"b": "BOOL", "i": "INT64", "u": "UINT64", "f": "FP64"}.get(kind, "BYTES")


def encode_response(
    model: str,
    version: str,
    request: InferRequest,
    outputs: list[Any],
    declared: dict[str, str],
) -> dict[str, Any]:
    """The infer response for the rows' outputs; `declared` maps output names to datatypes from the model's metadata."""
    if outputs and all(isinstance(o, dict) for o in outputs):
        names = list(outputs[0])
        columns = {n: [o.get(n) for o in outputs] for n in names}
    else:
        default = next(iter(declared), DEFAULT_OUTPUT)
        columns = {default: outputs}
    unknown = [name for name in request.outputs if name not in columns]
    if unknown:
        raise InferError(f"requested outputs {unknown} are not produced; this model answers {sorted(columns)}")
    tensors = []
    for name, values in columns.items():
        if request.outputs and name not in request.outputs:
            continue
        try:
            arr = np.asarray(values)
        except ValueError as exc:
            raise ValueError(f"output {name!r}: the rows' outputs have different shapes ({exc})") from None
        if arr.dtype == object:
            raise ValueError(f"output {name!r}: the rows' outputs do not form one tensor")
        datatype = _datatype(arr, declared.get(name))
        data = arr.astype(str).ravel().tolist() if datatype == "BYTES" else arr.ravel().tolist()
        tensors.append({"name": name, "shape": list(arr.shape), "datatype": datatype, "data": data})
    response: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if request.id is not None:
        response["id"] = request.id
    return response


def metadata(model: str, version: str, cls: type[Any]) -> dict[str, Any]:
    """`GET /v2/models/{name}`: name, versions, platform, and the tensors the class declares in `inputs`/`outputs`."""
    return {
        "name": model,
        "versions": [version],
        "platform": "neutrino",
        "inputs": list(getattr(cls, "inputs", [])),
        "outputs": list(getattr(cls, "outputs", [])),
    }
