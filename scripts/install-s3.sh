#!/usr/bin/env bash
# Installs Garage (https://garagehq.deuxfleurs.fr), a real S3-compatible object store, for the tests
# and the benchmark of `layercache-server --blob-store s3://...` (cache-server/tests/s3.rs,
# bench/s3.py). Built from crates.io with `cargo install --locked` into its own root, so nothing
# else on the machine changes. Takes about 13 minutes on 2 cores (a release build of ~500 crates).
#
# Usage: scripts/install-s3.sh
#   LAYERCACHE_GARAGE_ROOT=DIR   install root (default /opt/garage; the binary is DIR/bin/garage)
#   LAYERCACHE_GARAGE_VERSION=V  crate version (default 2.5.0)
#
# Idempotent: when DIR/bin/garage already reports the version asked for, it only says so.
set -euo pipefail

root=${LAYERCACHE_GARAGE_ROOT:-/opt/garage}
version=${LAYERCACHE_GARAGE_VERSION:-2.5.0}
bin="$root/bin/garage"

log() { printf '[install-s3] %s\n' "$*" >&2; }
die() { printf '[install-s3] error: %s\n' "$*" >&2; exit 1; }

if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -qF ":$version "; then
  log "garage $version already in $bin; nothing to do"
  exit 0
fi

command -v cargo >/dev/null || die "cargo not found: install Rust first (the workspace's toolchain)"
mkdir -p "$root" 2>/dev/null || die "cannot create $root: run as root or set LAYERCACHE_GARAGE_ROOT"
log "building garage $version into $root (about 13 minutes on 2 cores)"
start=$(date +%s)
cargo install garage --version "=$version" --locked --root "$root"
"$bin" --version >/dev/null || die "$bin does not run after the build"
log "installed $("$bin" --version | head -1) in $(( $(date +%s) - start )) s"
