"""TLS session resumption on both sides (issue 15, [proxy] tls_resumption).

Agent side: Python's ssl client resumes a TLS 1.3 session with the proxy
(session= of the previous connection) inside a CONNECT tunnel and on the
proxy's own TLS port. A ticket resumes only in a tunnel to the host it was
issued for (the session id context is derived from the CONNECT host before
the ClientHello), the SNI check still runs on resumed handshakes, TLS 1.2
never resumes, and tls_resumption = off never resumes.

Upstream side: a Python TLS 1.3 origin that sends tickets and closes after
every response (so every request is a new upstream connection) records
whether each connection resumed. The proxy resumes with the same origin
name, never offers one name's session to another name served by the same
origin (whose certificate does not cover it: still refused), and drops its
sessions when a reload turns resumption off.
"""
import re
import signal
import socket
import socketserver
import ssl
import threading
import time
import urllib.request

from avtest.daemon import config_text

CONNECT_TIMEOUT = 10


class TicketOrigin(socketserver.ThreadingTCPServer):
    """TLS origin: answers one request per connection ("ok", Connection:
    close) and records (SNI, session_reused) per completed handshake, or
    (SNI, "failed") when the handshake failed."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, cert, key):
        super().__init__(("127.0.0.1", 0), _OriginHandler)
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.ctx.load_cert_chain(cert, key)
        self.ctx.num_tickets = 2
        self.ctx.sni_callback = self._sni
        self.records = []
        self.lock = threading.Lock()
        self.port = self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def _sni(self, sslobj, name, ctx):
        sslobj.av_sni = name

    def record(self, item):
        with self.lock:
            self.records.append(item)

    def stop(self):
        self.shutdown()
        self.server_close()


class _OriginHandler(socketserver.BaseRequestHandler):
    def handle(self):
        srv = self.server
        self.request.settimeout(10)
        try:
            tls = srv.ctx.wrap_socket(self.request, server_side=True)
        except (ssl.SSLError, OSError):
            srv.record((None, "failed"))
            return
        sni = getattr(tls, "av_sni", None)
        srv.record((sni, tls.session_reused))
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = tls.recv(4096)
                if not chunk:
                    return
                buf += chunk
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            tls.unwrap()
        except (ssl.SSLError, OSError):
            pass
        finally:
            tls.close()


def metrics(d):
    with urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for side in ("agent", "upstream"):
        m = re.search(r'^agentvault_tls_resumed_total\{side="%s"\} (\d+)$' % side, text, re.M)
        assert m, text
        out[side] = int(m.group(1))
    return out


def connect_tunnel(port, target):
    s = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        assert chunk, f"proxy closed during CONNECT: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return s


def client_ctx(cafile, tls12=False, check_hostname=True):
    ctx = ssl.create_default_context(cafile=str(cafile))
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    return ctx


def read_all(tls):
    data = b""
    while True:
        try:
            chunk = tls.recv(65536)
        except ssl.SSLError:
            break
        if not chunk:
            break
        data += chunk
    return data


def tls_exchange(sock, ctx, sni, host, session=None, path="/", request=True):
    """TLS on |sock| (SNI |sni|, None for none), one GET with Connection:
    close when |request|; returns (session after the response,
    session_reused, response bytes, peer certificate)."""
    tls = ctx.wrap_socket(sock, server_hostname=sni, session=session)
    try:
        reused = tls.session_reused
        cert = tls.getpeercert()
        data = b""
        if request:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = read_all(tls)
        return tls.session, reused, data, cert
    finally:
        tls.close()


def via_tunnel(d, ctx, host, *, session=None, sni="same", port=443, request=True):
    s = connect_tunnel(d.port, f"{host}:{port}")
    return tls_exchange(s, ctx, host if sni == "same" else sni, host, session=session, request=request)


def wait_reloads(d, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while d.log_text().count("configuration reloaded") < n:
        assert time.monotonic() < deadline, d.log_dump()
        time.sleep(0.02)


def cert_names(cert):
    return sorted(v for k, v in cert.get("subjectAltName", ()) if k in ("DNS", "IP Address"))


def origin_fixture(test_ca):
    return TicketOrigin(str(test_ca.server_cert), str(test_ca.server_key))


def start(daemon, secrets, origin, proxy_extra="", extra_resolve=()):
    resolve = [f"upstream.test:443:127.0.0.1:{origin.port}",
               f"uncovered.test:443:127.0.0.1:{origin.port}",
               f"api.openai.com:443:127.0.0.1:{origin.port}"] + list(extra_resolve)
    return daemon(config_text(secrets, proxy_extra=proxy_extra), resolve=resolve)


# ---------------------------------------------------------------- agent side

def test_agent_resumes_same_host_only(daemon, secrets, test_ca):
    origin = origin_fixture(test_ca)
    try:
        d = start(daemon, secrets, origin)
        ctx = client_ctx(d.ca_pem)
        sess, reused, data, cert = via_tunnel(d, ctx, "upstream.test")
        assert not reused and data.startswith(b"HTTP/1.1 200") and data.endswith(b"ok"), data
        sess2, reused, data, _ = via_tunnel(d, ctx, "upstream.test", session=sess)
        assert reused, "second tunnel to the same host did not resume"
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"ok"), data
        # The ticket of upstream.test in a tunnel to api.openai.com: a full
        # handshake with api.openai.com's leaf.
        _, reused, data, cert = via_tunnel(d, ctx, "api.openai.com", session=sess2)
        assert not reused, "a ticket from upstream.test resumed in a tunnel to api.openai.com"
        assert cert_names(cert) == ["api.openai.com"], cert
        assert data.startswith(b"HTTP/1.1 200"), data
        # the proxy's agent-side counter saw exactly the one resumption
        assert metrics(d)["agent"] == 1
    finally:
        origin.stop()


def test_agent_ticket_bound_to_connect_target(daemon, secrets, test_ca):
    """IP literals carry no SNI, so nothing but the CONNECT target differs:
    the ticket of a tunnel to 127.0.0.1 resumes in another tunnel to
    127.0.0.1 (the client offers it) and not in one to 127.0.0.2, which
    gets 127.0.0.2's leaf in a full handshake."""
    origin = origin_fixture(test_ca)
    try:
        d = start(daemon, secrets, origin, proxy_extra="allow_private = 127.0.0.0/8")
        ctx = client_ctx(d.ca_pem, check_hostname=False)
        # (nothing listens on 127.0.0.x:443: the request gets a 502, which
        # is enough: reading it reads the ticket sent after the handshake)
        sess, reused, _, cert = via_tunnel(d, ctx, "127.0.0.1", sni=None)
        assert not reused and cert_names(cert) == ["127.0.0.1"], cert
        sess, reused, _, cert = via_tunnel(d, ctx, "127.0.0.1", sni=None, session=sess)
        assert reused, "the ticket for 127.0.0.1 did not resume for 127.0.0.1"
        _, reused, _, cert = via_tunnel(d, ctx, "127.0.0.2", sni=None, session=sess)
        assert not reused, "a ticket for 127.0.0.1 resumed in a tunnel to 127.0.0.2"
        assert cert_names(cert) == ["127.0.0.2"], cert
        assert metrics(d)["agent"] == 1
    finally:
        origin.stop()


def test_agent_sni_checked_on_resumed_handshake(daemon, secrets, test_ca):
    """A client holding a valid ticket for upstream.test that sends SNI
    api.openai.com into a tunnel to upstream.test is refused."""
    origin = origin_fixture(test_ca)
    try:
        d = start(daemon, secrets, origin)
        ctx = client_ctx(d.ca_pem, check_hostname=False)
        sess, _, _, _ = via_tunnel(d, ctx, "upstream.test")
        s = connect_tunnel(d.port, "upstream.test:443")
        try:
            try:
                tls = ctx.wrap_socket(s, server_hostname="api.openai.com", session=sess)
            except (ssl.SSLError, ConnectionResetError):
                tls = None
            assert tls is None, "SNI api.openai.com accepted (resumed=%s)" % tls.session_reused
        finally:
            s.close()
        assert metrics(d)["agent"] == 0
    finally:
        origin.stop()


def test_agent_tls12_never_resumes(daemon, secrets, test_ca):
    origin = origin_fixture(test_ca)
    try:
        d = start(daemon, secrets, origin)
        ctx = client_ctx(d.ca_pem, tls12=True)
        sess, reused, data, _ = via_tunnel(d, ctx, "upstream.test")
        assert data.startswith(b"HTTP/1.1 200")
        _, reused, data, _ = via_tunnel(d, ctx, "upstream.test", session=sess)
        assert not reused, "a TLS 1.2 session resumed"
        assert data.startswith(b"HTTP/1.1 200")
    finally:
        origin.stop()


def test_proxy_tls_listener_resumes(daemon, secrets, test_ca):
    origin = origin_fixture(test_ca)
    try:
        d = start(daemon, secrets, origin)
        ctx = client_ctx(d.ca_pem)
        s = socket.create_connection(("127.0.0.1", d.port), timeout=CONNECT_TIMEOUT)
        sess, reused, data, _ = tls_exchange(s, ctx, "localhost", "localhost", path="/healthz")
        assert not reused and data.startswith(b"HTTP/1.1 200"), data
        s = socket.create_connection(("127.0.0.1", d.port), timeout=CONNECT_TIMEOUT)
        sess2, reused, data, _ = tls_exchange(s, ctx, "localhost", "localhost", session=sess,
                                              path="/healthz")
        assert reused and data.startswith(b"HTTP/1.1 200"), data
        # the proxy's own ticket is not a MITM ticket for "localhost"
        _, reused, _, cert = via_tunnel(d, ctx, "localhost", session=sess2, request=False)
        assert not reused
        assert cert_names(cert) == ["localhost"], cert
        assert metrics(d)["agent"] == 1
    finally:
        origin.stop()


def test_resumption_off(daemon, secrets, test_ca):
    origin = origin_fixture(test_ca)
    try:
        d = start(daemon, secrets, origin, proxy_extra="tls_resumption = off")
        ctx = client_ctx(d.ca_pem)
        sess = None
        for _ in range(3):
            sess, reused, data, _ = via_tunnel(d, ctx, "upstream.test", session=sess)
            assert not reused
            assert data.startswith(b"HTTP/1.1 200"), data
        s = socket.create_connection(("127.0.0.1", d.port), timeout=CONNECT_TIMEOUT)
        sess, _, _, _ = tls_exchange(s, ctx, "localhost", "localhost", path="/healthz")
        s = socket.create_connection(("127.0.0.1", d.port), timeout=CONNECT_TIMEOUT)
        _, reused, _, _ = tls_exchange(s, ctx, "localhost", "localhost", session=sess, path="/healthz")
        assert not reused
        assert [r for _, r in origin.records] == [False, False, False]
        assert metrics(d) == {"agent": 0, "upstream": 0}
    finally:
        origin.stop()


# ------------------------------------------------------------- upstream side

def test_upstream_resumes_verified_per_name(daemon, secrets, test_ca):
    origin = origin_fixture(test_ca)
    try:
        d = start(daemon, secrets, origin)
        for _ in range(3):
            r = d.curl("https://upstream.test/")
            assert r.status == 200, r.describe()
        assert origin.records == [("upstream.test", False), ("upstream.test", True),
                                  ("upstream.test", True)], origin.records
        # The same origin (same ticket keys) for a name its certificate does
        # not cover: the session of upstream.test is not offered, the full
        # handshake's verification refuses it.
        r = d.curl("https://uncovered.test/")
        assert r.status == 502, r.describe()
        assert b"certificate verify failed" in r.body, r.body
        assert origin.records[3] in (("uncovered.test", "failed"), (None, "failed")), origin.records
        r = d.curl("https://upstream.test/")
        assert r.status == 200, r.describe()
        assert origin.records[4] == ("upstream.test", True), origin.records
        m = metrics(d)
        assert m["upstream"] == 3, m
    finally:
        origin.stop()


def test_reload_off_drops_upstream_sessions(daemon, secrets, test_ca):
    origin = origin_fixture(test_ca)
    try:
        d = start(daemon, secrets, origin)
        for _ in range(2):
            r = d.curl("https://upstream.test/")
            assert r.status == 200, r.describe()
        conf = d.workdir / "agentvault.conf"
        text = conf.read_text()
        conf.write_text(text.replace("[proxy]", "[proxy]\ntls_resumption = off", 1))
        d.signal(signal.SIGHUP)
        wait_reloads(d, 1)
        conf.write_text(text)
        d.signal(signal.SIGHUP)
        wait_reloads(d, 2)
        # on again, but the sessions kept before were dropped by "off"
        for _ in range(2):
            r = d.curl("https://upstream.test/")
            assert r.status == 200, r.describe()
        assert [x for _, x in origin.records] == [False, True, False, True], origin.records
    finally:
        origin.stop()
