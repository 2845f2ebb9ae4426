#!/usr/bin/env bash
# build.sh BUILD_DIR - compile the Node addon against the libagentvault of a
# meson build directory (no node-gyp: it would download headers).
#
#   BUILD_DIR/bindings-node/agentvault.node   the addon (used by run_tests.sh)
#   BUILD_DIR/bindings-node/probe.node        a test-only addon that links
#                                             libagentvault the ordinary way
#   bindings/node/build/{agentvault,probe}.node  copies; index.js loads build/agentvault.node by default
#
# The addon does not link libagentvault: it dlopen()s it with RTLD_DEEPBIND
# from the absolute path compiled in (override: $AGENTVAULT_LIBRARY).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
[ $# -ge 1 ] || { echo "usage: $0 BUILD_DIR" >&2; exit 2; }
BUILD="$(cd "$1" && pwd)" || { echo "build.sh: no build directory $1" >&2; exit 2; }
LIBDIR="$BUILD/libagentvault"
LIB="$LIBDIR/libagentvault.so.0"
[ -e "$LIB" ] || { echo "build.sh: $LIB not found (run ninja -C $BUILD first)" >&2; exit 1; }
NODE_INC="${NODE_INCLUDE:-/usr/include/node}"
[ -f "$NODE_INC/node_api.h" ] || { echo "build.sh: $NODE_INC/node_api.h not found (install nodejs headers)" >&2; exit 1; }
CC="${CC:-cc}"
OUT="$BUILD/bindings-node"
mkdir -p "$OUT"

CFLAGS=(-std=c11 -D_GNU_SOURCE -O2 -g -fPIC -Wall -Wextra -Wno-unused-parameter -Werror=implicit-function-declaration
        -fvisibility=hidden -I"$NODE_INC" -I"$ROOT/include")

# N-API symbols (napi_*) are left undefined: node provides them.
"$CC" "${CFLAGS[@]}" -shared "-DAV_NODE_LIBRARY=\"$LIB\"" "$HERE/src/addon.c" \
  -o "$OUT/agentvault.node.tmp" -ldl -lpthread -Wl,-z,now
mv -f "$OUT/agentvault.node.tmp" "$OUT/agentvault.node"

"$CC" "${CFLAGS[@]}" -shared "$HERE/testlib/probe.c" -o "$OUT/probe.node.tmp" \
  -L"$LIBDIR" -lagentvault -Wl,-rpath,"$LIBDIR"
mv -f "$OUT/probe.node.tmp" "$OUT/probe.node"

mkdir -p "$HERE/build"
for f in agentvault.node probe.node; do
  cp -f "$OUT/$f" "$HERE/build/$f.tmp.$$"
  mv -f "$HERE/build/$f.tmp.$$" "$HERE/build/$f"
done
echo "build.sh: $OUT/agentvault.node (libagentvault: $LIB)"
