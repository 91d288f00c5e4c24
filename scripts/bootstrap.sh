#!/usr/bin/env bash
# Installs what a fresh machine lacks and builds everything: uv (from PyPI), libzmq with CURVE and
# pkg-config (Debian's libzmq3-dev, pkg-config; the orchestrator links them), the Python workspace
# in .venv, and the release orchestrator in target/release/. Where Docker is installed, also
# debootstrap (Debian's package), which builds the base images for `make images` without any
# registry; Debian's prometheus and chromium for the observability tests. Safe to re-run.
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
# apt_install PACKAGE...: as root, or through sudo without a password; returns 1 if neither works.
apt_install() {
  if [ "$(id -u)" -eq 0 ] && has apt-get; then
    echo "bootstrap: installing $* (apt-get)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  elif has apt-get && has sudo && sudo -n true 2>/dev/null; then
    echo "bootstrap: installing $* (sudo apt-get)" >&2
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    return 1
  fi
}
if has docker && ! has debootstrap; then
  apt_install debootstrap ||
    echo "bootstrap: debootstrap is missing: \`make images\` (and the Compose test) need it;" \
      "install it as root (apt-get install debootstrap) or set PYTHON_IMAGE and RUST_IMAGE" >&2
fi
# The orchestrator links the system libzmq (with CURVE), found through pkg-config.
if ! has pkg-config || ! pkg-config --exists libzmq; then
  if ! apt_install libzmq3-dev pkg-config; then
    echo "bootstrap: the orchestrator needs libzmq with its headers and pkg-config; install them as root" \
      "(Debian/Ubuntu: apt-get install libzmq3-dev pkg-config; Fedora: dnf install zeromq-devel pkgconf)" >&2
    exit 1
  fi
fi
# The observability tests start a real Prometheus (and promtool checks deploy/'s rules) and drive
# the dashboard with a real Chromium through Playwright: Debian's prometheus and chromium.
missing=()
has prometheus || has promtool || missing+=(prometheus)
has chromium || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ] && ! apt_install "${missing[@]}"; then
  echo "bootstrap: ${missing[*]} missing: the Prometheus and dashboard tests need them" \
    "(Debian/Ubuntu: apt-get install ${missing[*]})" >&2
fi

uv sync --quiet
cargo build --release --quiet
