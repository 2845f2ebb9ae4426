#!/usr/bin/env bash
# Configure (first time only) and build into ./build. Extra arguments go to
# `meson setup` on the first run, e.g. ./scripts/build.sh -Dtls=openssl
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f build/build.ninja ] || meson setup build "$@"
ninja -C build
