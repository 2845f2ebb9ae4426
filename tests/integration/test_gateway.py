"""Gateway (base-URL) mode end to end.

A `[gateway "NAME"]` section opens a plain-HTTP listener whose every request
goes to one upstream origin: clients set a base URL (no proxy variables, no
CA). These tests drive gateways with real clients -- curl (HTTP/1.1 and h2c
with prior knowledge), nghttp (h2c, concurrent streams), Python httpx,
Python websockets and the real Codex CLI -- and check at the origin that the
credential was injected, the agent's own Authorization replaced, Host
rewritten and TLS to the upstream verified. Also: the gateway token
(X-Agentvault-Token, never forwarded), loopback-only clients unless
allow_remote, the refusals (CONNECT 405, absolute-form 400), `agentvault
check` on bad sections, unmatched hosts, and SIGHUP rules (gateways may
change only their tokens).

Origins: avtest.upstream (HTTPS/1.1 and cleartext), avtest.h2_upstream
(ALPN h2 only), avtest.ws_upstream (TLS WebSocket), avtest.fake_openai (a
Responses server for Codex). Helpers: avtest.gateway.
"""
import asyncio
import base64
import hashlib
import json
import os
import secrets as _secrets
import signal
import socket
import time

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatusCode

import test_codex as tc
from avtest import client
from avtest import gateway as gwh
from avtest.checks import (assert_curl_proxy_error, assert_raw_proxy_error, auth_values,
                           run_cli, tls_tunnel, wait_until)
from avtest.daemon import base_env, config_text, find_leaks, forbidden_strings, plain_service
from avtest.fake_openai import openai_service_config, run_bounded
from avtest.gateway import GW_TOKEN_REASON, GwConn, gateway_section, gw_config, gw_port, gw_url
from avtest.h2_client import (SETTINGS_ENABLE_CONNECT_PROTOCOL, WS_BINARY, WS_TEXT, H2Client,
                              ws_frame, ws_parse)
from avtest.h2_client import open_tls as h2_open_tls
from avtest.h2_upstream import H2Upstream
from avtest.upstream import SSE_FIRST, SSE_SECOND
from avtest.ws_upstream import WsUpstream

OPENAI = "api.openai.com"
MIB = 1 << 20
REDACTED_AUTH = b"Bearer [REDACTED]\n"
TOKEN_HEADER = "X-Agentvault-Token"
WS_TIMEOUT = 30.0

# The Codex fixtures of test_codex.py (two installs, the fake Responses
# server, an isolated CODEX_HOME, a random reply word), reused as they are.
codex = tc.codex
fake_factory = tc.fake_factory
codex_home = tc.codex_home
word = tc.word


# ---- fixtures ------------------------------------------------------------------

@pytest.fixture
def ws_upstream(test_ca):
    """TLS WebSocket origin (the test CA's certificate for api.openai.com)."""
    srv = WsUpstream(test_ca.server_cert, test_ca.server_key, "ws-tls").start()
    yield srv
    srv.stop()
    assert srv.handler_errors == [], srv.handler_errors


@pytest.fixture
def h2_upstream(test_ca):
    """An origin that speaks only h2 (ALPN), so each request it records came
    over HTTP/2 from the daemon."""
    srv = H2Upstream(test_ca.server_cert, test_ca.server_key, "h2").start()
    yield srv
    srv.stop()
    assert srv.protocol_errors == [], srv.protocol_errors
    assert srv.handler_errors == [], srv.handler_errors


@pytest.fixture
def gw_token():
    return "gwtok-" + _secrets.token_hex(16)


@pytest.fixture
def lan_addr():
    """A local IPv4 address outside 127.0.0.0/8 (added to lo, as root, when
    the machine has none; removed afterwards)."""
    addr = gwh.non_loopback_ipv4()
    if addr:
        yield addr
        return
    remove = gwh.add_test_address("192.0.2.77")
    try:
        yield "192.0.2.77"
    finally:
        remove()


@pytest.fixture
def curl_h2c(client_home):
    """curl --http2-prior-knowledge (no proxy)."""
    def run(*args, urls=1, timeout=client.DEFAULT_TIMEOUT):
        return client.run_curl(["--http2-prior-knowledge"] + [str(a) for a in args],
                               home=client_home, urls_count=urls, timeout=timeout, http1=False)
    return run


# ---- helpers -------------------------------------------------------------------

def real(secrets):
    return f"Bearer {secrets.openai_key}"


def assert_injected(rec, secrets, host=OPENAI):
    """The origin got exactly the real credential and the upstream's Host."""
    assert auth_values(rec) == [real(secrets)], \
        f"{rec.method} {rec.target}: Authorization values {len(auth_values(rec))}, " \
        f"not exactly the real key"
    assert rec.header("Host") == host, f"Host {rec.header('Host')!r}, expected {host!r}"
    assert rec.header_values(TOKEN_HEADER) == [], f"{TOKEN_HEADER} reached the origin"


def echo_headers(doc):
    return [(k.lower(), v) for k, v in doc["headers"]]


def http_version(r, i=0):
    return r.transfers[i].info.get("http_version")


def log_count(d, needle):
    return sum(needle in line for line in d.log_text().splitlines())


def sighup(d, needle):
    """SIGHUP, then wait for one more log line containing needle; returns it."""
    before = log_count(d, needle)
    d.signal(signal.SIGHUP)
    assert wait_until(lambda: log_count(d, needle) > before, timeout=10), \
        f"no new {needle!r} line after SIGHUP\n{d.log_dump()}"
    return [line for line in d.log_text().splitlines() if needle in line][-1]


def run_ws(coro, timeout=WS_TIMEOUT):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def ws_url(d, path, name="openai"):
    return f"ws://127.0.0.1:{gw_port(d, name)}{path}"


async def ws_open(url, headers=(), **kw):
    opts = dict(ping_interval=None, close_timeout=2, max_size=None, open_timeout=10)
    opts.update(kw)
    return await websockets.connect(url, extra_headers=list(headers), **opts)


# ---- HTTP/1.1 with curl ----------------------------------------------------------

def test_curl_injects_replaces_agent_auth_and_rewrites_host(daemon, upstream, secrets, curl):
    d = daemon(gw_config(secrets))
    url = gw_url(d)
    assert gwh.gateways(d)["openai"][2] == "https://api.openai.com", d.log_dump()
    r = curl("-H", "Authorization: Bearer agent-dummy", "-H", "Host: evil.example:8443",
             "-H", "X-Custom: kept", "-H", "Proxy-Authorization: Basic YWdlbnQ6eA==",
             f"{url}/echo?q=1").ok()
    assert r.status == 200, r.describe()
    rec = upstream.only_request()
    assert_injected(rec, secrets)
    assert rec.header_values("Proxy-Authorization") == []
    assert (rec.method, rec.target, rec.header("X-Custom")) == ("GET", "/echo?q=1", "kept")
    # verified TLS to the origin, never cleartext
    assert upstream.tls_handshakes_ok == 1 and not upstream.cleartext_bytes_seen
    # the origin echoed the real key: the agent sees it redacted
    assert ("authorization", "Bearer [REDACTED]") in echo_headers(r.json_body()), r.text
    # no Authorization at all from the agent: injected all the same
    r = curl(f"{url}/echo-auth").ok()
    assert (r.status, r.body) == (200, REDACTED_AUTH), r.describe()
    assert_injected(upstream.wait_requests(2)[1], secrets)
    d.wait_log(lambda line: "exchange method=GET host=api.openai.com:443 path=/echo " in line
               and "service=openai" in line and "status=200" in line)


def test_curl_keepalive_several_requests_one_connection(daemon, upstream, secrets, curl):
    d = daemon(gw_config(secrets))
    url = gw_url(d)
    r = curl("-H", "Authorization: Bearer dummy", f"{url}/echo", f"{url}/echo-auth",
             f"{url}/echo?n=3", urls=3).ok()
    assert [t.status for t in r.transfers] == [200] * 3, r.describe()
    assert [t.num_connects for t in r.transfers] == [1, 0, 0], \
        f"curl did not reuse its gateway connection\n{r.describe()}"
    assert r.transfers[1].body == REDACTED_AUTH
    reqs = upstream.wait_requests(3)
    assert [x.target for x in reqs] == ["/echo", "/echo-auth", "/echo?n=3"]
    for x in reqs:
        assert_injected(x, secrets)
    assert len({x.conn_id for x in reqs}) == 1, "the upstream connection was not pooled"


def test_raw_keepalive_pipelining_head_and_duplicate_auth(daemon, upstream, secrets):
    """One raw connection: HEAD (no body may follow), GET, two pipelined
    requests, a request without Host; every copy of the agent's
    Authorization is replaced by exactly one real one."""
    d = daemon(gw_config(secrets))
    c = GwConn.open(gw_port(d))
    try:
        r = c.request("HEAD", "/echo", [("Authorization", "Bearer a"),
                                        ("authorization", "Bearer b")])
        assert r.status == 200 and r.body == b"", r.raw_head
        assert int(r.header("Content-Length")) > 0, r.raw_head
        r = c.request("GET", "/echo-auth", [("Authorization", "Bearer a")])
        assert (r.status, r.body) == (200, REDACTED_AUTH), (r.raw_head, r.body)
        c.send(GwConn.head("GET", "/echo?p=1") + GwConn.head("POST", "/echo?p=2", body=b"x" * 1000))
        a, b = c.response(), c.response("POST")
        assert (a.status, json.loads(a.body)["path"]) == (200, "/echo?p=1")
        doc = json.loads(b.body)
        assert (b.status, doc["path"], doc["body_length"]) == (200, "/echo?p=2", 1000)
        r = c.request("GET", "/echo?nohost=1", host=None)
        assert r.status == 200, (r.raw_head, r.body)
    finally:
        c.close()
    reqs = upstream.wait_requests(5)
    assert [(x.method, x.target) for x in reqs] == [
        ("HEAD", "/echo"), ("GET", "/echo-auth"), ("GET", "/echo?p=1"), ("POST", "/echo?p=2"),
        ("GET", "/echo?nohost=1")]
    for x in reqs:
        assert_injected(x, secrets)
    assert reqs[3].body == b"x" * 1000


def test_curl_post_fixed_length_and_chunked(daemon, upstream, secrets, curl, tmp_path):
    d = daemon(gw_config(secrets))
    url = gw_url(d)
    # > 1 MiB: curl also sends Expect: 100-continue
    big = os.urandom(2 * MIB + 1)
    f = tmp_path / "big.bin"
    f.write_bytes(big)
    r = curl("--data-binary", f"@{f}", "-H", "Content-Type: application/octet-stream",
             f"{url}/echo", timeout=60).ok()
    assert r.status == 200, r.describe()
    doc = r.json_body()
    assert (doc["method"], doc["body_length"], doc["body_sha256"]) == \
        ("POST", len(big), hashlib.sha256(big).hexdigest())
    rec = upstream.wait_requests(1)[0]
    assert_injected(rec, secrets)
    assert rec.body == big and rec.header("Content-Length") == str(len(big))
    # chunked from the agent
    small = os.urandom(300_000)
    f2 = tmp_path / "small.bin"
    f2.write_bytes(small)
    r = curl("--data-binary", f"@{f2}", "-H", "Transfer-Encoding: chunked", "-X", "PUT",
             f"{url}/echo?c=1").ok()
    assert r.status == 200, r.describe()
    assert r.json_body()["body_sha256"] == hashlib.sha256(small).hexdigest()
    rec = upstream.wait_requests(2)[1]
    assert_injected(rec, secrets)
    assert (rec.method, rec.body) == ("PUT", small)


def test_curl_head_statuses_and_no_redirect_following(daemon, upstream, secrets, curl):
    d = daemon(gw_config(secrets))
    url = gw_url(d)
    r = curl("-I", f"{url}/echo").ok()
    # curl -I writes the head where the body would go: nothing may follow it
    assert r.status == 200 and r.body.startswith(b"HTTP/1.1 200"), r.describe()
    assert r.body.endswith(b"\r\n\r\n") and r.body.count(b"\r\n\r\n") == 1, r.body
    assert int(r.header("Content-Length")) > 0
    r = curl(f"{url}/status/404").ok()
    assert (r.status, r.body) == (404, b"status 404\n"), r.describe()
    r = curl(f"{url}/status/204").ok()
    assert (r.status, r.body) == (204, b""), r.describe()
    r = curl(f"{url}/redirect").ok()
    assert r.status == 302 and r.header("Location") == "https://elsewhere.test/", r.describe()
    reqs = upstream.wait_requests(4)
    assert [(x.method, x.path) for x in reqs] == [("HEAD", "/echo"), ("GET", "/status/404"),
                                                  ("GET", "/status/204"), ("GET", "/redirect")]
    for x in reqs:
        assert_injected(x, secrets)


def test_sse_streams_without_buffering(daemon, upstream, secrets, client_home):
    d = daemon(gw_config(secrets))
    sc = client.StreamingCurl(["-H", "Authorization: Bearer dummy", f"{gw_url(d)}/sse"],
                              home=client_home, timeout=30)
    try:
        sc.wait_line(SSE_FIRST.rstrip(b"\n"), 5)
        # the first event arrived while the origin still holds the response
        assert upstream.sse_first_sent.is_set() and not upstream.sse_finished.is_set()
        upstream.release_sse()
        sc.wait_line(SSE_SECOND.rstrip(b"\n"), 5)
        assert sc.finish() == 0, sc.stderr
    finally:
        sc.kill()
        gwh.received(*sc.seen)
    assert_injected(upstream.only_request(), secrets)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_echoed_secret_is_scrubbed(daemon, upstream, secrets, curl, gz):
    d = daemon(gw_config(secrets))
    args = ["--compressed"] if gz else []
    r = curl(*args, f"{gw_url(d)}/reflect{'?gzip=1' if gz else ''}").ok()
    assert r.status == 200, r.describe()
    assert r.header("X-Echo-Secret") == "k=[REDACTED]", r.headers
    assert r.body.startswith(b"begin\n") and r.body.endswith(b"end\n"), r.body[:200]
    assert b"[REDACTED]" in r.body
    text = r.body.decode("latin-1") + repr(r.headers)
    assert not find_leaks(text, forbidden_strings(secrets)), "the echoed secret reached curl"
    assert_injected(upstream.only_request(), secrets)


def test_proxy_endpoints_are_not_answered_on_a_gateway(daemon, upstream, secrets, curl):
    """/healthz, /ca.pem, /metrics and /agent-env belong to the proxy port; on
    a gateway they are ordinary requests to the upstream."""
    d = daemon(gw_config(secrets))
    url = gw_url(d)
    paths = ["/healthz", "/ca.pem", "/metrics", "/agent-env"]
    for p in paths:
        r = curl(url + p).ok()
        assert (r.status, r.body) == (404, b"not found\n"), r.describe()
    reqs = upstream.wait_requests(len(paths))
    assert [x.path for x in reqs] == paths
    for x in reqs:
        assert_injected(x, secrets)


# ---- HTTP/2 with prior knowledge (h2c) ---------------------------------------------

# curl 7.88.1 (Debian 12) cannot reuse an h2c prior-knowledge connection
# (curl issue #10634, fixed in 8.0: "Error in the HTTP2 framing layer" on
# the second transfer, whatever the server). So curl gets one URL per
# invocation here; many streams on one connection are nghttp's and
# H2Client's job.

def test_h2c_curl_prior_knowledge(daemon, upstream, secrets, curl_h2c, tmp_path):
    d = daemon(gw_config(secrets))
    url = gw_url(d)
    r = curl_h2c("-H", "Authorization: Bearer dummy", "-H", "Host: evil.example",
                 f"{url}/echo?n=1").ok()
    assert (r.status, http_version(r)) == (200, "2"), r.describe()
    assert ("authorization", "Bearer [REDACTED]") in echo_headers(r.json_body())
    r = curl_h2c(f"{url}/echo-auth").ok()
    assert (r.status, http_version(r), r.body) == (200, "2", REDACTED_AUTH), r.describe()
    body = os.urandom(256 * 1024)
    f = tmp_path / "body.bin"
    f.write_bytes(body)
    r = curl_h2c("--data-binary", f"@{f}", f"{url}/echo?post=1").ok()
    assert (r.status, http_version(r)) == (200, "2"), r.describe()
    assert r.json_body()["body_sha256"] == hashlib.sha256(body).hexdigest()
    reqs = upstream.wait_requests(3)
    assert [(x.method, x.target) for x in reqs] == [("GET", "/echo?n=1"), ("GET", "/echo-auth"),
                                                    ("POST", "/echo?post=1")]
    for x in reqs:
        assert_injected(x, secrets)   # the HTTP/1.1 origin: Host from :authority rewrite
    assert reqs[2].body == body


def test_h2c_many_streams_one_connection_and_per_stream_token(daemon, upstream, secrets,
                                                              gw_token):
    """One h2c connection (python3-h2): concurrent streams with and without
    the token are judged one by one; the connection survives the 401s."""
    d = daemon(gw_config(secrets, gateway_section("openai", token="env:GW_TOKEN")),
               env={"GW_TOKEN": gw_token})
    c = gwh.h2c_client(gw_port(d))
    try:
        assert c.remote_setting(SETTINGS_ENABLE_CONNECT_PROTOCOL) == 1
        plan = []
        for i in range(12):
            hdrs = [("authorization", "Bearer dummy")]
            if i % 3:
                hdrs.append(("x-agentvault-token", gw_token))
            plan.append((i, bool(i % 3), c.request("GET", f"/echo-auth?i={i}", scheme="http",
                                                   authority="evil.example", headers=hdrs)))
        sid = c.request("POST", "/echo?post=1", scheme="http", body=b"p" * 70000,
                        headers=[("x-agentvault-token", gw_token)])
        for i, ok, s in plan:
            st = c.response(s)
            if ok:
                assert (st.status, st.body) == (200, REDACTED_AUTH), st.describe()
            else:
                assert st.status == 401 and st.body == (GW_TOKEN_REASON + "\n").encode(), \
                    st.describe()
        st = c.response(sid)
        assert st.status == 200 and json.loads(st.body)["body_length"] == 70000, st.describe()
        assert not c.closed and c.goaway is None, c.state()
    finally:
        gwh.h2c_received(c)
        c.close()
    reqs = upstream.wait_requests(9)
    assert len(upstream.snapshot()) == 9
    assert sorted(x.target for x in reqs if x.method == "GET") == \
        sorted(f"/echo-auth?i={i}" for i in range(12) if i % 3)
    for x in reqs:
        assert_injected(x, secrets)


def test_h2c_nghttp_concurrent_posts_to_h1_upstream(daemon, upstream, secrets, tmp_path):
    d = daemon(gw_config(secrets))
    body = os.urandom(100_000)
    f = tmp_path / "post.bin"
    f.write_bytes(body)
    n = 8
    p = gwh.run_nghttp(["-v", "-n", "-t", "15", "-m", n, "-d", f, f"{gw_url(d)}/echo?ng=1",
                        "-H", "authorization: Bearer dummy"], home=tmp_path)
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, out[-3000:] + p.stderr.decode()
    assert "HTTP Upgrade" not in out, "nghttp used the h2c upgrade, not prior knowledge"
    assert gwh.nghttp_statuses(out) == [200] * n, out[-3000:]
    reqs = upstream.wait_requests(n)
    assert len(reqs) == n
    for x in reqs:
        assert_injected(x, secrets)
        assert (x.method, x.target, x.body) == ("POST", "/echo?ng=1", body)


def test_h2c_nghttp_streams_to_h2_upstream_multiplexed(daemon, h2_upstream, secrets, tmp_path):
    """20 concurrent h2c streams to the gateway, relayed as concurrent h2
    streams on one upstream connection, each injected."""
    o = h2_upstream
    d = daemon(gw_config(secrets), resolve=[f"{OPENAI}:443:127.0.0.1:{o.port}"])
    n, ms = 20, 500
    t0 = time.monotonic()
    p = gwh.run_nghttp(["-v", "-n", "-t", "15", "-m", n, f"{gw_url(d)}/slow?ms={ms}",
                        "-H", "authorization: Bearer dummy", "-H", "x-agentvault-token: stray"],
                       home=tmp_path)
    elapsed = time.monotonic() - t0
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, out[-3000:] + p.stderr.decode()
    assert gwh.nghttp_statuses(out) == [200] * n, out[-3000:]
    assert elapsed < n * ms / 1000 / 2, f"{n} streams of {ms} ms took {elapsed:.1f}s: not concurrent"
    reqs = o.wait_requests(n)
    assert len(reqs) == n
    for x in reqs:
        assert (x.authority, x.scheme, x.target) == (OPENAI, "https", f"/slow?ms={ms}")
        assert x.header_values("authorization") == [real(secrets)]
        assert x.header_values("x-agentvault-token") == []
    st = o.stats()
    assert st["connections_accepted"] == 1 and st["max_concurrent_streams_seen"] > 1, st


def test_h2c_curl_to_h2_upstream(daemon, h2_upstream, secrets, curl, curl_h2c):
    o = h2_upstream
    d = daemon(gw_config(secrets), resolve=[f"{OPENAI}:443:127.0.0.1:{o.port}"])
    url = gw_url(d)
    r = curl_h2c("-H", "Authorization: Bearer dummy", f"{url}/echo?a=1").ok()
    assert (r.status, http_version(r)) == (200, "2"), r.describe()
    doc = r.json_body()
    assert (doc["authority"], doc["path"]) == (OPENAI, "/echo?a=1")
    # and an HTTP/1.1 agent to the same h2 origin
    r = curl("-H", "Authorization: Bearer dummy", f"{url}/sse").ok()
    assert r.status == 200 and b"data: event-4" in r.body, r.describe()
    reqs = o.wait_requests(2)
    for x in reqs:
        assert x.header_values("authorization") == [real(secrets)] and x.authority == OPENAI


# ---- Python httpx --------------------------------------------------------------------

def test_httpx_base_url(daemon, upstream, secrets):
    d = daemon(gw_config(secrets))
    url = gw_url(d)
    with httpx.Client(base_url=url, trust_env=False, timeout=15,
                      headers={"Authorization": "Bearer dummy"}) as hc:
        r1 = hc.get("/echo", params={"a": "1"})
        r2 = hc.post("/echo", json={"model": "m", "input": "hi"})
        r3 = hc.post("/echo?gen=1", content=(p for p in [b"abc", b"def"]))  # chunked
        r4 = hc.get("/echo-auth")
    for r in (r1, r2, r3, r4):
        gwh.received(repr(r.headers.raw), r.content)
        assert r.status_code == 200 and r.http_version == "HTTP/1.1", (r, r.content)
    assert r4.content == REDACTED_AUTH
    assert r2.json()["body_length"] == len(json.dumps({"model": "m", "input": "hi"}))
    reqs = upstream.wait_requests(4)
    assert [(x.method, x.target) for x in reqs] == [("GET", "/echo?a=1"), ("POST", "/echo"),
                                                    ("POST", "/echo?gen=1"), ("GET", "/echo-auth")]
    for x in reqs:
        assert_injected(x, secrets)
    assert json.loads(reqs[1].body) == {"model": "m", "input": "hi"}
    assert reqs[1].header("Content-Type") == "application/json"
    assert reqs[2].body == b"abcdef"


def test_httpx_h2c_prior_knowledge(daemon, upstream, secrets):
    d = daemon(gw_config(secrets))
    with httpx.Client(base_url=gw_url(d), trust_env=False, timeout=15, http1=False,
                      http2=True) as hc:
        r1 = hc.get("/echo-auth", headers={"Authorization": "Bearer dummy"})
        r2 = hc.post("/echo", content=b"z" * 5000)
    for r in (r1, r2):
        gwh.received(repr(r.headers.raw), r.content)
        assert r.status_code == 200 and r.http_version == "HTTP/2", (r, r.content)
    assert r1.content == REDACTED_AUTH
    reqs = upstream.wait_requests(2)
    for x in reqs:
        assert_injected(x, secrets)
    assert reqs[1].body == b"z" * 5000


# ---- WebSocket -------------------------------------------------------------------------

def test_websocket_through_gateway(daemon, ws_upstream, upstream, secrets):
    """ws://gateway/... becomes wss://api.openai.com/... with the credential
    on the upgrade; messages both ways, subprotocol, close code."""
    d = daemon(gw_config(secrets), resolve=[f"{OPENAI}:443:127.0.0.1:{ws_upstream.port}"])
    big = os.urandom(300_000)

    async def body():
        ws = await ws_open(ws_url(d, "/echo?x=1"), [("Authorization", "Bearer dummy")],
                           subprotocols=["chat.v1"])
        assert ws.subprotocol == "chat.v1"
        assert ws.response_headers.get("X-Upstream-Ws") == "yes"
        await ws.send("hello through the gateway")
        assert await ws.recv() == "hello through the gateway"
        await ws.send(big)
        assert await ws.recv() == big
        await ws.close(4000, "bye")

    run_ws(body())
    conn = ws_upstream.wait_conn(0)
    assert conn.header_values("authorization") == [real(secrets)]
    assert conn.header("Host") == OPENAI and conn.target == "/echo?x=1"
    assert conn.header_values(TOKEN_HEADER) == []
    assert conn.messages == [("text", "hello through the gateway"), ("binary", big)]
    ws_upstream.wait(lambda: conn.ended and conn.close_code == 4000, 5, "close 4000")
    assert len(ws_upstream.conns()) == 1
    d.wait_log(lambda line: "path=/echo" in line and "status=101" in line)


def test_websocket_to_cleartext_upstream(daemon, upstream, secrets):
    """A gateway to http://host:port: the upgrade goes upstream as ws://,
    with the credential of the service that names scheme http and the port."""
    srv = WsUpstream(name="ws-plain").start()
    try:
        port = srv.port
        d = daemon(gw_config(secrets, gateway_section("plain", f"http://plain.test:{port}"),
                             extra=plain_service(port)),
                   extra_resolve=[f"plain.test:{port}:127.0.0.1"])

        async def body():
            ws = await ws_open(ws_url(d, "/echo", "plain"), [("Authorization", "Bearer dummy")])
            await ws.send("plain hello")
            assert await ws.recv() == "plain hello"
            await ws.close()

        run_ws(body())
        conn = srv.wait_conn(0)
        assert conn.header_values("authorization") == [f"Bearer {secrets.plain_key}"]
        assert conn.header("Host") == f"plain.test:{port}"
    finally:
        srv.stop()
    assert srv.handler_errors == [], srv.handler_errors


def test_websocket_over_h2c_extended_connect(daemon, ws_upstream, upstream, secrets):
    """RFC 8441 on an h2c gateway connection: the stream becomes a wss://
    upgrade upstream with the credential; frames are relayed both ways."""
    d = daemon(gw_config(secrets), resolve=[f"{OPENAI}:443:127.0.0.1:{ws_upstream.port}"])
    c = gwh.h2c_client(gw_port(d))
    try:
        assert c.remote_setting(SETTINGS_ENABLE_CONNECT_PROTOCOL) == 1
        sid = c.request("CONNECT", "/echo?h2=1", scheme="http", protocol="websocket",
                        end_stream=False, headers=[("sec-websocket-version", "13"),
                                                   ("authorization", "Bearer dummy")])
        st = c.streams[sid]
        c.wait(lambda: st.headers is not None or st.done, 10, "the CONNECT response")
        assert st.status == 200, st.describe()
        conn = ws_upstream.wait_conn(0)
        assert (conn.target, conn.status) == ("/echo?h2=1", 101)
        assert conn.header_values("authorization") == [real(secrets)]
        assert conn.header("Host") == OPENAI
        got, buf = [], bytearray()
        for op, payload in [(WS_TEXT, b"over h2c"), (WS_BINARY, os.urandom(70000))]:
            c.send_data(sid, ws_frame(op, payload))

            def echoed():
                buf.extend(st.data)
                st.data.clear()
                got.extend(ws_parse(buf))
                return got and got[-1][3] == payload
            c.wait(echoed, 10, "the echo")
            assert got[-1][1] == op and not got[-1][2], "bad frame from the gateway"
        assert conn.messages[0] == ("text", "over h2c") and len(conn.messages) == 2
    finally:
        gwh.h2c_received(c)
        c.close()


def test_websocket_off_gets_426_on_gateway(daemon, ws_upstream, upstream, secrets):
    svc = '[service "openai"]\nhost = api.openai.com\nauth = bearer\n' \
          'secret = env:OPENAI_API_KEY\nwebsocket = off\n'
    d = daemon(config_text(secrets, services=False, extra=svc + "\n" + gateway_section("openai")),
               resolve=[f"{OPENAI}:443:127.0.0.1:{ws_upstream.port}"])

    async def body():
        with pytest.raises(InvalidStatusCode) as ei:
            await ws_open(ws_url(d, "/echo"))
        return ei.value.status_code

    assert run_ws(body()) == 426
    assert ws_upstream.conns() == []


# ---- the gateway token ------------------------------------------------------------------

def test_token_required_http1(daemon, upstream, secrets, curl, gw_token):
    d = daemon(gw_config(secrets, gateway_section("openai", token="env:GW_TOKEN")),
               env={"GW_TOKEN": gw_token})
    url = gw_url(d)
    refused = [[], ["-H", f"{TOKEN_HEADER}: wrong"], ["-H", f"{TOKEN_HEADER}: {gw_token[:-1]}"],
               ["-H", f"{TOKEN_HEADER}: {gw_token}x"], ["-H", f"{TOKEN_HEADER};"],
               ["-H", f"Authorization: Bearer {gw_token}"],
               ["-H", f"Proxy-Authorization: Bearer {gw_token}"]]
    for args in refused:
        r = curl(*args, f"{url}/echo").ok()
        assert_curl_proxy_error(r, 401, mentions=TOKEN_HEADER)
        assert r.body == (GW_TOKEN_REASON + "\n").encode(), r.body
    assert upstream.snapshot() == [] and upstream.connections_accepted == 0, \
        "a request without the gateway token reached the upstream"
    r = curl("-H", f"{TOKEN_HEADER}: {gw_token}", "-H", "Authorization: Bearer dummy",
             f"{url}/echo").ok()
    assert r.status == 200, r.describe()
    assert not any(k == TOKEN_HEADER.lower() for k, _ in echo_headers(r.json_body()))
    r = curl("-H", f"x-agentvault-token: {gw_token}", f"{url}/echo-auth").ok()
    assert (r.status, r.body) == (200, REDACTED_AUTH), r.describe()
    for x in upstream.wait_requests(2):
        assert_injected(x, secrets)
    assert gw_token not in d.log_text(), "the gateway token appears in the daemon's output"
    audit = d.workdir / "audit.jsonl"
    assert gw_token not in (audit.read_text() if audit.exists() else "")


def test_token_checked_per_request_on_keepalive(daemon, upstream, secrets, gw_token):
    d = daemon(gw_config(secrets, gateway_section("openai", token="env:GW_TOKEN")),
               env={"GW_TOKEN": gw_token})
    c = GwConn.open(gw_port(d))
    try:
        r = c.request("GET", "/echo-auth", [(TOKEN_HEADER, gw_token)])
        assert (r.status, r.body) == (200, REDACTED_AUTH), r.raw_head
        r = c.request("GET", "/echo-auth", [(TOKEN_HEADER, gw_token), (TOKEN_HEADER, gw_token)])
        assert (r.status, r.body) == (200, REDACTED_AUTH), r.raw_head
        r = c.request("GET", "/echo-auth?second=1")
        assert_raw_proxy_error(r, 401, mentions=TOKEN_HEADER)
    finally:
        c.close()
    reqs = upstream.wait_requests(2)
    assert len(upstream.snapshot()) == 2, [x.target for x in upstream.snapshot()]
    for x in reqs:
        assert_injected(x, secrets)


def test_token_required_h2c(daemon, upstream, secrets, curl_h2c, gw_token, tmp_path):
    d = daemon(gw_config(secrets, gateway_section("openai", token="env:GW_TOKEN")),
               env={"GW_TOKEN": gw_token})
    url = gw_url(d)
    for args in ([], ["-H", f"{TOKEN_HEADER}: nope"]):
        r = curl_h2c(*args, f"{url}/echo").ok()
        assert http_version(r) == "2", r.describe()
        assert_curl_proxy_error(r, 401, mentions=TOKEN_HEADER)
    p = gwh.run_nghttp(["-v", "-n", "-m", "3", f"{url}/echo"], home=tmp_path)
    out = p.stdout.decode("utf-8", "replace")
    assert gwh.nghttp_statuses(out) == [401] * 3, out[-3000:]
    assert upstream.snapshot() == [] and upstream.connections_accepted == 0
    r = curl_h2c("-H", f"{TOKEN_HEADER}: {gw_token}", f"{url}/echo").ok()
    assert r.status == 200, r.describe()
    r = curl_h2c("-H", f"{TOKEN_HEADER}: {gw_token}", f"{url}/echo-auth").ok()
    assert (r.status, r.body) == (200, REDACTED_AUTH), r.describe()
    p = gwh.run_nghttp(["-v", "-n", "-m", "3", f"{url}/echo?ng=1", "-H",
                        f"x-agentvault-token: {gw_token}"], home=tmp_path)
    out = p.stdout.decode("utf-8", "replace")
    assert gwh.nghttp_statuses(out) == [200] * 3, out[-3000:]
    reqs = upstream.wait_requests(5)
    assert len(reqs) == 5
    for x in reqs:
        assert_injected(x, secrets)


def test_token_required_websocket(daemon, ws_upstream, upstream, secrets, gw_token):
    d = daemon(gw_config(secrets, gateway_section("openai", token="env:GW_TOKEN")),
               env={"GW_TOKEN": gw_token},
               resolve=[f"{OPENAI}:443:127.0.0.1:{ws_upstream.port}"])

    async def body():
        with pytest.raises(InvalidStatusCode) as ei:
            await ws_open(ws_url(d, "/echo"))
        assert ei.value.status_code == 401
        assert ws_upstream.conns() == []
        ws = await ws_open(ws_url(d, "/echo"), [(TOKEN_HEADER, gw_token)])
        await ws.send("with token")
        assert await ws.recv() == "with token"
        await ws.close()

    run_ws(body())
    conn = ws_upstream.wait_conn(0)
    assert conn.header_values("authorization") == [real(secrets)]
    assert conn.header_values(TOKEN_HEADER) == []
    assert len(ws_upstream.conns()) == 1


def test_token_source_unavailable(daemon, upstream, secrets, curl, gw_token, tmp_path):
    """An unresolvable gateway token stops the daemon at start (the message
    names the gateway), and a reload to one is refused (the old token stays)."""
    f = tmp_path / "unset.conf"
    f.write_text(gw_config(secrets, gateway_section("locked", token="env:GW_UNSET_TOKEN")))
    env = base_env(tmp_path)
    env.update(secrets.env())
    p = run_cli(["serve", "-c", f, "--listen", "127.0.0.1:0", "--state-dir", tmp_path / "st"],
                env=env, timeout=15)
    assert p.returncode == 1, f"rc={p.returncode} stderr={p.stderr!r}"
    assert "gateway locked" in p.stderr and "GW_UNSET_TOKEN" in p.stderr, p.stderr
    d = daemon(gw_config(secrets, gateway_section("openai", token="env:GW_TOKEN")),
               env={"GW_TOKEN": gw_token})
    url = gw_url(d)
    conf = d.workdir / "agentvault.conf"
    conf.write_text(conf.read_text().replace("env:GW_TOKEN", "env:GW_UNSET_TOKEN"))
    line = sighup(d, "reload failed")
    assert "GW_UNSET_TOKEN" in line, line
    r = curl("-H", f"{TOKEN_HEADER}: {gw_token}", f"{url}/echo-auth").ok()
    assert (r.status, r.body) == (200, REDACTED_AUTH), r.describe()
    assert curl(f"{url}/echo-auth").ok().status == 401


# ---- loopback-only clients -------------------------------------------------------------

def _refused(port, addr):
    """Connect from addr to addr:port and send a request: True when the
    connection is closed without a single byte of response."""
    c = GwConn.open(port, host=addr, source=addr)
    try:
        try:
            c.send(GwConn.head("GET", "/echo-auth"))
        except (BrokenPipeError, ConnectionResetError):
            return True
        return c.is_closed(5)
    finally:
        c.close()


def test_remote_client_refused_by_default(daemon, upstream, secrets, lan_addr):
    d = daemon(gw_config(secrets, gateway_section("lan", listen="0.0.0.0:0")))
    port = gw_port(d, "lan")
    assert gwh.gateways(d)["lan"][0] == "0.0.0.0", d.log_dump()
    assert _refused(port, lan_addr), f"a client from {lan_addr} got an answer"
    d.wait_log(lambda line: f"gateway lan refused a connection from {lan_addr}" in line)
    assert upstream.connections_accepted == 0
    # loopback clients on the same listener are served (any 127/8 source)
    for src in ("127.0.0.1", "127.0.0.9"):
        c = GwConn.open(port, host="127.0.0.1", source=src)
        try:
            r = c.request("GET", "/echo-auth")
        finally:
            c.close()
        assert (r.status, r.body) == (200, REDACTED_AUTH), r.raw_head
    reqs = upstream.wait_requests(2)
    assert len(upstream.snapshot()) == 2
    for x in reqs:
        assert_injected(x, secrets)


def test_remote_client_allowed_with_allow_remote(daemon, upstream, secrets, lan_addr):
    d = daemon(gw_config(secrets, gateway_section("lan", listen="0.0.0.0:0", allow_remote="yes")))
    c = GwConn.open(gw_port(d, "lan"), host=lan_addr, source=lan_addr)
    try:
        r = c.request("GET", "/echo-auth", [("Authorization", "Bearer dummy")])
    finally:
        c.close()
    assert (r.status, r.body) == (200, REDACTED_AUTH), r.raw_head
    assert_injected(upstream.only_request(), secrets)
    assert "refused a connection" not in d.log_text()


def test_ipv6_loopback_gateway(daemon, upstream, secrets):
    d = daemon(gw_config(secrets, gateway_section("v6", listen="[::1]:0")))
    port = gw_port(d, "v6")
    assert gwh.gateways(d)["v6"][0] == "[::1]", d.log_dump()
    c = GwConn.open(port, host="::1")
    try:
        r = c.request("GET", "/echo-auth")
    finally:
        c.close()
    assert (r.status, r.body) == (200, REDACTED_AUTH), r.raw_head
    assert_injected(upstream.only_request(), secrets)


# ---- refusals and configuration ---------------------------------------------------------

def test_connect_gets_405(daemon, upstream, secrets, curl):
    d = daemon(gw_config(secrets))
    port = gw_port(d)
    c = GwConn.open(port)
    try:
        r = c.request("CONNECT", "api.openai.com:443", host="api.openai.com:443")
    finally:
        c.close()
    assert_raw_proxy_error(r, 405, mentions="gateway")
    # curl that mistakes the gateway for a proxy
    r = curl("-x", f"http://127.0.0.1:{port}", "https://api.openai.com/echo")
    assert r.returncode != 0 and r.transfer.connect_status == 405, r.describe()
    assert upstream.snapshot() == [] and upstream.connections_accepted == 0


def test_absolute_form_gets_400(daemon, upstream, secrets, curl):
    d = daemon(gw_config(secrets))
    port = gw_port(d)
    for target in ("http://api.openai.com/echo", "https://api.openai.com/echo", "*"):
        c = GwConn.open(port)
        try:
            r = c.request("OPTIONS" if target == "*" else "GET", target, host="api.openai.com")
        finally:
            c.close()
        assert_raw_proxy_error(r, 400, mentions="origin-form")
    r = curl("-x", f"http://127.0.0.1:{port}", "http://api.openai.com/echo").ok()
    assert_curl_proxy_error(r, 400, mentions="origin-form")
    assert upstream.snapshot() == [] and upstream.connections_accepted == 0


def test_malformed_and_slow_heads_on_gateway(daemon, upstream, secrets):
    """The gateway parses like the proxy: h2c upgrade 400, oversized head
    431, a head that never completes 408 (header_timeout); HTTP/1.0 works."""
    d = daemon(gw_config(secrets, proxy_extra="header_timeout = 1"))
    port = gw_port(d)
    c = GwConn.open(port)
    try:
        r = c.request("GET", "/echo", [("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"),
                                       ("HTTP2-Settings", "AAMAAABkAAQAAP__")])
        assert_raw_proxy_error(r, 400, mentions="h2c")
    finally:
        c.close()
    c = GwConn.open(port)
    try:
        r = c.request("GET", "/echo", [("X-Big", "b" * 70000)])
        assert_raw_proxy_error(r, 431)
    finally:
        c.close()
    c = GwConn.open(port)
    try:
        c.send(b"GET /echo HTTP/1.1\r\nX-Slow: 1\r\n")
        t0 = time.monotonic()
        r = c.response()
        assert_raw_proxy_error(r, 408)
        assert time.monotonic() - t0 < 5
    finally:
        c.close()
    assert upstream.snapshot() == []
    c = GwConn.open(port)
    try:
        c.send(b"GET /echo-auth HTTP/1.0\r\n\r\n")
        r = c.response()
        assert (r.status, r.body) == (200, REDACTED_AUTH), r.raw_head
        assert c.is_closed(5), "an HTTP/1.0 exchange without keep-alive must end the connection"
    finally:
        c.close()
    assert_injected(upstream.only_request(), secrets)


def test_upstream_down_502(daemon, upstream, secrets, curl):
    with socket.socket() as s:   # a port with no listener
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    d = daemon(gw_config(secrets), resolve=[f"{OPENAI}:443:127.0.0.1:{dead}"])
    r = curl(f"{gw_url(d)}/echo").ok()
    assert_curl_proxy_error(r, 502)


CHECK_PREFIX = "[proxy]\nunmatched = passthrough\n\n"   # the gateway starts on line 4
GW_HEAD = '[gateway "g"]\n'
LISTEN = "listen = 127.0.0.1:0\n"
UP = "upstream = https://api.openai.com\n"
BAD_GATEWAYS = {
    # name: (section text, line named, words in the message)
    "no-upstream": (GW_HEAD + LISTEN, 4, "no upstream"),
    "no-listen": (GW_HEAD + UP, 4, "no listen"),
    "upstream-with-path": (GW_HEAD + LISTEN + "upstream = https://api.openai.com/v1\n", 6,
                           "no path"),
    "upstream-with-query": (GW_HEAD + LISTEN + "upstream = https://api.openai.com?x=1\n", 6,
                            "upstream"),
    "upstream-userinfo": (GW_HEAD + LISTEN + "upstream = https://u:p@api.openai.com\n", 6,
                          "upstream"),
    "upstream-ftp": (GW_HEAD + LISTEN + "upstream = ftp://api.openai.com\n", 6, "upstream"),
    "upstream-bare-host": (GW_HEAD + LISTEN + "upstream = api.openai.com\n", 6, "upstream"),
    "upstream-port-0": (GW_HEAD + LISTEN + "upstream = https://api.openai.com:0\n", 6,
                        "upstream"),
    "bad-allow-remote": (GW_HEAD + LISTEN + UP + "allow_remote = maybe\n", 7, "allow_remote"),
    "bad-listen": (GW_HEAD + "listen = nowhere\n" + UP, 5, "listen"),
    "token-not-a-reference": (GW_HEAD + LISTEN + UP + "token = hunter2\n", 7, "token"),
    "unknown-key": (GW_HEAD + LISTEN + UP + "frobnicate = 1\n", 7, "unknown key"),
    "duplicate-key": (GW_HEAD + LISTEN + UP + UP, 7, "duplicate"),
    "duplicate-name": (GW_HEAD + LISTEN + UP + "\n" + GW_HEAD + LISTEN + UP, 8, "duplicate"),
    "unnamed": ("[gateway]\n" + LISTEN + UP, 4, "gateway"),
}


@pytest.mark.parametrize("name", list(BAD_GATEWAYS))
def test_check_rejects_bad_gateway(tmp_path, name):
    text, line, words = BAD_GATEWAYS[name]
    f = tmp_path / "bad.conf"
    f.write_text(CHECK_PREFIX + text)
    p = run_cli(["check", "-c", f], env=base_env(tmp_path))
    msg = p.stderr.strip()
    assert p.returncode == 1, f"rc={p.returncode} stdout={p.stdout!r} stderr={p.stderr!r}"
    assert "\n" not in msg, f"not one line: {msg!r}"
    assert f"bad.conf:{line}:" in msg, f"the message does not name line {line}: {msg!r}"
    assert words.lower() in msg.lower(), msg


def test_check_accepts_gateways(tmp_path, secrets):
    f = tmp_path / "good.conf"
    f.write_text(gw_config(secrets, gateway_section("openai", token="env:GW_TOKEN"),
                           gateway_section("remote", "https://api.github.com:8443", "0.0.0.0:0",
                                           allow_remote="yes"),
                           gateway_section("plain", "http://plain.test:8080", "[::1]:0"),
                           gateway_section("slash", "https://api.openai.com/")))
    env = base_env(tmp_path)
    env.update(secrets.env())
    p = run_cli(["check", "-c", f], env=env)
    assert p.returncode == 0, f"stdout={p.stdout!r} stderr={p.stderr!r}"


def test_gateway_port_in_use_fails_start(tmp_path, secrets):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        f = tmp_path / "busy.conf"
        f.write_text(gw_config(secrets, gateway_section("busy", listen=f"127.0.0.1:{port}")))
        env = base_env(tmp_path)
        env.update(secrets.env())
        p = run_cli(["serve", "-c", f, "--listen", "127.0.0.1:0", "--state-dir", tmp_path / "st"],
                    env=env, timeout=15)
    assert p.returncode == 1, f"rc={p.returncode} stderr={p.stderr!r}"
    assert f"127.0.0.1:{port}" in p.stderr and "in use" in p.stderr.lower(), p.stderr


def test_two_gateways_to_different_upstreams(daemon, upstream, plain_upstream, secrets, curl):
    pport = plain_upstream.port
    d = daemon(gw_config(secrets, gateway_section("openai"),
                         gateway_section("github", "https://api.github.com"),
                         gateway_section("plain", f"http://plain.test:{pport}"),
                         extra=plain_service(pport)),
               extra_resolve=[f"plain.test:{pport}:127.0.0.1"])
    ports = {gw_port(d, n) for n in ("openai", "github", "plain")}
    gws = gwh.gateways(d)
    assert len(ports) == 3, gws
    assert gws["plain"][2] == f"http://plain.test:{pport}"
    r = curl("-H", "Authorization: Bearer dummy", f"{gw_url(d, 'openai')}/echo-auth").ok()
    assert r.body == REDACTED_AUTH, r.describe()
    r = curl("-H", "Authorization: Bearer dummy", f"{gw_url(d, 'github')}/repos/o/r").ok()
    assert r.status == 404, r.describe()
    # github's service covers /repos/* only: elsewhere the agent's header passes
    r = curl("-H", "Authorization: Bearer agent-own", f"{gw_url(d, 'github')}/echo-auth").ok()
    assert r.body == b"Bearer agent-own\n", r.describe()
    r = curl("-H", "Authorization: Bearer dummy", f"{gw_url(d, 'plain')}/echo?p=1").ok()
    assert r.status == 200, r.describe()
    a, b, c = upstream.wait_requests(3)
    assert_injected(a, secrets)
    assert (b.header("Host"), b.path, auth_values(b)) == ("api.github.com", "/repos/o/r",
                                                           [f"token {secrets.github_token}"])
    assert (c.header("Host"), auth_values(c)) == ("api.github.com", ["Bearer agent-own"])
    rec = plain_upstream.only_request()
    assert (rec.header("Host"), rec.target) == (f"plain.test:{pport}", "/echo?p=1")
    assert auth_values(rec) == [f"Bearer {secrets.plain_key}"]


def test_serviceless_upstream_passes_through(daemon, upstream, secrets, curl):
    d = daemon(gw_config(secrets, gateway_section("other", "https://upstream.test"),
                         gateway_section("odd", "https://api.openai.com:8443")),
               extra_resolve=[f"{OPENAI}:8443:127.0.0.1:{upstream.port}"])
    r = curl("-H", "Authorization: Bearer agent-own", f"{gw_url(d, 'other')}/echo-auth").ok()
    assert (r.status, r.body) == (200, b"Bearer agent-own\n"), r.describe()
    # a bare service host means port 443 only: no credential for :8443
    r = curl("-H", "Authorization: Bearer agent-own", f"{gw_url(d, 'odd')}/echo-auth").ok()
    assert (r.status, r.body) == (200, b"Bearer agent-own\n"), r.describe()
    a, b = upstream.wait_requests(2)
    assert (a.header("Host"), auth_values(a)) == ("upstream.test", ["Bearer agent-own"])
    assert (b.header("Host"), auth_values(b)) == (f"{OPENAI}:8443", ["Bearer agent-own"])
    assert upstream.tls_handshakes_ok == 2


def test_serviceless_upstream_denied_with_unmatched_deny(daemon, upstream, secrets, curl):
    d = daemon(gw_config(secrets, gateway_section("other", "https://upstream.test"),
                         gateway_section("openai"), unmatched="deny"))
    r = curl("-H", "Authorization: Bearer agent-own", f"{gw_url(d, 'other')}/echo").ok()
    assert_curl_proxy_error(r, 403, json_body=True)
    assert upstream.snapshot() == [] and upstream.connections_accepted == 0
    # a matched service on the same daemon is served
    r = curl(f"{gw_url(d, 'openai')}/echo-auth").ok()
    assert r.body == REDACTED_AUTH, r.describe()
    assert_injected(upstream.only_request(), secrets)


def test_ssrf_guard_applies_to_gateway_upstream(daemon, upstream, secrets, curl):
    cfg = gw_config(secrets, gateway_section("ip", f"https://127.0.0.1:{upstream.port}"))
    d = daemon(cfg)
    r = curl(f"{gw_url(d, 'ip')}/echo").ok()
    assert_curl_proxy_error(r, 403, mentions="not allowed")
    assert upstream.connections_accepted == 0
    d.stop()
    d = daemon(gw_config(secrets, gateway_section("ip", f"https://127.0.0.1:{upstream.port}"),
                         proxy_extra="allow_private = 127.0.0.1/32"))
    r = curl("-H", "Authorization: Bearer agent-own", f"{gw_url(d, 'ip')}/echo-auth").ok()
    assert (r.status, r.body) == (200, b"Bearer agent-own\n"), r.describe()
    assert upstream.only_request().header("Host") == f"127.0.0.1:{upstream.port}"


def test_bad_upstream_certificate_502_and_nothing_sent(daemon, bad_cert_upstream, secrets, curl):
    bad = bad_cert_upstream
    d = daemon(gw_config(secrets), resolve=[f"{OPENAI}:443:127.0.0.1:{bad.port}"])
    r = curl("-H", "Authorization: Bearer dummy", f"{gw_url(d)}/echo").ok()
    assert_curl_proxy_error(r, 502, mentions="certificate")
    assert wait_until(lambda: bad.connections_accepted >= 1), "the gateway never dialed"
    assert not bad.http_bytes_received and bad.snapshot() == []


def test_audit_and_metrics_count_gateway_exchanges(daemon, upstream, secrets, curl):
    d = daemon(gw_config(secrets))
    url = gw_url(d)
    for _ in range(3):
        assert curl(f"{url}/echo-auth").ok().status == 200
    assert curl(f"{url}/status/404").ok().status == 404
    audit = d.workdir / "audit.jsonl"
    assert wait_until(lambda: audit.exists() and len(audit.read_text().splitlines()) >= 4)
    recs = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(x["service"], x["host"], x["path"], x["status"]) for x in recs] == \
        [("openai", "api.openai.com:443", "/echo-auth", 200)] * 3 + \
        [("openai", "api.openai.com:443", "/status/404", 404)]
    assert all(x["injected"] == ["env:OPENAI_API_KEY"] for x in recs), recs
    assert all(x["gateway"] == "openai" for x in recs), recs
    # a proxied exchange names no gateway
    r = d.curl("https://api.openai.com/echo-auth").ok()
    assert r.status == 200, r.describe()
    assert wait_until(lambda: len(audit.read_text().splitlines()) >= 5)
    assert json.loads(audit.read_text().splitlines()[4])["gateway"] is None
    m = curl(f"http://127.0.0.1:{d.port}/metrics").ok()
    text = m.body.decode()
    assert 'agentvault_exchanges_total{service="openai",status="200"} 4' in text, text
    assert 'agentvault_exchanges_total{service="openai",status="404"} 1' in text, text


def test_sigterm_drains_gateway_exchange(daemon, upstream, secrets, client_home):
    """SIGTERM: the gateway stops accepting, an idle keep-alive connection is
    closed, an SSE response in flight finishes, the daemon exits 0."""
    d = daemon(gw_config(secrets))
    port = gw_port(d)
    idle = GwConn.open(port)
    sc = client.StreamingCurl([f"http://127.0.0.1:{port}/sse"], home=client_home, timeout=30)
    try:
        assert idle.request("GET", "/echo-auth").status == 200
        sc.wait_line(SSE_FIRST.rstrip(b"\n"), 5)
        d.signal(signal.SIGTERM)
        d.wait_log(lambda line: "shutting down" in line)
        assert idle.is_closed(5), "an idle gateway connection stayed open after SIGTERM"
        assert wait_until(lambda: _connect_refused(port), 5), "the gateway still accepts"
        upstream.release_sse()
        sc.wait_line(SSE_SECOND.rstrip(b"\n"), 5)
        assert sc.finish() == 0, sc.stderr
    finally:
        sc.kill()
        idle.close()
        gwh.received(*sc.seen)
    assert d.wait(12) == 0, d.log_dump()


def _connect_refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


# ---- SIGHUP ------------------------------------------------------------------------------

def _drop_gateway(text):
    return text.split('[gateway "openai"]')[0]


MUTATIONS = {
    "upstream": lambda t: t.replace("upstream = https://api.openai.com",
                                    "upstream = https://api.github.com"),
    "listen": lambda t: t.replace("listen = 127.0.0.1:0", "listen = 127.0.0.2:0"),
    "allow_remote": lambda t: t.replace("upstream = https://api.openai.com\n",
                                        "upstream = https://api.openai.com\nallow_remote = yes\n"),
    "renamed": lambda t: t.replace('[gateway "openai"]', '[gateway "openai2"]'),
    "added": lambda t: t + "\n" + gateway_section("extra", "https://api.github.com"),
    "removed": _drop_gateway,
}


@pytest.mark.parametrize("change", list(MUTATIONS))
def test_reload_refuses_gateway_changes(daemon, upstream, secrets, curl, change):
    d = daemon(gw_config(secrets))
    url = gw_url(d)
    assert curl(f"{url}/echo-auth").ok().body == REDACTED_AUTH
    conf = d.workdir / "agentvault.conf"
    orig = conf.read_text()
    new = MUTATIONS[change](orig)
    assert new != orig
    conf.write_text(new)
    line = sighup(d, "reload failed")
    assert "gateways" in line and "cannot change on reload" in line, line
    assert "configuration reloaded" not in d.log_text()
    # the running gateway is unchanged
    r = curl("-H", "Authorization: Bearer dummy", f"{url}/echo-auth").ok()
    assert (r.status, r.body) == (200, REDACTED_AUTH), r.describe()
    assert_injected(upstream.wait_requests(2)[1], secrets)
    assert list(gwh.gateways(d)) == ["openai"]
    # back to the running configuration: accepted
    conf.write_text(orig)
    sighup(d, "configuration reloaded")
    assert curl(f"{url}/echo-auth").ok().body == REDACTED_AUTH


def test_reload_changes_gateway_token(daemon, upstream, secrets, curl, gw_token):
    t2 = "gwtok2-" + _secrets.token_hex(16)
    d = daemon(gw_config(secrets, gateway_section("openai", token="env:GW_TOKEN")),
               env={"GW_TOKEN": gw_token, "GW_TOKEN2": t2})
    url = gw_url(d)
    conf = d.workdir / "agentvault.conf"

    def status(tok):
        args = ["-H", f"{TOKEN_HEADER}: {tok}"] if tok else []
        return curl(*args, f"{url}/echo-auth").ok().status

    assert (status(gw_token), status(t2), status(None)) == (200, 401, 401)
    conf.write_text(conf.read_text().replace("token = env:GW_TOKEN\n", "token = env:GW_TOKEN2\n"))
    sighup(d, "configuration reloaded")
    assert (status(gw_token), status(t2), status(None)) == (401, 200, 401)
    # token removed: the gateway is open
    conf.write_text(conf.read_text().replace("token = env:GW_TOKEN2\n", ""))
    sighup(d, "configuration reloaded")
    assert status(None) == 200
    # token added back (from a file)
    tfile = d.workdir / "gw_token"
    tfile.write_text(gw_token + "\n")
    d_file = conf.read_text().replace("upstream = https://api.openai.com\n",
                                      f"upstream = https://api.openai.com\ntoken = file:{tfile}\n")
    conf.write_text(d_file)
    sighup(d, "configuration reloaded")
    assert (status(gw_token), status(None)) == (200, 401)
    # a token change together with a refused change: nothing applies
    conf.write_text(d_file.replace(f"token = file:{tfile}", "token = env:GW_TOKEN2")
                    .replace("upstream = https://api.openai.com", "upstream = https://api.github.com"))
    sighup(d, "reload failed")
    assert (status(gw_token), status(t2)) == (200, 401)
    for x in upstream.snapshot():
        assert_injected(x, secrets)
    assert gw_token not in d.log_text() and t2 not in d.log_text()


def test_reload_service_change_applies_to_gateway(daemon, upstream, secrets, curl):
    d = daemon(gw_config(secrets))
    url = gw_url(d)
    assert curl(f"{url}/echo-auth").ok().status == 200
    conf = d.workdir / "agentvault.conf"
    conf.write_text(conf.read_text().replace("secret = env:OPENAI_API_KEY",
                                             "secret = env:PLAIN_API_KEY"))
    sighup(d, "configuration reloaded")
    r = curl(f"{url}/echo-auth").ok()
    assert (r.status, r.body) == (200, REDACTED_AUTH), r.describe()
    a, b = upstream.wait_requests(2)
    assert auth_values(a) == [real(secrets)]
    assert auth_values(b) == [f"Bearer {secrets.plain_key}"]


# ---- the real Codex CLI ------------------------------------------------------------------

# Anything that would route Codex through a proxy or make it trust our CA.
NOT_FOR_CODEX = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE",
                 "SSL_CERT_DIR", "CODEX_CA_CERTIFICATE", "NODE_EXTRA_CA_CERTS",
                 "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def _gateway_vault(daemon, fake, websocket_off=False):
    return daemon(config=openai_service_config(websocket_off) + "\n" + gateway_section("openai"),
                  resolve=[f"{OPENAI}:443:127.0.0.1:{fake.port}"])


def _codex_via_gateway(d, codex, codex_home, word):
    env, _home, work = codex_home
    bad = [k for k in env if k.upper() in NOT_FOR_CODEX]
    assert not bad, f"Codex must run without proxy or CA variables: {bad}"
    base = f"{gw_url(d)}/v1"
    argv = [codex, *tc._codex_flags(codex), "-c", f'openai_base_url="{base}"', tc._prompt(word)]
    return run_bounded(argv, env=env, cwd=work, timeout=tc.CODEX_TIMEOUT)


def test_codex_websocket_through_gateway(codex, daemon, fake_factory, codex_home, secrets, word):
    """`codex exec -c openai_base_url=http://127.0.0.1:PORT/v1`, no proxy, no CA:
    the turn goes over the Responses WebSocket, upgraded to wss:// by the
    gateway with the real key; nothing leaks."""
    fake = fake_factory(reply_text=word)
    d = _gateway_vault(daemon, fake)
    r = _codex_via_gateway(d, codex, codex_home, word)
    ctx = f"{r.describe()}\n{fake.describe()}\nauth: {tc._auth_kinds(fake, secrets)}"
    tc._assert_printed(r, word)
    assert not tc.WS_CONNECT_FAILED.search(r.stderr), f"codex could not open the WebSocket\n{ctx}"
    assert fake.by_transport("sse") == [], f"codex fell back to SSE\n{ctx}"
    assert fake.by_transport("ws-refused") == [], ctx
    assert fake.count("ws_turns") == 1, f"the turn did not arrive over WebSocket\n{ctx}"
    assert all(x.tls for x in fake.snapshot()), f"the gateway reached the server in cleartext\n{ctx}"
    (up,) = fake.by_transport("ws")
    assert up.header("host") == OPENAI and up.path == "/v1/responses", ctx
    tc._assert_real_key_everywhere(fake, secrets, ctx)
    tc._assert_no_leaks(r, codex_home[1], secrets)
    d.wait_log(lambda line: "path=/v1/responses" in line and "status=101" in line)


def test_codex_sse_through_gateway_when_websocket_off(codex, daemon, fake_factory, codex_home,
                                                     secrets, word):
    """`websocket = off`: the gateway answers Codex's upgrade 426, Codex uses
    SSE (POST /v1/responses) over the gateway at once, with the real key."""
    fake = fake_factory(reply_text=word)
    d = _gateway_vault(daemon, fake, websocket_off=True)
    r = _codex_via_gateway(d, codex, codex_home, word)
    ctx = f"{r.describe()}\n{fake.describe()}\nauth: {tc._auth_kinds(fake, secrets)}"
    tc._assert_printed(r, word)
    assert fake.by_transport("ws") == [] and fake.by_transport("ws-refused") == [], \
        f"a WebSocket upgrade reached the server despite websocket = off\n{ctx}"
    assert fake.count("sse_turns") == 1, f"the turn did not arrive over SSE\n{ctx}"
    assert r.elapsed < 20, f"codex took {r.elapsed:.1f}s: it did not fall back at once\n{ctx}"
    assert all(x.tls for x in fake.snapshot()), ctx
    (sse,) = fake.by_transport("sse")
    assert (sse.method, sse.path, sse.header("host")) == ("POST", "/v1/responses", OPENAI), ctx
    assert word in sse.body.decode("utf-8", "replace"), "the prompt is not in the POST body"
    tc._assert_real_key_everywhere(fake, secrets, ctx)
    d.wait_log(lambda line: "status=426" in line)
    tc._assert_no_leaks(r, codex_home[1], secrets)


# ---- reload and connections already open ----------------------------------------------

def test_reload_token_change_applies_to_open_keepalive_connection(daemon, upstream, secrets, gw_token):
    """A keep-alive connection does not keep a token that a reload replaced."""
    t2 = "gwtok2-" + _secrets.token_hex(16)
    d = daemon(gw_config(secrets, gateway_section("openai", token="env:GW_TOKEN")),
               env={"GW_TOKEN": gw_token, "GW_TOKEN2": t2})
    conf = d.workdir / "agentvault.conf"
    c = GwConn.open(gw_port(d))
    try:
        r = c.request("GET", "/echo-auth", [(TOKEN_HEADER, gw_token)])
        assert (r.status, r.body) == (200, REDACTED_AUTH), r.raw_head
        conf.write_text(conf.read_text().replace("token = env:GW_TOKEN\n", "token = env:GW_TOKEN2\n"))
        sighup(d, "configuration reloaded")
        r = c.request("GET", "/echo-auth?old", [(TOKEN_HEADER, gw_token)])
        assert_raw_proxy_error(r, 401, mentions=TOKEN_HEADER)
    finally:
        c.close()
    c = GwConn.open(gw_port(d))
    try:
        r = c.request("GET", "/echo-auth?new", [(TOKEN_HEADER, t2)])
        assert (r.status, r.body) == (200, REDACTED_AUTH), r.raw_head
    finally:
        c.close()
    assert [x.target for x in upstream.snapshot()] == ["/echo-auth", "/echo-auth?new"]


def test_reload_revokes_proxy_token_of_open_tunnel(daemon, upstream, secrets):
    """A CONNECT tunnel authenticated with a proxy token stops working when a
    reload removes that token: the next request in it gets 407, nothing more
    reaches the origin, and the connection closes."""
    d = daemon(config_text(secrets, tokens=True))
    conf = d.workdir / "agentvault.conf"
    t = token_tunnel(d, secrets)
    try:
        r = tunnel_get(t, "/echo-auth")
        assert (r.status, r.body) == (200, REDACTED_AUTH), r.raw_head
        conf.write_text(conf.read_text().replace('[token "agent1"]\nsecret = env:AGENT1_TOKEN\n', ""))
        assert "[token" not in conf.read_text()
        sighup(d, "configuration reloaded")
        r = tunnel_get(t, "/echo-auth?after")
        assert_raw_proxy_error(r, 407, mentions="revoked")
        assert t.is_closed(), "the tunnel stayed open after its token was revoked"
    finally:
        t.close()
    assert [x.target for x in upstream.snapshot()] == ["/echo-auth"]


def test_reload_keeps_unchanged_proxy_token_of_open_tunnel(daemon, upstream, secrets):
    """A reload that leaves the tunnel's token alone does not disturb it, and
    service changes apply to its next request."""
    d = daemon(config_text(secrets, tokens=True))
    conf = d.workdir / "agentvault.conf"
    t = token_tunnel(d, secrets)
    try:
        r = tunnel_get(t, "/echo-auth")
        assert (r.status, r.body) == (200, REDACTED_AUTH), r.raw_head
        # drop the openai service: the next request passes through uninjected
        text = conf.read_text()
        start = text.index('[service "openai"]')
        end = text.index("[service", start + 1)
        conf.write_text(text[:start] + text[end:])
        sighup(d, "configuration reloaded")
        r = tunnel_get(t, "/echo-auth?after")
        assert r.status == 200, r.raw_head
        assert secrets.openai_key.encode() not in r.body
    finally:
        t.close()
    reqs = upstream.wait_requests(2)
    assert auth_values(reqs[0]) == [f"Bearer {secrets.openai_key}"]
    assert auth_values(reqs[1]) == []


def token_tunnel(d, secrets):
    """A CONNECT tunnel to api.openai.com authenticated with the suite's proxy token."""
    auth = "Basic " + base64.b64encode(f"agent:{secrets.agent_token}".encode()).decode()
    return tls_tunnel(d, connect_headers=[("Proxy-Authorization", auth)])


def tunnel_get(t, target):
    t.send(f"GET {target} HTTP/1.1\r\nHost: api.openai.com\r\n\r\n".encode())
    r = t.read_response()
    gwh.received(r.raw_head, r.body)
    return r


def test_reload_accepts_equivalent_upstream_spelling(daemon, upstream, secrets, curl):
    """The upstream is compared as an origin: ':443', case and a trailing
    slash are the same gateway."""
    d = daemon(gw_config(secrets, gateway_section("openai")))
    url = gw_url(d)
    conf = d.workdir / "agentvault.conf"
    conf.write_text(conf.read_text().replace("upstream = https://api.openai.com\n",
                                             "upstream = https://API.openai.com:443/\n"))
    sighup(d, "configuration reloaded")
    assert curl(f"{url}/echo-auth").ok().body == REDACTED_AUTH
    conf.write_text(conf.read_text().replace("upstream = https://API.openai.com:443/\n",
                                             "upstream = https://api.openai.com:8443\n"))
    line = sighup(d, "reload failed")
    assert "gateways" in line, line


def test_reload_revokes_proxy_token_of_open_h2_tunnel(daemon, upstream, secrets):
    """The same over HTTP/2 inside the tunnel: after the reload every new
    stream on the connection gets 407."""
    d = daemon(config_text(secrets, tokens=True))
    conf = d.workdir / "agentvault.conf"
    auth = "Basic " + base64.b64encode(f"agent:{secrets.agent_token}".encode()).decode()
    c = H2Client(h2_open_tls(d.port, d.ca_pem, "api.openai.com",
                             connect_headers=[("Proxy-Authorization", auth)]))
    try:
        c.wait_settings()
        r = c.get("/echo-auth")
        gwh.received(repr(r.headers), r.body)
        assert (r.status, r.body) == (200, REDACTED_AUTH), r.describe()
        conf.write_text(conf.read_text().replace('[token "agent1"]\nsecret = env:AGENT1_TOKEN\n', ""))
        sighup(d, "configuration reloaded")
        for path in ("/echo-auth?a", "/echo-auth?b"):
            r = c.get(path)
            gwh.received(repr(r.headers), r.body)
            assert r.status == 407, r.describe()
    finally:
        c.close()
    assert [x.target for x in upstream.snapshot()] == ["/echo-auth"]


def test_https_to_gateway_fails_at_once(daemon, upstream, secrets, curl):
    """An https:// URL on a plain-HTTP gateway: the TLS ClientHello is
    answered at once (400, then close) and logged with the reason, instead
    of waiting for the header timeout; nothing reaches the upstream."""
    d = daemon(gw_config(secrets, proxy_extra="header_timeout = 30"))
    port = gw_port(d)
    t0 = time.monotonic()
    r = curl("--max-time", "10", f"https://127.0.0.1:{port}/echo")
    took = time.monotonic() - t0
    assert r.returncode != 0, r.describe()
    assert took < 10, f"curl waited {took:.1f}s"  # not the 30 s header timeout
    assert wait_until(lambda: "speaks plain HTTP" in d.log_text()), d.log_dump()
    assert upstream.connections_accepted == 0
