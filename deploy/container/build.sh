#!/bin/sh
# Build CareVault's container image from a release binary:
#
#   cargo build --release --locked -p carevault
#   deploy/container/build.sh [TAG]          # default tag carevault:latest
#
# CAREVAULT_BIN overrides the binary (default target/release/carevault). COLLECT_BASE is the
# image the Dockerfile's first stage runs on (default debian:bookworm-slim: build the binary on
# Debian 12, or give a base with the build machine's C library). When that image is neither
# present nor pullable (no registry), this script makes one from the build machine's own sh,
# ldd and coreutils and the libraries they and the binary link, so the image builds offline.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
tag=${1:-carevault:latest}
bin=${CAREVAULT_BIN:-$repo/target/release/carevault}
base=${COLLECT_BASE:-debian:bookworm-slim}
[ -x "$bin" ] || { echo "build.sh: no binary at $bin (cargo build --release -p carevault)" >&2; exit 1; }

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/carevault"
cp "$here/Dockerfile" "$here/collect.sh" "$ctx/"

# The build machine's own tools (and the binary's libraries, which ldd must find), as an image.
host_base() {
  rootfs=$ctx/host-base
  tools="sh bash ldd grep dirname mkdir cp chmod"
  files=""
  for t in $tools; do files="$files $(command -v "$t")"; done
  libs=$(for f in $files "$bin"; do ldd "$f" 2>/dev/null | grep -o '/[^ ]*' || true; done | sort -u)
  for f in $files $libs; do
    mkdir -p "$rootfs$(dirname "$f")"
    cp -L "$f" "$rootfs$f"
  done
  # ldd is a script run by /bin/bash; the Dockerfile's RUN uses /bin/sh.
  mkdir -p "$rootfs/bin"
  [ -e "$rootfs/bin/sh" ] || cp -L "$(command -v sh)" "$rootfs/bin/sh"
  [ -e "$rootfs/bin/bash" ] || cp -L "$(command -v bash)" "$rootfs/bin/bash"
  if [ -e /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$rootfs/etc/ssl/certs"
    cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
  fi
  tar -C "$rootfs" -cf - . | docker import -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin' - "$1" >/dev/null
  rm -rf "$rootfs"
}

if ! docker image inspect "$base" >/dev/null 2>&1 && ! docker pull -q "$base" >/dev/null 2>&1; then
  echo "build.sh: no image $base and no registry to pull it from; making carevault-collect-base:host from this machine's files" >&2
  base=carevault-collect-base:host
  host_base "$base"
fi
# The classic builder: BuildKit needs a plugin (buildx) that a daemon-only install lacks.
DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} docker build -q --build-arg COLLECT_BASE="$base" -t "$tag" "$ctx" >/dev/null
echo "$tag: $(docker image inspect -f '{{.Size}}' "$tag") bytes"
