#!/usr/bin/env bash
# Builds every image from this repository, with no registry: the local base images first
# (scripts/base-images.sh) unless PYTHON_IMAGE and RUST_IMAGE name others (e.g. the official
# python:3.13-slim-trixie and rust:1-trixie), then
#   neutrino/task-pod, neutrino/gateway, neutrino/model-server            (one per service)
#   neutrino/example-models-task-pod, neutrino/example-models-model-server (the models example on top)
# all tagged $TAG (default dev). Unchanged inputs hit Docker's layer cache, so a second run takes seconds.
# Prints the image references it built on stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=${TAG:-dev}
if [ -z "${PYTHON_IMAGE:-}" ] || [ -z "${RUST_IMAGE:-}" ]; then
  eval "$(bash scripts/base-images.sh)"
fi

log=$(mktemp "${TMPDIR:-/tmp}/neutrino-images.XXXXXX")
trap 'rm -f "$log"' EXIT

# build DOCKERFILE IMAGE [docker build flags...]: the build's own output only when it fails.
build() {
  local dockerfile=$1 image=$2
  shift 2
  echo "images: $image (from $dockerfile)" >&2
  local start=$SECONDS
  if ! docker build --file "$dockerfile" --tag "$image" "$@" . >"$log" 2>&1; then
    cat "$log" >&2
    echo "images: building $image failed" >&2
    exit 1
  fi
  echo "images: $image built in $((SECONDS - start)) s" >&2
  echo "$image"
}

build services/orchestrator-rs/Dockerfile "neutrino/task-pod:$TAG" \
  --build-arg "RUST_IMAGE=$RUST_IMAGE" --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE"
build services/gateway-py/Dockerfile "neutrino/gateway:$TAG" --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE"
build services/model-server-py/Dockerfile "neutrino/model-server:$TAG" --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE"
build examples/models/Dockerfile "neutrino/example-models-task-pod:$TAG" --build-arg "BASE=neutrino/task-pod:$TAG"
build examples/models/Dockerfile "neutrino/example-models-model-server:$TAG" \
  --build-arg "BASE=neutrino/model-server:$TAG"
