"""The SOCKS5 front on the proxy's port (RFC 1928, RFC 1929): a first byte
0x05 (in the clear or inside TLS to the proxy) starts a SOCKS5 negotiation
whose CONNECT opens the same tunnel an HTTP CONNECT does (MITM, cleartext
HTTP, opaque for passthrough hosts), with the proxy token as the RFC 1929
password, SSRF refusals as REP 02, and BIND / UDP ASSOCIATE / SOCKS4 /
unknown address types refused. Real clients: curl (--socks5-hostname,
socks5h://), Python requests (PySocks) and httpx (socksio)."""
import json
import socket
import ssl
import struct
import time

import pytest

from avtest import client
from avtest.checks import auth_values, wait_until
from avtest.daemon import config_text, plain_service

RAW_TIMEOUT = 6.0
PY = "/usr/bin/python3"


# ---- helpers -----------------------------------------------------------------

def socks_curl(d, *args, proxy=None, userinfo=None, http2=False, cacert=None):
    """curl through the daemon as a SOCKS5 proxy (names sent: socks5h)."""
    pre = []
    if proxy is None:
        ui = f"{userinfo}@" if userinfo else ""
        pre += ["-x", f"socks5h://{ui}127.0.0.1:{d.port}"]
    else:
        pre += list(proxy)
    pre += ["--cacert", str(cacert or d.ca_pem)]
    if http2:
        pre.append("--http2")
    return client.run_curl(pre + list(args), home=d.home)


def audit_records(d):
    path = d.workdir / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def raw(d, timeout=RAW_TIMEOUT):
    return client.RawConn.connect(d.port, timeout=timeout)


def greet(c, methods=b"\x00"):
    c.send(b"\x05" + bytes([len(methods)]) + methods)
    return c.read_exact(2)


def name_request(host, port, cmd=1):
    h = host.encode()
    return b"\x05" + bytes([cmd]) + b"\x00\x03" + bytes([len(h)]) + h + struct.pack(">H", port)


def ipv4_request(ip, port, cmd=1):
    return b"\x05" + bytes([cmd]) + b"\x00\x01" + socket.inet_aton(ip) + struct.pack(">H", port)


def read_reply(c):
    r = c.read_exact(10)
    assert r[0] == 5 and r[2] == 0 and r[3] == 1, f"not a SOCKS5 reply: {r!r}"
    return r[1]


def socks_open(d, host, port, userinfo=None, over_tls=False):
    """A negotiated SOCKS5 CONNECT to host:port (a name); returns the RawConn
    (its socket is the tunnel)."""
    c = raw(d)
    if over_tls:
        ctx = ssl.create_default_context(cafile=str(d.ca_pem))
        c.sock = ctx.wrap_socket(c.sock, server_hostname="127.0.0.1")
    if userinfo:
        assert greet(c, b"\x02") == b"\x05\x02"
        user, pw = (s.encode() for s in userinfo)
        c.send(b"\x01" + bytes([len(user)]) + user + bytes([len(pw)]) + pw)
        assert c.read_exact(2) == b"\x01\x00"
    else:
        assert greet(c) == b"\x05\x00"
    c.send(name_request(host, port))
    assert read_reply(c) == 0
    return c


class TLSOver:
    """TLS over an existing (possibly TLS) socket, with memory BIOs: the
    MITM layer inside SOCKS5-over-TLS."""

    def __init__(self, sock, cafile, server_hostname, alpn=("http/1.1",)):
        ctx = ssl.create_default_context(cafile=str(cafile))
        ctx.set_alpn_protocols(list(alpn))
        self.sock = sock
        self.inb, self.outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inb, self.outb, server_hostname=server_hostname)
        self._io(self.obj.do_handshake)

    def _flush(self):
        data = self.outb.read()
        if data:
            self.sock.sendall(data)

    def _io(self, fn, *a):
        while True:
            try:
                r = fn(*a)
                self._flush()
                return r
            except ssl.SSLWantReadError:
                self._flush()
                data = self.sock.recv(65536)
                if not data:
                    self.inb.write_eof()
                else:
                    self.inb.write(data)

    def send(self, data):
        self._io(self.obj.write, data)

    def recv(self, n=65536):
        try:
            return self._io(self.obj.read, n)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""


def read_http_response(recv):
    """A whole HTTP/1.1 response with Content-Length from a recv function."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = recv()
        assert d, f"closed before a response head: {buf!r}"
        buf += d
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
    cl = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
    while len(body) < cl:
        d = recv()
        assert d, "closed inside the body"
        body += d
    return status, headers, body[:cl]


# ---- curl: MITM (h1, h2), cleartext, passthrough -----------------------------

@pytest.mark.parametrize("how", ["socks5h-url", "socks5-hostname"])
@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
def test_curl_socks5h_mitm_injects(daemon, upstream, secrets, how, http2):
    d = daemon()
    proxy = None if how == "socks5h-url" else ["--socks5-hostname", f"127.0.0.1:{d.port}"]
    r = socks_curl(d, "-H", "Authorization: Bearer dummy", "https://api.openai.com/echo",
                   proxy=proxy, http2=http2).ok()
    assert r.status == 200, r.describe()
    assert r.transfer.info.get("http_version") == ("2" if http2 else "1.1"), r.transfer.info
    rec = upstream.only_request()
    assert (rec.method, rec.target) == ("GET", "/echo")
    assert auth_values(rec) == [f"Bearer {secrets.openai_key}"]
    assert rec.header("Host") == "api.openai.com"
    # the audit record of the exchange inside the SOCKS tunnel
    recs = [x for x in audit_records(d) if x["path"] == "/echo"]
    assert len(recs) == 1, audit_records(d)
    a = recs[0]
    assert (a["method"], a["host"], a["status"], a["service"], a["end"]) == \
        ("GET", "api.openai.com:443", 200, "openai", "complete"), a
    assert a["injected"] == ["env:OPENAI_API_KEY"]
    assert a["proto"] == ("h2>h1" if http2 else "h1>h1")


def test_curl_socks5h_cleartext_http(daemon, plain_upstream, secrets):
    port = plain_upstream.port
    d = daemon(config_text(secrets, extra=plain_service(port)),
               extra_resolve=[f"plain.test:{port}:127.0.0.1"])
    r = socks_curl(d, f"http://plain.test:{port}/echo").ok()
    assert r.status == 200, r.describe()
    rec = plain_upstream.only_request()
    assert auth_values(rec) == [f"Bearer {secrets.plain_key}"]
    assert rec.header("Host") == f"plain.test:{port}"


def test_curl_socks5h_host_mismatch_421(daemon, upstream, secrets):
    """Inside a SOCKS tunnel, Host must equal the SOCKS destination."""
    d = daemon()
    r = socks_curl(d, "-H", "Host: api.github.com", "https://api.openai.com/echo").ok()
    assert r.status == 421, r.describe()
    assert upstream.snapshot() == []


def test_socks_passthrough_host_is_opaque(daemon, upstream, secrets, test_ca):
    """A passthrough host is relayed untouched: the client sees the origin's
    own certificate (test CA), not a leaf of ours."""
    d = daemon(config_text(secrets, proxy_extra="passthrough = upstream.test"))
    r = socks_curl(d, "https://upstream.test/echo", cacert=test_ca.ca_pem).ok()
    assert r.status == 200, r.describe()
    assert auth_values(upstream.only_request()) == []
    d.wait_log(lambda line: "mode=opaque via=socks5" in line and "upstream.test:443" in line)


def test_socks_tunnel_neither_tls_nor_http_closed(daemon, upstream):
    d = daemon()
    c = socks_open(d, "upstream.test", 443)
    try:
        c.send(b"\x00\x01binary")
        assert c.is_closed(RAW_TIMEOUT)
    finally:
        c.close()
    assert upstream.connections_accepted == 0


def test_socks_pipelined_request_and_client_hello(daemon, upstream, secrets):
    """Greeting, request and the first bytes of the tunnel in one write: the
    tunnel bytes are kept for the sniff."""
    d = daemon()
    c = raw(d)
    try:
        c.send(b"\x05\x01\x00" + name_request("upstream.test", 80) +
               b"GET /echo HTTP/1.1\r\nHost: upstream.test:80\r\nConnection: close\r\n\r\n")
        assert c.read_exact(2) == b"\x05\x00"
        assert read_reply(c) == 0
        resp = c.read_response()
        # upstream.test:80 has no origin here: what matters is that the
        # pipelined request was read as HTTP inside the tunnel
        assert resp.status == 502 and resp.header("X-Agentvault-Error"), resp
    finally:
        c.close()
    d.wait_log(lambda line: "method=GET host=upstream.test:80 path=/echo" in line)


# ---- proxy tokens ----------------------------------------------------------------

def test_socks_token_right_wrong_absent(daemon, upstream, secrets):
    d = daemon(config_text(secrets, tokens=True))
    ok = socks_curl(d, "https://api.openai.com/echo", userinfo=f"agent:{secrets.agent_token}").ok()
    assert ok.status == 200, ok.describe()
    assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]
    # any user name; the token is the password
    ok2 = socks_curl(d, "https://api.openai.com/echo", userinfo=f"whoever:{secrets.agent_token}").ok()
    assert ok2.status == 200, ok2.describe()
    wrong = socks_curl(d, "https://api.openai.com/echo", userinfo="agent:not-the-token")
    assert wrong.returncode == 97, wrong.describe()
    assert "User was rejected by the SOCKS5 server" in wrong.stderr, wrong.describe()
    absent = socks_curl(d, "https://api.openai.com/echo")
    assert absent.returncode == 97, absent.describe()
    assert "No authentication method was acceptable" in absent.stderr, absent.describe()
    assert len(upstream.snapshot()) == 2
    recs = audit_records(d)
    good = [x for x in recs if x["status"] == 200]
    assert [x["token"] for x in good] == ["agent1", "agent1"], recs
    refused = [x for x in recs if x["status"] == 407]
    assert len(refused) == 2, recs
    for x in refused:
        assert x["proto"] == "socks5>-" and x["end"] == "refused" and x["token"] is None, x
        assert "SOCKS5" in x["error"]
    assert any("wrong proxy token" in x["error"] for x in refused)
    assert any("proxy token required" in x["error"] for x in refused)
    log = d.log_text()
    assert "not-the-token" not in log and "not-the-token" not in json.dumps(recs)


def test_socks_token_raw_negotiation(daemon, secrets):
    """RFC 1929 on the wire: 05 02 chosen, 01 00 / 01 01 answers, and a
    client offering only no-auth gets 05 FF."""
    d = daemon(config_text(secrets, tokens=True))
    c = raw(d)
    try:
        assert greet(c, b"\x00\x02") == b"\x05\x02"
        tok = secrets.agent_token.encode()
        c.send(b"\x01\x00" + bytes([len(tok)]) + tok)  # an empty user name is fine
        assert c.read_exact(2) == b"\x01\x00"
        c.send(name_request("api.openai.com", 443))
        assert read_reply(c) == 0
    finally:
        c.close()
    c = raw(d)
    try:
        assert greet(c, b"\x00") == b"\x05\xff"
        assert c.is_closed(RAW_TIMEOUT)
    finally:
        c.close()
    c = raw(d)
    try:
        assert greet(c, b"\x02") == b"\x05\x02"
        c.send(b"\x01\x05agent\x03bad")
        assert c.read_exact(2) == b"\x01\x01"
        assert c.is_closed(RAW_TIMEOUT)
    finally:
        c.close()


def test_socks_no_tokens_userpass_only_client_accepted(daemon, upstream, secrets):
    """Without proxy tokens a client that offers only username/password (E2B
    always sends credentials) is accepted whatever it sends."""
    d = daemon()
    c = socks_open(d, "api.openai.com", 443, userinfo=("e2b", "anything"))
    c.close()


# ---- refusals ----------------------------------------------------------------

@pytest.mark.parametrize("cmd,name", [(2, "BIND"), (3, "UDP-ASSOCIATE")])
def test_socks_bind_udp_refused_07(daemon, cmd, name):
    d = daemon()
    c = raw(d)
    try:
        assert greet(c) == b"\x05\x00"
        c.send(ipv4_request("0.0.0.0", 0, cmd=cmd))
        assert read_reply(c) == 7
        assert c.is_closed(RAW_TIMEOUT)
    finally:
        c.close()
    d.wait_log(lambda line: "socks5" in line and f"method={name}" in line and "status=405" in line)
    recs = audit_records(d)
    assert [(x["method"], x["status"], x["end"], x["proto"]) for x in recs] == \
        [(name, 405, "refused", "socks5>-")], recs


def test_socks_unknown_atyp_08(daemon):
    d = daemon()
    c = raw(d)
    try:
        assert greet(c) == b"\x05\x00"
        c.send(b"\x05\x01\x00\x09abcdef")
        assert read_reply(c) == 8
        assert c.is_closed(RAW_TIMEOUT)
    finally:
        c.close()


@pytest.mark.parametrize("bad", [b"a..b", b"bad name", b"x\x00y", b"evil\r\nHost: x", b""])
def test_socks_invalid_name_refused(daemon, bad):
    d = daemon()
    c = raw(d)
    try:
        assert greet(c) == b"\x05\x00"
        c.send(b"\x05\x01\x00\x03" + bytes([len(bad)]) + bad + b"\x01\xbb")
        assert read_reply(c) == 1
        assert c.is_closed(RAW_TIMEOUT)
    finally:
        c.close()


def test_socks4_refused_5b(daemon):
    d = daemon()
    c = raw(d)
    try:
        c.send(b"\x04\x01\x01\xbb\x7f\x00\x00\x01agent\x00")
        assert c.read_exact(8) == b"\x00\x5b\x00\x00\x00\x00\x00\x00"
        assert c.is_closed(RAW_TIMEOUT)
    finally:
        c.close()
    r = client.run_curl(["-x", f"socks4a://127.0.0.1:{d.port}", "http://example.test/"],
                        home=d.home)
    assert r.returncode == 97 and "91" in r.stderr, r.describe()


def test_socks_garbage_after_greeting(daemon, upstream):
    d = daemon()
    c = raw(d)
    try:
        assert greet(c) == b"\x05\x00"
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_reply(c) == 1
        assert c.is_closed(RAW_TIMEOUT)
    finally:
        c.close()
    c = raw(d)
    try:
        c.send(b"\x05\x00")  # NMETHODS 0
        assert c.is_closed(RAW_TIMEOUT) and c.buf == b""
    finally:
        c.close()
    assert upstream.connections_accepted == 0


def test_socks_slow_greeting_header_timeout(daemon, secrets):
    """The negotiation as a whole runs under header_timeout from its first
    byte: a client dribbling a long greeting is closed."""
    d = daemon(config_text(secrets, proxy_extra="header_timeout = 1"))
    c = raw(d, timeout=10)
    try:
        c.send(b"\x05\xff")  # 255 methods announced
        closed = False
        for i in range(40):  # one byte every 0.25 s would take 64 s
            try:
                c.send(bytes([i % 2]))
            except OSError:
                closed = True
                break
            time.sleep(0.25)
            if c.is_closed(0.01):
                closed = True
                break
        assert closed, "a dribbling SOCKS5 greeting was not closed"
    finally:
        c.close()
    d.wait_log(lambda line: "SOCKS5 negotiation did not finish within header_timeout" in line)


def test_socks_stalled_after_greeting_closed(daemon, secrets):
    d = daemon(config_text(secrets, proxy_extra="header_timeout = 1"))
    c = raw(d, timeout=10)
    try:
        assert greet(c) == b"\x05\x00"
        c.send(b"\x05\x01")  # a request begun, never finished
        assert c.is_closed(8)
    finally:
        c.close()


def test_socks_ssrf_literal_refused_02(daemon, secrets):
    """Destinations the SSRF guard refuses at CONNECT time: REP 02 and a
    record with end refused; curl's IP-literal URL (ATYP 01) and a name
    that is an address literal (ATYP 03) alike."""
    d = daemon()
    c = raw(d)
    try:
        assert greet(c) == b"\x05\x00"
        c.send(name_request("169.254.169.254", 80))
        assert read_reply(c) == 2
        assert c.is_closed(RAW_TIMEOUT)
    finally:
        c.close()
    c = raw(d)
    try:
        assert greet(c) == b"\x05\x00"
        c.send(ipv4_request("10.0.0.1", 443))
        assert read_reply(c) == 2
    finally:
        c.close()
    r = socks_curl(d, f"http://127.0.0.1:{d.port}/healthz")
    assert r.returncode == 97, r.describe()
    recs = audit_records(d)
    assert [(x["method"], x["host"], x["status"], x["end"], x["proto"]) for x in recs] == [
        ("CONNECT", "169.254.169.254:80", 403, "refused", "socks5>-"),
        ("CONNECT", "10.0.0.1:443", 403, "refused", "socks5>-"),
        ("CONNECT", f"127.0.0.1:{d.port}", 403, "refused", "socks5>-")], recs
    assert "not allowed" in recs[0]["error"] and "this proxy" in recs[2]["error"]


def test_socks_ipv6_literal_destination(daemon):
    d = daemon()
    c = raw(d)
    try:
        assert greet(c) == b"\x05\x00"
        c.send(b"\x05\x01\x00\x04" + socket.inet_pton(socket.AF_INET6, "::1") + b"\x01\xbb")
        assert read_reply(c) == 2  # loopback: refused by the SSRF guard
    finally:
        c.close()
    (rec,) = audit_records(d)
    assert rec["host"] == "[::1]:443" and rec["status"] == 403


# ---- SOCKS5 over TLS to the proxy --------------------------------------------------

def test_socks_over_tls_mitm(daemon, upstream, secrets):
    """TLS to the proxy, SOCKS5 inside it, then the MITM TLS inside that."""
    d = daemon(config_text(secrets, tokens=True))
    c = socks_open(d, "api.openai.com", 443, userinfo=("agent", secrets.agent_token), over_tls=True)
    try:
        t = TLSOver(c.sock, d.ca_pem, "api.openai.com")
        t.send(b"GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nConnection: close\r\n\r\n")
        status, _h, body = read_http_response(t.recv)
        assert status == 200
        client.RECEIVED.append(body)
    finally:
        c.close()
    assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]


def test_socks_over_tls_cleartext_inner(daemon, plain_upstream, secrets):
    port = plain_upstream.port
    d = daemon(config_text(secrets, extra=plain_service(port)),
               extra_resolve=[f"plain.test:{port}:127.0.0.1"])
    c = socks_open(d, "plain.test", port, over_tls=True)
    try:
        c.send(f"GET /echo HTTP/1.1\r\nHost: plain.test:{port}\r\nConnection: close\r\n\r\n".encode())
        resp = c.read_response()
        assert resp.status == 200
        client.RECEIVED.append(resp.body)
    finally:
        c.close()
    assert auth_values(plain_upstream.only_request()) == [f"Bearer {secrets.plain_key}"]


# ---- Python clients ----------------------------------------------------------

REQUESTS_SCRIPT = r"""
import sys, requests
proxy, ca, url = sys.argv[1:4]
r = requests.get(url, proxies={"https": proxy, "http": proxy}, verify=ca, timeout=20)
print(r.status_code)
"""

HTTPX_SCRIPT = r"""
import sys, httpx
proxy, ca, url = sys.argv[1:4]
with httpx.Client(proxies=proxy, verify=ca, timeout=20) as c:
    r = c.get(url)
print(r.status_code, r.http_version)
"""


def _py(script, *args):
    import subprocess
    p = subprocess.run([PY, "-c", script, *map(str, args)], capture_output=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "LANG": "C"})
    client.RECEIVED.append(p.stdout + p.stderr)
    return p


@pytest.mark.parametrize("with_token", [False, True], ids=["open", "token"])
def test_python_requests_socks5h(daemon, upstream, secrets, with_token):
    d = daemon(config_text(secrets, tokens=with_token))
    ui = f"agent:{secrets.agent_token}@" if with_token else ""
    p = _py(REQUESTS_SCRIPT, f"socks5h://{ui}127.0.0.1:{d.port}", d.ca_pem,
            "https://api.openai.com/echo")
    assert p.returncode == 0 and p.stdout.split() == [b"200"], p.stderr.decode()[-3000:]
    assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]


def test_python_httpx_socks5(daemon, upstream, secrets):
    """httpx 0.23 + socksio: its socks5:// sends the name (ATYP 03)."""
    d = daemon()
    p = _py(HTTPX_SCRIPT, f"socks5://127.0.0.1:{d.port}", d.ca_pem, "https://api.openai.com/echo")
    assert p.returncode == 0 and p.stdout.split() == [b"200", b"HTTP/1.1"], p.stderr.decode()[-3000:]
    assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]
    d.wait_log(lambda line: "socks5 peer=" in line and "CONNECT api.openai.com:443 (address type 3)" in line)


def test_metrics_count_socks_exchanges(daemon, upstream, secrets):
    d = daemon()
    assert socks_curl(d, "https://api.openai.com/echo").ok().status == 200

    def scrape():
        r = client.run_curl([f"http://127.0.0.1:{d.port}/metrics"], home=d.home).ok()
        return r.text
    wait_until(lambda: 'service="openai"' in scrape())


# ---- agentvault run --socks ----------------------------------------------------

def _run(args, env, timeout=30):
    import subprocess
    from avtest import daemon as avd
    cmd = [str(avd.require_binary()), "run"] + [str(a) for a in args]
    return subprocess.run(cmd, env=env, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _run_env(tmp_path, d, **extra):
    from avtest import daemon as avd
    home = tmp_path / "run-home"
    home.mkdir(exist_ok=True)
    env = avd.base_env(home)
    env.update({"TMPDIR": str(tmp_path), "LANG": "C"}, **extra)
    return env


@pytest.mark.parametrize("with_token", [False, True], ids=["open", "token"])
def test_run_socks_env_and_curl(daemon, upstream, secrets, tmp_path, with_token):
    """--socks puts socks5h:// URLs (with the token) in ALL_PROXY/all_proxy,
    keeps http:// in the others, and a client using ALL_PROXY goes through
    the SOCKS front with the token."""
    d = daemon(config_text(secrets, tokens=with_token))
    env = _run_env(tmp_path, d, OUT=str(tmp_path))
    if with_token:
        env["AGENTVAULT_TOKEN"] = secrets.agent_token
    script = ('env -0 > "$OUT/env"; '
              'curl -sS -x "$ALL_PROXY" -o "$OUT/body" -w "%{http_code}" https://api.openai.com/echo')
    p = _run(["--proxy", f"http://127.0.0.1:{d.port}", "--socks", "--", "/bin/sh", "-c", script], env)
    client.RECEIVED.append(p.stdout + p.stderr + (tmp_path / "body").read_bytes())
    assert p.returncode == 0 and p.stdout == b"200", p.stderr.decode()[-2000:]
    raw_env = (tmp_path / "env").read_bytes()
    child = dict(item.decode().split("=", 1) for item in raw_env.split(b"\0") if item)
    ui = f"agent:{secrets.agent_token}@" if with_token else ""
    for k in ("ALL_PROXY", "all_proxy"):
        assert child[k] == f"socks5h://{ui}127.0.0.1:{d.port}", k
    for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "WSS_PROXY"):
        assert child[k] == f"http://{ui}127.0.0.1:{d.port}", k
    assert child["AGENTVAULT_PROXY"] == f"http://127.0.0.1:{d.port}"
    assert secrets.agent_token.encode() not in p.stderr
    assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]
    d.wait_log(lambda line: "CONNECT api.openai.com:443 (address type 3)" in line)
    if with_token:
        (rec,) = audit_records(d)
        assert rec["token"] == "agent1" and rec["status"] == 200


def test_run_without_socks_all_proxy_stays_http(daemon, secrets, tmp_path):
    d = daemon()
    env = _run_env(tmp_path, d, OUT=str(tmp_path))
    p = _run(["--proxy", f"http://127.0.0.1:{d.port}", "--", "/bin/sh", "-c", 'env -0 > "$OUT/env"'], env)
    assert p.returncode == 0, p.stderr.decode()
    child = dict(item.decode().split("=", 1) for item in (tmp_path / "env").read_bytes().split(b"\0") if item)
    assert child["ALL_PROXY"] == child["all_proxy"] == f"http://127.0.0.1:{d.port}"
    h = _run(["--help"], env)
    assert b"[--socks]" in h.stdout


# ---- Codex over socks5h ----------------------------------------------------------

@pytest.fixture(params=["0.131.0", "latest"])
def codex_bin(request):
    import os
    import test_codex as tc
    path = tc.CODEX_INSTALLS[request.param]
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"Codex {request.param} is not installed at {path}: run scripts/setup-node.sh",
                    pytrace=False)
    return path


def test_codex_websocket_over_socks5h(codex_bin, daemon, test_ca, tmp_path, secrets):
    """The real Codex CLI with only ALL_PROXY=socks5h://agent:TOKEN@… (what
    `agentvault run --socks` hands out; the http:// variables removed): its
    Responses WebSocket goes through the SOCKS front (names sent), the real
    key is injected on the upgrade, and the turn completes over it."""
    import test_codex as tc
    from avtest import daemon as avd
    from avtest.fake_openai import FakeOpenAI, openai_service_config, run_bounded
    word = "socks" + secrets.agent_token[-8:]
    fake = FakeOpenAI(test_ca.server_cert, test_ca.server_key, reply_text=word).start()
    try:
        cfg = openai_service_config() + '\n[token "agent1"]\nsecret = env:AGENT1_TOKEN\n'
        d = daemon(config=cfg, resolve=[f"api.openai.com:443:127.0.0.1:{fake.port}"])
        home = tmp_path / "codex-user"
        (home / ".codex").mkdir(parents=True)
        work = tmp_path / "codex-work"
        work.mkdir()
        env = avd.base_env(home)
        env.update({"CODEX_HOME": str(home / ".codex"), "CODEX_API_KEY": tc.PLACEHOLDER,
                    "LANG": "C.UTF-8", "AGENTVAULT_TOKEN": secrets.agent_token})
        argv = [avd.require_binary(), "run", "--proxy", f"http://127.0.0.1:{d.port}", "--socks", "--",
                "/usr/bin/env", "-u", "HTTPS_PROXY", "-u", "https_proxy", "-u", "HTTP_PROXY",
                "-u", "http_proxy", "-u", "WSS_PROXY", "-u", "wss_proxy",
                codex_bin, *tc._codex_flags(codex_bin), f"Reply exactly: {word}"]
        r = run_bounded(argv, env=env, cwd=work, timeout=tc.CODEX_TIMEOUT)
    finally:
        fake.stop()
    ctx = f"{r.describe()}\n{fake.describe()}\n{d.log_dump()}"
    assert r.returncode == 0 and word in r.stdout.split(), ctx
    assert not tc.WS_CONNECT_FAILED.search(r.stderr), ctx
    assert fake.count("ws_turns") == 1 and fake.by_transport("sse") == [], ctx
    assert fake.errors == [], ctx
    auths = [(x.transport, x.header_values("authorization")) for x in fake.snapshot()]
    assert auths and all(a == [f"Bearer {secrets.openai_key}"] for _t, a in auths), \
        f"requests without the real key: {[(t, len(a)) for t, a in auths]}\n{ctx}"
    assert not fake.saw(tc.PLACEHOLDER)
    assert "CONNECT api.openai.com:443 (address type 3)" in d.log_text(), ctx
    ws = [x for x in audit_records(d) if x["path"] == "/v1/responses" and x["method"] == "GET"]
    assert ws and all(x["token"] == "agent1" and x["service"] == "openai" and x["status"] == 101
                      for x in ws), audit_records(d)
    tc._assert_no_leaks(r, home, secrets)


# ---- transparent mode: SOCKS5 to an address (curl socks5://, egress tunnels) ----

def test_socks5_address_tls_sni_names_destination(daemon, upstream, secrets):
    """curl socks5:// resolves locally and sends an address (ATYP 01); the
    ClientHello's SNI then names the destination: the service matches, the
    leaf is for the name, the name is dialled (never the address) and the
    credential injected."""
    d = daemon(config_text(secrets, proxy_extra="allow_private = 127.0.0.2/32"))
    r = socks_curl(d, "--resolve", "api.openai.com:443:127.0.0.2", "https://api.openai.com/echo",
                   proxy=["-x", f"socks5://127.0.0.1:{d.port}"]).ok()
    assert r.status == 200, r.describe()
    assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]
    d.wait_log(lambda line: "socks5 peer=" in line and "CONNECT 127.0.0.2:443 (address type 1)" in line)
    d.wait_log(lambda line: "127.0.0.2:443 is api.openai.com:443 (TLS SNI)" in line)
    (rec,) = audit_records(d)
    assert rec["host"] == "api.openai.com:443" and rec["service"] == "openai", rec
    # inside, Host must still equal the name
    r = socks_curl(d, "--resolve", "api.openai.com:443:127.0.0.2", "-H", "Host: api.github.com",
                   "https://api.openai.com/echo", proxy=["-x", f"socks5://127.0.0.1:{d.port}"]).ok()
    assert r.status == 421, r.describe()
    assert len(upstream.snapshot()) == 1


def test_socks5_address_ssrf_checked_before_sni(daemon, upstream, secrets):
    """The address itself must pass the SSRF guard, whatever name follows."""
    d = daemon()
    r = socks_curl(d, "--resolve", "api.openai.com:443:127.0.0.2", "https://api.openai.com/echo",
                   proxy=["-x", f"socks5://127.0.0.1:{d.port}"])
    assert r.returncode == 97, r.describe()
    assert upstream.connections_accepted == 0
    (rec,) = audit_records(d)
    assert (rec["host"], rec["status"], rec["proto"]) == ("127.0.0.2:443", 403, "socks5>-"), rec


def test_socks5_address_without_sni_is_the_destination(daemon, upstream, secrets, test_ca):
    """No name in the ClientHello (curl sends no SNI for an IP URL): the
    address is the destination, as for an HTTP CONNECT to it."""
    d = daemon(config_text(secrets, proxy_extra="allow_private = 127.0.0.1/32"))
    r = socks_curl(d, f"https://127.0.0.1:{upstream.port}/echo",
                   proxy=["-x", f"socks5://127.0.0.1:{d.port}"]).ok()
    assert r.status == 200, r.describe()
    assert auth_values(upstream.only_request()) == []  # no service names the address
    d.wait_log(lambda line: "no DNS name in the TLS SNI" in line)


def test_socks5_address_cleartext_host_names_destination(daemon, plain_upstream, secrets):
    port = plain_upstream.port
    d = daemon(config_text(secrets, proxy_extra="allow_private = 127.0.0.2/32", extra=plain_service(port)),
               extra_resolve=[f"plain.test:{port}:127.0.0.1"])
    r = socks_curl(d, "--resolve", f"plain.test:{port}:127.0.0.2", f"http://plain.test:{port}/echo",
                   proxy=["-x", f"socks5://127.0.0.1:{d.port}"]).ok()
    assert r.status == 200, r.describe()
    assert auth_values(plain_upstream.only_request()) == [f"Bearer {secrets.plain_key}"]
    d.wait_log(lambda line: f"127.0.0.2:{port} is plain.test:{port} (Host of the first request)" in line)


def test_socks5_address_sni_over_raw_split_client_hello(daemon, upstream, secrets):
    """The ClientHello arriving in small pieces is waited for (bounded by the
    first record), then read."""
    d = daemon(config_text(secrets, proxy_extra="allow_private = 127.0.0.2/32"))
    c = raw(d)
    try:
        assert greet(c) == b"\x05\x00"
        c.send(ipv4_request("127.0.0.2", 443))
        assert read_reply(c) == 0
        ctx = ssl.create_default_context(cafile=str(d.ca_pem))
        inb, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inb, outb, server_hostname="api.openai.com")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = outb.read()
        for i in range(0, len(hello), 7):
            c.send(hello[i:i + 7])
            time.sleep(0.002)
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            data = outb.read()
            if data:
                c.send(data)
            chunk = c.sock.recv(65536)
            assert chunk, "closed during the MITM handshake"
            inb.write(chunk)
        c.send(outb.read())
        obj.write(b"GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nConnection: close\r\n\r\n")
        c.send(outb.read())

        def recv():
            while True:
                try:
                    return obj.read(65536)
                except ssl.SSLWantReadError:
                    data = c.sock.recv(65536)
                    if not data:
                        return b""
                    inb.write(data)
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return b""
        status, _h, body = read_http_response(recv)
        client.RECEIVED.append(body)
        assert status == 200
    finally:
        c.close()
    assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]
