"""Load in the Open Inference Protocol's three encodings, from tritonclient's asyncio clients, for
benchmarks/models.py: REST with JSON tensors, REST with the binary tensor extension (tritonclient's
default), and gRPC (raw contents, tritonclient's default). One image per call, `concurrency` calls
in flight, latencies counted after the warm-up; run in a process of its own, apart from the server.

    python benchmarks/_oip_load.py KIND TARGET CONCURRENCY WARMUP_S DURATION_S   # prints one JSON line

KIND is rest_json, rest_binary or grpc; TARGET is host:port (the HTTP port, or the gRPC one).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

KINDS = ("rest_json", "rest_binary", "grpc")
MODEL = "digits"


def _image() -> np.ndarray[Any, Any]:
    from sklearn.datasets import load_digits

    return load_digits().data[7:8].astype(np.float32)  # one image, shape [1, 64]


async def _client(kind: str, target: str) -> tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[None]]]:
    """A call that sends one image and checks its answer, and the client's close."""
    image = _image()
    if kind == "grpc":
        import tritonclient.grpc.aio as grpcclient

        grpc_client = grpcclient.InferenceServerClient(target)
        pixels = grpcclient.InferInput("pixels", list(image.shape), "FP32")
        pixels.set_data_from_numpy(image)

        async def grpc_call() -> Any:
            return (await grpc_client.infer(MODEL, [pixels])).as_numpy("digit")

        return grpc_call, grpc_client.close
    import tritonclient.http.aio as httpclient

    binary = kind == "rest_binary"
    http_client = httpclient.InferenceServerClient(target, conn_limit=1024)
    pixels = httpclient.InferInput("pixels", list(image.shape), "FP32")
    pixels.set_data_from_numpy(image, binary_data=binary)
    digit = httpclient.InferRequestedOutput("digit", binary_data=binary)

    async def http_call() -> Any:
        return (await http_client.infer(MODEL, [pixels], outputs=[digit])).as_numpy("digit")

    return http_call, http_client.close


async def generate(kind: str, target: str, concurrency: int, warmup_s: float, duration_s: float) -> dict[str, Any]:
    call, close = await _client(kind, target)
    latencies: list[int] = []
    ok = errors = 0
    first_error = ""
    start = time.monotonic() + warmup_s
    end = start + duration_s

    async def worker() -> None:
        nonlocal ok, errors, first_error
        while (now := time.monotonic()) < end:
            began = time.perf_counter_ns()
            try:
                answer = await call()
                assert answer is not None and answer.shape == (1,), answer
            except Exception as exc:  # counted, and the first one shown: a benchmark reports, never hides
                if now >= start:
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
                continue
            if now >= start:
                ok += 1
                latencies.append(time.perf_counter_ns() - began)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await close()
    lat = sorted(latencies)

    def pick(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0, 1) if lat else None

    out: dict[str, Any] = {"ok": ok, "rps": round(ok / duration_s, 1), "p50_us": pick(0.5), "p99_us": pick(0.99)}
    if errors:
        out |= {"errors": errors, "first_error": first_error}
    return out


def main() -> int:
    kind, target, concurrency, warmup_s, duration_s = sys.argv[1:6]
    if kind not in KINDS:
        raise SystemExit(f"KIND must be one of {', '.join(KINDS)}, not {kind!r}")
    print(json.dumps(asyncio.run(generate(kind, target, int(concurrency), float(warmup_s), float(duration_s)))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
