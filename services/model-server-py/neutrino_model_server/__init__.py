"""Neutrino model server: one `@app.model` class behind HTTP, with adaptive batching.

# Layout

- `config.py`: flags and environment, read once into a frozen `Config`; exit codes.
- `loader.py`: import the app, find the model, build the instance and its `predict` adapter.
- `batcher.py`: the bounded queue and the batch loop (size- or wait-bound, no wait when idle).
- `v2.py`: the Open Inference Protocol (KServe V2) tensors: request checks, rows in, tensor out.
- `api.py`: the HTTP routes (`/v1/models/{name}/predict`, `/v2/...`, `/metrics`) and the error shapes.
- `grpc_server.py`: the same inference over gRPC (--grpc-port), the protocol's `GRPCInferenceService`;
  `oip/` holds its vendored .proto and the modules protoc generated from it.
- `metrics.py`: the Prometheus metrics of one server.
- `server.py`: `run(config, shutdown)`: listen, `load()`, serve, drain, in that order.
"""

from .config import Config
from .server import run

__all__ = ["Config", "run"]
