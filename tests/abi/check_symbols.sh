#!/usr/bin/env bash
# The exported symbols of libagentvault.so, the version map and the public
# header must list the same functions.
set -euo pipefail
lib="$1"; map="$2"; header="$3"
exported=$(nm -D --defined-only "$lib" | awk '$2 == "T" {print $3}' | sed 's/@.*//' | sort -u)
mapped=$(grep -E '^\s+av_[a-z0-9_]+;' "$map" | tr -d ' \t;' | sort -u)
declared=$(grep -oE 'AV_EXPORT[^(]*\(' "$header" | grep -oE 'av_[a-z0-9_]+\($' | tr -d '(' | sort -u)
status=0
if [ "$exported" != "$mapped" ]; then
  echo "exported symbols differ from $map:"; diff <(echo "$exported") <(echo "$mapped") || true; status=1
fi
if [ "$declared" != "$mapped" ]; then
  echo "header declarations differ from $map:"; diff <(echo "$declared") <(echo "$mapped") || true; status=1
fi
bad=$(nm -D --defined-only "$lib" | awk '$2 == "T" || $2 == "D" || $2 == "B" {print $3}' | grep -v '^av_' | grep -v '^AGENTVAULT_' || true)
if [ -n "$bad" ]; then echo "non-av_ symbols exported:"; echo "$bad"; status=1; fi
n=$(echo "$exported" | wc -l)
[ $status -eq 0 ] && echo "ok: $n public symbols, all versioned and declared"
exit $status
