#!/usr/bin/env bash
# The public header compiles as C99 pedantic and as C++ on its own.
set -euo pipefail
inc="$1"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
printf '#include <agentvault/agentvault.h>\nint main(void) { return av_strerror(AV_OK) == 0; }\n' > "$tmp/t.c"
cc -std=c99 -pedantic -Wall -Wextra -Werror -I"$inc" -c "$tmp/t.c" -o "$tmp/t.o"
if command -v c++ >/dev/null; then
  cp "$tmp/t.c" "$tmp/t.cc"
  c++ -std=c++11 -pedantic -Wall -Wextra -Werror -I"$inc" -c "$tmp/t.cc" -o "$tmp/t2.o"
fi
echo "ok: header compiles as C99 and C++"
