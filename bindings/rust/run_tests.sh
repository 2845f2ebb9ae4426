#!/usr/bin/env bash
# bindings/rust/run_tests.sh BUILD_DIR
#
# Runs the Rust binding's tests (`cargo test --offline`) against the
# library of a meson build directory (AGENTVAULT_LIB_DIR =
# BUILD_DIR/libagentvault). Cargo's output goes to BUILD_DIR/rust-target
# and CARGO_HOME is a temporary directory, so neither the source tree nor
# ~/.cargo is written (cargo does write Cargo.lock next to Cargo.toml; it is
# git-ignored). Uses Debian's cargo/rustc (/usr/bin) when present, else
# the cargo on PATH; CARGO and RUSTC override.
#
# The last line is "N passed, M failed" (summed over cargo's
# "test result:" lines); the exit status is non-zero on any failure.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
if [ $# -ne 1 ] || [ ! -d "$1" ]; then
  echo "usage: $0 BUILD_DIR" >&2
  echo "0 passed, 1 failed"
  exit 2
fi
build=$(cd "$1" && pwd)
libdir="$build/libagentvault"
if [ ! -e "$libdir/libagentvault.so" ]; then
  echo "no $libdir/libagentvault.so: build $build first (ninja -C $build)"
  echo "0 passed, 1 failed"
  exit 1
fi

if [ -z "${CARGO:-}" ]; then
  if [ -x /usr/bin/cargo ]; then
    CARGO=/usr/bin/cargo
    # Debian's cargo with Debian's rustc, whatever else is on PATH.
    : "${RUSTC:=/usr/bin/rustc}"
    : "${RUSTDOC:=/usr/bin/rustdoc}"
  else
    CARGO=$(command -v cargo || true)
  fi
fi
if [ -z "$CARGO" ]; then
  echo "cargo not found (apt-get install cargo rustc)"
  echo "0 passed, 1 failed"
  exit 1
fi
[ -n "${RUSTC:-}" ] && export RUSTC
[ -n "${RUSTDOC:-}" ] && export RUSTDOC

cargo_home=$(mktemp -d "${TMPDIR:-/tmp}/av-cargo-home.XXXXXX")
test_tmp=$(mktemp -d "${TMPDIR:-/tmp}/av-rust-tests.XXXXXX")
trap 'rm -rf "$cargo_home" "$test_tmp"' EXIT

# The backend the build was configured with, for tls_library's test.
tls=$(meson introspect --buildoptions "$build" 2>/dev/null |
  /usr/bin/python3 -c 'import json,sys; print(next((o["value"] for o in json.load(sys.stdin) if o["name"]=="tls"), ""))' 2>/dev/null || true)

export CARGO_HOME="$cargo_home"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$build/rust-target}"
export AGENTVAULT_LIB_DIR="$libdir"
export AV_EXPECT_TLS_BACKEND="$tls"
export AV_TEST_TMPDIR="$test_tmp"
export CARGO_TERM_COLOR=never
export RUST_BACKTRACE=1
echo "cargo: $("$CARGO" --version) / rustc: $("${RUSTC:-rustc}" --version)"
echo "library: $libdir (tls: ${tls:-?}); target: $CARGO_TARGET_DIR"

log="$test_tmp/cargo-test.log"
(cd "$here" && "$CARGO" test --offline --no-fail-fast --manifest-path "$here/Cargo.toml" -- --test-threads="${AV_RUST_TEST_THREADS:-2}") 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}

passed=0
failed=0
while read -r p f; do
  passed=$((passed + p))
  failed=$((failed + f))
done < <(sed -nE 's/^test result: [A-Za-z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p' "$log")
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
  # A build error, a crash or a doctest failure without a counted test.
  echo "cargo test exited $rc"
  failed=1
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$rc" -eq 0 ]
