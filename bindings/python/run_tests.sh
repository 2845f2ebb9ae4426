#!/bin/sh
# Runs the Python binding's tests against one build directory.
#
#   bindings/python/run_tests.sh BUILD_DIR [pytest args...]
#
# Uses BUILD_DIR/libagentvault/libagentvault.so.0 (AGENTVAULT_LIB), Debian's
# /usr/bin/python3 (python3-pytest, python3-httpx, python3-websockets,
# python3-cryptography), writes BUILD_DIR/python-binding-junit.xml (or
# $JUNIT_XML), and ends with exactly one line "N passed, M failed" (skipped
# and errored tests count as failed). Exits non-zero on any failure, or when
# pytest could not run.
set -u

here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-/usr/bin/python3}

if [ $# -lt 1 ]; then
    echo "usage: $0 BUILD_DIR [pytest args...]" >&2
    echo "0 passed, 1 failed"
    exit 2
fi
build=$(cd "$1" 2>/dev/null && pwd) || {
    echo "run_tests.sh: no build directory $1" >&2
    echo "0 passed, 1 failed"
    exit 2
}
shift

lib="$build/libagentvault/libagentvault.so.0"
if [ ! -e "$lib" ]; then
    echo "run_tests.sh: $lib not found (build it with ninja -C $build)" >&2
    echo "0 passed, 1 failed"
    exit 2
fi

junit=${JUNIT_XML:-$build/python-binding-junit.xml}
rm -f "$junit"

timeout_opt=""
if "$py" -c 'import pytest_timeout' 2>/dev/null; then
    timeout_opt="--timeout=120"
fi

# Nothing reaches the outside world: no proxy variables for the clients.
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy NO_PROXY no_proxy

AGENTVAULT_LIB="$lib" PYTHONDONTWRITEBYTECODE=1 \
    "$py" -m pytest -p no:cacheprovider -q -rfEs $timeout_opt \
    --rootdir="$here" -c /dev/null --junitxml="$junit" "$here/tests" "$@"
rc=$?

# Count from the junit file (the one source of truth for the summary).
summary=$("$py" - "$junit" <<'EOF'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception:
    print("0 1")
    sys.exit(0)
passed = failed = 0
for case in root.iter("testcase"):
    if any(child.tag in ("failure", "error", "skipped") for child in case):
        failed += 1
    else:
        passed += 1
print(passed, failed)
EOF
)
passed=${summary% *}
failed=${summary#* }
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
    failed=1    # pytest failed without a failing test case (collection, usage, crash)
fi
if [ "$passed" -eq 0 ] && [ "$failed" -eq 0 ]; then
    failed=1    # nothing ran
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$rc" -eq 0 ]
