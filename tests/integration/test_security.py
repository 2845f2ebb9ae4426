"""Refusals: misdirected and malformed requests, deny policy, SSRF guard,
upstream certificate verification, proxy authentication, SNI checks."""
import base64
import ssl

import pytest

from avtest import client
from avtest.checks import (assert_curl_proxy_error, assert_raw_proxy_error, auth_values,
                           no_proxy_headers, tls_tunnel, wait_until)
from avtest.daemon import config_text, plain_service

RAW_TIMEOUT = 6.0

MALFORMED = {
    "content-length-and-chunked":
        b"GET {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bare-lf": b"GET {path} HTTP/1.1\nHost: {host}\n\n",
    "obs-fold": b"GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Folded: a\r\n b\r\n\r\n",
    "conflicting-content-length":
        b"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\n"
        b"Content-Length: 2\r\n\r\nab",
}


def malformed(name, host, path):
    return MALFORMED[name].replace(b"{host}", host.encode()).replace(b"{path}", path.encode())


def tunnel_exchange(d, target, sni, request):
    """CONNECT target; if refused returns ("connect", response); otherwise TLS
    with `sni`, sends request and returns ("inner", response)."""
    c, resp = client.connect_tunnel(d.port, target, timeout=RAW_TIMEOUT)
    try:
        if resp.status != 200:
            return "connect", resp
        c.start_tls(d.ca_pem, sni)
        c.send(request)
        return "inner", c.read_response()
    finally:
        c.close()


def test_host_header_differs_from_connect_target_421(daemon, upstream):
    d = daemon()
    r = d.curl("-H", "Host: api.github.com", "https://api.openai.com/repos/a/b").ok()
    assert_curl_proxy_error(r, 421)
    assert upstream.snapshot() == []


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_request_in_tunnel_400_and_closed(daemon, upstream, name):
    d = daemon()
    c = tls_tunnel(d)
    try:
        c.sock.settimeout(RAW_TIMEOUT)
        c.send(malformed(name, "api.openai.com", "/echo"))
        resp = c.read_response()
        assert_raw_proxy_error(resp, 400)
        assert c.is_closed(RAW_TIMEOUT), "connection left open after a malformed request"
    finally:
        c.close()
    assert upstream.snapshot() == []


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_request_to_proxy_400_and_closed(daemon, name):
    d = daemon()
    c = client.RawConn.connect(d.port, timeout=RAW_TIMEOUT)
    try:
        c.send(malformed(name, f"127.0.0.1:{d.port}", "/healthz"))
        resp = c.read_response()
        assert_raw_proxy_error(resp, 400)
        assert c.is_closed(RAW_TIMEOUT), "connection left open after a malformed request"
    finally:
        c.close()


def test_deny_unmatched_request_on_service_host(daemon, upstream, secrets):
    d = daemon(config_text(secrets, unmatched="deny"))
    ok = d.curl("https://api.github.com/repos/a/b").ok()  # matches the github service
    assert ok.status == 404
    r = d.curl("-X", "PUT", "https://api.github.com/repos/a/b").ok()
    assert_curl_proxy_error(r, 403, json_body=True)
    assert [(q.method, q.target) for q in upstream.snapshot()] == [("GET", "/repos/a/b")]


def test_deny_unmatched_absolute_form(daemon, plain_upstream, secrets):
    port = plain_upstream.port
    d = daemon(config_text(secrets, unmatched="deny"),
               extra_resolve=[f"plain.test:{port}:127.0.0.1"])
    r = d.curl(f"http://plain.test:{port}/echo").ok()
    assert_curl_proxy_error(r, 403, json_body=True)
    assert plain_upstream.connections_accepted == 0


def test_deny_unmatched_host_via_connect(daemon, upstream, secrets):
    """upstream.test has no service: refused with 403 + JSON, either on the
    CONNECT itself or on the first request inside the tunnel."""
    d = daemon(config_text(secrets, unmatched="deny"))
    where, resp = tunnel_exchange(d, "upstream.test:443", "upstream.test",
                                  b"GET /echo HTTP/1.1\r\nHost: upstream.test\r\n\r\n")
    assert_raw_proxy_error(resp, 403, json_body=True)
    assert upstream.snapshot() == []


@pytest.mark.parametrize("target", ["localhost-plain-port", "localhost-tls-port"])
def test_ssrf_hosts_file_loopback_blocked(daemon, upstream, plain_upstream, target):
    d = daemon()
    port = plain_upstream.port if target == "localhost-plain-port" else upstream.port
    r = d.curl("-H", "Authorization: Bearer agent-own", f"https://localhost:{port}/echo").ok()
    assert r.transfer.connect_status == 200, r.describe()
    assert_curl_proxy_error(r, 403, mentions="not allowed")
    assert plain_upstream.connections_accepted == 0
    assert upstream.connections_accepted == 0


def test_ssrf_ip_literal_loopback_blocked(daemon, upstream):
    d = daemon()
    where, resp = tunnel_exchange(d, f"127.0.0.1:{upstream.port}", "127.0.0.1",
                                  f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{upstream.port}"
                                  f"\r\n\r\n".encode())
    assert_raw_proxy_error(resp, 403, mentions="not allowed")
    assert upstream.connections_accepted == 0


def test_ssrf_allow_private_permits_loopback(daemon, upstream, secrets):
    """Positive control for the two tests above."""
    d = daemon(config_text(secrets, proxy_extra="allow_private = 127.0.0.0/8"))
    r = d.curl(f"https://localhost:{upstream.port}/echo").ok()
    assert r.status == 200, r.describe()
    assert upstream.only_request().header("Host") == f"localhost:{upstream.port}"


def test_bad_upstream_certificate_502_and_nothing_sent(daemon, bad_cert_upstream, secrets):
    bad = bad_cert_upstream
    d = daemon(resolve=[f"api.openai.com:443:127.0.0.1:{bad.port}"])
    r = d.curl("https://api.openai.com/echo").ok()
    assert_curl_proxy_error(r, 502, mentions="certificate")
    assert wait_until(lambda: bad.connections_accepted >= 1), "the proxy never dialed"
    assert not bad.http_bytes_received, "request bytes reached an unverified upstream"
    assert bad.snapshot() == []


def _auth_config(secrets, plain_port=None):
    extra = plain_service(plain_port) if plain_port else ""
    return config_text(secrets, tokens=True, extra=extra)


@pytest.mark.parametrize("form", ["connect", "absolute-form"])
@pytest.mark.parametrize("cred", [None, "Basic agent:wrong", "Bearer wrong",
                                  "Basic agent:{token}x"],
                         ids=["none", "basic-wrong", "bearer-wrong", "basic-token-suffix"])
def test_proxy_auth_required_407(daemon, upstream, plain_upstream, secrets, form, cred):
    port = plain_upstream.port
    d = daemon(_auth_config(secrets, port), extra_resolve=[f"plain.test:{port}:127.0.0.1"])
    hdr = ""
    if cred:
        scheme, value = cred.split(" ", 1)
        value = value.replace("{token}", secrets.agent_token)
        if scheme == "Basic":
            value = base64.b64encode(value.encode()).decode()
        hdr = f"Proxy-Authorization: {scheme} {value}\r\n"
    if form == "connect":
        req, method = "CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n", \
            "CONNECT"
    else:
        req, method = (f"GET http://plain.test:{port}/echo HTTP/1.1\r\n"
                       f"Host: plain.test:{port}\r\n"), "GET"
    c = client.RawConn.connect(d.port, timeout=RAW_TIMEOUT)
    try:
        c.send((req + hdr + "\r\n").encode())
        resp = c.read_response(method=method)
    finally:
        c.close()
    assert_raw_proxy_error(resp, 407)
    assert resp.header("Proxy-Authenticate") == 'Basic realm="agentvault"'
    assert upstream.snapshot() == [] and plain_upstream.snapshot() == []


def test_proxy_auth_basic_token_as_password(daemon, upstream, secrets, proxy_scheme):
    d = daemon(_auth_config(secrets))
    r = d.curl("https://api.openai.com/echo", scheme=proxy_scheme,
               userinfo=f"agent:{secrets.agent_token}").ok()
    assert r.status == 200, r.describe()
    rec = upstream.only_request()
    assert auth_values(rec) == [f"Bearer {secrets.openai_key}"]
    assert no_proxy_headers(rec) == []


def test_proxy_auth_bearer_header(daemon, upstream, secrets):
    d = daemon(_auth_config(secrets))
    r = d.curl("--proxy-header", f"Proxy-Authorization: Bearer {secrets.agent_token}",
               "https://api.openai.com/echo").ok()
    assert r.status == 200, r.describe()
    assert no_proxy_headers(upstream.only_request()) == []


def test_proxy_authorization_not_forwarded_absolute_form(daemon, plain_upstream, secrets):
    port = plain_upstream.port
    d = daemon(_auth_config(secrets, port), extra_resolve=[f"plain.test:{port}:127.0.0.1"])
    r = d.curl(f"http://plain.test:{port}/echo", userinfo=f"agent:{secrets.agent_token}").ok()
    assert r.status == 200, r.describe()
    rec = plain_upstream.only_request()
    assert no_proxy_headers(rec) == []
    assert auth_values(rec) == [f"Bearer {secrets.plain_key}"]
    assert secrets.agent_token not in str(rec.headers)


def test_proxy_authorization_inside_tunnel_not_forwarded(daemon, upstream, secrets):
    d = daemon(_auth_config(secrets))
    cred = base64.b64encode(f"agent:{secrets.agent_token}".encode()).decode()
    r = d.curl("-H", f"Proxy-Authorization: Basic {cred}", "https://upstream.test/echo",
               userinfo=f"agent:{secrets.agent_token}").ok()
    assert r.status == 200, r.describe()
    rec = upstream.only_request()
    assert no_proxy_headers(rec) == []
    assert cred not in str(rec.headers)


def test_sni_differing_from_connect_host_fails_handshake(daemon, upstream):
    d = daemon()
    c, resp = client.connect_tunnel(d.port, "api.openai.com:443", timeout=RAW_TIMEOUT)
    try:
        assert resp.status == 200
        ctx = ssl.create_default_context(cafile=str(d.ca_pem))
        ctx.check_hostname = False  # only the proxy may make this handshake fail
        try:
            s = ctx.wrap_socket(c.sock, server_hostname="evil.test")
        except (ssl.SSLError, ConnectionResetError):
            pass
        else:
            s.close()
            pytest.fail("TLS handshake with SNI evil.test inside CONNECT api.openai.com "
                        "succeeded")
    finally:
        c.close()
    assert upstream.snapshot() == []


def _metric(d, name):
    import re
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(r"^" + re.escape(name) + r" (\d+)$", text, re.M)
    assert m, f"{name} missing from /metrics:\n{text}"
    return int(m.group(1))


@pytest.mark.parametrize("target,why", [
    ("127.0.0.2:443", "loopback"),
    ("[::1]:443", "loopback"),
    ("169.254.169.254:80", "cloud metadata"),
    ("[::ffff:10.0.0.1]:443", "private"),
    ("[64:ff9b::a9fe:a9fe]:443", "cloud metadata"),
    ("0.0.0.0:443", "unspecified"),
    ("own-port", "this proxy"),
])
def test_ssrf_refused_at_connect(daemon, target, why):
    """Issue 12 item 6: an address literal the guard refuses is answered 403
    at the CONNECT itself (no tunnel, no leaf minted), with the dial-time
    reason and one exchange log line."""
    d = daemon()
    if target == "own-port":
        target = f"127.0.0.1:{d.port}"
    misses = _metric(d, "agentvault_leaf_cache_misses_total")
    c, resp = client.connect_tunnel(d.port, target, timeout=RAW_TIMEOUT)
    try:
        assert_raw_proxy_error(resp, 403, mentions="not allowed")
        assert why in resp.header("X-Agentvault-Error"), resp.raw_head
        assert c.is_closed(), "the connection stays open after a refused CONNECT"
    finally:
        c.close()
    assert _metric(d, "agentvault_leaf_cache_misses_total") == misses
    line = d.wait_log(lambda t: "exchange method=CONNECT" in t and "status=403" in t)
    assert line


def test_ssrf_refused_absolute_form_literal(daemon):
    d = daemon()
    c = client.RawConn.connect(d.port, timeout=RAW_TIMEOUT)
    try:
        c.send(b"GET http://127.0.0.2/x HTTP/1.1\r\nHost: 127.0.0.2\r\n\r\n")
        resp = c.read_response()
    finally:
        c.close()
    assert_raw_proxy_error(resp, 403, mentions="not allowed")
    assert "loopback" in resp.header("X-Agentvault-Error")


def test_ssrf_allow_private_literal_allowed_at_connect(daemon, upstream, secrets):
    """Positive control: an allow-listed range passes at CONNECT exactly as at
    dial time; the proxy's own listener stays refused."""
    d = daemon(config_text(secrets, proxy_extra="allow_private = 127.0.0.0/8"))
    where, resp = tunnel_exchange(d, f"127.0.0.1:{upstream.port}", "127.0.0.1",
                                  f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{upstream.port}"
                                  f"\r\n\r\n".encode())
    assert (where, resp.status) == ("inner", 200), resp.raw_head
    c, resp = client.connect_tunnel(d.port, f"127.0.0.1:{d.port}", timeout=RAW_TIMEOUT)
    c.close()
    assert_raw_proxy_error(resp, 403, mentions="this proxy")
