"""Every exchange leaves exactly one log line and one audit record, whatever
ends it, with the status sent to the agent and how it ended (`end`), and
/metrics counts it by ending (issue 12 item 2, SECURITY 18).

Endings: complete, client_abort (the agent closed, reset or cancelled),
upstream_abort (the origin closed or reset mid-response), timeout (our idle
timeout), refused (policy), error (dial failure) and shutdown (the drain
deadline), over HTTP/1.1 tunnels, absolute-form, HTTP/2, WebSocket over both,
and gateways. The origins that stall or die are in this file (StallOrigin).
"""
import json
import re
import signal
import socket
import socketserver
import ssl
import struct
import threading
import time
import urllib.request

import pytest

from avtest import client
from avtest import h2_client as h2c
from avtest.checks import tls_tunnel
from avtest.daemon import config_text
from avtest.gateway import GwConn, gateway_section, gw_config, gw_port
from avtest.h2_client import H2Client, ws_frame
from avtest.ws_upstream import WsUpstream

WAIT = 10.0


# ---- helpers ----------------------------------------------------------------------

def records(d):
    audit = d.workdir / "audit.jsonl"
    if not audit.exists():
        return []
    return [json.loads(l) for l in audit.read_text().splitlines() if l.strip()]


def wait_record(d, path, timeout=WAIT):
    """The audit record of the one exchange on |path| (waits for it)."""
    deadline = time.monotonic() + timeout
    while True:
        got = [r for r in records(d) if r["path"] == path]
        if got:
            return got[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no audit record for {path} within {timeout}s: {records(d)}\n"
                                 f"{d.log_dump()}")
        time.sleep(0.05)


def exchange_lines(d, path):
    return [l for l in d.log_text().splitlines()
            if " exchange method=" in l and f" path={path} " in l]


def metrics(d):
    with urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics", timeout=10) as r:
        return r.read().decode()


def ends_metric(d, end):
    m = re.search(r'^agentvault_exchange_ends_total\{end="' + end + r'"\} (\d+)$', metrics(d), re.M)
    assert m, metrics(d)
    return int(m.group(1))


def check_one(d, path, end, status):
    """Exactly one record and one log line for |path|, with |end|/|status|;
    checked after the daemon stopped, so a late duplicate would show."""
    rec = wait_record(d, path)
    assert (rec["end"], rec["status"]) == (end, status), rec
    assert ends_metric(d, end) >= 1
    d.stop()
    recs = [r for r in records(d) if r["path"] == path]
    assert len(recs) == 1, recs
    lines = exchange_lines(d, path)
    assert len(lines) == 1, lines
    assert f" end={end}" in lines[0] and f" status={status} " in lines[0], lines[0]
    # Warnings are for faults; an agent that went away or a clean end is info.
    level = "info" if end in ("complete", "client_abort") else "warn"
    assert f" {level} exchange " in lines[0], lines[0]
    return rec


def reset(sock):
    """Closes |sock| with a TCP reset (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_until(c, marker, timeout=WAIT):
    c.sock.settimeout(timeout)
    while marker not in c.buf:
        c._fill()


class StallOrigin:
    """HTTP/1.1 origin (TLS with the test CA's server certificate, or plain):
      /stall  200 chunked, one chunk, then nothing until the client goes
      /die    200 Content-Length 100000, 10 bytes, then close (FIN)
      /rst    200 Content-Length 100000, 10 bytes, then a TCP reset
    """

    def __init__(self, test_ca=None):
        self.ctx = None
        if test_ca is not None:
            self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ctx.load_cert_chain(str(test_ca.server_cert), str(test_ca.server_key))
        self.stop_ev = threading.Event()
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                owner._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _serve(self, sock):
        raw = sock
        try:
            if self.ctx is not None:
                sock = self.ctx.wrap_socket(sock, server_side=True)
            sock.settimeout(10)
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            path = buf.split(b" ", 2)[1].decode().split("?")[0]
            if path == "/stall":
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n"
                             b"d\r\ndata: first\n\n\r\n")
                sock.settimeout(0.2)
                while not self.stop_ev.is_set():
                    try:
                        if not sock.recv(65536):
                            return
                    except (socket.timeout, TimeoutError):
                        continue
                return
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: 100000\r\n\r\n0123456789")
            time.sleep(0.2)
            if path == "/rst":
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                raw.close()
        except (OSError, ssl.SSLError):
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def close(self):
        self.stop_ev.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origin(test_ca):
    o = StallOrigin(test_ca)
    yield o
    o.close()


@pytest.fixture
def plain_origin():
    o = StallOrigin()
    yield o
    o.close()


def origin_daemon(daemon, origin, secrets, proxy_extra="", extra="", **kw):
    """A daemon whose upstream.test:443 and api.openai.com:443 are |origin|."""
    return daemon(config_text(secrets, proxy_extra=proxy_extra, extra=extra),
                  resolve=[f"upstream.test:443:127.0.0.1:{origin.port}",
                           f"api.openai.com:443:127.0.0.1:{origin.port}"], **kw)


def h2_open(d, host="upstream.test"):
    c = H2Client(h2c.open_tls_daemon(d, host))
    c.wait_settings()
    return c


def h2_wait_data(c, sid, marker=b"data: first"):
    st = c.streams[sid]
    c.wait(lambda: marker in bytes(st.data) or st.done, WAIT, "the first event")
    assert marker in bytes(st.data), st.describe()


# ---- client_abort -----------------------------------------------------------------

@pytest.mark.parametrize("how", ["close", "reset", "curl-max-time"])
def test_h1_tunnel_client_abort(daemon, origin, secrets, how):
    d = origin_daemon(daemon, origin, secrets)
    if how == "curl-max-time":
        d.curl("--max-time", "1", "https://upstream.test/stall")
    else:
        c = tls_tunnel(d, "upstream.test")
        c.send(b"GET /stall HTTP/1.1\r\nHost: upstream.test\r\n\r\n")
        read_until(c, b"data: first")
        if how == "reset":
            reset(c.sock)
        else:
            c.close()
    check_one(d, "/stall", "client_abort", 200)


def test_h1_absolute_form_client_abort(daemon, plain_origin, secrets):
    p = plain_origin.port
    d = daemon(extra_resolve=[f"plain.test:{p}:127.0.0.1"])
    c = client.RawConn.connect(d.port)
    c.send(f"GET http://plain.test:{p}/stall HTTP/1.1\r\nHost: plain.test:{p}\r\n\r\n".encode())
    read_until(c, b"data: first")
    reset(c.sock)
    check_one(d, "/stall", "client_abort", 200)


def test_gateway_client_abort(daemon, origin, secrets):
    d = daemon(gw_config(secrets, gateway_section("openai")),
               resolve=[f"api.openai.com:443:127.0.0.1:{origin.port}"])
    c = GwConn.open(gw_port(d))
    c.send_request("GET", "/stall")
    read_until(c, b"data: first")
    reset(c.sock)
    rec = check_one(d, "/stall", "client_abort", 200)
    assert rec["gateway"] == "openai"


@pytest.mark.parametrize("how", ["rst_stream", "tcp-reset"])
def test_h2_client_abort(daemon, origin, secrets, how):
    d = origin_daemon(daemon, origin, secrets)
    c = h2_open(d)
    sid = c.request("GET", "/stall", authority="upstream.test")
    h2_wait_data(c, sid)
    if how == "rst_stream":
        c.reset_stream(sid)
        check_one(d, "/stall", "client_abort", 200)
        c.close()
    else:
        reset(c.pipe.sock)
        check_one(d, "/stall", "client_abort", 200)


def test_h2_gateway_client_abort(daemon, origin, secrets):
    from avtest.gateway import h2c_client
    d = daemon(gw_config(secrets, gateway_section("openai")),
               resolve=[f"api.openai.com:443:127.0.0.1:{origin.port}"])
    c = h2c_client(gw_port(d))
    sid = c.request("GET", "/stall", authority="127.0.0.1", scheme="http")
    h2_wait_data(c, sid)
    c.reset_stream(sid)
    check_one(d, "/stall", "client_abort", 200)
    c.close()


@pytest.fixture
def ws_origin(test_ca):
    srv = WsUpstream(test_ca.server_cert, test_ca.server_key, "ws-endings").start()
    yield srv
    srv.stop()


def test_websocket_h1_reset_recorded(daemon, ws_origin, secrets):
    import base64
    import os
    d = daemon(resolve=[f"api.openai.com:443:127.0.0.1:{ws_origin.port}"])
    c = tls_tunnel(d, "api.openai.com")
    key = base64.b64encode(os.urandom(16)).decode()
    c.send((f"GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = c.read_head()
    assert head.startswith(b"HTTP/1.1 101"), head
    c.send(ws_frame(0x1, b"hello"))
    read_until(c, b"hello")
    reset(c.sock)
    check_one(d, "/echo", "client_abort", 101)


def test_websocket_h2_stream_reset_recorded(daemon, ws_origin, secrets):
    d = daemon(resolve=[f"api.openai.com:443:127.0.0.1:{ws_origin.port}"])
    c = h2_open(d, "api.openai.com")
    sid = c.request("CONNECT", "/echo", protocol="websocket", end_stream=False,
                    authority="api.openai.com", headers=[("sec-websocket-version", "13")])
    st = c.streams[sid]
    c.wait(lambda: st.headers is not None or st.done, WAIT, "the CONNECT response")
    assert st.status == 200, st.describe()
    c.send_data(sid, ws_frame(0x1, b"hello"))
    c.wait(lambda: b"hello" in bytes(st.data), WAIT, "the echo")
    c.reset_stream(sid)
    # The record keeps the upstream's 101 (the agent saw it as 200).
    check_one(d, "/echo", "client_abort", 101)
    c.close()


def test_websocket_h1_clean_close_complete(daemon, ws_origin, secrets):
    import base64
    import os
    from avtest.h2_client import ws_close_payload
    d = daemon(resolve=[f"api.openai.com:443:127.0.0.1:{ws_origin.port}"])
    c = tls_tunnel(d, "api.openai.com")
    key = base64.b64encode(os.urandom(16)).decode()
    c.send((f"GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    assert c.read_head().startswith(b"HTTP/1.1 101")
    c.send(ws_frame(0x8, ws_close_payload(1000)))
    c.read_to_eof()
    c.close()
    check_one(d, "/echo", "complete", 101)


# ---- upstream_abort ---------------------------------------------------------------

@pytest.mark.parametrize("path", ["/die", "/rst"])
@pytest.mark.parametrize("agent", ["h1", "h2"])
def test_upstream_abort(daemon, origin, secrets, path, agent):
    d = origin_daemon(daemon, origin, secrets)
    args = ["--http2"] if agent == "h2" else []
    r = d.curl(*args, f"https://upstream.test{path}")
    assert r.returncode != 0, r.describe()
    check_one(d, path, "upstream_abort", 200)


def test_gateway_upstream_abort(daemon, origin, secrets):
    d = daemon(gw_config(secrets, gateway_section("openai")),
               resolve=[f"api.openai.com:443:127.0.0.1:{origin.port}"])
    c = GwConn.open(gw_port(d))
    c.send_request("GET", "/die")
    c.read_to_eof()
    c.close()
    check_one(d, "/die", "upstream_abort", 200)


# ---- timeout ----------------------------------------------------------------------

@pytest.mark.parametrize("agent", ["h1", "h2"])
def test_idle_timeout_recorded(daemon, origin, secrets, agent):
    d = origin_daemon(daemon, origin, secrets, proxy_extra="idle_timeout = 1")
    if agent == "h1":
        c = tls_tunnel(d, "upstream.test")
        c.send(b"GET /stall HTTP/1.1\r\nHost: upstream.test\r\n\r\n")
        read_until(c, b"data: first")
        c.buf = b""
        assert c.is_closed(WAIT)
        c.close()
    else:
        c = h2_open(d)
        sid = c.request("GET", "/stall", authority="upstream.test")
        h2_wait_data(c, sid)
        c.wait(lambda: c.closed, WAIT, "the idle timeout")
        c.close()
    check_one(d, "/stall", "timeout", 200)


def test_gateway_idle_timeout_recorded(daemon, origin, secrets):
    d = daemon(gw_config(secrets, gateway_section("openai"), proxy_extra="idle_timeout = 1"),
               resolve=[f"api.openai.com:443:127.0.0.1:{origin.port}"])
    c = GwConn.open(gw_port(d))
    c.send_request("GET", "/stall")
    read_until(c, b"data: first")
    c.buf = b""
    assert c.is_closed(WAIT)
    c.close()
    rec = check_one(d, "/stall", "timeout", 200)
    assert rec["gateway"] == "openai"


@pytest.mark.parametrize("agent", ["h1", "h2"])
def test_websocket_idle_timeout_recorded(daemon, ws_origin, secrets, agent):
    import base64
    import os
    d = daemon(config_text(secrets, proxy_extra="websocket_idle_timeout = 1"),
               resolve=[f"api.openai.com:443:127.0.0.1:{ws_origin.port}"])
    if agent == "h1":
        c = tls_tunnel(d, "api.openai.com")
        key = base64.b64encode(os.urandom(16)).decode()
        c.send((f"GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        assert c.read_head().startswith(b"HTTP/1.1 101")
        assert c.is_closed(WAIT)
        c.close()
    else:
        c = h2_open(d, "api.openai.com")
        sid = c.request("CONNECT", "/echo", protocol="websocket", end_stream=False,
                        authority="api.openai.com", headers=[("sec-websocket-version", "13")])
        st = c.streams[sid]
        c.wait(lambda: st.headers is not None or st.done, WAIT, "the CONNECT response")
        assert st.status == 200, st.describe()
        c.wait(lambda: c.closed, WAIT, "the WebSocket idle timeout")
        c.close()
    check_one(d, "/echo", "timeout", 101)


# ---- refused, error, complete ------------------------------------------------------

@pytest.mark.parametrize("agent", ["h1", "h2"])
def test_refused_error_complete(daemon, upstream, secrets, agent):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    d = daemon(config_text(secrets, unmatched="deny"),
               resolve=[f"api.openai.com:443:127.0.0.1:{upstream.port}",
                        f"api.github.com:443:127.0.0.1:{dead_port}"])
    args = ["--http2"] if agent == "h2" else []
    assert d.curl(*args, "https://api.openai.com/echo").ok().status == 200
    assert d.curl(*args, "https://upstream.test/denied").ok().status == 403
    assert d.curl(*args, "https://api.github.com/repos/a/b").ok().status == 502
    wait_record(d, "/repos/a/b")
    assert ends_metric(d, "complete") == 1
    assert ends_metric(d, "refused") == 1
    assert ends_metric(d, "error") == 1
    d.stop()
    by_path = {r["path"]: r for r in records(d)}
    assert len(records(d)) == 3, records(d)
    assert (by_path["/echo"]["end"], by_path["/echo"]["status"]) == ("complete", 200)
    assert (by_path["/denied"]["end"], by_path["/denied"]["status"]) == ("refused", 403)
    assert (by_path["/repos/a/b"]["end"], by_path["/repos/a/b"]["status"]) == ("error", 502)


def test_refusals_before_an_exchange_are_recorded(daemon, upstream, secrets):
    """Refusals at the proxy level (authentication, an oversized or malformed
    head) are exchanges too: one audit record each, end=refused, and never a
    query or an unchecked target in it."""
    d = daemon(config_text(secrets, tokens=True))
    c, resp = client.connect_tunnel(d.port, "upstream.test:443")
    assert resp.status == 407
    c.close()
    t = tls_tunnel(d, "upstream.test", connect_headers=[
        ("Proxy-Authorization", f"Bearer {secrets.agent_token}")])
    t.send(b"GET /big?secret=q HTTP/1.1\r\nHost: upstream.test\r\nX-Big: " + b"v" * 70000
           + b"\r\n\r\n")
    assert t.read_response().status == 431
    t.close()
    r = client.RawConn.connect(d.port)
    r.send(b"GET http://user:pw@plain.test/x?q=1 HTTP/1.1\nHost: plain.test\n\n")
    assert r.read_response().status == 400
    r.close()
    deadline = time.monotonic() + WAIT
    while len(records(d)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    recs = records(d)
    assert [(x["method"], x["host"], x["path"], x["status"], x["end"]) for x in recs] == [
        ("CONNECT", "upstream.test:443", "-", 407, "refused"),
        ("-", "upstream.test:443", "-", 431, "refused"),
        ("-", "-", "-", 400, "refused")], recs
    text = (d.workdir / "audit.jsonl").read_text()
    assert "user:pw" not in text and "q=1" not in text and "secret=q" not in text
    assert ends_metric(d, "refused") == 3


# ---- shutdown ---------------------------------------------------------------------

def test_shutdown_deadline_records_inflight(daemon, origin, secrets):
    """SIGTERM with exchanges in flight that never finish: at the drain
    deadline each is recorded once with end=shutdown (HTTP/1.1, HTTP/2 and a
    gateway at once)."""
    d = daemon(gw_config(secrets, gateway_section("openai"), proxy_extra=""),
               resolve=[f"upstream.test:443:127.0.0.1:{origin.port}",
                        f"api.openai.com:443:127.0.0.1:{origin.port}"])
    t1 = tls_tunnel(d, "upstream.test")
    t1.send(b"GET /stall?h1 HTTP/1.1\r\nHost: upstream.test\r\n\r\n")
    read_until(t1, b"data: first")
    c = h2_open(d)
    sid = c.request("GET", "/stall?h2", authority="upstream.test")
    h2_wait_data(c, sid)
    g = GwConn.open(gw_port(d))
    g.send_request("GET", "/stall?gw")
    read_until(g, b"data: first")
    d.signal(signal.SIGTERM)
    # The drain deadline of the daemon is 10 s; the origin never finishes.
    deadline = time.monotonic() + 20
    while d.proc.poll() is None and time.monotonic() < deadline:
        c.poll(0.1)
    assert d.wait(5) == 0, d.log_dump()
    recs = [r for r in records(d) if r["path"] == "/stall"]
    assert len(recs) == 3, recs
    assert {(r["end"], r["status"], r["proto"].split(">")[0], r["gateway"]) for r in recs} == {
        ("shutdown", 200, "h1", None), ("shutdown", 200, "h2", None),
        ("shutdown", 200, "h1", "openai")}
    assert len(exchange_lines(d, "/stall")) == 3
    for x in (t1, g):
        x.close()
    c.close()
