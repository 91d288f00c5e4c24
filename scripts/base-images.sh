#!/usr/bin/env bash
# Makes the local base images the Dockerfiles start FROM, for machines that reach no container
# registry: a Python runtime (stands in for python:3.13-slim-trixie) and a Rust builder (stands in
# for rust:1-trixie), both Debian trixie so the binary built in one runs in the other (same glibc).
# The Python base is a debootstrap'ed root file system fed to `docker import`; the Rust base is that
# image plus Debian's toolchain. Tags are a hash of this script and the CA bundle it copies in, so
# a second run finds the images and does nothing.
#
# Prints the build arguments for the Dockerfiles on stdout:
#   PYTHON_IMAGE=neutrino/base-python:trixie-<hash>
#   RUST_IMAGE=neutrino/base-rust:trixie-<hash>
# Needs root (debootstrap), docker and debootstrap. Progress goes to stderr.
set -euo pipefail

SUITE=trixie
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The host's bundle: behind a TLS-intercepting proxy it holds the proxy's CA, elsewhere it is the
# ordinary one. pip, uv and cargo in the images trust exactly what the host trusts (uv reads it
# through SSL_CERT_FILE; pip and cargo use the system bundle anyway).
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
PYTHON_PACKAGES=ca-certificates,python3,python3-venv
RUST_PACKAGES="cargo rustc gcc g++ make libc6-dev pkg-config"

log() { echo "base-images: $*" >&2; }

for tool in docker debootstrap; do
  if ! command -v "$tool" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$tool" ]; then
    log "$tool is missing (apt-get install -y $tool, or run scripts/bootstrap.sh)"
    exit 1
  fi
done
[ -r "$CA_BUNDLE" ] || { log "no CA bundle at $CA_BUNDLE (set CA_BUNDLE)"; exit 1; }

hash=$(cat "$0" "$CA_BUNDLE" | sha256sum | cut -c1-12)
python_image="neutrino/base-python:$SUITE-$hash"
rust_image="neutrino/base-rust:$SUITE-$hash"

exists() { docker image inspect "$1" >/dev/null 2>&1; }

# One builder at a time: a test and a benchmark may both ask for the images.
exec 9>"${TMPDIR:-/tmp}/neutrino-base-images.lock"
flock 9

if ! exists "$python_image"; then
  if [ "$(id -u)" -ne 0 ]; then
    log "debootstrap needs root: run this script with sudo"
    exit 1
  fi
  rootfs=$(mktemp -d "${TMPDIR:-/tmp}/neutrino-rootfs.XXXXXX")
  trap 'rm -rf "$rootfs"' EXIT
  log "debootstrap $SUITE into $rootfs (about a minute)"
  PATH="$PATH:/usr/sbin:/sbin" debootstrap --variant=minbase --include="$PYTHON_PACKAGES" \
    "$SUITE" "$rootfs" "$MIRROR" >&2
  install -m 0644 "$CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/* \
    "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/var/cache/debconf/*-old
  log "docker import $python_image"
  tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
    --change 'CMD ["python3"]' \
    - "$python_image" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
fi

if ! exists "$rust_image"; then
  log "building $rust_image (Debian's cargo and rustc, gcc, g++)"
  docker build --quiet --tag "$rust_image" - >/dev/null <<EOF
FROM $python_image
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $RUST_PACKAGES \\
 && rm -rf /var/lib/apt/lists/*
CMD ["cargo"]
EOF
fi

echo "PYTHON_IMAGE=$python_image"
echo "RUST_IMAGE=$rust_image"
