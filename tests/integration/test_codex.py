"""The real OpenAI Codex CLI through agentvault, against a fake Responses server.

Codex installs (scripts/setup-node.sh puts them there; a missing one fails):
  0.131.0  tests/node/node_modules/.bin/codex
  latest   tests/node/codex-latest/node_modules/.bin/codex

Harness self-tests (no daemon) prove that the fake server (avtest/fake_openai.py)
speaks WebSocket and SSE the way each Codex wants: base-URL mode over
cleartext, an SSE-only custom provider, a 426 on the upgrade, and TLS through
a trivial CONNECT proxy. The daemon tests then run
`agentvault run --proxy ... -- codex exec ...` with api.openai.com resolved to
the fake server, and check transport, credential injection and leaks.
"""
import json
import os
import re
import secrets as _secrets
import socket
import tempfile
import threading
from pathlib import Path

import pytest

from avtest import daemon as avd
from avtest.fake_openai import (FakeOpenAI, files_containing, openai_service_config,
                                run_bounded)

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "tests" / "node"
CODEX_INSTALLS = {
    "0.131.0": NODE_DIR / "node_modules" / ".bin" / "codex",
    "latest": NODE_DIR / "codex-latest" / "node_modules" / ".bin" / "codex",
}
PLACEHOLDER = "sk-placeholder-test"
CODEX_TIMEOUT = 90.0
WS_CONNECT_FAILED = re.compile(r"failed to connect to (responses )?websocket", re.I)
CODEX_FLAGS = ["exec", "--skip-git-repo-check", "--ephemeral", "--disable", "plugins",
               "-c", "analytics.enabled=false", "--dangerously-bypass-approvals-and-sandbox"]
SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


# Codex builds that know the feature `api_key_model_discovery` (stable and on in
# 0.16x) also fetch https://chatgpt.com/backend-api/codex/models with API-key
# auth. There is no chatgpt.com here, and failed fetches are retried for ~9 s
# before the turn starts, so it is turned off where it exists (0.131.0 rejects
# the unknown name). It has nothing to do with api.openai.com traffic.
OPTIONAL_DISABLES = ("api_key_model_discovery",)
_features_cache = {}


def _codex_flags(codex):
    if codex not in _features_cache:
        with tempfile.TemporaryDirectory(prefix="codex-features-") as home:
            r = run_bounded([codex, "features", "list"],
                            env={"PATH": "/usr/bin:/bin", "HOME": home, "CODEX_HOME": home},
                            timeout=30)
        assert r.returncode == 0, f"`codex features list` failed\n{r.describe()}"
        names = {line.split()[0] for line in r.stdout.splitlines() if line.split()}
        _features_cache[codex] = [x for f in OPTIONAL_DISABLES if f in names
                                  for x in ("--disable", f)]
    return CODEX_FLAGS + _features_cache[codex]


# ---- fixtures -----------------------------------------------------------------

@pytest.fixture(params=list(CODEX_INSTALLS))
def codex(request):
    """Path of one Codex install; fails (never skips) when it is missing."""
    path = CODEX_INSTALLS[request.param]
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"Codex {request.param} is not installed at {path}: "
                    f"run scripts/setup-node.sh", pytrace=False)
    if request.param == "0.131.0":
        r = run_bounded([path, "--version"], env={"PATH": "/usr/bin:/bin"}, timeout=30)
        assert r.returncode == 0 and r.stdout.split()[-1:] == ["0.131.0"], \
            f"expected codex-cli 0.131.0 at {path}\n{r.describe()}"
    return path


@pytest.fixture
def word():
    return "vault" + _secrets.token_hex(4)


def _fake(test_ca, **kw):
    f = FakeOpenAI(test_ca.server_cert, test_ca.server_key, **kw).start()
    return f


@pytest.fixture
def fake_factory(test_ca):
    made = []

    def make(**kw):
        f = _fake(test_ca, **kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.stop()
    for f in made:
        assert f.errors == [], f"fake OpenAI server saw protocol errors:\n{f.describe()}"


@pytest.fixture
def codex_home(tmp_path):
    """(env, home, workdir): an isolated HOME with CODEX_HOME inside it."""
    home = tmp_path / "codex-user"
    ch = home / ".codex"
    ch.mkdir(parents=True)
    work = tmp_path / "codex-work"
    work.mkdir()
    env = avd.base_env(home)
    env.update({"CODEX_HOME": str(ch), "CODEX_API_KEY": PLACEHOLDER, "LANG": "C.UTF-8"})
    return env, home, work


def _prompt(word):
    return f"Reply exactly: {word}"


def _assert_printed(r, word):
    assert r.returncode == 0 and not r.timed_out, r.describe()
    assert word in r.stdout.split(), f"codex did not print {word!r}\n{r.describe()}"


def _auths(fake):
    return [(r.transport, r.path, r.header_values("authorization")) for r in fake.snapshot()]


# ---- harness self-tests: the real Codex against the fake server, no proxy -----

def test_selftest_base_url_websocket(codex, fake_factory, codex_home, word):
    """Base-URL mode (cleartext): the warm-up and the turn on one WebSocket."""
    fake = fake_factory(plain_ok=True, reply_text=word)
    env, _home, work = codex_home
    env["NO_PROXY"] = "127.0.0.1,localhost"
    r = run_bounded([codex, *_codex_flags(codex), "-c", f'openai_base_url="{fake.base_url}"',
                     _prompt(word)], env=env, cwd=work, timeout=CODEX_TIMEOUT)
    _assert_printed(r, word)
    ctx = f"{r.describe()}\n{fake.describe()}"
    assert not WS_CONNECT_FAILED.search(r.stderr), ctx
    assert fake.count("ws_handshakes") == 1 and fake.count("ws_turns") == 1, ctx
    assert fake.count("ws_warmups") <= 1, ctx
    assert fake.by_transport("sse") == [], ctx
    assert all(a == ["Bearer " + PLACEHOLDER] for _t, _p, a in _auths(fake)), _auths(fake)
    (req,) = fake.by_transport("ws")
    assert not req.tls and req.header("upgrade").lower() == "websocket", ctx


def test_selftest_base_url_sse_only_provider(codex, fake_factory, codex_home, word):
    """A custom provider with supports_websockets=false: one SSE POST, no upgrade."""
    fake = fake_factory(plain_ok=True, reply_text=word)
    env, _home, work = codex_home
    env["NO_PROXY"] = "127.0.0.1,localhost"
    prov = ["-c", "model_provider=local", "-c", "model_providers.local.name=Local",
            "-c", f'model_providers.local.base_url="{fake.base_url}"',
            "-c", "model_providers.local.env_key=CODEX_API_KEY",
            "-c", "model_providers.local.supports_websockets=false", "-m", "gpt-test"]
    r = run_bounded([codex, *_codex_flags(codex), *prov, _prompt(word)], env=env, cwd=work,
                    timeout=CODEX_TIMEOUT)
    _assert_printed(r, word)
    ctx = f"{r.describe()}\n{fake.describe()}"
    assert [x.transport for x in fake.snapshot()] == ["sse"], ctx
    (req,) = fake.by_transport("sse")
    assert req.method == "POST" and "text/event-stream" in (req.header("accept") or ""), ctx
    assert req.header_values("authorization") == ["Bearer " + PLACEHOLDER], ctx
    assert word in req.body.decode("utf-8", "replace"), "the prompt is not in the POST body"


def test_selftest_base_url_426_falls_back_at_once(codex, fake_factory, codex_home, word):
    """An upgrade answered 426 makes Codex use SSE at once (1 attempt, no backoff)."""
    fake = fake_factory(plain_ok=True, reply_text=word, ws_status=426)
    env, _home, work = codex_home
    env["NO_PROXY"] = "127.0.0.1,localhost"
    r = run_bounded([codex, *_codex_flags(codex), "-c", f'openai_base_url="{fake.base_url}"',
                     _prompt(word)], env=env, cwd=work, timeout=CODEX_TIMEOUT)
    _assert_printed(r, word)
    ctx = f"{r.describe()}\n{fake.describe()}"
    assert [x.transport for x in fake.snapshot()] == ["ws-refused", "sse"], ctx
    assert r.elapsed < 20, ctx


class _ConnectProxy:
    """A minimal plain-HTTP CONNECT proxy: CONNECT api.openai.com:443 is tunnelled
    to one local port, any other target gets 502 (there is no internet)."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.targets = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop_evt = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop_evt.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(60)
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = c.recv(4096)
                if not d:
                    return
                buf += d
            head, rest = buf.split(b"\r\n\r\n", 1)
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            self.targets.append(line)
            if not line.startswith("CONNECT api.openai.com:443 "):
                c.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            u = socket.create_connection(("127.0.0.1", self.target_port), timeout=60)
            c.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            if rest:
                u.sendall(rest)

            def pump(a, b):
                try:
                    while True:
                        d = a.recv(65536)
                        if not d:
                            break
                        b.sendall(d)
                except OSError:
                    pass
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            t = threading.Thread(target=pump, args=(u, c), daemon=True)
            t.start()
            pump(c, u)
            t.join(60)
            u.close()
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.stop_evt.set()
        self.sock.close()


def _ca_bundle(path, ca_pem):
    """System roots + ca_pem (what `agentvault run` gives SSL_CERT_FILE)."""
    sys_roots = SYSTEM_CA_BUNDLE.read_bytes() if SYSTEM_CA_BUNDLE.exists() else b""
    path.write_bytes(sys_roots + b"\n" + Path(ca_pem).read_bytes())
    return path


def test_selftest_tls_through_connect_proxy(codex, fake_factory, codex_home, tmp_path,
                                            test_ca, word):
    """Default base URL (wss://api.openai.com) through a plain CONNECT proxy to
    the fake server's TLS side, trusting the test CA the way `agentvault run`
    does: CODEX_CA_CERTIFICATE, and SSL_CERT_FILE = system roots + the CA."""
    fake = fake_factory(reply_text=word)
    proxy = _ConnectProxy(fake.port)
    try:
        env, _home, work = codex_home
        url = f"http://127.0.0.1:{proxy.port}"
        env.update({"HTTPS_PROXY": url, "https_proxy": url, "HTTP_PROXY": url,
                    "http_proxy": url,
                    "SSL_CERT_FILE": str(_ca_bundle(tmp_path / "bundle.pem", test_ca.ca_pem)),
                    "CODEX_CA_CERTIFICATE": str(test_ca.ca_pem)})
        r = run_bounded([codex, *_codex_flags(codex), _prompt(word)], env=env, cwd=work,
                        timeout=CODEX_TIMEOUT)
    finally:
        proxy.close()
    _assert_printed(r, word)
    ctx = f"{r.describe()}\n{fake.describe()}\nCONNECTs: {proxy.targets}"
    assert not WS_CONNECT_FAILED.search(r.stderr), ctx
    assert fake.count("ws_turns") == 1 and fake.by_transport("sse") == [], ctx
    assert all(x.tls for x in fake.snapshot()), ctx
    # Newer Codex also tries chatgpt.com (model list refresh); it must cope.
    assert "CONNECT api.openai.com:443 HTTP/1.1" in proxy.targets, ctx


# ---- through agentvault ---------------------------------------------------------

def _start_vault(daemon, fake, websocket_off=False):
    return daemon(config=openai_service_config(websocket_off),
                  resolve=[f"api.openai.com:443:127.0.0.1:{fake.port}"])


def _codex_via_vault(d, codex, codex_home, word):
    env, _home, work = codex_home
    argv = [avd.require_binary(), "run", "--proxy", f"http://127.0.0.1:{d.port}", "--",
            codex, *_codex_flags(codex), _prompt(word)]
    return run_bounded(argv, env=env, cwd=work, timeout=CODEX_TIMEOUT)


def _auth_kinds(fake, secrets):
    """Authorization values per request, with the secrets masked (for messages)."""
    def kind(v):
        if v == f"Bearer {secrets.openai_key}":
            return "Bearer <real key>"
        if v == f"Bearer {PLACEHOLDER}":
            return "Bearer <placeholder>"
        return "<other value>"
    return [(r.transport, r.method, r.path, [kind(v) for v in r.header_values("authorization")])
            for r in fake.snapshot()]


def _assert_real_key_everywhere(fake, secrets, ctx):
    kinds = _auth_kinds(fake, secrets)
    assert kinds, f"the fake server saw no request\n{ctx}"
    bad = [k for k in kinds if k[3] != ["Bearer <real key>"]]
    assert not bad, f"requests without exactly `Authorization: Bearer <real key>`: {bad}\n{ctx}"
    assert not fake.saw(PLACEHOLDER), f"the placeholder {PLACEHOLDER!r} reached the server\n{ctx}"


def _assert_no_leaks(r, home, secrets):
    forbidden = avd.forbidden_strings(secrets)
    out = avd.find_leaks(r.stdout, forbidden)
    err = avd.find_leaks(r.stderr, forbidden)
    assert not out and not err, \
        f"secret material in codex's stdout ({len(out)}) / stderr ({len(err)})"
    hits = sorted({p for p, _ in files_containing(home, forbidden)})
    assert not hits, f"secret material in files under the codex HOME: {hits}"


def test_codex_websocket_through_vault(codex, daemon, fake_factory, codex_home, secrets, word):
    """`agentvault run -- codex exec`: the turn goes over the relayed WebSocket
    with the real key injected; no SSE fallback; nothing leaks."""
    fake = fake_factory(reply_text=word)
    d = _start_vault(daemon, fake)
    r = _codex_via_vault(d, codex, codex_home, word)
    ctx = f"{r.describe()}\n{fake.describe()}\nauth: {_auth_kinds(fake, secrets)}"
    _assert_printed(r, word)
    assert not WS_CONNECT_FAILED.search(r.stderr), f"codex could not open the WebSocket\n{ctx}"
    assert fake.by_transport("sse") == [], f"codex fell back to SSE\n{ctx}"
    assert fake.by_transport("ws-refused") == [], ctx
    assert fake.count("ws_turns") == 1, f"the turn did not arrive over WebSocket\n{ctx}"
    assert all(x.tls for x in fake.snapshot()), ctx
    _assert_real_key_everywhere(fake, secrets, ctx)
    _assert_no_leaks(r, codex_home[1], secrets)


def _upgrade_log_lines(d):
    """Daemon log lines about an upgrade attempt: a 426 refusal or a relayed GET."""
    return [line for line in d.log_text().splitlines()
            if "status=426" in line or ("method=GET" in line and "path=/v1/responses" in line)]


def test_codex_websocket_off_falls_back_to_sse(codex, daemon, fake_factory, codex_home,
                                               secrets, word):
    """`websocket = off`: the proxy answers the upgrade 426 itself, Codex switches
    to SSE at once (no ~6 s retry loop), and no upgrade reaches the server."""
    fake = fake_factory(reply_text=word)
    d = _start_vault(daemon, fake, websocket_off=True)
    r = _codex_via_vault(d, codex, codex_home, word)
    ctx = f"{r.describe()}\n{fake.describe()}\nauth: {_auth_kinds(fake, secrets)}"
    _assert_printed(r, word)
    assert fake.by_transport("ws") == [] and fake.by_transport("ws-refused") == [], \
        f"a WebSocket upgrade reached the server despite websocket = off\n{ctx}"
    assert fake.count("sse_turns") == 1, f"the turn did not arrive over SSE\n{ctx}"
    assert r.elapsed < 20, f"codex took {r.elapsed:.1f}s: it did not fall back at once\n{ctx}"
    _assert_real_key_everywhere(fake, secrets, ctx)
    d.wait_log(lambda line: "status=426" in line)
    ups = _upgrade_log_lines(d)
    assert len(ups) == 1 and "status=426" in ups[0], \
        f"expected exactly one upgrade attempt, answered 426, in the daemon log: {ups}"
    _assert_no_leaks(r, codex_home[1], secrets)


def test_curl_sse_through_vault(daemon, fake_factory, secrets, proxy_scheme, word):
    """curl through the proxy (http:// and TLS https:// proxy URL on the one port)
    gets the SSE stream of POST /v1/responses, with the real key injected."""
    fake = fake_factory(reply_text=word)
    d = _start_vault(daemon, fake)
    body = json.dumps({"model": "gpt-test", "input": _prompt(word), "stream": True})
    r = d.curl("-X", "POST", "-H", "Content-Type: application/json",
               "-H", f"Authorization: Bearer {PLACEHOLDER}", "-d", body,
               "https://api.openai.com/v1/responses", scheme=proxy_scheme).ok()
    ctx = f"{r.describe()}\n{fake.describe()}"
    assert r.status == 200, ctx
    assert (r.header("content-type") or "").startswith("text/event-stream"), ctx
    events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    types = [e.get("type") for e in events]
    assert types[-1:] == ["response.completed"], f"{types}\n{ctx}"
    assert any(e.get("delta") == word for e in events), ctx
    assert [x.transport for x in fake.snapshot()] == ["sse"], ctx
    _assert_real_key_everywhere(fake, secrets, ctx)
    assert json.loads(fake.snapshot()[0].body) == json.loads(body), "body altered by the proxy"
