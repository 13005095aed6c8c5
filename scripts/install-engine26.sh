#!/usr/bin/env bash
# Unpacks Docker Engine 26.1 (with containerd 1.7, the 26.1 CLI and buildx 0.13) from Debian trixie's
# packages into one directory, beside the machine's own Engine 20.10, for the end-to-end tests and the
# benchmark. Nothing is installed: the .deb files are only extracted (`dpkg -x`), and apt runs with a
# private configuration under the target directory, so the machine's apt sources, lists and package
# database stay as they are.
#
# Usage (as root, on Debian 12): scripts/install-engine26.sh
#   LAYERCACHE_ENGINE26=DIR  target directory (default /opt/layercache-engine26)
#
# Idempotent: when DIR already holds a complete unpacked engine (its marker file is there), it only
# says so. The result: DIR/usr/sbin/dockerd, DIR/usr/bin/{docker,containerd,...},
# DIR/usr/libexec/docker/cli-plugins/docker-buildx; trixie's runc is removed (it needs glibc 2.38),
# so dockerd finds bookworm's /usr/sbin/runc from docker.io's dependencies on PATH.
set -euo pipefail

dir=${LAYERCACHE_ENGINE26:-/opt/layercache-engine26}
marker="$dir/.layercache-engine26-complete"
pkgs=(docker.io docker-cli docker-buildx containerd)

log() { printf '[install-engine26] %s\n' "$*" >&2; }
die() { printf '[install-engine26] error: %s\n' "$*" >&2; exit 1; }

if [ -f "$marker" ]; then
  log "already unpacked in $dir ($(tr '\n' ' ' <"$marker")); nothing to do"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "run as root (apt-get download and dpkg -x write under $dir)"
command -v apt-get >/dev/null || die "apt-get not found: this script needs Debian 12"
[ -x /usr/sbin/runc ] || die "/usr/sbin/runc missing: install Debian 12's docker.io first (scripts/test.sh does)"

# The private apt configuration: trixie from the same mirror, signed by the same keyring, as the
# machine's own bookworm sources.
sources=/etc/apt/sources.list.d/debian.sources
[ -f "$sources" ] || die "$sources not found: cannot tell which Debian mirror to use"
uri=$(awk '/^URIs:/ { print $2; exit }' "$sources")
signed_by=$(awk '/^Signed-By:/ { print $2; exit }' "$sources")
[ -n "$uri" ] && [ -n "$signed_by" ] || die "no URIs:/Signed-By: line in $sources"

apt_dir="$dir.apt"
mkdir -p "$apt_dir/parts" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
cat >"$apt_dir/parts/trixie.sources" <<EOF
Types: deb
URIs: $uri
Suites: trixie
Components: main
Signed-By: $signed_by
EOF
apt_opts=(-o Dir::Etc::sourcelist=/dev/null -o "Dir::Etc::sourceparts=$apt_dir/parts"
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
  # Downloads land in a root-owned dir the `_apt` sandbox user cannot write to.
  -o APT::Sandbox::User=root)

log "fetching trixie's package lists from $uri (private apt config in $apt_dir)"
apt-get "${apt_opts[@]}" update -qq || die "apt-get update of trixie from $uri failed"

log "downloading ${pkgs[*]} (about 80 MB)"
(cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" download "${pkgs[@]}") \
  || die "apt-get download ${pkgs[*]} failed"

# Unpack into a staging dir and rename at the end, so an interrupted run never leaves a half engine
# that looks complete.
stage="$dir.partial"
rm -rf "$stage"
mkdir -p "$stage"
for deb in "$apt_dir"/debs/*.deb; do
  log "unpacking $(basename "$deb")"
  dpkg -x "$deb" "$stage"
done
rm -f "$stage/usr/sbin/runc" "$stage/usr/bin/runc"
for f in usr/sbin/dockerd usr/bin/docker usr/bin/containerd usr/bin/containerd-shim-runc-v2 \
  usr/libexec/docker/cli-plugins/docker-buildx; do
  [ -x "$stage/$f" ] || die "$f missing from the unpacked packages in $stage"
done
versions=$(for deb in "$apt_dir"/debs/*.deb; do dpkg-deb --showformat='${Package}=${Version}\n' -W "$deb"; done)
"$stage/usr/sbin/dockerd" --version >/dev/null || die "the unpacked dockerd does not run on this machine"

rm -rf "$dir"
mv "$stage" "$dir"
printf '%s\n' "$versions" >"$marker"
rm -rf "$apt_dir"
log "unpacked into $dir:"
log "  $("$dir/usr/sbin/dockerd" --version)"
log "  $("$dir/usr/bin/docker" --version)"
log "  $("$dir/usr/libexec/docker/cli-plugins/docker-buildx" version)"
log "  runc: /usr/sbin/runc ($(/usr/sbin/runc --version | head -1))"
