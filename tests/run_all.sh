#!/usr/bin/env bash
# Run every test layer and print one closing line "N passed, N failed".
#
#   1. BoringSSL build (the default): unit + ABI tests, integration tests,
#      the compat suite (real clients, tests/compat; prints the client x mode
#      matrix), the Python, Node and Rust bindings' tests, the install test
#   2. OpenSSL 3 build: the same
#   3. ASan+UBSan build: the same but the compat suite and the bindings
#      (a sanitizer report fails the run), plus the allocation-failure
#      injection test (tests/fault/fault_test.py)
#      The integration suites run the daemon's default, [proxy] workers =
#      auto (two workers on a 2-CPU machine); the OpenSSL build also runs
#      WORKERS1_SUITES with AVTEST_WORKERS=1 (the single-loop paths)
#   3b. ThreadSanitizer build (daemon and library only): TSAN_SUITES with
#      two workers (a data race fails the daemon's exit status)
#   4. libFuzzer targets (clang), each for FUZZ_SECONDS (default 12)
#   5. bench smoke: bench/run.py --smoke against the BoringSSL build's daemon
#      (every scenario briefly, direct/agentvault/mitmproxy; one test: passed
#      iff it exits 0; no timing thresholds)
#
# First it installs the npm clients (scripts/setup-node.sh): the real Codex
# CLI (pinned 0.131.0 and the newest), ws and https-proxy-agent.
#
# Environment: AV_TEST_ONLY=boringssl|openssl|asan|tsan|fuzz|bench runs one layer;
# FUZZ_SECONDS=N, FUZZ_JOBS=N (fuzzers at once, default 2); BUILD_ROOT=dir (default ./build-tests).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
BUILD_ROOT=${BUILD_ROOT:-$root/build-tests}
FUZZ_SECONDS=${FUZZ_SECONDS:-12}
FUZZ_JOBS=${FUZZ_JOBS:-2}
ONLY=${AV_TEST_ONLY:-}
PY=/usr/bin/python3
mkdir -p "$BUILD_ROOT"

passed=0
failed=0
failures=()

note() { printf '\n=== %s ===\n' "$*"; }

# add PASSED FAILED LABEL
add() {
  passed=$((passed + $1))
  failed=$((failed + $2))
  if [ "$2" -gt 0 ]; then failures+=("$3: $2 failed"); fi
  echo "--- $3: $1 passed, $2 failed"
}

# Count results in a meson testlog.json.
count_meson() {
  "$PY" - "$1" <<'PYEOF'
import json, sys
ok = bad = 0
try:
    for line in open(sys.argv[1]):
        line = line.strip()
        if not line:
            continue
        r = json.loads(line).get("result")
        if r in ("OK", "EXPECTEDFAIL"):
            ok += 1
        elif r != "SKIP":
            bad += 1
except FileNotFoundError:
    bad = 1
print(ok, bad)
PYEOF
}

# Count results in a pytest junit XML file (no file = one failure).
count_junit() {
  "$PY" - "$1" <<'PYEOF'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception:
    print(0, 1); sys.exit()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
t = f = e = s = 0
for su in suites:
    t += int(su.get("tests", 0)); f += int(su.get("failures", 0))
    e += int(su.get("errors", 0)); s += int(su.get("skipped", 0))
bad = f + e
ok = t - bad - s
# Skips are failures here: every integration test must run in CI.
print(ok, bad + s)
PYEOF
}

# The suites run again with one worker (OpenSSL build) and under
# ThreadSanitizer with two: HTTP/1.1, HTTP/2, WebSocket, reload (audit and
# metrics, workers), drain (daemon, workers), tokens.
WORKERS1_SUITES="test_proxy_basics.py test_h2.py test_websocket.py test_daemon.py test_token_scopes.py
  test_audit_metrics.py"
TSAN_SUITES="test_proxy_basics.py test_h2.py test_websocket.py test_daemon.py test_token_scopes.py
  test_audit_metrics.py test_workers.py"

# subset LABEL DIR JUNIT FILES... (environment from the caller): integration
# test files against DIR's daemon.
subset() {
  local label=$1 dir=$2 junit=$3; shift 3
  local files=()
  for f in "$@"; do files+=("tests/integration/$f"); done
  note "integration tests ($label)"
  rm -f "$junit"
  AGENTVAULT_BIN="$dir/daemon/agentvault" timeout 900 "$PY" -m pytest -q -p no:cacheprovider --timeout=180 \
    --junitxml="$junit" "${files[@]}" 2>&1 | tail -40
  read -r ok bad < <(count_junit "$junit")
  add "$ok" "$bad" "$label"
}

# build LABEL DIR [meson setup args...]
build() {
  local label=$1 dir=$2; shift 2
  note "build $label"
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" -Dwerror=true "$@" >"$dir.setup.log" 2>&1 || { cat "$dir.setup.log"; add 0 1 "$label: meson setup"; return 1; }
  fi
  if ! ninja -C "$dir" >"$dir.build.log" 2>&1; then
    tail -50 "$dir.build.log"; add 0 1 "$label: build"; return 1
  fi
  echo "built $dir"
}

# suite LABEL DIR: meson tests + integration tests against DIR's daemon.
suite() {
  local label=$1 dir=$2
  note "unit and ABI tests ($label)"
  meson test -C "$dir" --print-errorlogs --num-processes 2 >"$dir.test.log" 2>&1
  grep -E '^ *[0-9]+/[0-9]+ ' "$dir.test.log" | tail -40
  read -r ok bad < <(count_meson "$dir/meson-logs/testlog.json")
  [ "$bad" -gt 0 ] && grep -A30 -E 'FAIL|ERROR|TIMEOUT' "$dir.test.log" | head -80
  add "$ok" "$bad" "$label unit"

  note "integration tests ($label)"
  local junit="$dir/pytest.xml"
  rm -f "$junit"
  local sanitized=""
  [ "$label" = asan ] && sanitized=1
  AV_TEST_SANITIZED="$sanitized" AGENTVAULT_BIN="$dir/daemon/agentvault" timeout 900 "$PY" -m pytest -q -p no:cacheprovider --timeout=180 \
    --junitxml="$junit" tests/integration 2>&1 | tail -40
  read -r ok bad < <(count_junit "$junit")
  add "$ok" "$bad" "$label integration"

  if [ "$label" = openssl ]; then
    # shellcheck disable=SC2086 # a list of file names
    AVTEST_WORKERS=1 subset "$label integration workers=1" "$dir" "$dir/pytest-workers1.xml" $WORKERS1_SUITES
  fi

  # Real clients (tests/compat) against this build's daemon, on both TLS
  # backends; not under ASan (the clients are other programs; the daemon's
  # code paths are the integration suite's). Prints the client x mode matrix.
  if [ "$label" != asan ]; then
    note "compat suite: real clients ($label)"
    local cjunit="$dir/compat.xml" matrix="$dir/compat-matrix.jsonl"
    rm -f "$cjunit" "$matrix"
    AV_COMPAT_MATRIX="$matrix" AGENTVAULT_BIN="$dir/daemon/agentvault" timeout 1500 "$PY" -m pytest -q \
      -p no:cacheprovider --timeout=300 --junitxml="$cjunit" tests/compat 2>&1 | tail -40
    read -r ok bad < <(count_junit "$cjunit")
    add "$ok" "$bad" "$label compat"
    note "compat matrix ($label)"
    "$PY" tests/compat/print_matrix.py "$matrix" || true
  fi

  # Allocation-failure injection (tests/fault): sanitizer builds only, where
  # the daemon has its fault hook; about 2 minutes.
  if [ "$label" = asan ]; then
    extra "asan fault injection" "$dir" tests/fault/fault_test.py
  fi

  # Bindings and the install test (not under ASan: Python and Node would
  # need the runtime preloaded). Each script takes the build directory and
  # ends with one line "N passed, N failed".
  if [ "$label" != asan ]; then
    for script in bindings/python/run_tests.sh bindings/node/run_tests.sh bindings/rust/run_tests.sh \
                  tests/install/run_tests.sh; do
      extra "$label $(basename "$(dirname "$script")")" "$dir" "$script"
    done
  fi
}

# extra LABEL DIR SCRIPT: run SCRIPT DIR, count its closing line.
extra() {
  local label=$1 dir=$2 script=$3
  local log="$dir.$(echo "$script" | tr '/' '_').log"
  note "$label"
  if [ ! -x "$script" ]; then
    echo "missing $script"; add 0 1 "$label"; return
  fi
  timeout 900 "$script" "$dir" >"$log" 2>&1
  local rc=$?
  tail -30 "$log"
  local line
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1)
  if [ -z "$line" ]; then
    add 0 1 "$label (no result line; exit $rc)"; return
  fi
  local ok bad
  ok=${line%% passed*}
  bad=${line#*, }; bad=${bad%% failed}
  if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then bad=1; fi
  add "$ok" "$bad" "$label"
}

want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

# Node clients for the Codex and ws tests (npm; idempotent and quick when
# already installed). A failure here fails the run: those tests need them.
note "npm test dependencies"
if ! "$root/scripts/setup-node.sh"; then
  add 0 1 "setup-node.sh"
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:exitcode=86:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1:exitcode=87}

if want boringssl; then
  build boringssl "$BUILD_ROOT/boringssl" -Dtls=boringssl && suite boringssl "$BUILD_ROOT/boringssl"
fi
if want openssl; then
  build openssl "$BUILD_ROOT/openssl" -Dtls=openssl && suite openssl "$BUILD_ROOT/openssl"
fi
if want asan; then
  build asan "$BUILD_ROOT/asan" -Dtls=boringssl -Db_sanitize=address,undefined -Db_lundef=false \
    -Dbuildtype=debug && suite asan "$BUILD_ROOT/asan"
fi
if want tsan; then
  # The daemon and the library only (-Dtests=false -Dexamples=false): the
  # unit tests are single-threaded; the integration suites drive two
  # workers. Suppressions: tests/tsan.supp (uninstrumented system
  # libraries only, each with its reason).
  if build tsan "$BUILD_ROOT/tsan" -Dtls=boringssl -Db_sanitize=thread -Db_lundef=false -Dbuildtype=debug \
      -Dtests=false -Dexamples=false; then
    # shellcheck disable=SC2086 # a list of file names
    TSAN_OPTIONS="exitcode=88:halt_on_error=0:second_deadlock_stack=1:suppressions=$root/tests/tsan.supp" \
      AV_TEST_SANITIZED=1 AVTEST_WORKERS=2 subset "tsan integration" "$BUILD_ROOT/tsan" "$BUILD_ROOT/tsan/pytest.xml" \
      $TSAN_SUITES
  fi
fi
if want fuzz; then
  if CC=clang build fuzz "$BUILD_ROOT/fuzz" -Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false; then
    note "fuzz smoke (${FUZZ_SECONDS}s each, $FUZZ_JOBS at a time)"
    # Each target is one process on one core: run FUZZ_JOBS of them at once,
    # then count them in order.
    fuzzers=()
    for f in "$BUILD_ROOT"/fuzz/tests/fuzz/fuzz_*; do
      [ -f "$f" ] && [ -x "$f" ] || continue
      name=$(basename "$f")
      work="$BUILD_ROOT/fuzz/corpus-$name"
      mkdir -p "$work"
      [ -d "tests/fuzz/corpus/$name" ] && cp -r "tests/fuzz/corpus/$name/." "$work/"
      rm -f "$work.rc"
      while [ "$(jobs -rp | wc -l)" -ge "$FUZZ_JOBS" ]; do wait -n || true; done
      ( "$f" -max_total_time="$FUZZ_SECONDS" -print_final_stats=0 "$work" >"$work.log" 2>&1; echo $? >"$work.rc" ) &
      fuzzers+=("$name")
    done
    wait
    for name in "${fuzzers[@]}"; do
      work="$BUILD_ROOT/fuzz/corpus-$name"
      if [ "$(cat "$work.rc" 2>/dev/null)" = 0 ]; then
        add 1 0 "fuzz $name"
      else
        tail -40 "$work.log"; add 0 1 "fuzz $name"
      fi
    done
  fi
fi

if want bench; then
  avbin="$BUILD_ROOT/boringssl/daemon/agentvault"
  # Alone (AV_TEST_ONLY=bench), build the daemon first; in a full run a
  # failed build has been counted already.
  [ "$ONLY" = bench ] && [ ! -x "$avbin" ] && build boringssl "$BUILD_ROOT/boringssl" -Dtls=boringssl
  note "bench smoke"
  blog="$BUILD_ROOT/bench-smoke.log"
  if [ ! -x "$avbin" ]; then
    echo "no daemon at $avbin"; add 0 1 "bench smoke"
  elif timeout 600 "$PY" bench/run.py --smoke --agentvault "$avbin" \
      --json "$BUILD_ROOT/bench-smoke.json" >"$blog" 2>&1; then
    tail -60 "$blog"; add 1 0 "bench smoke"
  else
    tail -80 "$blog"; add 0 1 "bench smoke"
  fi
fi

note "summary"
for f in "${failures[@]:-}"; do [ -n "$f" ] && echo "FAILED: $f"; done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
