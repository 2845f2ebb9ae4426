#!/usr/bin/env bash
# The library's layers: every #include "av_*.h" in libagentvault/*.c and
# *.h must point down the rank table below (or sideways, to the same rank),
# never up. Dependencies flow ctx -> conn -> agent -> exchange -> link ->
# {mux, upstream} -> {pool, side}; upward calls are function pointers (see
# docs/ARCHITECTURE.md). A file missing from the table fails too: give a
# new file its rank here.
#
# usage: check_layers.sh LIBDIR
set -euo pipefail
dir="$1"

# rank MODULE: prints the rank of a file's module (its name without .c/.h).
rank() {
  case "$1" in
    # foundations, and leaves usable from anywhere
    av_mem|av_err|av_log|av_buf|av_secret|av_enc|av_crypto|av_url|av_ev|av_limits) echo 10 ;;
    # TLS boundary and protocol cores
    av_ca|av_ca_internal|av_tls|av_h1|av_h2|av_ws|av_ws_scrub|av_scrub|av_socks|av_sni|av_sigv4|av_oauth|av_jwt) echo 20 ;;
    # configuration, policy, credentials, name resolution
    av_config|av_config_ini|av_config_int|av_policy|av_resolver|av_tokens|av_vault|av_ssrf|av_dns|av_parent) echo 30 ;;
    # running programs (command: secrets, decision programs); held requests and their answers
    av_cmd|av_decide) echo 30 ;;
    # leaves of the connection layer: snapshots, counters, the audit log
    av_snap|av_metrics|av_audit) echo 40 ;;
    # the two narrow contexts, and the transport
    av_pool|av_env|av_side) echo 50 ;;
    # upstream connections
    av_upstream) echo 60 ;;
    # minted credentials: token requests through av_upstream
    av_mint) echo 65 ;;
    av_mux) echo 70 ;;
    # the interfaces between the exchange and its two sides; the stored request
    av_agent|av_link) echo 80 ;;
    # the exchange family (av_req: the stored request lives in the exchange)
    av_exchange|av_exchange_*|av_inject|av_req) echo 85 ;;
    # the link implementations (they include av_exchange.h)
    av_link_*) echo 90 ;;
    # the agent side and the connection family around it
    av_conn_int|av_agent_*|av_proxy_req|av_proxy_socks|av_admin) echo 95 ;;
    av_conn) echo 100 ;;
    # the running context
    av_ctx|av_ctx_internal|av_embed|av_listen) echo 110 ;;
    *) echo "" ;;
  esac
}

# Known upward edges, each to be removed by the change that fixes it.
allowed="
"

status=0
nfiles=0
nedges=0
seen=""
for f in "$dir"/av_*.c "$dir"/av_*.h; do
  [ -e "$f" ] || continue
  base=$(basename "$f")
  mod=${base%.*}
  r=$(rank "$mod")
  if [ -z "$r" ]; then
    echo "unranked file: $base (add it to the rank table in $0)"
    status=1
    continue
  fi
  nfiles=$((nfiles + 1))
  while IFS= read -r inc; do
    [ -n "$inc" ] || continue
    imod=${inc%.h}
    ir=$(rank "$imod")
    nedges=$((nedges + 1))
    if [ -z "$ir" ]; then
      echo "$base -> $inc: unranked header (add it to the rank table in $0)"
      status=1
    elif [ "$ir" -gt "$r" ]; then
      if printf '%s\n' "$allowed" | grep -qxF "$base -> $inc"; then
        echo "allowed for now: $base -> $inc (rank $r includes rank $ir)"
        seen="$seen
$base -> $inc"
      else
        echo "upward include: $base -> $inc (rank $r includes rank $ir)"
        status=1
      fi
    fi
  done < <(sed -nE 's/^[[:space:]]*#[[:space:]]*include[[:space:]]+"(av_[A-Za-z0-9_]+\.h)".*/\1/p' "$f")
done
while IFS= read -r a; do
  [ -n "$a" ] || continue
  if ! printf '%s\n' "$seen" | grep -qxF "$a"; then
    echo "allow-list entry no longer needed: $a (remove it from $0)"
    status=1
  fi
done <<< "$allowed"
[ $status -eq 0 ] && echo "ok: $nfiles files, $nedges includes, none upward"
exit $status
