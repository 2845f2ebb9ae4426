#!/usr/bin/python3
"""Allocation-failure injection: fail the Nth allocation of an exchange, for
every N, and check how each run ends (see tests/fault/README.md).

    fault_test.py BUILD_DIR [--only SCENARIO,...] [--batch 60] [--verbose]

BUILD_DIR is a sanitizer build (its daemon has daemon/fault.c compiled in).
The daemon maps a control file (AGENTVAULT_FAULT_FILE); this driver arms it
with N, runs one exchange with a real client against a local origin, waits
until the daemon is quiet, and disarms it. It stops at the first N whose
exchange completes without the fault firing. Every run must end in the full
response, an error response or a close: a hang, a crash, a sanitizer report,
a secret in agent-visible bytes, or a request the origin sees without its
credential or without its whole body fails the test.

One daemon serves a batch of runs; a daemon whose exit reports a sanitizer
error (a leak shows only at exit) is bisected: each N of its batch is run
again on a daemon of its own to name the N.

Prints one line per scenario and ends with "N passed, N failed" (one test
per scenario), the format tests/run_all.sh counts.
"""
import argparse
import base64
import hashlib
import json
import mmap
import os
import secrets as _secrets
import socket
import socketserver
import ssl
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))

import h2.connection  # noqa: E402
import h2.exceptions  # noqa: E402

from avtest import certs, client, h2_client  # noqa: E402
from avtest.daemon import Daemon, base_env  # noqa: E402
from avtest.gateway import gw_port, h2c_client  # noqa: E402
from avtest.h2_upstream import H2Upstream  # noqa: E402

MAGIC = 0x31544C5541465641  # "AVFAULT1"
IO_TIMEOUT = 8.0            # a client waiting longer than this is a hang
MAX_N = 20000               # give up (fail) after this many allocations
PLACEHOLDER = "av-dummy-openai-0123456789"
BODY = b"x" * 3000 + b"-end"


class Control:
    """The shared control file: armed, fail_at, count, fired (int64 words)."""

    def __init__(self, path):
        self.path = path
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", MAGIC) + b"\0" * (4096 - 8))
        self.f = open(path, "r+b")
        self.m = mmap.mmap(self.f.fileno(), 4096)

    def _get(self, i):
        return struct.unpack_from("<q", self.m, 8 * i)[0]

    def _set(self, i, v):
        struct.pack_into("<q", self.m, 8 * i, v)

    def arm(self, n):
        self._set(1, 0)
        self._set(2, n)
        self._set(3, 0)
        self._set(4, 0)
        self._set(1, 1)

    def disarm(self):
        self._set(1, 0)

    @property
    def count(self):
        return self._get(3)

    @property
    def fired(self):
        return self._get(4)

    def wait_quiet(self, step=0.02, limit=2.0):
        """Waits until no allocation was counted for two steps."""
        deadline = time.monotonic() + limit
        last, still = self.count, 0
        while time.monotonic() < deadline and still < 2:
            time.sleep(step)
            c = self.count
            still = still + 1 if c == last else 0
            last = c


class Violation(Exception):
    pass


# ---- the origin --------------------------------------------------------------

class Origin:
    """TLS HTTP/1.1 origin: one exchange per connection (Connection: close,
    so the proxy never pools), WebSocket echo on /ws. It records violations:
    a request without the expected credential, a head whose body did not
    arrive in full, a placeholder body not substituted."""

    def __init__(self, tca, keys):
        self.keys = keys            # Host -> expected secret
        self.violations = []
        self.requests = 0
        self.aborted = 0            # connections that ended inside a body
        self.lock = threading.Lock()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tca.server_cert), str(tca.server_key))
        ctx.set_alpn_protocols(["http/1.1"])
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                try:
                    s = ctx.wrap_socket(self.request, server_side=True)
                except (OSError, ssl.SSLError):
                    return  # the proxy gave up during the handshake: fine
                s.settimeout(IO_TIMEOUT)
                try:
                    owner._serve(s)
                except (OSError, ssl.SSLError, EOFError):
                    pass
                finally:
                    try:
                        s.close()
                    except OSError:
                        pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def violate(self, what):
        with self.lock:
            self.violations.append(what)

    def take_violations(self):
        with self.lock:
            v, self.violations = self.violations, []
            return v

    def _serve(self, s):
        r = client.RawConn(s, IO_TIMEOUT)
        try:
            head = r.read_head()
        except EOFError:
            if r.buf:
                self.violate(f"origin: connection ended inside a request head ({len(r.buf)} bytes)")
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs.setdefault(k.strip().lower(), []).append(v.strip())
        host = hdrs.get("host", [""])[0].split(":")[0]
        want = self.keys.get(host)
        auth = hdrs.get("authorization", [])
        if want is None:
            self.violate(f"origin: request for unexpected host {host!r}")
        elif auth != [f"Bearer {want}"]:
            self.violate(f"origin: {method} {target} for {host} arrived with "
                         f"{len(auth)} Authorization field(s), not the credential")
        with self.lock:
            self.requests += 1
        body = b""
        if hdrs.get("expect", [""])[0].lower() == "100-continue":
            r.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            if "transfer-encoding" in hdrs:
                while True:
                    size = int(r.read_line().split(b";")[0], 16)
                    if size == 0:
                        while r.read_line() != b"":
                            pass
                        break
                    body += r.read_exact(size)
                    r.read_exact(2)
            elif "content-length" in hdrs:
                body = r.read_exact(int(hdrs["content-length"][0]))
        except EOFError:
            # An aborted request: the proxy failed after the head went out
            # (a streamed body cannot be recalled). The origin sees the
            # connection end before the framing says the body is complete,
            # so it can never take this for a request.
            with self.lock:
                self.aborted += 1
            return
        path = target.split("?")[0]
        if path == "/ws":
            return self._ws(r, hdrs, want)
        if path == "/placeholder":
            expect = json.dumps({"key": want, "pad": "y" * 500}).encode()
            if body != expect:
                self.violate("origin: placeholder body not substituted exactly")
            out = b"ok placeholder\n"
            r.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                   % (len(out), out))
        elif path == "/sse":
            r.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                   b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            for i in range(6):
                ev = b"data: event %d\n\n" % i
                r.send(b"%x\r\n%s\r\n" % (len(ev), ev))
                time.sleep(0.002)
            r.send(b"0\r\n\r\n")
        elif path == "/reflect":
            parts = [b"before ", want.encode(), b" b64 ", base64.b64encode(want.encode()),
                     b" split ", want[:9].encode()]
            rest = want[9:].encode() + b" after\n"
            out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            for p in parts + [rest]:
                out += b"%x\r\n%s\r\n" % (len(p), p)
            r.send(out + b"0\r\n\r\n")
        else:
            if body != BODY:
                self.violate(f"origin: a complete request arrived with a body of {len(body)} "
                             f"bytes that is not the one the agent sent")
            out = b"ok " + hashlib.sha256(body).hexdigest().encode() + b"\n"
            r.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                   b"Connection: close\r\n\r\n%s" % (len(out), out))

    def _ws(self, r, hdrs, want):
        key = hdrs.get("sec-websocket-key", [""])[0]
        acc = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        r.send(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {acc}\r\n\r\n").encode())
        while True:
            try:
                op, payload = ws_read(r, masked=True)
            except EOFError:
                return
            if op == 8:
                r.send(ws_frame(8, payload[:2], mask=False))
                return
            if op == 1:
                if PLACEHOLDER.encode() in payload:
                    self.violate("origin: a WebSocket placeholder reached the origin")
                # Echo, with the credential replaced: what the agent gets
                # back must never carry it (whatever the relay mode).
                r.send(ws_frame(1, payload.replace(want.encode(), b"<key>"), mask=False))


def ws_frame(op, payload, mask=True):
    b0 = 0x80 | op
    n = len(payload)
    head = bytes([b0, (0x80 if mask else 0) | (n if n < 126 else 126)])
    if n >= 126:
        head += struct.pack(">H", n)
    if not mask:
        return head + payload
    m = os.urandom(4)
    return head + m + bytes(c ^ m[i % 4] for i, c in enumerate(payload))


def ws_read(r, masked):
    b0, b1 = r.read_exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", r.read_exact(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", r.read_exact(8))[0]
    m = r.read_exact(4) if b1 & 0x80 else None
    p = r.read_exact(n)
    if m:
        p = bytes(c ^ m[i % 4] for i, c in enumerate(p))
    return b0 & 0x0F, p


# ---- scenarios ---------------------------------------------------------------
#
# Each returns "ok" (the full, correct response), "error" (an HTTP error
# status from the proxy) or "closed" (EOF, reset or a TLS error at any
# point). A socket timeout raises TimeoutError (a hang); a wrong answer or
# a secret in what the agent received raises Violation.

class Env:
    def __init__(self, d, tca_dir, keys):
        self.d = d
        self.keys = keys
        self.seen = bytearray()     # every agent-visible byte of the run
        self.gw = None


def check_no_secret(env, data):
    for k in env.keys.values():
        for form in (k.encode(), base64.b64encode(k.encode())):
            if form in data:
                raise Violation("the secret reached the agent")


def tunnel(env, host, alpn=("http/1.1",), port=443):
    c, resp = client.connect_tunnel(env.d.port, f"{host}:{port}", timeout=IO_TIMEOUT)
    if resp.status != 200:
        c.close()
        return None, resp.status
    c.start_tls(env.d.ca_pem, host, alpn=alpn)
    return c, 200


def h1_exchange(env, host, head, body, expect):
    c, st = tunnel(env, host)
    if c is None:
        return "error"
    try:
        c.send(head + body)
        r = c.read_response()
        env.seen += r.raw_head + r.body
        check_no_secret(env, r.raw_head + r.body)
        if r.status >= 400:
            return "error"
        if r.status != 200 or not expect(r.body):
            raise Violation(f"unexpected answer {r.status} {r.body[:120]!r}")
        return "ok"
    finally:
        c.close()


def post_head(host, path, n, ctype="application/octet-stream"):
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {n}\r\n\r\n").encode()


def sc_h1(env):
    want = b"ok " + hashlib.sha256(BODY).hexdigest().encode() + b"\n"
    return h1_exchange(env, "api.openai.com", post_head("api.openai.com", "/echo", len(BODY)),
                       BODY, lambda b: b == want)


def sc_scrub(env):
    head = b"GET /reflect HTTP/1.1\r\nHost: api.openai.com\r\n\r\n"
    return h1_exchange(env, "api.openai.com", head, b"",
                       lambda b: b.startswith(b"before ") and b.endswith(b" after\n"))


def sc_placeholder(env):
    body = json.dumps({"key": PLACEHOLDER, "pad": "y" * 500}).encode()
    return h1_exchange(env, "api.openai.com",
                       post_head("api.openai.com", "/placeholder", len(body), "application/json"),
                       body, lambda b: b == b"ok placeholder\n")


SSE_BODY = b"".join(b"data: event %d\n\n" % i for i in range(6))


def sc_sse(env):
    head = b"GET /sse HTTP/1.1\r\nHost: api.openai.com\r\nAccept: text/event-stream\r\n\r\n"
    return h1_exchange(env, "api.openai.com", head, b"", lambda b: b == SSE_BODY)


def sc_h2_websocket(env):
    """RFC 8441: a WebSocket on an HTTP/2 stream (extended CONNECT)."""
    try:
        pipe = h2_client.open_tls(env.d.port, env.d.ca_pem, "upstream.test", timeout=IO_TIMEOUT)
    except AssertionError as e:
        if "ALPN" in str(e):
            raise Violation(str(e))
        return "error" if "answered" in str(e) else "closed"
    c = h2_client.H2Client(pipe)
    try:
        sid = c.request("CONNECT", "/ws", authority="upstream.test", protocol="websocket",
                        end_stream=False, headers=[("sec-websocket-version", "13")])
        st = c.streams[sid]
        c.wait(lambda: st.headers is not None or st.done, IO_TIMEOUT, "the CONNECT response")
        env.seen += repr(st.headers).encode()
        if st.headers is None or st.status != 200:
            return "error" if st.status and st.status >= 400 else "closed"
        c.send_data(sid, ws_frame(1, b"hello h2 world"))
        c.wait(lambda: len(st.data) >= 16 or st.done, IO_TIMEOUT, "the echo")
        data = bytes(st.data)
        env.seen += data
        check_no_secret(env, data)
        if data[:16] != ws_frame(1, b"hello h2 world", mask=False):
            if st.done:
                return "closed"
            raise Violation(f"h2 websocket: unexpected bytes {data[:40]!r}")
        c.send_data(sid, ws_frame(8, struct.pack(">H", 1000)))
        c.wait(lambda: len(st.data) >= 20 or st.done, IO_TIMEOUT, "the close frame")
        return "ok" if bytes(st.data)[16:18] == b"\x88\x02" else "closed"
    except AssertionError as e:
        if "timed out" in str(e) or "no flow-control window" in str(e):
            raise TimeoutError(str(e))
        return "closed"
    except h2.exceptions.ProtocolError:
        if c.conn.state_machine.state == h2.connection.ConnectionState.CLOSED:
            return "closed"
        raise
    finally:
        c.close()


def continue_exchange(env, path, body, ctype, expect):
    """Expect: 100-continue through the gateway: the body goes only after
    the proxy's 100 (a client that waits for it, as the RFC allows)."""
    c = client.RawConn.connect(env.gw, timeout=IO_TIMEOUT)
    try:
        c.send((f"POST {path} HTTP/1.1\r\nHost: gateway.local\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode())
        # The first head: a 100 (then the body goes) or a final answer.
        while b"\r\n\r\n" not in c.buf:
            c._fill()
        if c.buf.startswith(b"HTTP/1.1 100 "):
            head = c.read_head()
            env.seen += head
            c.send(body)
        r = c.read_response(method="POST")
        data = r.raw_head + r.body
        env.seen += data
        check_no_secret(env, data)
        if r.status >= 400:
            return "error"
        if r.status != 200 or r.body != expect:
            raise Violation(f"expect-continue: unexpected answer {r.status} {r.body[:120]!r}")
        return "ok"
    finally:
        c.close()


def sc_continue(env):
    return continue_exchange(env, "/echo", BODY, "application/octet-stream",
                             b"ok " + hashlib.sha256(BODY).hexdigest().encode() + b"\n")


def sc_continue_placeholder(env):
    body = json.dumps({"key": PLACEHOLDER, "pad": "y" * 500}).encode()
    return continue_exchange(env, "/placeholder", body, "application/json", b"ok placeholder\n")


H2UP = "upstream.test:8443"   # a service whose origin speaks HTTP/2 (avtest.h2_upstream)


def h2up_ok(body):
    try:
        return json.loads(body)["body_sha256"] == hashlib.sha256(BODY).hexdigest()
    except (ValueError, KeyError):
        return False


def sc_h2_upstream(env):
    """HTTP/1.1 agent, HTTP/2 origin (a shared upstream session)."""
    c, st = tunnel(env, H2UP.split(":")[0], port=8443)
    if c is None:
        return "error"
    try:
        c.send(post_head(H2UP, "/echo", len(BODY)) + BODY)
        r = c.read_response()
        data = r.raw_head + r.body
        env.seen += data
        check_no_secret(env, data)
        if r.status >= 400:
            return "error"
        if r.status != 200 or not h2up_ok(r.body):
            raise Violation(f"h2 upstream: unexpected answer {r.status} {r.body[:120]!r}")
        return "ok"
    finally:
        c.close()


def sc_h2_upstream_continue(env):
    """The same with Expect: 100-continue: the proxy sends the 100 once the
    head is on the upstream stream."""
    c, st = tunnel(env, H2UP.split(":")[0], port=8443)
    if c is None:
        return "error"
    try:
        c.send((f"POST /echo HTTP/1.1\r\nHost: {H2UP}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {len(BODY)}\r\nExpect: 100-continue\r\n\r\n").encode())
        while b"\r\n\r\n" not in c.buf:
            c._fill()
        if c.buf.startswith(b"HTTP/1.1 100 "):
            env.seen += c.read_head()
            c.send(BODY)
        r = c.read_response(method="POST")
        data = r.raw_head + r.body
        env.seen += data
        check_no_secret(env, data)
        if r.status >= 400:
            return "error"
        if r.status != 200 or not h2up_ok(r.body):
            raise Violation(f"h2 upstream: unexpected answer {r.status} {r.body[:120]!r}")
        return "ok"
    finally:
        c.close()


def sc_command(env):
    want = b"ok " + hashlib.sha256(BODY).hexdigest().encode() + b"\n"
    return h1_exchange(env, "api.github.com", post_head("api.github.com", "/echo", len(BODY)),
                       BODY, lambda b: b == want)


def sc_h2(env):
    try:
        pipe = h2_client.open_tls(env.d.port, env.d.ca_pem, "api.openai.com",
                                  timeout=IO_TIMEOUT)
    except AssertionError as e:
        if "answered" in str(e):
            return "error"
        if "ALPN" in str(e):
            raise Violation(str(e))
        return "closed"
    c = h2_client.H2Client(pipe)
    try:
        sid = c.request("POST", "/echo", headers=[("content-type", "application/octet-stream")],
                        body=BODY)
        st = c.response(sid, timeout=IO_TIMEOUT)
    except AssertionError as e:
        if "timed out" in str(e) or "no flow-control window" in str(e):
            raise TimeoutError(str(e))
        return "closed"
    except h2.exceptions.ProtocolError:
        # python3-h2 refuses to send after the peer's GOAWAY: a close.
        if c.conn.state_machine.state == h2.connection.ConnectionState.CLOSED:
            return "closed"
        raise
    finally:
        c.close()
    data = bytes(st.data) + repr(st.headers).encode()
    env.seen += data
    check_no_secret(env, data)
    if st.reset is not None or not st.ended:
        return "closed"
    if st.status >= 400:
        return "error"
    want = b"ok " + hashlib.sha256(BODY).hexdigest().encode() + b"\n"
    if st.status != 200 or st.body != want:
        raise Violation(f"h2: unexpected answer {st.status} {st.body[:120]!r}")
    return "ok"


def ws_exchange(c, host, msg, expect):
    key = base64.b64encode(os.urandom(16)).decode()
    c.send((f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = c.read_head()
    status = int(head.split(b" ", 2)[1])
    if status != 101:
        return "error", head
    c.send(ws_frame(1, msg))
    op, payload = ws_read(c, masked=False)
    seen = head + payload
    if op != 1 or payload != expect:
        if op == 8:
            return "closed", seen
        raise Violation(f"ws: unexpected frame {op} {payload[:80]!r}")
    c.send(ws_frame(8, struct.pack(">H", 1000)))
    op, payload = ws_read(c, masked=False)
    if op != 8:
        raise Violation(f"ws: expected a close frame, got {op}")
    return "ok", seen


def sc_ws(env, host="upstream.test", placeholder=False):
    c, st = tunnel(env, host)
    if c is None:
        return "error"
    try:
        msg = (f"hello {PLACEHOLDER} world" if placeholder else "hello world").encode()
        expect = b"hello <key> world" if placeholder else b"hello world"
        out, seen = ws_exchange(c, host, msg, expect)
        env.seen += seen
        check_no_secret(env, seen)
        return out
    finally:
        c.close()


def sc_ws_frames(env):
    return sc_ws(env, "api.openai.com", placeholder=True)


def sc_gateway_h2c(env):
    """HTTP/2 with prior knowledge (h2c) to a gateway, with a WebSocket-free
    POST."""
    try:
        c = h2c_client(env.gw, timeout=IO_TIMEOUT)
    except AssertionError as e:
        if "timed out" in str(e):
            raise TimeoutError(str(e))
        return "closed"
    try:
        sid = c.request("POST", "/echo", scheme="http", authority="gateway.local",
                        headers=[("content-type", "application/octet-stream")], body=BODY)
        st = c.response(sid, timeout=IO_TIMEOUT)
    except AssertionError as e:
        if "timed out" in str(e) or "no flow-control window" in str(e):
            raise TimeoutError(str(e))
        return "closed"
    except h2.exceptions.ProtocolError:
        if c.conn.state_machine.state == h2.connection.ConnectionState.CLOSED:
            return "closed"
        raise
    finally:
        c.close()
    data = bytes(st.data) + repr(st.headers).encode()
    env.seen += data
    check_no_secret(env, data)
    if st.reset is not None or not st.ended:
        return "closed"
    if st.status >= 400:
        return "error"
    want = b"ok " + hashlib.sha256(BODY).hexdigest().encode() + b"\n"
    if st.status != 200 or st.body != want:
        raise Violation(f"h2c gateway: unexpected answer {st.status} {st.body[:120]!r}")
    return "ok"


def sc_gateway_ws(env):
    """A WebSocket through the gateway (frame relay: the service has
    placeholder_in = websocket)."""
    c = client.RawConn.connect(env.gw, timeout=IO_TIMEOUT)
    try:
        out, seen = ws_exchange(c, "gateway.local", f"hi {PLACEHOLDER}".encode(), b"hi <key>")
        env.seen += seen
        check_no_secret(env, seen)
        return out
    finally:
        c.close()


def sc_gateway(env):
    c = client.RawConn.connect(env.gw, timeout=IO_TIMEOUT)
    try:
        c.send(post_head("gateway.local", "/echo", len(BODY)) + BODY)
        r = c.read_response()
        data = r.raw_head + r.body
        env.seen += data
        check_no_secret(env, data)
        if r.status >= 400:
            return "error"
        want = b"ok " + hashlib.sha256(BODY).hexdigest().encode() + b"\n"
        if r.status != 200 or r.body != want:
            raise Violation(f"gateway: unexpected answer {r.status} {r.body[:120]!r}")
        return "ok"
    finally:
        c.close()


class ParentProxy:
    """A minimal HTTP CONNECT parent proxy for the "parent" scenarios: it
    opens the tunnel to the address asked for and relays both ways."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                a, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(a,), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _serve(self, a):
        try:
            a.settimeout(IO_TIMEOUT)
            head = b""
            while b"\r\n\r\n" not in head:
                d = a.recv(4096)
                if not d:
                    a.close()
                    return
                head += d
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            host, port = line.split(" ")[1].rsplit(":", 1)
            b = socket.create_connection((host, int(port)), timeout=IO_TIMEOUT)
            a.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            rest = head.split(b"\r\n\r\n", 1)[1]
            if rest:
                b.sendall(rest)
            a.settimeout(None)
            b.settimeout(None)
        except (OSError, ValueError, IndexError):
            a.close()
            return
        threading.Thread(target=self._pipe, args=(b, a), daemon=True).start()
        self._pipe(a, b)


def sc_parent(env):
    """The "viaparent" service's exchange: through a CONNECT parent proxy."""
    want = b"ok " + hashlib.sha256(BODY).hexdigest().encode() + b"\n"
    return h1_exchange(env, "api.openai.com", post_head("api.openai.com", "/viaparent", len(BODY)),
                       BODY, lambda b: b == want)


def sc_decide(env):
    """decide = command: with decide_body: the body's first bytes, the
    hold, the decision program, the answer applied, then the exchange."""
    want = b"ok " + hashlib.sha256(BODY).hexdigest().encode() + b"\n"
    return h1_exchange(env, "api.openai.com", post_head("api.openai.com", "/decided", len(BODY)),
                       BODY, lambda b: b == want)


SCENARIOS = {
    "h1": sc_h1,
    "parent": sc_parent,
    "h2": sc_h2,
    "websocket": sc_ws,
    "websocket-frames": sc_ws_frames,
    "h2-websocket": sc_h2_websocket,
    "sse": sc_sse,
    "continue": sc_continue,
    "continue-placeholder": sc_continue_placeholder,
    "h2-upstream": sc_h2_upstream,
    "h2-upstream-continue": sc_h2_upstream_continue,
    "gateway": sc_gateway,
    "gateway-h2c": sc_gateway_h2c,
    "gateway-websocket": sc_gateway_ws,
    "scrub": sc_scrub,
    "placeholder": sc_placeholder,
    "command": sc_command,
    "decide": sc_decide,
    # The first exchange of a new daemon: leaf minting, the first dial,
    # TLS verification, ALPN (one daemon per run, so slower).
    "h1-cold": sc_h1,
    "parent-cold": sc_parent,
    "h2-upstream-cold": sc_h2_upstream,
    "h2-cold": sc_h2,
    "websocket-frames-cold": sc_ws_frames,
    "gateway-cold": sc_gateway,
    "placeholder-cold": sc_placeholder,
    "command-cold": sc_command,
}

# The peer closed or reset (for HTTP/2: the stream was reset while we sent).
CLOSE_ERRORS = (EOFError, ConnectionError, ssl.SSLError, BrokenPipeError,
                h2.exceptions.StreamClosedError)


def run_scenario(fn, env):
    env.seen = bytearray()
    try:
        return fn(env)
    except (socket.timeout, TimeoutError) as e:
        return f"hang ({e})"
    except Violation as e:
        return f"violation: {e}"
    except CLOSE_ERRORS:
        return "closed"
    except OSError as e:
        return "closed" if e.errno in (104, 32, 111) else f"client error: {e!r}"
    except (ValueError, IndexError, AssertionError) as e:
        return f"client error: {e!r}"


# ---- the daemon ---------------------------------------------------------------

class World:
    def __init__(self, build, work):
        self.bin = Path(build).resolve() / "daemon" / "agentvault"
        if not self.bin.is_file():
            sys.exit(f"no daemon at {self.bin}")
        self.work = Path(work)
        self.tca = certs.build_test_ca(self.work / "ca")
        self.keys = {"api.openai.com": "sk-fault-" + _secrets.token_hex(12),
                     "api.github.com": "ghp_fault" + _secrets.token_hex(12),
                     "upstream.test": "pk-fault-" + _secrets.token_hex(12)}
        gh = self.work / "github_key"
        gh.write_text(self.keys["api.github.com"] + "\n")
        gh.chmod(0o600)
        self.origin = Origin(self.tca, self.keys)
        self.h2origin = H2Upstream(str(self.tca.server_cert), str(self.tca.server_key), "fault-h2")
        self.h2origin.start()
        self.h2seen = 0
        self.h2perr = 0
        self.parent = ParentProxy()
        allow = self.work / "allow"
        allow.write_text("#!/bin/sh\ncat >/dev/null\necho '{\"allow\":true}'\n")
        allow.chmod(0o700)
        self.conf = self.work / "agentvault.conf"
        self.conf.write_text(f"""[proxy]
unmatched = deny
secret_ttl = 0

[service "openai"]
host = api.openai.com
auth = bearer
secret = env:OPENAI_API_KEY
placeholder = {PLACEHOLDER}
placeholder_in = body, websocket

[service "viaparent"]
host = api.openai.com
path = /viaparent*
auth = bearer
secret = env:OPENAI_API_KEY
upstream_proxy = http://127.0.0.1:{self.parent.port}

[service "github"]
host = api.github.com
auth = bearer
secret = command:/bin/cat {gh}

[service "decided"]
host = api.openai.com
path = /decided*
auth = bearer
secret = env:OPENAI_API_KEY
decide = command:{allow}
decide_body = 1k

[service "plain"]
host = upstream.test
auth = bearer
secret = env:PLAIN_API_KEY

[service "h2up"]
host = upstream.test
port = 8443
auth = bearer
secret = env:PLAIN_API_KEY

[gateway "openai"]
upstream = https://api.openai.com
listen = 127.0.0.1:0
""")
        self.ctl = Control(self.work / "fault.ctl")
        self.serial = 0
        self.trace = False

    def start(self):
        self.serial += 1
        state = self.work / f"state{self.serial}"
        state.mkdir()
        env = base_env(self.work)
        env.update({"OPENAI_API_KEY": self.keys["api.openai.com"],
                    "PLAIN_API_KEY": self.keys["upstream.test"],
                    "AGENTVAULT_FAULT_FILE": str(self.ctl.path)})
        if self.trace:
            env["AGENTVAULT_FAULT_TRACE"] = "1"
        argv = [self.bin, "serve", "-c", self.conf, "--listen", "127.0.0.1:0",
                "--state-dir", state, "--upstream-cacert", self.tca.ca_pem, "--log-level", "info"]
        for h in self.keys:
            argv += ["--resolve", f"{h}:443:127.0.0.1:{self.origin.port}"]
        argv += ["--resolve", f"{H2UP}:127.0.0.1:{self.h2origin.port}"]
        self.ctl.disarm()
        d = Daemon(argv, env, self.work, state, None, self.work)
        d.start()
        e = Env(d, self.tca.dir, self.keys)
        e.gw = gw_port(d, "openai")
        return e

    def h2_violations(self):
        """Requests the HTTP/2 origin received complete since the last call:
        each must carry the credential and the agent's whole body."""
        reqs = self.h2origin.snapshot()
        new, self.h2seen = reqs[self.h2seen:], len(reqs)
        out = [f"h2 origin: {r.method} {r.path} without the credential" for r in new
               if r.header_values("authorization") != [f"Bearer {self.keys['upstream.test']}"]]
        out += [f"h2 origin: a complete request with a body of {len(r.body)} bytes that is not "
                f"the agent's" for r in new if r.method == "POST" and r.body != BODY]
        out += [f"h2 origin: {e}" for e in self.h2origin.protocol_errors[self.h2perr:]]
        self.h2perr = len(self.h2origin.protocol_errors)
        return out

    def stop(self, env):
        """Stops the daemon; returns a problem string or None."""
        d = env.d
        alive = d.proc.poll() is None
        rc = d.stop()
        log = d.log_text()
        for k in self.keys.values():
            if k in log or base64.b64encode(k.encode()).decode() in log:
                return "a secret appeared in the daemon's log"
        if not alive:
            return f"the daemon died (exit {d.proc.returncode})\n{tail(log)}"
        if rc is None:
            return f"the daemon did not exit within 5 s of SIGTERM\n{tail(log)}"
        if rc != 0 or "Sanitizer" in log or "runtime error" in log:
            return f"the daemon exited {rc}\n{tail(log, 60)}"
        return None


def tail(text, n=30):
    return "\n".join(text.splitlines()[-n:])


def one_run(world, env, fn, n):
    """Arms N, runs the exchange, returns (outcome, fired, count, problem)."""
    world.ctl.arm(n)
    out = run_scenario(fn, env)
    world.ctl.wait_quiet()
    world.ctl.disarm()
    fired, count = world.ctl.fired, world.ctl.count
    problem = None
    v = world.origin.take_violations() + world.h2_violations()
    if v:
        problem = "; ".join(v)
    elif out not in ("ok", "error", "closed"):
        problem = out
    elif env.d.proc.poll() is not None:
        problem = "the daemon died"
    elif not fired and out != "ok":
        problem = f"the exchange ended {out} with no allocation failed"
    return out, fired, count, problem


def scenario(world, name, fn, batch, verbose):
    """Runs N = 1, 2, ... until the exchange completes untouched. Returns
    (list of failures, runs, counts of outcomes)."""
    failures, outcomes = [], {}
    n, done = 1, False
    cold = name.endswith("-cold")
    if cold:
        batch = 1  # a new daemon for every run: nothing is cached or pooled
    while not done and n <= MAX_N:
        env = world.start()
        first = n
        # Warm up: the leaf for the host is minted and cached, so every run
        # of the batch starts from the same state.
        warm = "ok" if cold else run_scenario(fn, env)
        world.origin.take_violations()
        world.h2_violations()
        if warm != "ok":
            failures.append(f"{name}: the unarmed warm-up run ended {warm}")
            if world.trace:
                print(tail(env.d.log_text(), 30), flush=True)
            world.stop(env)
            return failures, n - 1, outcomes
        last = first - 1            # the last N run on this daemon
        while n < first + batch:
            last = n
            out, fired, count, problem = one_run(world, env, fn, n)
            if not fired and out != "ok" and env.d.proc.poll() is None:
                # A failed secret command is remembered for a second (the
                # resolver's negative cache): this run met the failure of
                # the previous one. Run N again once it has expired.
                time.sleep(1.05)
                out, fired, count, problem = one_run(world, env, fn, n)
            outcomes[out] = outcomes.get(out, 0) + 1
            if verbose:
                print(f"  {name} N={n}: {out} fired={fired} count={count}"
                      + (f" PROBLEM {problem}" if problem else ""), flush=True)
            if problem:
                failures.append(f"{name} N={n}: {problem}")
                if world.trace:
                    print(tail(env.d.log_text(), 60), flush=True)
                if env.d.proc.poll() is not None:
                    break
            if not fired and out == "ok":
                done = True
                break
            n += 1
        problem = world.stop(env)
        if problem:
            # Name the N: each run of the batch again on a daemon of its own.
            named = False
            for k in range(first, last + 1):
                e2 = world.start()
                if not cold:
                    run_scenario(fn, e2)
                world.origin.take_violations()
                world.h2_violations()
                one_run(world, e2, fn, k)
                p2 = world.stop(e2)
                if p2:
                    failures.append(f"{name} N={k}: {p2}")
                    named = True
                    break
            if not named:
                failures.append(f"{name} N={first}..{last}: {problem}")
        if failures:
            break
    if not done and not failures:
        failures.append(f"{name}: still failing after {MAX_N} allocations")
    return failures, n, outcomes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build")
    ap.add_argument("--only", default="")
    ap.add_argument("--batch", type=int, default=60)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--trace", action="store_true",
                    help="the daemon prints the stack of each failed allocation; "
                         "problems print the daemon's log")
    a = ap.parse_args()
    names = [s for s in a.only.split(",") if s] or list(SCENARIOS)
    passed = failed = 0
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="avfault-") as work:
        world = World(a.build, work)
        world.trace = a.trace
        for name in names:
            t1 = time.monotonic()
            ab0 = world.origin.aborted
            fails, n, outcomes = scenario(world, name, SCENARIOS[name], a.batch, a.verbose)
            desc = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
            desc += f"; requests aborted inside the body upstream: {world.origin.aborted - ab0}"
            if fails:
                failed += 1
                print(f"FAIL {name}: {len(fails)} problem(s) in {n} runs ({desc}), "
                      f"{time.monotonic() - t1:.0f} s", flush=True)
                for f in fails[:5]:
                    print("  " + f.replace("\n", "\n    "), flush=True)
            else:
                passed += 1
                print(f"ok   {name}: {n - 1} allocations failed one at a time ({desc}), "
                      f"{time.monotonic() - t1:.0f} s", flush=True)
        world.origin.server.shutdown()
        world.h2origin.stop()
    print(f"total {time.monotonic() - t0:.0f} s")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
