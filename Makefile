# One command per intent. `make dev` and `make test` are the README's two set-up commands.
.PHONY: setup dev demo up test test-rust test-python check fmt bench clean

ORCH := target/release/neutrino-orchestrator

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
	uv run mypy --strict libs/sdk-py/neutrino libs/protocol/python/neutrino_protocol services/gateway-py/neutrino_gateway services/model-server-py/neutrino_model_server
	cargo fmt --check
	cargo clippy --release --all-targets --quiet -- -D warnings

fmt:
	uv run ruff format .
	uv run ruff check --fix .
	cargo fmt

bench: setup
	uv run python benchmarks/dispatch.py --json
	uv run python benchmarks/lifecycle.py --json
	uv run python benchmarks/gateway.py --json

clean:
	cargo clean
	rm -rf .venv
