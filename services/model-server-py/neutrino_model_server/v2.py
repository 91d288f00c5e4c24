"""The Open Inference Protocol (KServe V2) tensors: requests in, rows for `predict`, tensors out.

Transport-neutral (REST here, gRPC in grpc_server.py): a request's inputs become `Tensor`s (from
JSON `data`, gRPC typed contents, or raw bytes), the tensors become rows for `predict`, and the
rows' outputs become tensors again, written as JSON lists or raw bytes.

Rows: the first dimension is the batch: a tensor of shape [N, ...] is N inputs, and row i of it is
what `predict` gets (a list, or a scalar for shape [N]). With several input tensors, `predict` gets
a dict {name: row} per row. BYTES elements arrive as `str` when they are valid UTF-8 (text, as JSON
carries it), else as `bytes`. Outputs come back as one tensor of shape [N, ...] (or one tensor per
key when predict returns dicts).

Raw bytes (the REST binary tensor extension, gRPC `raw_*_contents`): row-major, little-endian; BOOL
one byte (0 or 1) per element; BYTES each element a 4-byte little-endian length, then its bytes.

REST binary extension: the body is the JSON request (`Inference-Header-Content-Length` bytes), then
the raw bytes of each input whose `parameters.binary_data_size` says how many, in input order. An
output is answered in raw bytes when its `parameters.binary_data` is true, or, when it does not
say, when the request's `parameters.binary_data_output` is true.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
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
_BY_DTYPE = {np.dtype(t): name for name, t in DTYPES.items() if name != "BYTES"}
_NP_DTYPES = {name: np.dtype(t) for name, t in DTYPES.items() if name != "BYTES"}
# Element types each datatype takes from JSON or gRPC, exactly; a subclass (or anything else) goes to
# `_check_elements`'s isinstance loop, which decides.
_ELEMENT_TYPES: dict[str, set[type]] = {
    name: {str, bytes} if name == "BYTES" else {bool} if name == "BOOL" else {int} if "INT" in name else {int, float}
    for name in DTYPES
}
DEFAULT_OUTPUT = "output-0"
_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix


class InferError(ValueError):
    """The request does not follow the protocol; the message says which field and why (HTTP 400)."""


class TooManyElements(InferError):
    """The request's tensors hold more elements than the server's --max-elements (HTTP 413)."""


@dataclass(frozen=True, slots=True)
class Tensor:
    """A decoded tensor, whatever carried it: `array` has the tensor's shape and the numpy dtype of
    `datatype` (BYTES: dtype object, each element `str` when valid UTF-8, else `bytes`)."""

    name: str
    datatype: str
    array: np.ndarray[Any, Any]

    @property
    def shape(self) -> list[int]:
        return list(self.array.shape)


@dataclass(frozen=True, slots=True)
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: tuple[str, ...]  # requested output names; empty means all
    binary: Mapping[str, bool]  # requested outputs that say whether they want raw bytes
    binary_default: bool  # the request's `binary_data_output`

    def wants_binary(self, output: str) -> bool:
        return self.binary.get(output, self.binary_default)


def parse_request(doc: object, max_elements: int | None = None, binary: bytes | memoryview = b"") -> InferRequest:
    """The request's input tensors; `binary` is what follows the JSON part of a binary-extension
    body. `max_elements` bounds the elements of all its tensors together, checked from their shapes
    before any data is converted, and after the whole request is checked against what the OpenAPI
    document (openapi.py) declares: a request the document refuses is a 400, never a 413."""
    if not isinstance(doc, dict):
        raise InferError("the infer request must be a JSON object with an `inputs` list")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InferError("`inputs` must be a non-empty list of tensors {name, shape, datatype, data}")
    request_id = doc.get("id")
    if "id" in doc and not isinstance(request_id, str):
        raise InferError("`id` must be a string")
    binary_default = _flag("the request", doc, "binary_data_output")
    wanted = doc.get("outputs", [])
    if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted):
        raise InferError("`outputs` must be a list of {name} objects")
    binary_outputs = {}
    for o in wanted:
        flag = _flag(f"output {o['name']!r}", o, "binary_data")
        if flag is not None:
            binary_outputs[o["name"]] = flag
    headers = [_tensor_header(i, tensor) for i, tensor in enumerate(inputs)]
    check_element_count((shape for _, _, shape, _ in headers), max_elements)
    tensors = []
    view, offset = memoryview(binary), 0
    for name, datatype, shape, data in headers:
        if isinstance(data, int):
            if offset + data > len(view):
                hint = "" if len(view) else "; is the Inference-Header-Content-Length header missing?"
                raise InferError(
                    f"input {name!r}: binary_data_size {data} runs past the end of the body "
                    f"({len(view) - offset} bytes of binary data left after the JSON header{hint})"
                )
            tensors.append(tensor_from_bytes(name, datatype, shape, view[offset : offset + data]))
            offset += data
        else:
            tensors.append(tensor_from_values(name, datatype, shape, data))
    if offset != len(view):
        raise InferError(
            f"the body has {len(view) - offset} bytes after the JSON header and the inputs' binary data that no "
            "input's binary_data_size accounts for; check Inference-Header-Content-Length"
        )
    return InferRequest(request_id, tensors, tuple(o["name"] for o in wanted), binary_outputs, bool(binary_default))


def _parameters(what: str, obj: dict[str, Any]) -> dict[str, Any]:
    parameters = obj.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InferError(f"{what}: `parameters` must be an object")
    return parameters


def _flag(what: str, obj: dict[str, Any], key: str) -> bool | None:
    parameters = _parameters(what, obj)
    if key not in parameters:
        return None
    value = parameters[key]
    if not isinstance(value, bool):
        raise InferError(f"{what}: parameters.{key} must be true or false, got {json.dumps(value)}")
    return value


def _tensor_header(i: int, tensor: object) -> tuple[str, str, list[int], list[Any] | int]:
    """A tensor's name, datatype, shape, and its `data` list or its binary_data_size."""
    if not isinstance(tensor, dict):
        raise InferError(f"inputs[{i}] must be an object {{name, shape, datatype, data}}")
    name, datatype, shape = check_header(tensor.get("name"), tensor.get("datatype"), tensor.get("shape"), i)
    parameters = _parameters(f"input {name!r}", tensor)
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            what = json.dumps(size)
            raise InferError(f"input {name!r}: parameters.binary_data_size must be a byte count >= 0, got {what}")
        if "data" in tensor:
            raise InferError(f"input {name!r} has both `data` and parameters.binary_data_size; send one of them")
        return name, datatype, shape, size
    if "data" not in tensor:
        raise InferError(f"input {name!r} has no `data` (nor parameters.binary_data_size)")
    data = tensor["data"]
    if not isinstance(data, list):
        raise InferError(f"input {name!r}: `data` must be a list (flat, or nested in row-major order)")
    return name, datatype, shape, data


def check_header(name: object, datatype: object, shape: object, index: int = 0) -> tuple[str, str, list[int]]:
    """(name, datatype, shape) of an input tensor, checked: a non-empty name, a datatype the protocol
    lists, and a shape of sizes >= 0 whose first (the batch) is at least 1."""
    if not isinstance(name, str) or not name:
        raise InferError(f"inputs[{index}].name must be a non-empty string")
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise InferError(f"input {name!r}: datatype {datatype!r} is not one of {', '.join(DTYPES)}")
    if isinstance(shape, tuple):
        shape = list(shape)
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise InferError(f"input {name!r}: shape must be a list of sizes >= 0 with the batch first, e.g. [2, 64]")
    if shape[0] < 1:
        raise InferError(f"input {name!r}: the batch dimension (shape[0]) must be at least 1")
    return name, datatype, shape


def check_element_count(shapes: Iterable[Sequence[int]], max_elements: int | None) -> None:
    """Refuse (413) shapes that together hold more than `max_elements`; call before decoding any data."""
    if max_elements is None:
        return
    total = sum(math.prod(shape) for shape in shapes)
    if total > max_elements:
        raise TooManyElements(
            f"the input tensors' shapes hold {total} elements; this server takes at most {max_elements} "
            "per request (--max-elements): send fewer rows per request"
        )


def tensor_from_values(name: str, datatype: str, shape: list[int], values: Sequence[Any]) -> Tensor:
    """A tensor from its elements: JSON `data` (flat, or nested row-major) or a gRPC contents field."""
    try:
        raw = np.asarray(values, dtype=object).ravel()
    except ValueError as exc:  # ragged nesting
        raise InferError(f"input {name!r}: data is not a regular array ({exc})") from None
    want = math.prod(shape)
    if raw.size != want:
        raise InferError(f"input {name!r}: shape {shape} holds {want} elements but data has {raw.size}")
    _check_elements(name, datatype, raw)
    if datatype == "BYTES":
        return Tensor(name, datatype, _text_where_utf8(raw.tolist()).reshape(shape))
    try:
        with np.errstate(over="ignore"):  # an overflow is refused just below, with the input's name
            arr = raw.astype(DTYPES[datatype])
    except (ValueError, OverflowError, TypeError) as exc:
        raise InferError(f"input {name!r}: data does not fit {datatype} ({exc})") from None
    if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
        # JSON numbers are finite: one that is not finite now was too large for this datatype
        # (70000 as FP16), and no JSON answer could carry it back.
        raise InferError(f"input {name!r}: data does not fit {datatype} (a value is out of its range)")
    return Tensor(name, datatype, arr.reshape(shape))


def tensor_from_bytes(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> Tensor:
    """A tensor from its raw bytes (layout in the module docstring); their size must match the shape exactly."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return Tensor(name, datatype, _text_where_utf8(_split_bytes(name, count, raw)).reshape(shape))
    dtype = np.dtype(DTYPES[datatype]).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise InferError(
            f"input {name!r}: shape {shape} of {datatype} is {count * dtype.itemsize} bytes "
            f"({count} elements of {dtype.itemsize}) but its binary data is {len(raw)} bytes"
        )
    if datatype == "BOOL":
        octets = np.frombuffer(raw, dtype=np.uint8)
        if (octets > 1).any():
            raise InferError(f"input {name!r}: BOOL elements must be bytes 0 or 1")
        return Tensor(name, datatype, octets.astype(np.bool_).reshape(shape))
    return Tensor(name, datatype, np.frombuffer(raw, dtype=dtype).astype(DTYPES[datatype]).reshape(shape))


def _split_bytes(name: str, count: int, raw: bytes | memoryview) -> list[bytes]:
    if count * _LENGTH.size > len(raw):
        raise InferError(
            f"input {name!r}: {count} BYTES elements need at least {count * _LENGTH.size} bytes "
            f"(a 4-byte length each) but its binary data is {len(raw)} bytes"
        )
    view, offset, items = memoryview(raw), 0, []
    for i in range(count):
        (length,) = _LENGTH.unpack_from(view, offset)
        start, offset = offset + _LENGTH.size, offset + _LENGTH.size + length
        if offset > len(view):
            raise InferError(
                f"input {name!r}: BYTES element {i} says it is {length} bytes long, past the end of the "
                f"input's {len(view)} bytes of binary data"
            )
        items.append(bytes(view[start:offset]))
    if offset != len(view):
        raise InferError(
            f"input {name!r}: its {count} BYTES elements take {offset} bytes but its binary data is {len(view)} bytes"
        )
    return items


def _text_where_utf8(items: list[Any]) -> np.ndarray[Any, Any]:
    arr = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        if isinstance(item, bytes):
            with contextlib.suppress(UnicodeDecodeError):
                item = item.decode("utf-8")
        arr[i] = item
    return arr


def _check_elements(name: str, datatype: str, raw: np.ndarray[Any, Any]) -> None:
    if set(map(type, raw)) <= _ELEMENT_TYPES[datatype]:  # the usual case, in a third of the loop's time
        return
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


def rows_from_tensors(tensors: Sequence[Tensor]) -> list[Any]:
    """What `predict` gets, one value per row of the batch (see the module docstring)."""
    columns: dict[str, list[Any]] = {}
    batch: int | None = None
    for tensor in tensors:
        if tensor.name in columns:
            raise InferError(f"input {tensor.name!r} appears twice")
        rows = tensor.array.shape[0] if tensor.array.ndim else 0
        if batch is not None and rows != batch:
            raise InferError(f"input {tensor.name!r} has {rows} rows but the first input has {batch}")
        batch = rows
        # tolist() on the whole array: a row of a 1-D array (BYTES of shape [N]) is a plain str, not an array.
        columns[tensor.name] = tensor.array.tolist()
    if batch is None:
        raise InferError("`inputs` must be a non-empty list of tensors")
    if len(columns) == 1:
        (only,) = columns.values()
        return list(only)
    return [{name: values[r] for name, values in columns.items()} for r in range(batch)]


def tensors_from_outputs(outputs: list[Any], requested: Sequence[str], declared: Mapping[str, str]) -> list[Tensor]:
    """The rows' outputs as tensors: one per key when every output is a dict, else one named after
    the first declared output. `declared` maps output names to datatypes (the model's metadata);
    others follow the numpy dtype. InferError: `requested` names an output not produced (400);
    ValueError: the outputs do not form a tensor of that datatype (500)."""
    if outputs and all(isinstance(o, dict) for o in outputs):
        names = list(outputs[0])
        columns = {n: [o.get(n) for o in outputs] for n in names}
    else:
        default = next(iter(declared), DEFAULT_OUTPUT)
        columns = {default: outputs}
    unknown = [name for name in requested if name not in columns]
    if unknown:
        raise InferError(f"requested outputs {unknown} are not produced; this model answers {sorted(columns)}")
    return [
        _output(name, values, declared.get(name))
        for name, values in columns.items()
        if not requested or name in requested
    ]


def _output(name: str, values: list[Any], declared: str | None) -> Tensor:
    try:
        arr = np.asarray(values)
    except ValueError:  # ragged rows, or str and bytes mixed (numpy tries to decode the bytes as ASCII)
        arr = np.array(values, dtype=object)
    if arr.dtype.kind in "SUO":  # strings: as objects, since numpy's fixed-width ones drop trailing NULs
        arr = np.array(values, dtype=object)
        items = arr.ravel().tolist()
        if not all(isinstance(v, (str, bytes)) for v in items):
            raise ValueError(f"output {name!r}: the rows' outputs do not form one tensor (different shapes or types)")
        if declared not in (None, "", "BYTES"):
            raise ValueError(f"output {name!r}: declared {declared}, but predict returned strings")
        return Tensor(name, "BYTES", _text_where_utf8(items).reshape(arr.shape))
    datatype = declared if declared in DTYPES else _BY_DTYPE.get(arr.dtype, "BYTES")
    dtype = _NP_DTYPES.get(datatype)  # None for BYTES (never compared: numpy's float64 equals None)
    if dtype is not None and arr.dtype == dtype:  # the datatype already: nothing to cast or check
        return Tensor(name, datatype, arr)
    if datatype == "BYTES":  # numbers declared as BYTES: their text
        return Tensor(name, datatype, _text_where_utf8([str(v) for v in arr.ravel().tolist()]).reshape(arr.shape))
    with np.errstate(over="ignore", invalid="ignore"):
        cast = arr.astype(DTYPES[datatype])
    if cast.dtype.kind in "biu" and not np.array_equal(cast, arr):
        raise ValueError(f"output {name!r}: predict returned values that do not fit {datatype}")
    if cast.dtype.kind == "f" and not np.array_equal(np.isfinite(cast), np.isfinite(arr)):
        raise ValueError(f"output {name!r}: predict returned values out of {datatype}'s range")
    return Tensor(name, datatype, cast)


def tensor_to_bytes(tensor: Tensor) -> bytes:
    """The tensor's raw bytes (layout in the module docstring)."""
    if tensor.datatype == "BYTES":
        parts: list[bytes] = []
        for item in tensor.array.ravel().tolist():
            data = item if isinstance(item, bytes) else str(item).encode()
            parts += (_LENGTH.pack(len(data)), data)
        return b"".join(parts)
    return np.ascontiguousarray(tensor.array, dtype=tensor.array.dtype.newbyteorder("<")).tobytes()


def tensor_to_list(tensor: Tensor) -> list[Any]:
    """The tensor's elements, flat and JSON-ready; BYTES that are not UTF-8 cannot be JSON (ValueError)."""
    items: list[Any] = tensor.array.ravel().tolist()
    if tensor.datatype == "BYTES" and any(isinstance(v, bytes) for v in items):
        raise ValueError(
            f"output {tensor.name!r} holds bytes that are not UTF-8 text, which JSON cannot carry; "
            "ask for it in binary (parameters.binary_data: true)"
        )
    return items


def encode_response(
    model: str, version: str, request: InferRequest, tensors: Sequence[Tensor]
) -> tuple[dict[str, Any], bytes | None]:
    """The infer response's JSON part and its binary part (None when no output is wanted in binary)."""
    entries, chunks, binary = [], [], False
    for tensor in tensors:
        entry: dict[str, Any] = {"name": tensor.name, "shape": tensor.shape, "datatype": tensor.datatype}
        if request.wants_binary(tensor.name):
            chunk = tensor_to_bytes(tensor)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
            binary = True
        else:
            entry["data"] = tensor_to_list(tensor)
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": entries}
    if request.id is not None:
        response["id"] = request.id
    return response, b"".join(chunks) if binary else None


def metadata(model: str, version: str, inputs: list[Any], outputs: list[Any]) -> dict[str, Any]:
    """`GET /v2/models/{name}`: name, versions, platform, and the input and output tensors."""
    return {"name": model, "versions": [version], "platform": "neutrino", "inputs": inputs, "outputs": outputs}
