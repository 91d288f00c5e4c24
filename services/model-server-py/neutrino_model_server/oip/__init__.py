"""The Open Inference Protocol's gRPC service (`inference.GRPCInferenceService`): the vendored
`grpc_predict_v2.proto` and the modules protoc generated from it, checked in (scripts/gen-oip-grpc.sh
regenerates them; ruff and mypy leave them alone).

Its messages register under the protocol's own names (`inference.ModelInferRequest`, ...) in
protobuf's default pool, as tritonclient's do: one process cannot import both. The server never
imports a client; tests and benchmarks drive it with tritonclient alone.
"""
