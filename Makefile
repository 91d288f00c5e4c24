# One command per intent. `make dev` and `make test` are the README's two set-up commands.
.PHONY: setup dev demo up test test-rust test-python check fmt fuzz bench images stack stack-down clean

ORCH := target/release/neutrino-orchestrator
DOCKERFILES := $(wildcard services/*/Dockerfile examples/*/Dockerfile)
COMPOSE := docker-compose -p neutrino -f deploy/compose.yaml

setup:
	@bash scripts/bootstrap.sh

## Build everything, then run the local stack (gateway, a task pod, the digits model) for the models example until Ctrl-C.
dev: setup
	uv run neutrino dev examples.models.app:app

## Build everything, start the orchestrator with 2 workers for the quickstart app, print a few calls, stop.
demo: setup
	uv run python examples/quickstart/demo.py

## Same, but keep the orchestrator running (Ctrl-C stops it).
up: setup
	uv run python examples/quickstart/demo.py --keep-running

## Every test: Rust (unit + golden vectors) and Python (unit, component, end to end).
test: setup
	cargo test --release --quiet
	uv run pytest -q

check: setup
	uv run ruff check .
	uv run ruff format --check .
	uv run mypy --strict libs/sdk-py/neutrino libs/protocol/python/neutrino_protocol services/worker-py/neutrino_worker services/gateway-py/neutrino_gateway services/model-server-py/neutrino_model_server
	cargo fmt --check
	cargo clippy --release --all-targets --quiet -- -D warnings
	uv run hadolint $(DOCKERFILES)

## Every cargo-fuzz target (protocol decoder, control link, broker) for FUZZ_SECONDS each, seeded from the golden vectors.
FUZZ_SECONDS ?= 30
fuzz: setup
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

fmt:
	uv run ruff format .
	uv run ruff check --fix .
	cargo fmt

bench: setup
	uv run python benchmarks/dispatch.py --json
	uv run python benchmarks/lifecycle.py --json
	uv run python benchmarks/gateway.py --json

## Every image (task pod, gateway, model server, the models example), built here with no registry.
images:
	@bash scripts/images.sh >/dev/null

## The Compose stack (deploy/compose.yaml) on 127.0.0.1:8000, once the gateway is ready.
stack: images
	$(COMPOSE) up -d
	@for i in $$(seq 1 240); do \
	  curl -fs -o /dev/null http://127.0.0.1:$${NEUTRINO_PORT:-8000}/readyz && { echo "ready: http://127.0.0.1:$${NEUTRINO_PORT:-8000}/docs"; exit 0; }; \
	  sleep 0.5; done; echo "the gateway is not ready; see: $(COMPOSE) logs" >&2; exit 1

stack-down:
	$(COMPOSE) down -v

clean:
	cargo clean
	rm -rf libs/protocol/rust/fuzz/target services/orchestrator-rs/fuzz/target
	rm -rf .venv
