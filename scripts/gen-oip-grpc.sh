#!/usr/bin/env bash
# Regenerates the model server's gRPC modules from the vendored Open Inference Protocol service
# (services/model-server-py/neutrino_model_server/oip/grpc_predict_v2.proto): grpc_predict_v2_pb2.py
# (+ .pyi, its types for mypy) and grpc_predict_v2_pb2_grpc.py, checked in beside it as gRPC
# projects usually do, so neither an install nor an image build needs protoc. Run after editing the
# .proto or upgrading grpcio-tools (a dev dependency), then commit the output.
#
# The proto is compiled from the package's parent folder, so the generated service module imports
# its messages as `neutrino_model_server.oip.grpc_predict_v2_pb2`, not as a top-level module.
set -euo pipefail
cd "$(dirname "$0")/../services/model-server-py"
uv run python -m grpc_tools.protoc -I . \
  --python_out=. --pyi_out=. --grpc_python_out=. \
  neutrino_model_server/oip/grpc_predict_v2.proto
echo "gen-oip-grpc: wrote $(ls neutrino_model_server/oip/grpc_predict_v2_pb2*)" >&2
