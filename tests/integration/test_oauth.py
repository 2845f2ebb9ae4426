"""secret = oauth2:client_credentials: the proxy mints OAuth 2.0 access
tokens at a token endpoint (docs/CONFIG.md "Minted OAuth 2.0 tokens").

The token endpoint and the API it protects are one fake TLS server
(avtest/oauth_server.py) reached through --resolve: the endpoint checks the
grant and the client's authentication and counts mints; the API accepts only
a current token (401 otherwise) and echoes it, which the proxy must scrub.
Clients: curl (through the proxy and a gateway), Python requests in threads.
"""
import http.client
import json
import re
import secrets as _secrets
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest
import requests

from avtest import daemon as avd
from avtest.checks import run_concurrently
from avtest.gateway import gateway_section, gw_port, received
from avtest.h2_upstream import H2Upstream
from avtest.oauth_server import LEAK_DESCRIPTION, OAuthServer, leaf_for

CLIENT_ID = "agent client"  # a space: form-urlencoded as '+' before base64
CLIENT_SECRET = "cs:/+&=%" + _secrets.token_hex(12)  # every character 2.3.1 encodes
API = "https://api.oauth.test/v1/things"


@dataclass
class OAuthSecrets(avd.Secrets):
    client_secret: str = CLIENT_SECRET

    def env(self):
        e = super().env()
        e["OAUTH_CLIENT_SECRET"] = self.client_secret
        return e

    def values(self):
        return super().values() + [self.client_secret, LEAK_DESCRIPTION]


@pytest.fixture
def secrets(tmp_path):
    d = tmp_path / "secrets"
    d.mkdir()
    return OAuthSecrets(**vars(avd.Secrets.make(d)))


@pytest.fixture(scope="module")
def oauth_leaf(test_ca, tmp_path_factory):
    return leaf_for(test_ca, tmp_path_factory.mktemp("oauth-origin"))


@pytest.fixture(scope="module")
def server(oauth_leaf):
    s = OAuthServer(oauth_leaf.cert_path, oauth_leaf.key_path, CLIENT_ID, CLIENT_SECRET).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def h2_api(oauth_leaf):
    """An HTTP/2-only API (ALPN h2): the replay after a 401 on the HTTP/2 link."""
    o = H2Upstream(oauth_leaf.cert_path, oauth_leaf.key_path, "oauth-h2").start()
    yield o
    o.stop()
    assert o.protocol_errors == []


def service(client_auth="basic", extra="", token_url="https://auth.oauth.test/oauth/token"):
    return f"""[service "api"]
host = api.oauth.test
auth = bearer
secret = oauth2:client_credentials
token_url = {token_url}
client_id = {CLIENT_ID}
client_secret = env:OAUTH_CLIENT_SECRET
client_auth = {client_auth}
{extra}
"""


@pytest.fixture
def oauth_daemon(daemon, server):
    server.reset()
    started = []

    def start(svc=None, proxy_extra="", extra="", resolve=()):
        cfg = f"[proxy]\nunmatched = deny\n{proxy_extra}\n" + (svc or service()) + extra
        d = daemon(cfg, resolve=[f"{h}:443:127.0.0.1:{server.port}" for h in ("auth.oauth.test",
                                                                              "api.oauth.test")] + list(resolve))
        started.append(d)
        return d
    yield start
    # minted tokens are secrets: never in the daemon's output or audit log
    toks = server.tokens()
    for d in started:
        text = d.log_text()
        audit_path = d.workdir / "audit.jsonl"
        if audit_path.exists():
            text += audit_path.read_text()
        assert not [t for t in toks if t in text], "a minted token reached the log or the audit"


def audit(d):
    return [json.loads(line) for line in (d.workdir / "audit.jsonl").read_text().splitlines() if line]


def metric(d, name, svc="api"):
    text = d.curl(f"http://127.0.0.1:{d.port}/metrics", proxy=False).text
    m = re.search(rf'^{name}{{service="{svc}"}} (\d+)$', text, re.M)
    return int(m.group(1)) if m else 0


def get(d, url=API, **kw):
    r = requests.get(url, proxies={"https": d.proxy_url("http")}, verify=str(d.ca_pem), timeout=20, **kw)
    received(r.content, "\n".join(f"{k}: {v}" for k, v in r.headers.items()))
    return r


def test_client_credentials_basic_scope_audience(oauth_daemon, server):
    d = oauth_daemon(service(extra="scope = read:things write:things\naudience = https://api.oauth.test"))
    r = d.curl(API)
    assert r.status == 200, r.describe()
    body = json.loads(r.text)
    # the origin echoed the token: the agent sees it scrubbed
    assert body["ok"] and body["you_sent"] != server.current and server.current not in r.text
    assert server.mints == 1
    req = server.requests[0]
    assert req["form"] == {"grant_type": ["client_credentials"], "scope": ["read:things write:things"],
                           "audience": ["https://api.oauth.test"]}
    # RFC 6749 2.3.1: urlencode(id) ":" urlencode(secret), then base64
    import base64
    import urllib.parse
    want = base64.b64encode((urllib.parse.quote_plus(CLIENT_ID) + ":" +
                             urllib.parse.quote_plus(CLIENT_SECRET)).encode()).decode()
    assert req["headers"]["authorization"] == "Basic " + want
    assert req["headers"]["accept"] == "application/json"
    # the second request uses the cached token
    r2 = d.curl(API)
    assert r2.status == 200
    assert server.mints == 1
    recs = [x for x in audit(d) if x["service"] == "api"]
    assert [x["mint"] for x in recs] == ["minted", "cached"], recs
    assert all(x["injected"] == ["oauth2:client_credentials"] and x["auth"] == "bearer" for x in recs)
    assert metric(d, "agentvault_token_mints_total") == 1
    assert metric(d, "agentvault_token_mint_failures_total") == 0


def test_client_credentials_post(oauth_daemon, server):
    d = oauth_daemon(service("post"))
    r = d.curl(API)
    assert r.status == 200, r.describe()
    req = server.requests[0]
    assert "authorization" not in req["headers"]
    assert req["form"] == {"grant_type": ["client_credentials"], "client_id": [CLIENT_ID],
                           "client_secret": [CLIENT_SECRET]}


def test_concurrent_requests_mint_once(oauth_daemon, server):
    """100 requests at once with no token yet: one mint, all served."""
    server.mint_delay = 0.5  # every request arrives while the mint runs
    d = oauth_daemon()
    results = run_concurrently(lambda: get(d).status_code, 100)
    assert results == [200] * 100, results
    assert server.mints == 1
    recs = [x for x in audit(d) if x["service"] == "api"]
    assert len(recs) == 100
    assert sum(x["mint"] == "minted" for x in recs) >= 50, recs  # they waited for the one mint


def test_client_secret_from_a_command(oauth_daemon, server):
    """The client secret comes from a command: the mint waits for it (the
    resolver's asynchronous path), and so do the requests waiting for the
    mint."""
    svc = service().replace("client_secret = env:OAUTH_CLIENT_SECRET",
                            "client_secret = command:/bin/sh -c 'sleep 0.3; printf %s \"$OAUTH_CLIENT_SECRET\"'")
    d = oauth_daemon(svc)
    results = run_concurrently(lambda: get(d).status_code, 5, timeout=30)
    assert results == [200] * 5
    assert server.mints == 1


def test_refreshed_before_expiry(oauth_daemon, server):
    """Tokens of 3 s (expires_in as a string): the proxy mints the next one
    before the current one expires, so no request ever gets a 401."""
    server.expires_in = 3
    server.expires_in_as_string = True
    d = oauth_daemon()
    statuses = []
    with requests.Session() as s:
        end = time.monotonic() + 7.5
        while time.monotonic() < end:
            r = s.get(API, proxies={"https": d.proxy_url("http")}, verify=str(d.ca_pem), timeout=20)
            received(r.content)
            statuses.append(r.status_code)
            time.sleep(0.1)
    assert statuses and set(statuses) == {200}, statuses
    assert not [c for c in server.api_calls if not c[1]]
    assert server.mints >= 3, server.mints  # 7.5 s of 3 s tokens
    # minted in the background: only the first request waited for a mint
    recs = [x for x in audit(d) if x["service"] == "api"]
    assert [x["mint"] for x in recs].count("minted") == 1, recs


def test_origin_401_replays_a_bodiless_request(oauth_daemon, server):
    """The API stops taking the token: the proxy drops it, mints a new one
    and replays the GET; the agent never sees the 401."""
    d = oauth_daemon()
    assert get(d).status_code == 200
    first = server.current
    server.revoked.add(first)  # the API no longer takes it
    r = get(d)
    assert r.status_code == 200, r.text
    assert server.mints == 2 and server.current != first
    assert [ok for _, ok in server.api_calls] == [True, False, True]
    # HTTP/2 agent, and the upstream's answer to the replay scrubbed too
    server.revoked.add(server.current)
    r = d.curl("--http2", API)
    assert r.status == 200, r.describe()
    assert server.mints == 3 and server.current not in r.text
    recs = [x for x in audit(d) if x["service"] == "api"]
    assert [x["status"] for x in recs] == [200, 200, 200]  # one record per exchange
    assert [x["mint"] for x in recs] == ["minted", "minted", "minted"]
    assert "replaying GET with a new one" in d.log_text()


def test_origin_401_replay_over_http2(oauth_daemon, server, h2_api):
    h2_api.bearer_check = lambda tok: tok in server.issued and tok not in server.revoked
    try:
        svc2 = service().replace('[service "api"]', '[service "api2"]').replace("host = api.oauth.test",
                                                                             "host = api-h2.oauth.test")
        d = oauth_daemon(service() + "\n" + svc2, resolve=[f"api-h2.oauth.test:443:127.0.0.1:{h2_api.port}"])
        url = "https://api-h2.oauth.test/echo"
        assert get(d, url).status_code == 200
        server.revoked.add(server.current)
        r = get(d, url)
        assert r.status_code == 200, r.text
        assert server.mints == 2
        toks = [dict((k.lower(), v) for k, v in q.headers).get("authorization") for q in h2_api.requests]
        assert len(toks) == 3 and toks[0] == toks[1] != toks[2], "the replay carries the new token"
        assert server.current not in r.text  # the echoed header is scrubbed
    finally:
        h2_api.bearer_check = None


def test_origin_401_replayed_once_only(oauth_daemon, server):
    d = oauth_daemon()
    server.api_reject_all = True
    r = get(d)
    assert r.status_code == 401  # the replay was refused too: its answer is relayed
    assert server.mints == 2
    assert len(server.api_calls) == 2


def test_origin_401_streamed_body_not_replayed(oauth_daemon, server):
    """A request whose body went up as it came cannot be replayed: the 401
    reaches the agent and the token is dropped; the next request mints."""
    d = oauth_daemon()
    assert get(d).status_code == 200
    server.revoked.add(server.current)

    def body():
        yield b"part one, "
        time.sleep(0.2)
        yield b"part two"
    ctx = ssl.create_default_context(cafile=str(d.ca_pem))
    conn = http.client.HTTPSConnection("127.0.0.1", d.port, context=ctx, timeout=20)
    conn.set_tunnel("api.oauth.test", 443)
    conn.request("POST", "/v1/things", body=body(), encode_chunked=True)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    received(data)
    assert resp.status == 401
    assert server.mints == 1
    r = get(d)
    assert r.status_code == 200 and server.mints == 2


@pytest.mark.parametrize("mode,reason", [
    ("invalid_client", "the token endpoint answered 401 (invalid_client)"),
    ("badjson", "the token endpoint's answer is not usable: token response is not a JSON object"),
])
def test_endpoint_errors_give_502(oauth_daemon, server, mode, reason):
    server.mode = mode
    d = oauth_daemon()
    r = d.curl(API)
    assert r.status == 502, r.describe()
    assert f"credential for service api unavailable: {reason}" in r.text, r.text
    assert LEAK_DESCRIPTION not in r.text
    # remembered for a moment: no second request to the endpoint
    assert d.curl(API).status == 502
    assert len(server.requests) == 1
    assert metric(d, "agentvault_token_mint_failures_total") == 1
    time.sleep(2.2)
    server.mode = "ok"
    assert d.curl(API).status == 200
    assert metric(d, "agentvault_token_mints_total") == 1
    assert any(mode in line or "not usable" in line for line in d.log_text().splitlines()
               if "minting an access token failed" in line)


def test_endpoint_wrong_client_secret(oauth_daemon, server, secrets):
    secrets.client_secret = "wrong-" + _secrets.token_hex(8)
    d = oauth_daemon()
    r = d.curl(API)
    assert r.status == 502
    assert "the token endpoint answered 400 (invalid_client)" in r.text


def test_endpoint_unreachable_and_slow(oauth_daemon, server):
    # nothing listens on that port (--resolve sends it to 127.0.0.1:1)
    d = oauth_daemon(service(token_url="https://auth.oauth.test:1/oauth/token"),
                     proxy_extra="connect_timeout = 1\nheader_timeout = 1")
    r = d.curl(API)
    assert r.status == 502 and "token endpoint unreachable" in r.text, r.text
    server.mode = "slow"
    server.slow_seconds = 4
    d2 = oauth_daemon(proxy_extra="connect_timeout = 1\nheader_timeout = 1")
    t0 = time.monotonic()
    r = d2.curl(API)
    assert r.status == 502 and "the token endpoint did not answer in time" in r.text, r.text
    assert time.monotonic() - t0 < 3.5


def test_through_a_gateway(oauth_daemon, server):
    d = oauth_daemon(extra=gateway_section("api", upstream="https://api.oauth.test"))
    port = gw_port(d, "api")
    r = d.curl(f"http://127.0.0.1:{port}/v1/gw", proxy=False)
    assert r.status == 200, r.describe()
    assert json.loads(r.text)["path"] == "/v1/gw"
    assert server.mints == 1


def test_token_endpoint_ssrf_guard(oauth_daemon, server):
    """The token endpoint is dialed like an origin: a private address that
    no --resolve override chose is refused."""
    d = oauth_daemon(service(token_url="https://10.255.255.1/oauth/token"))
    r = d.curl(API)
    assert r.status == 502, r.describe()
    assert "token endpoint unreachable" in r.text
    assert server.mints == 0


def check_fails(tmp_path, text, message):
    conf = tmp_path / "c.conf"
    conf.write_text(text)
    p = subprocess.run([str(avd.require_binary()), "check", "-c", str(conf)], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "S": "x"}, timeout=30)
    assert p.returncode != 0
    assert message in p.stderr, p.stderr


@pytest.mark.parametrize("extra,message", [
    ("secret = oauth2:client_credentials\nclient_id = c\nclient_secret = env:S\n",
     'c.conf:1: service "x": secret = oauth2:client_credentials needs token_url'),
    ("secret = oauth2:client_credentials\ntoken_url = https://a.test/t\nclient_secret = env:S\n",
     "needs client_id"),
    ("secret = oauth2:client_credentials\ntoken_url = https://a.test/t\nclient_id = c\n",
     "needs client_secret"),
    ("secret = oauth2:password\n", 'c.conf:4: secret: unknown OAuth 2.0 grant "password"'),
    ("secret = oauth2:client_credentials\ntoken_url = http://a.test/t\n",
     "c.conf:5: token_url must be an https:// URL"),
    ("secret = oauth2:client_credentials\nclient_auth = jwt\n", "c.conf:5: client_auth must be"),
    ("secret = env:S\ntoken_url = https://a.test/t\n", "need secret = oauth2:client_credentials"),
    ("secret = env:S\nclient_auth = post\n", "need secret = oauth2:client_credentials"),
    ("secret = oauth2:client_credentials\nclient_secret = plain\n", "c.conf:5: client_secret must be env:NAME"),
])
def test_check_reports_oauth_keys(tmp_path, extra, message):
    check_fails(tmp_path, '[service "x"]\nhost = x.test\nauth = bearer\n' + extra, message)


def test_check_refuses_sigv4_with_a_minted_token(tmp_path):
    check_fails(tmp_path, '[service "x"]\nhost = x.test\nauth = aws-sigv4\naccess_key_id = env:S\n'
                "secret = oauth2:client_credentials\ntoken_url = https://a.test/t\nclient_id = c\n"
                "client_secret = env:S\n",
                'c.conf:1: service "x": auth = aws-sigv4 cannot use a minted OAuth 2.0 token')


class ConnectParent:
    """A minimal HTTP CONNECT parent proxy on 127.0.0.1 that records the
    targets it was asked for and relays bytes both ways."""

    def __init__(self):
        self.targets = []
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = c.recv(4096)
            if not d:
                c.close()
                return
            buf += d
        head, _, rest = buf.partition(b"\r\n\r\n")
        target = head.split(b"\r\n")[0].split(b" ")[1].decode()
        with self.lock:
            self.targets.append(target)
        host, _, port = target.rpartition(":")
        u = socket.create_connection((host.strip("[]"), int(port)))
        c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if rest:
            u.sendall(rest)

        def pipe(a, b):
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
        threading.Thread(target=pipe, args=(u, c), daemon=True).start()
        pipe(c, u)

    def close(self):
        self.sock.close()


def test_token_endpoint_through_parent_proxy(oauth_daemon, server):
    parent = ConnectParent()
    try:
        d = oauth_daemon(proxy_extra=f"upstream_proxy = http://127.0.0.1:{parent.port}")
        assert d.curl(API).status == 200
        assert server.mints == 1
        # one tunnel for the mint, one for the API request
        assert parent.targets == [f"127.0.0.1:{server.port}"] * 2, parent.targets
    finally:
        parent.close()
