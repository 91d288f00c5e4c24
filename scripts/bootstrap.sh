#!/usr/bin/env bash
# Installs what a fresh machine lacks and builds everything: uv (from PyPI), the Python
# workspace in .venv, and the release orchestrator in target/release/. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v uv >/dev/null 2>&1; then
  echo "bootstrap: installing uv" >&2
  python3 -m pip install --quiet uv
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "bootstrap: cargo is missing; install Rust (https://rustup.rs) and re-run" >&2
  exit 1
fi

uv sync --quiet
cargo build --release --quiet
