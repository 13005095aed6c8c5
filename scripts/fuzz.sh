#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time each (default 60 s): the tarball reader
# and the Dockerfile key parser. For CI: `scripts/fuzz.sh 120`.
#
# cargo-fuzz needs a nightly toolchain (sanitizer flags). With rustup, `+nightly` is used; without
# a nightly, RUSTC_BOOTSTRAP=1 lets a stable compiler accept the flags. Crashes are kept in
# fuzz/artifacts/<target>/ and the script exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz
fi

toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi

# Seeds: a real Engine 20.10 `docker save` and real-world Dockerfiles, so the fuzzer starts past
# the tar header and the FROM line.
mkdir -p fuzz/corpus/read_archive fuzz/corpus/dockerfile_key
cp shared/tests/fixtures/*.tar fuzz/corpus/read_archive/
cp shared/tests/dockerfiles/* fuzz/corpus/dockerfile_key/

for target in $(cargo fuzz list --fuzz-dir fuzz); do
  echo "==> fuzzing $target for ${seconds}s" >&2
  mkdir -p "fuzz/corpus/$target"
  cargo "${toolchain[@]}" fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=1048576
done
echo "==> no crashes" >&2
