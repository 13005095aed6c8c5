#!/usr/bin/env bash
# Runs the whole layercache test suite on a fresh Debian machine, as root.
#
# Installs what the tests need (Docker Engine 20.10 from Debian's docker.io, Engine 26.1 unpacked from
# Debian trixie's packages by scripts/install-engine26.sh, busybox-static for images built FROM scratch,
# docker-registry and skopeo for the registry tests, PostgreSQL for the index's second backend, Garage
# for the S3 blob store), checks that a private Docker engine starts here,
# then runs every test of the workspace.
# The end-to-end tests start their own private engines (own data root, exec root and socket), so tests
# that wipe an engine never disturb one another, and nothing touches a system-wide Docker.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*" >&2; }

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
[ -x /bin/busybox ] && file_is_static=$(ldd /bin/busybox 2>&1 | grep -c "not a dynamic") || file_is_static=0
[ "$file_is_static" = 1 ] || need_pkgs+=(busybox-static)
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)  # the dashboard e2e test renders pages
# The registry tests: distribution 2.8 as the reference registry, skopeo as a non-Docker client.
command -v docker-registry >/dev/null 2>&1 || need_pkgs+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need_pkgs+=(skopeo)
# The `layercache steps` push test logs in to a registry with htpasswd auth.
command -v htpasswd >/dev/null 2>&1 || need_pkgs+=(apache2-utils)
# The PostgreSQL index's tests start their own server from Debian's binaries.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_pkgs+=(postgresql)
# The replica tests put haproxy (with docs/haproxy.cfg) in front of three servers.
[ -x /usr/sbin/haproxy ] || need_pkgs+=(haproxy)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# Engine 26.1 (classic and containerd image stores, BuildKit) for the tests that need a current engine;
# the tests find it through LAYERCACHE_ENGINE26 and fail naming this script when it is missing.
export LAYERCACHE_ENGINE26=${LAYERCACHE_ENGINE26:-/opt/layercache-engine26}
log "Engine 26.1 in $LAYERCACHE_ENGINE26"
scripts/install-engine26.sh

# Garage, the S3-compatible store cache-server/tests/s3.rs runs against (built from crates.io into
# /opt/garage, ~13 min on 2 cores; the tests fail naming this script when it is missing).
log "Garage (S3-compatible object store) in /opt/garage"
scripts/install-s3.sh

# A private engine, started and stopped here, proves dockerd runs on this machine before any test
# depends on it (a broken engine shows up as one clear message, not fifty failed tests).
state=$(mktemp -d /tmp/layercache-test-engine.XXXXXX)
log "starting a private Docker engine in $state"
dockerd --data-root "$state/data" --exec-root "$state/exec" --pidfile "$state/pid" \
  -H "unix://$state/sock" --bridge=none --iptables=false >"$state/log" 2>&1 &
engine_pid=$!
stop_engine() {
  kill "$engine_pid" 2>/dev/null && wait "$engine_pid" 2>/dev/null || true
  rm -rf "$state" 2>/dev/null || true
}
trap stop_engine EXIT
for _ in $(seq 1 60); do
  DOCKER_HOST="unix://$state/sock" /usr/bin/docker version >/dev/null 2>&1 && break
  sleep 0.5
done
if ! DOCKER_HOST="unix://$state/sock" /usr/bin/docker version >/dev/null 2>&1; then
  echo "error: dockerd did not start; its log follows" >&2
  cat "$state/log" >&2
  exit 1
fi
export LAYERCACHE_TEST_DOCKER_HOST="unix://$state/sock"

log "building the workspace"
cargo build --workspace --bins --locked

log "checking formatting (cargo fmt --check)"
if ! rustup component list --installed 2>/dev/null | grep -q '^rustfmt'; then rustup component add rustfmt; fi
cargo fmt --all -- --check

log "linting (cargo clippy, warnings are errors)"
if ! rustup component list --installed 2>/dev/null | grep -q '^clippy'; then rustup component add clippy; fi
cargo clippy --all-targets --locked -- -D warnings

log "running the tests"
# --no-fail-fast: one failing test binary must not hide the results of the others.
out="$state/cargo-test.log"
set +e
cargo test --workspace --locked --no-fail-fast -- --test-threads="${TEST_THREADS:-4}" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
log "the server tests once more with the index in PostgreSQL (the store's unit tests run both already)"
LAYERCACHE_TEST_BACKEND=postgres cargo test -p layercache-server --locked --no-fail-fast \
  --test api --test registry --test auth --test dashboard -- --test-threads="${TEST_THREADS:-4}" 2>&1 | tee -a "$out"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
set -e
# One closing line over every test binary (cargo's last line is a doc-test run that may hold none),
# printed last, after the fuzzing.
summary=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "all: %d passed, %d failed", p, f }' "$out")
if [ "$status" != 0 ]; then
  printf '\n%s\n' "$summary"
  exit "$status"
fi

log "fuzzing the tarball reader and the Dockerfile key parser (${FUZZ_SECONDS:-30} s each)"
scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
printf '\n%s\n' "$summary"
