#!/usr/bin/env bash
# Installs what a fresh machine lacks and builds everything: uv (from PyPI), the Python
# workspace in .venv, and the release orchestrator in target/release/. Where Docker is installed,
# also debootstrap (Debian's package), which builds the base images for `make images` without any
# registry. Safe to re-run.
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

has() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
if has docker && ! has debootstrap; then
  if [ "$(id -u)" -eq 0 ] && has apt-get; then
    echo "bootstrap: installing debootstrap (apt-get)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  elif has apt-get && has sudo && sudo -n true 2>/dev/null; then
    echo "bootstrap: installing debootstrap (sudo apt-get)" >&2
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  else
    echo "bootstrap: debootstrap is missing: \`make images\` (and the Compose test) need it;" \
      "install it as root (apt-get install debootstrap) or set PYTHON_IMAGE and RUST_IMAGE" >&2
  fi
fi

uv sync --quiet
cargo build --release --quiet
