"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, on --grpc-port): the
same model, batcher and inference path as the REST routes (`Api.infer_tensors`), in the same event
loop, so gRPC and REST requests share batches.

Tensors arrive as `raw_input_contents` (what tritonclient sends) or as typed `contents`, and are
decoded by v2.py, as REST's are. Outputs go back in `raw_output_contents` when the request came raw
(tritonclient reads nothing else) or holds an FP16 output (which has no typed field), else typed.
Limits are REST's: a message over --max-body-bytes is refused by gRPC itself (RESOURCE_EXHAUSTED),
tensors over --max-elements before their data is decoded. Failures are REST's `HttpError`s, answered
with the status code in `STATUS_CODES` and the same message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import grpc
from grpc import aio

from . import tracing, v2
from .api import EXTENSIONS, SERVER_NAME, VERSION, Api, HttpError
from .config import Config
from .oip import grpc_predict_v2_pb2 as pb
from .oip import grpc_predict_v2_pb2_grpc as pb_grpc

log = logging.getLogger("neutrino.model_server")

# REST status -> gRPC status. 413 (a request over --max-elements, or holding more inputs than the
# queue) is RESOURCE_EXHAUSTED, the code gRPC itself answers a message over the size limit with, so
# both "too big" refusals read alike; the message says which limit and to send less.
STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# The InferTensorContents field that carries each datatype's elements; FP16 has none (raw only).
CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The six RPCs, each answering what its REST route answers."""

    def __init__(self, api: Api, config: Config) -> None:
        self.api = api
        self.config = config

    async def ServerLive(self, request: pb.ServerLiveRequest, context: aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.api.ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=VERSION, extensions=EXTENSIONS)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: aio.ServicerContext) -> pb.ModelReadyResponse:
        await self._check_model_or_abort(request.name, request.version, context)
        return pb.ModelReadyResponse(ready=self.api.ready)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        await self._check_model_or_abort(request.name, request.version, context)
        doc = self.api.metadata()
        return pb.ModelMetadataResponse(
            name=doc["name"],
            versions=doc["versions"],
            platform=doc["platform"],
            inputs=[_tensor_metadata(t) for t in doc["inputs"]],
            outputs=[_tensor_metadata(t) for t in doc["outputs"]],
        )

    async def ModelInfer(self, request: pb.ModelInferRequest, context: aio.ServicerContext) -> pb.ModelInferResponse:
        started = time.perf_counter()
        error: HttpError | None = None
        self.api.in_flight += 1
        with tracing.grpc_request("ModelInfer", context.invocation_metadata()) as span:
            try:
                response = await self._infer(request)
            except HttpError as exc:
                error = exc
            except Exception as exc:  # a bug or an input nobody foresaw: still a status, and logged
                log.exception("gRPC ModelInfer failed")
                error = HttpError(500, type(exc).__name__, str(exc) or "internal error")
            finally:
                self.api.in_flight -= 1
            code = grpc.StatusCode.OK if error is None else _status_code(error)
            tracing.grpc_answered(span, code.value[0], failed=error is not None and error.status >= 500)
        self.api.metrics.observe("grpc_infer", error.status if error else 200, time.perf_counter() - started)
        if error is not None:
            await _abort(context, error)
        return response

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        self._check_model(request.model_name, request.model_version)
        try:
            inputs = decode_inputs(request, self.config.max_elements)
        except v2.TooManyElements as exc:
            raise HttpError(413, "too_many_elements", str(exc)) from None
        except v2.InferError as exc:
            raise HttpError(400, "bad_request", str(exc)) from None
        outputs = await self.api.infer_tensors(inputs, [o.name for o in request.outputs])
        raw = bool(request.raw_input_contents) or any(t.datatype not in CONTENTS_FIELDS for t in outputs)
        return encode_outputs(request, outputs, raw)

    def _check_model(self, name: str, version: str) -> None:
        served = self.api.served.name
        if name != served:
            raise HttpError(404, "unknown_model", f"this server serves model {served!r}, not {name!r}")
        if version and version != VERSION:
            raise HttpError(404, "unknown_version", f"model {name!r} has version {VERSION!r} only, not {version!r}")

    async def _check_model_or_abort(self, name: str, version: str, context: aio.ServicerContext) -> None:
        try:
            self._check_model(name, version)
        except HttpError as exc:
            await _abort(context, exc)


def decode_inputs(request: pb.ModelInferRequest, max_elements: int | None) -> list[v2.Tensor]:
    """The request's input tensors, from raw bytes or typed contents; sizes are checked against the
    shapes (all inputs, against `max_elements`) before any data is decoded."""
    headers = [v2.check_header(t.name, t.datatype, list(t.shape), i) for i, t in enumerate(request.inputs)]
    if not headers:
        raise v2.InferError("`inputs` must hold at least one tensor")
    v2.check_element_count((shape for _, _, shape in headers), max_elements)
    raw = request.raw_input_contents
    if raw:
        if len(raw) != len(headers):
            raise v2.InferError(
                f"raw_input_contents has {len(raw)} entries for {len(headers)} inputs; send one per input, in order"
            )
        if any(t.HasField("contents") for t in request.inputs):
            raise v2.InferError("inputs carry typed `contents` beside raw_input_contents; use one or the other")
        return [v2.tensor_from_bytes(n, d, s, data) for (n, d, s), data in zip(headers, raw, strict=True)]
    return [
        v2.tensor_from_values(name, datatype, shape, _typed_values(name, datatype, tensor.contents))
        for (name, datatype, shape), tensor in zip(headers, request.inputs, strict=True)
    ]


def _typed_values(name: str, datatype: str, contents: pb.InferTensorContents) -> Sequence[Any]:
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        raise v2.InferError(f"input {name!r}: {datatype} has no typed contents field; send it in raw_input_contents")
    others = [f.name for f, _ in contents.ListFields() if f.name != field]
    if others:
        raise v2.InferError(f"input {name!r}: {datatype} elements go in contents.{field}, not {', '.join(others)}")
    values: Sequence[Any] = getattr(contents, field)
    return values


def encode_outputs(request: pb.ModelInferRequest, outputs: Sequence[v2.Tensor], raw: bool) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=request.model_name, model_version=VERSION, id=request.id)
    for tensor in outputs:
        out = response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if raw:
            response.raw_output_contents.append(v2.tensor_to_bytes(tensor))
            continue
        items = tensor.array.ravel().tolist()
        if tensor.datatype == "BYTES":
            items = [v if isinstance(v, bytes) else str(v).encode() for v in items]
        getattr(out.contents, CONTENTS_FIELDS[tensor.datatype]).extend(items)
    return response


def _tensor_metadata(doc: dict[str, Any]) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=str(doc.get("name", "")), datatype=str(doc.get("datatype", "")), shape=list(doc.get("shape", []))
    )


def _status_code(error: HttpError) -> grpc.StatusCode:
    return STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL)


async def _abort(context: aio.ServicerContext, error: HttpError) -> NoReturn:
    code = _status_code(error)
    trailers = (("retry-after", error.retry_after),) if error.retry_after else ()  # REST's Retry-After
    await context.abort(code, error.message, trailers)
    raise AssertionError("ServicerContext.abort() returned")  # it raises, to end the RPC


async def start(api: Api, config: Config, port: int) -> tuple[aio.Server, str]:
    """A started gRPC server for `api` on config.host:port (0: a free one), and the address it got."""
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", config.max_body_bytes),
            # gRPC's default lets a second server bind a port already in use, silently sharing it.
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(api, config), server)
    host = f"[{config.host}]" if ":" in config.host else config.host
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if not bound:
        raise OSError(f"cannot listen for gRPC on {host}:{port} (--grpc-port): the port is taken, or not this host's")
    await server.start()
    return server, f"{host}:{bound}"
