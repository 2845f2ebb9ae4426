#!/usr/bin/env bash
# shellcheck disable=SC2317  # the t_* functions are called through check()
# tests/install/run_tests.sh BUILD_DIR
#
# Installs BUILD_DIR (already built) into a temporary DESTDIR with
# `meson install --no-rebuild --destdir`, then checks what a user of the
# installed files gets: the library and its symlinks, the header, the
# pkg-config file, an external program built with
# `cc $(pkg-config --cflags --libs agentvault)` (tests/install/consumer.c),
# the daemon, and the man page. No root needed; nothing leaves 127.0.0.1.
#
# Each check is one test. The last line is "N passed, M failed"; the exit
# status is non-zero when any check failed.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
if [ $# -ne 1 ] || [ ! -d "$1" ]; then
  echo "usage: $0 BUILD_DIR" >&2
  echo "0 passed, 1 failed"
  exit 2
fi
build=$(cd "$1" && pwd)
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
CC=${CC:-cc}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/av-install-test.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
dest="$tmp/dest"

passed=0
failed=0
# check NAME COMMAND...: one test; prints its output when it fails.
check() {
  local name=$1
  shift
  local out
  if out=$("$@" 2>&1); then
    passed=$((passed + 1))
    echo "PASS: $name"
    [ -n "${AV_VERBOSE:-}" ] && [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/    /'
  else
    failed=$((failed + 1))
    echo "FAIL: $name"
    printf '%s\n' "$out" | tail -40 | sed 's/^/    /'
  fi
  return 0
}
finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit $?
}

# ---- where things go: the build's own options --------------------------------
opts=$(meson introspect --buildoptions "$build" 2>/dev/null |
  "$PY" -c '
import json, sys
o = {x["name"]: x["value"] for x in json.load(sys.stdin)}
for k in ("prefix", "libdir", "includedir", "bindir", "mandir", "tls"):
    print(k + "=" + str(o.get(k, "")))
' 2>/dev/null) || opts=""
get() { printf '%s\n' "$opts" | sed -n "s/^$1=//p"; }
prefix=$(get prefix)
if [ -z "$prefix" ]; then
  echo "FAIL: meson introspect $build"
  failed=$((failed + 1))
  finish
fi
abs() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$prefix" "$1" ;; esac; }
libdir=$(abs "$(get libdir)")
includedir=$(abs "$(get includedir)")
bindir=$(abs "$(get bindir)")
mandir=$(abs "$(get mandir)")
tls=$(get tls)
version=$(meson introspect --projectinfo "$build" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["version"])')
D_lib="$dest$libdir"
D_inc="$dest$includedir"
D_bin="$dest$bindir"
D_man="$dest$mandir"
echo "build $build: prefix=$prefix libdir=$libdir tls=$tls version=$version"

# ---- 1. install ----------------------------------------------------------------
t_install() {
  meson install -C "$build" --no-rebuild --destdir "$dest" --quiet ||
    meson install -C "$build" --no-rebuild --destdir "$dest"
}
check "meson install --destdir" t_install

# ---- 2. the library ------------------------------------------------------------
t_library() {
  local real
  real=$(readlink -f "$D_lib/libagentvault.so") || return 1
  [ -f "$real" ] || { echo "no $D_lib/libagentvault.so"; return 1; }
  [ -L "$D_lib/libagentvault.so" ] || { echo "libagentvault.so is not a symlink"; return 1; }
  [ -e "$D_lib/libagentvault.so.0" ] || { echo "no libagentvault.so.0"; return 1; }
  # (outputs are captured first: "cmd | grep -q" fails under pipefail when
  # grep exits before cmd has written everything, which a longer symbol
  # list made happen)
  local dyn syms
  dyn=$(readelf -d "$real") || return 1
  grep -q 'SONAME.*\[libagentvault\.so\.0\]' <<<"$dyn" || { echo "bad SONAME"; echo "$dyn"; return 1; }
  # Only the versioned public API is exported.
  syms=$(nm -D --defined-only "$real") || return 1
  grep -q ' av_gateway_open@@AGENTVAULT_0.1$' <<<"$syms" || { echo "av_gateway_open not exported"; return 1; }
  if awk '$2 ~ /^[TDB]$/ {print $3}' <<<"$syms" | grep -v '^av_[a-z0-9_]*@@AGENTVAULT_0\.1$' | grep -v '^AGENTVAULT_0\.1$' | grep .; then
    echo "unexpected exported symbols (above)"; return 1
  fi
}
check "library installed in $libdir (soname, symlinks, exports)" t_library

# The TLS library must resolve through the installed RUNPATH (BoringSSL
# lives outside the linker's default directories).
t_library_deps() {
  local real out
  real=$(readlink -f "$D_lib/libagentvault.so")
  if [ "$tls" = boringssl ]; then
    readelf -d "$real" | grep -E 'R(UN)?PATH' | grep -q android ||
      { echo "no BoringSSL RUNPATH:"; readelf -d "$real" | grep -E 'R(UN)?PATH'; return 1; }
  fi
  out=$(env -u LD_LIBRARY_PATH ldd "$real") || { echo "$out"; return 1; }
  if printf '%s\n' "$out" | grep -q 'not found'; then echo "$out"; return 1; fi
  if [ "$tls" = boringssl ]; then
    printf '%s\n' "$out" | grep -E 'libssl\.so\.0 => .*/android/' || { echo "$out"; return 1; }
  fi
}
check "library dependencies resolve (RUNPATH)" t_library_deps

# ---- 3. the header ---------------------------------------------------------------
t_header() {
  [ -f "$D_inc/agentvault/agentvault.h" ] || { echo "no $D_inc/agentvault/agentvault.h"; ls -R "$dest"; return 1; }
  cmp "$D_inc/agentvault/agentvault.h" "$src/include/agentvault/agentvault.h"
}
check "header installed as include/agentvault/agentvault.h" t_header

# ---- 4. pkg-config ----------------------------------------------------------------
pc_dir="$D_lib/pkgconfig"
pkgconf() {
  PKG_CONFIG_LIBDIR="$pc_dir" PKG_CONFIG_PATH="" PKG_CONFIG_SYSROOT_DIR="$dest" pkg-config "$@"
}
t_pkgconfig() {
  [ -f "$pc_dir/agentvault.pc" ] || { echo "no $pc_dir/agentvault.pc"; return 1; }
  local v cflags libs
  v=$(pkgconf --modversion agentvault) || return 1
  [ "$v" = "$version" ] || { echo "modversion $v, expected $version"; return 1; }
  cflags=$(pkgconf --cflags agentvault) || return 1
  libs=$(pkgconf --libs agentvault) || return 1
  echo "cflags: $cflags"
  echo "libs:   $libs"
  # -I must name the directory that holds agentvault/agentvault.h (or be
  # omitted when that is a default include directory).
  case " $cflags " in
    *" -I$D_inc "*) ;;
    *) [ "$includedir" = /usr/include ] || { echo "cflags lack -I$D_inc"; return 1; } ;;
  esac
  case " $libs " in
    *" -L$D_lib "*) ;;
    *) echo "libs lack -L$D_lib"; return 1 ;;
  esac
  case " $libs " in *" -lagentvault "*) ;; *) echo "libs lack -lagentvault"; return 1 ;; esac
  # The same with the prefix rewritten instead of a sysroot.
  local libs2
  libs2=$(PKG_CONFIG_LIBDIR="$pc_dir" PKG_CONFIG_PATH="" \
    pkg-config --define-variable=prefix="$dest$prefix" --libs agentvault) || return 1
  case "$(get libdir)" in
    /*) ;; # an absolute libdir is not under ${prefix} in the .pc
    *) case " $libs2 " in *" -L$D_lib "*) ;; *) echo "--define-variable=prefix: $libs2"; return 1 ;; esac ;;
  esac
}
check "agentvault.pc (version, -I, -L, -l)" t_pkgconfig

# ---- 5. an external program --------------------------------------------------
consumer="$tmp/consumer"
t_build_consumer() {
  # shellcheck disable=SC2046
  $CC -std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -pedantic -o "$consumer" "$here/consumer.c" \
    $(pkgconf --cflags --libs agentvault)
}
check "build consumer.c with cc \$(pkg-config --cflags --libs agentvault)" t_build_consumer

t_run_consumer() {
  [ -x "$consumer" ] || { echo "consumer was not built"; return 1; }
  mkdir -p "$tmp/state"
  # The consumer must load the installed copy, not one from the build tree.
  local out
  out=$(LD_LIBRARY_PATH="$D_lib" ldd "$consumer") || { echo "$out"; return 1; }
  printf '%s\n' "$out" | grep -F "libagentvault.so.0 => $D_lib/libagentvault.so.0" ||
    { echo "$out"; return 1; }
  LD_LIBRARY_PATH="$D_lib" timeout 60 "$consumer" "$tmp/state" || return 1
  [ -f "$tmp/state/ca.key" ] || { echo "no CA key in the state dir"; return 1; }
}
check "consumer runs against the installed library (gateway, stop)" t_run_consumer

t_consumer_tls() {
  [ -x "$consumer" ] || return 1
  local out
  out=$(LD_LIBRARY_PATH="$D_lib" timeout 60 "$consumer" "$tmp/state2" 2>&1) || { echo "$out"; return 1; }
  printf '%s\n' "$out" | grep -q "TLS $tls (" || { echo "$out"; echo "expected backend $tls"; return 1; }
  if [ "$tls" = boringssl ]; then
    printf '%s\n' "$out" | grep -q 'TLS boringssl (/usr/lib/.*/android/libssl\.so' || { echo "$out"; return 1; }
  fi
}
check "av_tls_library names the $tls library" t_consumer_tls

# ---- 6. the daemon -----------------------------------------------------------
daemon="$D_bin/agentvault"
t_daemon_version() {
  [ -x "$daemon" ] || { echo "no $daemon"; return 1; }
  local out
  out=$(LD_LIBRARY_PATH="$D_lib" "$daemon" --version) || { echo "$out"; return 1; }
  echo "$out"
  [ "$out" = "agentvault $version (libagentvault $version)" ]
}
check "installed daemon: agentvault --version" t_daemon_version

t_daemon_check() {
  cat >"$tmp/agentvault.conf" <<EOF
[proxy]
listen = 127.0.0.1:0
state_dir = $tmp/daemon-state

[service "example"]
host = api.example.test
auth = bearer
secret = env:AV_INSTALL_TEST_KEY

[gateway "example"]
listen = 127.0.0.1:0
upstream = https://api.example.test
EOF
  local out
  out=$(LD_LIBRARY_PATH="$D_lib" "$daemon" check -c "$tmp/agentvault.conf") || { echo "$out"; return 1; }
  echo "$out"
  [ "$out" = "$tmp/agentvault.conf: OK (1 service(s))" ] || return 1
  # A usage error exits 2, a configuration error 1 (as the man page says).
  LD_LIBRARY_PATH="$D_lib" "$daemon" serve --no-such-option >/dev/null 2>&1
  [ $? -eq 2 ] || { echo "usage error did not exit 2"; return 1; }
  printf '[proxy]\ncolour = blue\n' >"$tmp/bad.conf"
  LD_LIBRARY_PATH="$D_lib" "$daemon" check -c "$tmp/bad.conf" >/dev/null 2>&1
  [ $? -eq 1 ] || { echo "config error did not exit 1"; return 1; }
}
check "installed daemon: agentvault check -c, exit codes" t_daemon_check

t_daemon_rpath() {
  # The daemon finds its library through its RUNPATH once installed for real:
  # the install libdir is on it unless the prefix is /usr.
  local rp
  rp=$(readelf -d "$daemon" | grep -E 'R(UN)?PATH') || rp=""
  echo "${rp:-no RUNPATH}"
  if [ "$prefix" != /usr ]; then
    printf '%s\n' "$rp" | grep -qF "$libdir" || return 1
  fi
  # And with the library at its installed path it runs (LD_LIBRARY_PATH
  # stands in for that location here).
  LD_LIBRARY_PATH="$D_lib" ldd "$daemon" | grep -v 'not found' >/dev/null &&
    ! LD_LIBRARY_PATH="$D_lib" ldd "$daemon" | grep 'not found'
}
check "installed daemon: RUNPATH and dependencies" t_daemon_rpath

# ---- 7. the man page ----------------------------------------------------------
page="$D_man/man1/agentvault.1"
t_man_installed() {
  [ -f "$page" ] || [ -f "$page.gz" ] || { echo "no $page"; find "$dest" -path '*man*'; return 1; }
  [ -f "$page" ] && cmp "$page" "$src/docs/agentvault.1"
  return 0
}
check "man page installed in $mandir/man1" t_man_installed

t_man_renders() {
  local f="$page" warn out
  [ -f "$f" ] || f="$page.gz"
  [ -f "$f" ] || return 1
  if [[ "$f" == *.gz ]]; then zcat "$f" >"$tmp/agentvault.1"; f="$tmp/agentvault.1"; fi
  warn=$(groff -man -Tutf8 -ww -z "$f" 2>&1)
  [ -z "$warn" ] || { echo "groff warnings:"; echo "$warn"; return 1; }
  out=$(MANWIDTH=80 man -l "$f" 2>&1) || { echo "$out"; return 1; }
  for section in NAME SYNOPSIS DESCRIPTION OPTIONS CONFIGURATION FILES ENVIRONMENT "EXIT STATUS" EXAMPLES; do
    printf '%s\n' "$out" | grep -q "^$section" || { echo "man -l: no $section section"; return 1; }
  done
  # Every subcommand of the daemon's usage text is documented.
  for cmd in "agentvault serve" "agentvault check" "agentvault ca pem" "agentvault run" "agentvault secret" \
    "agentvault token create" "--version" "[gateway"; do
    printf '%s\n' "$out" | grep -qF -- "$cmd" || { echo "man page does not mention '$cmd'"; return 1; }
  done
  # And every option the daemon's usage text lists.
  local opt
  for opt in $(LD_LIBRARY_PATH="$D_lib" "$daemon" --help | grep -oE -- '--[a-z-]+' | sort -u); do
    printf '%s\n' "$out" | grep -qF -- "$opt" || { echo "man page does not mention $opt"; return 1; }
  done
}
check "man page renders without warnings (groff -ww, man -l) and covers the CLI" t_man_renders

finish
