"""Node clients through agentvault: undici fetch, axios, ws, the openai and
@anthropic-ai/sdk npm SDKs, and npm install from a local registry.

Proxy mode runs `agentvault run -- node clients.mjs KIND URL` (the client
finds the proxy and the CA in the variables run sets); gateway mode points
the client's URL / base URL at a [gateway] (plain http://, no proxy, no CA).
Every origin answers only when the real key arrived in the expected header
and no dummy did (compat.KeyCheck); the clients send a dummy credential.
The packages are pinned in tests/compat/node/package.json and installed by
scripts/setup-node.sh; a missing install fails the test.
"""
import json
import secrets as _secrets
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import compat

NODE_DIR = Path(__file__).resolve().parent / "node"
sys.path.insert(0, str(NODE_DIR))
import fake_apis  # noqa: E402
import node_env  # noqa: E402

CLIENTS = NODE_DIR / "clients.mjs"


@pytest.fixture
def word():
    return "vault" + _secrets.token_hex(4)


def _node(stack, mode, kind, url, word="x", env=None):
    argv = [node_env.node(), CLIENTS, kind, url, word]
    if mode == "proxy":
        return stack.run_proxied(argv, env=env, cwd=NODE_DIR)
    return stack.run_client(argv, env=env, cwd=NODE_DIR)


def _result(r):
    r.check()
    lines = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert len(lines) == 1, f"no RESULT line\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return json.loads(lines[0][7:])


# ---- fetch (undici), axios: a plain GET to an echo origin -----------------------

HTTP_CLIENTS = [
    # (matrix name, clients.mjs kind, mode)
    ("Node fetch (undici EnvHttpProxyAgent)", "undici-env", "proxy"),
    ("Node fetch (undici ProxyAgent)", "undici-proxy", "proxy"),
    ("Node fetch (built-in, Node 20)", "fetch", "gateway"),
    ("Node fetch (undici EnvHttpProxyAgent)", "undici-env", "gateway"),
    ("axios", "axios", "proxy"),
    ("axios", "axios", "gateway"),
]


@pytest.mark.parametrize("name,kind,mode", HTTP_CLIENTS,
                         ids=[f"{k}-{m}" for _n, k, m in HTTP_CLIENTS])
def test_http_client(stack, name, kind, mode):
    node_env.require_modules()
    o = stack.add_origin("nodehttp")
    stack.start()
    path = f"/v1/{kind}?q=1"
    base = o.server.url if mode == "proxy" else stack.gateway_url("nodehttp")
    with stack.case(name, mode, o):
        res = _result(_node(stack, mode, kind, base + path))
        assert res["path"] == path, res
        o.server.assert_all_keyed(1)
        assert [r.path for r in o.server.snapshot()] == ["/v1/" + kind]


def _node_reads_env_proxy():
    """Whether this Node's built-in fetch honours NODE_USE_ENV_PROXY (22.21+, 24+)."""
    r = subprocess.run([node_env.node(), "-p", "process.versions.node"],
                       capture_output=True, text=True, timeout=30)
    major, minor = (int(x) for x in r.stdout.strip().split(".")[:2])
    return major >= 24 or (major == 22 and minor >= 21) or major == 23


class _DirectListener:
    """A TCP listener on 127.0.0.2 (not in the NO_PROXY list run writes):
    records the first bytes of every connection made to it directly."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.2", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.first_bytes = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            with c:
                c.settimeout(5)
                try:
                    self.first_bytes.append(c.recv(16))
                except OSError:
                    self.first_bytes.append(b"")

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_builtin_fetch_and_the_proxy(stack):
    """Node 20's built-in fetch ignores HTTPS_PROXY and NODE_USE_ENV_PROXY
    (which run sets): under `agentvault run` it connects directly (here to a
    listener on 127.0.0.2 that only sees a TLS ClientHello), and the proxy
    sees nothing. That is the client's limit (Node >= 22.21 reads
    NODE_USE_ENV_PROXY); the way around is undici's EnvHttpProxyAgent (above)
    or a gateway. On a Node that reads it, the request must go through the
    proxy instead (and is refused there: no service, unmatched = deny)."""
    node_env.require_modules()
    stack.add_origin("nodefetch")
    stack.start()
    direct = _DirectListener()
    try:
        r = _node(stack, "proxy", "fetch", f"https://127.0.0.2:{direct.port}/v1/direct")
    finally:
        direct.close()
    assert r.returncode != 0, f"built-in fetch got an answer?\n{r.stdout}"
    exchanges = node_env.exchanges_in_log(stack.daemon)
    if _node_reads_env_proxy():
        assert direct.first_bytes == [], "fetch bypassed the proxy"
        assert exchanges, "fetch did not go through the proxy"
    else:
        assert len(direct.first_bytes) == 1 and direct.first_bytes[0][:1] == b"\x16", \
            f"expected one direct TLS connection, got {direct.first_bytes}"
        assert exchanges == [], stack.daemon.log_dump()


# ---- ws ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["proxy", "gateway"])
def test_ws(stack, mode, word):
    node_env.require_modules()
    o = stack.add_origin("nodews")
    stack.start()
    url = (f"wss://{o.host}/ws" if mode == "proxy"
           else stack.gateway_url("nodews").replace("http://", "ws://") + "/ws")
    with stack.case("ws (npm)", mode, o):
        res = _result(_node(stack, mode, "ws", url, word))
        assert res["echoed"] == f"ping-{word}"
        o.server.assert_all_keyed(1)
        assert o.server.protos() == ["h1+ws"]
        assert o.server.ws_messages == [(1, f"ping-{word}".encode())]


# ---- the openai SDK -------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["proxy", "gateway"])
def test_openai_sdk(stack, mode, word):
    """Proxy mode: the SDK's default base URL (https://api.openai.com/v1) and
    the OPENAI_API_KEY placeholder run sets; gateway: OPENAI_BASE_URL-style
    base URL and a dummy key."""
    node_env.require_modules()
    o = stack.add_origin("openai", host="api.openai.com", app=fake_apis.openai_app(word))
    stack.start()
    with stack.case("openai (npm SDK)", mode, o):
        if mode == "proxy":
            r = _node(stack, mode, "openai", "-", word)
        else:
            r = _node(stack, mode, "openai", stack.gateway_url("openai") + "/v1", word,
                      env={"OPENAI_API_KEY": "sk-compat-dummy"})
        res = _result(r)
        assert res == {"text": word, "streamed": word}
        o.server.assert_all_keyed(2)
        assert [r.path for r in o.server.snapshot()] == ["/v1/chat/completions"] * 2


# ---- the Anthropic SDK ------------------------------------------------------------------

def test_anthropic_sdk_proxy_default_service(stack, word):
    """@anthropic-ai/sdk >= 1.0 sends `Authorization: Bearer <ANTHROPIC_API_KEY>`.
    Through the embedded default `anthropic` service (no -c), the real key
    must arrive in that header, and nothing else (no x-api-key added, no
    placeholder forwarded). Issue 13 item 2."""
    node_env.require_modules()
    key = "sk-real-anthropic-" + _secrets.token_hex(12)
    o = stack.add_origin("anthropic", host="api.anthropic.com", env_var="ANTHROPIC_API_KEY",
                         key=key, gateway=False, app=fake_apis.anthropic_app(word),
                         accept=[("authorization", f"Bearer {key}")])
    stack.start(config=False)
    with stack.case("@anthropic-ai/sdk (npm, default service)", "proxy", o) as info:
        res = _result(_node(stack, "proxy", "anthropic", "-", word))
        assert res == {"text": word, "streamed": word}
        o.server.assert_all_keyed(2)
        ex = node_env.exchanges_in_log(stack.daemon)
        assert {h for h, _a, _o in ex} == {"api.anthropic.com"}, stack.daemon.log_dump()
        info["agent"] = "+".join(sorted({a for _h, a, _o in ex}))
        info["origin"] = "+".join(sorted({x for _h, _a, x in ex}))


def test_anthropic_sdk_gateway(stack, word):
    """Base URL at a gateway to api.anthropic.com whose service injects the
    header this SDK uses (Authorization: Bearer)."""
    node_env.require_modules()
    key = "sk-real-anthropic-" + _secrets.token_hex(12)
    o = stack.add_origin("anthropic", host="api.anthropic.com", key=key, auth="bearer",
                         app=fake_apis.anthropic_app(word))
    stack.start()
    with stack.case("@anthropic-ai/sdk (npm)", "gateway", o):
        res = _result(_node(stack, "gateway", "anthropic", stack.gateway_url("anthropic"), word,
                            env={"ANTHROPIC_API_KEY": "sk-compat-dummy"}))
        assert res == {"text": word, "streamed": word}
        o.server.assert_all_keyed(2)


# ---- npm install from a local registry (proxy mode only) -----------------------------

def test_npm_install(stack, word, tmp_path):
    """`npm install` of a package from https://registry.compat.test (npm reads
    HTTPS_PROXY and NPM_CONFIG_CAFILE from run). The project's .npmrc holds a
    dummy token; the registry wants the real one on the document and the
    tarball. Gateway mode is not supported by npm: registry documents carry
    absolute tarball URLs on the registry's own host."""
    npm = compat.which("npm")
    pkg = "compat-hello"
    o = stack.add_origin("registry", auth="bearer")
    reg_url = f"https://{o.host}/"
    app, tgz_path = fake_apis.npm_registry(reg_url, pkg, "1.0.0", word)
    o.server.app = app
    stack.start()
    proj = tmp_path / "npm-project"
    proj.mkdir()
    (proj / "package.json").write_text(json.dumps({"name": "compat-npm-test", "version": "1.0.0",
                                                   "private": True}))
    (proj / ".npmrc").write_text(f"registry={reg_url}\n"
                                 f"//{o.host}/:_authToken=sk-compat-dummy\n")
    cache = tmp_path / "npm-cache"
    with stack.case("npm install", "proxy", o):
        r = stack.run_proxied([npm, "install", "--no-audit", "--no-fund", "--no-update-notifier",
                               "--cache", str(cache), pkg], cwd=proj, timeout=120).check()
        got = (proj / "node_modules" / pkg / "index.js").read_text()
        assert word in got, got
        o.server.assert_all_keyed(2)
        paths = [r.path for r in o.server.snapshot()]
        assert paths.count(f"/{pkg}") >= 1 and paths.count(tgz_path) == 1, paths
    node_env.assert_no_key_in_files([proj, cache, stack.home], [o.key], r)
