#!/usr/bin/env bash
# Install the Node clients the integration and compat suites run
# (tests/integration/test_codex.py, test_node_ws.py, tests/compat/test_node_*.py):
#   tests/node/node_modules              `npm ci` from tests/node/package-lock.json
#                                        (@openai/codex 0.131.0, ws, https-proxy-agent)
#   tests/node/codex-latest/node_modules the newest @openai/codex from the registry
#   tests/compat/node/node_modules       `npm ci` from tests/compat/node/package-lock.json
#                                        (undici, axios, ws, openai, @anthropic-ai/sdk,
#                                        Claude Code, Gemini CLI; pinned for Node 20)
#   tests/deploy/node_modules            `npm ci` from tests/deploy/package-lock.json
#                                        (kubernetes-models 4.5.1, js-yaml: manifest checks)
# Idempotent: when the lockfiles are unchanged and the newest Codex is already
# installed, it only asks the registry for the newest version (~1 s).
# Fails (non-zero exit) if node/npm are missing or any npm command fails.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NODE_DIR="$ROOT/tests/node"
LATEST_DIR="$NODE_DIR/codex-latest"
STAMP="$NODE_DIR/node_modules/.agentvault-lock.sha256"

die() { echo "setup-node.sh: $*" >&2; exit 1; }
log() { echo "setup-node.sh: $*"; }

command -v node >/dev/null || die "node not found (install the Debian nodejs package)"
command -v npm >/dev/null || die "npm not found (install the Debian npm package)"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 18 ] || die "node $(node --version) is too old (need >= 18)"

NPM_FLAGS=(--no-audit --no-fund --loglevel=error)

# Runs a codex binary's --version; prints the version or fails.
codex_version() {
  local bin="$1" out
  [ -x "$bin" ] || return 1
  out="$("$bin" --version 2>/dev/null)" || return 1
  # "codex-cli 0.131.0"
  echo "${out##* }"
}

# 1. The pinned project (npm ci only when the lockfile changed or the tree is broken).
[ -f "$NODE_DIR/package-lock.json" ] || die "missing $NODE_DIR/package-lock.json"
want_sum="$(sha256sum "$NODE_DIR/package-lock.json" "$NODE_DIR/package.json" | sha256sum | cut -d' ' -f1)"
have_sum="$(cat "$STAMP" 2>/dev/null || true)"
pinned="$(node -e 'console.log(require(process.argv[1]).dependencies["@openai/codex"])' \
  "$NODE_DIR/package.json")"
if [ "$want_sum" = "$have_sum" ] &&
   [ "$(codex_version "$NODE_DIR/node_modules/.bin/codex" || true)" = "$pinned" ] &&
   [ -f "$NODE_DIR/node_modules/ws/package.json" ] &&
   [ -f "$NODE_DIR/node_modules/https-proxy-agent/package.json" ]; then
  log "tests/node up to date (codex $pinned)"
else
  log "npm ci in tests/node"
  (cd "$NODE_DIR" && npm ci "${NPM_FLAGS[@]}") || die "npm ci failed in $NODE_DIR"
  got="$(codex_version "$NODE_DIR/node_modules/.bin/codex")" ||
    die "tests/node/node_modules/.bin/codex does not run after npm ci"
  [ "$got" = "$pinned" ] || die "installed codex is $got, package.json pins $pinned"
  echo "$want_sum" > "$STAMP"
  log "installed codex $got in tests/node"
fi

# 2. The newest Codex.
latest="$(npm view @openai/codex@latest version --loglevel=error | tail -n1)" ||
  die "npm view @openai/codex@latest failed (is the npm registry reachable?)"
[ -n "$latest" ] || die "npm view @openai/codex@latest printed nothing"
have_latest="$(codex_version "$LATEST_DIR/node_modules/.bin/codex" || true)"
if [ "$have_latest" = "$latest" ]; then
  log "codex-latest up to date (codex $latest)"
else
  log "installing @openai/codex@$latest into tests/node/codex-latest (had: ${have_latest:-none})"
  mkdir -p "$LATEST_DIR"
  npm install --prefix "$LATEST_DIR" "${NPM_FLAGS[@]}" \
    "@openai/codex@$latest" || die "npm install @openai/codex@$latest failed"
  got="$(codex_version "$LATEST_DIR/node_modules/.bin/codex")" ||
    die "tests/node/codex-latest/node_modules/.bin/codex does not run after install"
  [ "$got" = "$latest" ] || die "codex-latest is $got, expected $latest"
  log "installed codex $got in tests/node/codex-latest"
fi

# 3. The compat suite's Node clients (npm ci only when the lockfile changed or
#    a pinned package is missing or at another version).
COMPAT_DIR="$ROOT/tests/compat/node"
COMPAT_STAMP="$COMPAT_DIR/node_modules/.agentvault-lock.sha256"
[ -f "$COMPAT_DIR/package-lock.json" ] || die "missing $COMPAT_DIR/package-lock.json"
# Prints the pinned packages that are not installed at their pinned version.
compat_missing() {
  node -e '
    const fs = require("fs"), path = require("path"), dir = process.argv[1];
    const deps = require(path.join(dir, "package.json")).dependencies;
    for (const [name, want] of Object.entries(deps)) {
      let got = null;
      try {
        got = JSON.parse(fs.readFileSync(path.join(dir, "node_modules", name, "package.json"))).version;
      } catch (e) {}
      if (got !== want) console.log(`${name}@${want} (have ${got || "none"})`);
    }' "$COMPAT_DIR"
}
want_sum="$(sha256sum "$COMPAT_DIR/package-lock.json" "$COMPAT_DIR/package.json" | sha256sum | cut -d' ' -f1)"
have_sum="$(cat "$COMPAT_STAMP" 2>/dev/null || true)"
if [ "$want_sum" = "$have_sum" ] && [ -z "$(compat_missing)" ] &&
   [ -x "$COMPAT_DIR/node_modules/.bin/claude" ] && [ -x "$COMPAT_DIR/node_modules/.bin/gemini" ]; then
  log "tests/compat/node up to date"
else
  log "npm ci in tests/compat/node"
  (cd "$COMPAT_DIR" && npm ci "${NPM_FLAGS[@]}") || die "npm ci failed in $COMPAT_DIR"
  missing="$(compat_missing)"
  [ -z "$missing" ] || die "after npm ci in $COMPAT_DIR, not installed as pinned: $missing"
  "$COMPAT_DIR/node_modules/.bin/claude" --version >/dev/null 2>&1 ||
    die "tests/compat/node/node_modules/.bin/claude does not run after npm ci"
  "$COMPAT_DIR/node_modules/.bin/gemini" --version >/dev/null 2>&1 ||
    die "tests/compat/node/node_modules/.bin/gemini does not run after npm ci"
  echo "$want_sum" > "$COMPAT_STAMP"
  log "installed the compat Node clients in tests/compat/node"
fi

# 4. The offline Kubernetes manifest validator (tests/deploy: kubernetes-models
#    4.5.1, the newest that supports Node 20, and js-yaml; used by
#    tests/integration/test_deploy_files.py).
DEPLOY_DIR="$ROOT/tests/deploy"
DEPLOY_STAMP="$DEPLOY_DIR/node_modules/.agentvault-lock.sha256"
[ -f "$DEPLOY_DIR/package-lock.json" ] || die "missing $DEPLOY_DIR/package-lock.json"
want_sum="$(sha256sum "$DEPLOY_DIR/package-lock.json" "$DEPLOY_DIR/package.json" | sha256sum | cut -d' ' -f1)"
have_sum="$(cat "$DEPLOY_STAMP" 2>/dev/null || true)"
if [ "$want_sum" = "$have_sum" ] && [ -f "$DEPLOY_DIR/node_modules/kubernetes-models/package.json" ] &&
   [ -f "$DEPLOY_DIR/node_modules/js-yaml/package.json" ]; then
  log "tests/deploy up to date"
else
  log "npm ci in tests/deploy"
  (cd "$DEPLOY_DIR" && npm ci "${NPM_FLAGS[@]}") || die "npm ci failed in $DEPLOY_DIR"
  echo "$want_sum" > "$DEPLOY_STAMP"
  log "installed the manifest validator in tests/deploy"
fi
