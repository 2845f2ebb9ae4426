#!/usr/bin/env bash
# run_tests.sh BUILD_DIR - build the Node addon against BUILD_DIR's
# libagentvault and run bindings/node/test/*.test.js with `node --test`.
# Ends with exactly one line "N passed, M failed"; exits non-zero on any
# failure or when no test ran. All traffic stays on 127.0.0.1.
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

finish() { # passed failed
  echo "$1 passed, $2 failed"
  [ "$2" -eq 0 ] && [ "$1" -gt 0 ]
  exit $?
}

[ $# -ge 1 ] || { echo "usage: $0 BUILD_DIR" >&2; finish 0 1; }
BUILD="$(cd "$1" 2>/dev/null && pwd)" || { echo "run_tests.sh: no build directory $1" >&2; finish 0 1; }

command -v node >/dev/null || { echo "run_tests.sh: node not found" >&2; finish 0 1; }
command -v openssl >/dev/null || { echo "run_tests.sh: the openssl CLI is needed for the test PKI" >&2; finish 0 1; }
[ -f "$ROOT/tests/node/node_modules/ws/package.json" ] ||
  { echo "run_tests.sh: ws is missing: run scripts/setup-node.sh" >&2; finish 0 1; }

"$HERE/build.sh" "$BUILD" || { echo "run_tests.sh: build failed" >&2; finish 0 1; }

export AGENTVAULT_NODE_ADDON="$BUILD/bindings-node/agentvault.node"
export AGENTVAULT_NODE_PROBE="$BUILD/bindings-node/probe.node"
export AGENTVAULT_BUILD_DIR="$BUILD"
export NODE_PATH="$ROOT/tests/node/node_modules${NODE_PATH:+:$NODE_PATH}"
# Never let a proxy from the environment catch the tests' loopback traffic.
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy NODE_USE_ENV_PROXY

LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
cd "$HERE"
timeout 900 node --test --test-reporter=tap --test-concurrency=1 test/*.test.js 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}

# Node's TAP summary: "# pass N", "# fail N", "# cancelled N".
pass="$(sed -n 's/^# pass \([0-9]\+\)$/\1/p' "$LOG" | tail -n1)"
fail="$(sed -n 's/^# fail \([0-9]\+\)$/\1/p' "$LOG" | tail -n1)"
cancelled="$(sed -n 's/^# cancelled \([0-9]\+\)$/\1/p' "$LOG" | tail -n1)"
pass=${pass:-0}
fail=$(( ${fail:-0} + ${cancelled:-0} ))
if [ "$status" -ne 0 ] && [ "$fail" -eq 0 ]; then
  echo "run_tests.sh: node --test exited with status $status" >&2
  fail=1
fi
finish "$pass" "$fail"
