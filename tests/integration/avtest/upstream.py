"""A small, strict, recording HTTP/1.1 origin server (optionally over TLS).

It is written on socketserver + ssl with its own HTTP/1.1 parsing so that it
can record exactly what the proxy sent: header names as received, in order,
the body, whether it was chunked, and the id of the TCP connection it came on.

Endpoints (query strings are ignored for dispatch):
  /echo           any method: 200, JSON {method, path, headers, body_length,
                  body_sha256, conn_id, chunked}; Content-Length framing
  /chunked        200, chunked response of CHUNKED_PARTS
  /sse            200 text/event-stream (chunked): "data: first\\n\\n", then
                  waits for release_sse() (10 s at most), "data: second\\n\\n"
  /status/<code>  that status, body "status <code>\\n" (none for 204/304)
  /redirect       302, Location: https://elsewhere.test/
  /reflect        200 chunked (7-byte chunks): the received bearer secret in
                  raw, base64, percent, hex and JSON forms, and in X-Echo-Secret;
                  ?gzip=1 compresses the body (scrubbing tests)
  /echo-auth      200 text/plain: each Authorization value received, one a
                  line, or "(none)\\n"
  /trailers       200 chunked "trailers body\\n" with a trailer section:
                  TRAILERS_SENT, plus X-Echo-Secret: k=<the bearer secret
                  received> (scrubbing) and Set-Cookie (not allowed in
                  trailers: the proxy drops it). ?bad=1 sends a malformed
                  trailer line instead.
  anything else   404
"""
import base64
import gzip
import hashlib
import http
import itertools
import json
import socket
import socketserver
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

CHUNKED_PARTS = [b"alpha\n", b"bravo-" * 2000 + b"\n", b"charlie\n", b"delta\n"]
CHUNKED_BODY = b"".join(CHUNKED_PARTS)
SSE_FIRST = b"data: first\n\n"
SSE_SECOND = b"data: second\n\n"
REDIRECT_LOCATION = "https://elsewhere.test/"
TRAILERS_BODY = b"trailers body\n"
TRAILERS_SENT = [("Grpc-Status", "0"), ("X-Checksum", "abc123")]
SSE_WAIT_SECONDS = 10.0
MAX_HEAD = 64 * 1024
IO_TIMEOUT = 20.0


class ProtocolError(Exception):
    pass


@dataclass
class RecordedRequest:
    conn_id: int
    method: str
    target: str                 # as received, query included
    version: str
    headers: list               # [(raw name, value)] in order
    body: bytes
    chunked: bool
    raw_head: bytes
    time: float = field(default_factory=time.monotonic)
    trailers: list = field(default_factory=list)  # [(raw name, value)] of a chunked body

    @property
    def path(self):
        return self.target.split("?", 1)[0]

    def header_values(self, name):
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def header(self, name):
        vals = self.header_values(name)
        assert len(vals) <= 1, f"{name} received {len(vals)} times: {vals!r}"
        return vals[0] if vals else None


class _Reader:
    def __init__(self, sock, owner):
        self.sock = sock
        self.owner = owner
        self.buf = b""

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self._record(data)
        self.buf += data

    def _record(self, data):
        """Hook: account for bytes received (subclasses record differently)."""
        with self.owner.lock:
            self.owner.app_bytes_received += len(data)

    def read_head(self):
        """Returns the head (without the final CRLFCRLF) or None at a clean EOF."""
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i >= 0:
                head, self.buf = self.buf[:i], self.buf[i + 4:]
                return head
            if len(self.buf) > MAX_HEAD:
                raise ProtocolError("request head too large")
            try:
                self._fill()
            except EOFError:
                if self.buf:
                    raise ProtocolError(f"EOF inside request head: {self.buf[:200]!r}")
                return None

    def readline(self, limit=8192):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            if len(self.buf) > limit:
                raise ProtocolError("line too long")
            try:
                self._fill()
            except EOFError:
                raise ProtocolError("EOF inside a line")

    def read_exact(self, n, what="body"):
        while len(self.buf) < n:
            try:
                self._fill()
            except EOFError:
                raise ProtocolError(f"EOF inside {what} ({len(self.buf)} of {n} bytes)")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


def _parse_head(head):
    try:
        text = head.decode("latin-1")
    except Exception:  # pragma: no cover
        raise ProtocolError("undecodable head")
    if "\n" in text.replace("\r\n", ""):
        raise ProtocolError(f"bare LF in request head: {head[:200]!r}")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ProtocolError(f"bad request line: {lines[0]!r}")
    method, target, version = parts
    headers = []
    for line in lines[1:]:
        if not line or line[0] in " \t":
            raise ProtocolError(f"obs-fold or empty header line: {line!r}")
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise ProtocolError(f"bad header line: {line!r}")
        headers.append((name, value.strip(" \t")))
    return method, target, version, headers


def _reason(code):
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "Status"


class _Handler(socketserver.BaseRequestHandler):
    def handle(self):
        owner = self.server.owner
        sock = self.request
        sock.settimeout(IO_TIMEOUT)
        conn_id = owner._register(sock)
        try:
            if owner.ssl_context is not None:
                # Before the handshake, see whether cleartext HTTP arrives.
                try:
                    first = sock.recv(8, socket.MSG_PEEK)
                except OSError:
                    first = b""
                if first and first[:1] != b"\x16":
                    with owner.lock:
                        owner.cleartext_bytes_seen = True
                try:
                    sock = owner.ssl_context.wrap_socket(
                        sock, server_side=True, do_handshake_on_connect=False)
                    sock.do_handshake()
                except (ssl.SSLError, OSError) as e:
                    with owner.lock:
                        owner.tls_handshake_failures.append(repr(e))
                    return
                with owner.lock:
                    owner.tls_handshakes_ok += 1
                owner._register(sock, conn_id)
            self._serve(sock, conn_id, owner)
        except ProtocolError as e:
            with owner.lock:
                owner.protocol_errors.append(f"conn {conn_id}: {e}")
            try:
                sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
            except OSError:
                pass
        except (OSError, EOFError):
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass
            owner._unregister(conn_id)

    def _serve(self, sock, conn_id, owner):
        reader = _Reader(sock, owner)
        while True:
            head = reader.read_head()
            if head is None:
                return
            method, target, version, headers = _parse_head(head)
            lower = [(k.lower(), v) for k, v in headers]
            te = [v for k, v in lower if k == "transfer-encoding"]
            cl = [v for k, v in lower if k == "content-length"]
            if te and cl:
                raise ProtocolError("both Transfer-Encoding and Content-Length")
            if len(cl) > 1 and len(set(cl)) > 1:
                raise ProtocolError(f"conflicting Content-Length {cl}")
            if len([v for k, v in lower if k == "host"]) != 1:
                raise ProtocolError("not exactly one Host header")
            chunked = False
            expect = any(k == "expect" and v.lower() == "100-continue" for k, v in lower)
            has_body = bool(te) or (cl and int(cl[0]) > 0)
            if expect and has_body:
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            trailers = []
            if te:
                if te[-1].lower() != "chunked":
                    raise ProtocolError(f"unsupported Transfer-Encoding {te}")
                chunked = True
                body = self._read_chunked(reader, trailers)
            elif cl:
                if not cl[0].isdigit():
                    raise ProtocolError(f"bad Content-Length {cl[0]!r}")
                body = reader.read_exact(int(cl[0]))
            else:
                body = b""
            rec = RecordedRequest(conn_id, method, target, version, headers, body,
                                  chunked, head, trailers=trailers)
            with owner.lock:
                owner.requests.append(rec)
                owner.request_cond.notify_all()
            conn_hdr = ",".join(v for k, v in lower if k == "connection").lower()
            keep = "close" not in conn_hdr and (version == "HTTP/1.1" or "keep-alive" in conn_hdr)
            self._respond(sock, rec, owner, keep)
            if not keep:
                return

    @staticmethod
    def _read_chunked(reader, trailers):
        body = []
        while True:
            line = reader.readline()
            size_txt = line.split(b";", 1)[0].strip()
            try:
                size = int(size_txt, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size line {line!r}")
            if size == 0:
                while True:
                    line = reader.readline()
                    if line == b"":
                        return b"".join(body)
                    name, sep, value = line.decode("latin-1").partition(":")
                    if not sep or not name or name != name.strip() or line[:1] in b" \t":
                        raise ProtocolError(f"bad trailer line {line!r}")
                    trailers.append((name, value.strip(" \t")))
            body.append(reader.read_exact(size))
            if reader.read_exact(2) != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")

    def _respond(self, sock, rec, owner, keep):
        path = rec.path
        head_only = rec.method == "HEAD"
        extra = [] if keep else [("Connection", "close")]

        def send(status, headers, body=b""):
            lines = [f"HTTP/1.1 {status} {_reason(status)}"]
            lines += [f"{k}: {v}" for k, v in headers + extra]
            data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            sock.sendall(data if head_only else data + body)

        def send_chunked_start(status, headers):
            send(status, headers + [("Transfer-Encoding", "chunked")])

        def chunk(data):
            if not head_only:
                sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))

        def chunk_end():
            if not head_only:
                sock.sendall(b"0\r\n\r\n")

        if path == "/echo":
            payload = {
                "method": rec.method,
                "path": rec.target,
                "headers": [[k, v] for k, v in rec.headers],
                "body_length": len(rec.body),
                "body_sha256": hashlib.sha256(rec.body).hexdigest(),
                "conn_id": rec.conn_id,
                "chunked": rec.chunked,
            }
            body = json.dumps(payload).encode() + b"\n"
            send(200, [("Content-Type", "application/json"),
                       ("Content-Length", str(len(body)))], body)
        elif path == "/chunked":
            send_chunked_start(200, [("Content-Type", "text/plain")])
            for part in CHUNKED_PARTS:
                chunk(part)
            chunk_end()
        elif path == "/sse":
            send_chunked_start(200, [("Content-Type", "text/event-stream"),
                                     ("Cache-Control", "no-cache")])
            chunk(SSE_FIRST)
            owner.sse_first_sent.set()
            if not owner.sse_release.wait(SSE_WAIT_SECONDS):
                with owner.lock:
                    owner.sse_timed_out = True
            chunk(SSE_SECOND)
            chunk_end()
            owner.sse_finished.set()
        elif path.startswith("/status/") and path[8:].isdigit():
            code = int(path[8:])
            if code in (204, 304) or code < 200:
                send(code, [])
            else:
                body = f"status {code}\n".encode()
                send(code, [("Content-Type", "text/plain"),
                            ("Content-Length", str(len(body)))], body)
        elif path.startswith("/big/") and path[5:].isdigit():
            # n bytes with Content-Length, written in 64 KiB pieces; big_sent
            # counts what the socket accepted (back-pressure tests read it).
            n = int(path[5:])
            send(200, [("Content-Type", "application/octet-stream"),
                       ("Content-Length", str(n))])
            piece = b"x" * 65536
            left = n
            while left > 0 and not head_only:
                part = piece[:min(left, len(piece))]
                sock.sendall(part)
                left -= len(part)
                with owner.lock:
                    owner.big_sent += len(part)
        elif path == "/empty":
            send(200, [("Content-Type", "text/plain"), ("Content-Length", "0")])
        elif path == "/redirect":
            body = b"redirecting\n"
            send(302, [("Location", REDIRECT_LOCATION), ("Content-Type", "text/plain"),
                       ("Content-Length", str(len(body)))], body)
        elif path == "/reflect":
            # The credential it received, echoed back in every encoding the
            # proxy must scrub, in 7-byte chunks (matches span chunk
            # boundaries), optionally gzip-compressed, and in a header.
            vals = rec.header_values("authorization")
            sec = vals[0].split(" ", 1)[-1] if vals else ""
            raw = sec.encode("latin-1")
            enc = [
                raw,
                base64.b64encode(raw), base64.b64encode(b"x" + raw), base64.b64encode(b"xy" + raw),
                base64.urlsafe_b64encode(b"x" + raw),
                urllib.parse.quote(sec, safe="").encode(),
                "".join("%%%02X" % b for b in raw).encode(),
                raw.hex().encode(), raw.hex().upper().encode(),
                json.dumps({"k": sec}).encode(),
                json.dumps(sec, ensure_ascii=True).encode(),
            ]
            body = b"begin\n" + b"\n".join(b"<" + e + b">" for e in enc) + b"\nend\n"
            gz = "gzip=1" in rec.target
            if gz:
                body = gzip.compress(body)
            hdrs = [("Content-Type", "text/plain"), ("X-Echo-Secret", f"k={sec}")]
            if gz:
                hdrs.append(("Content-Encoding", "gzip"))
            send_chunked_start(200, hdrs)
            for i in range(0, len(body), 7):
                chunk(body[i:i + 7])
            chunk_end()
        elif path == "/trailers":
            vals = rec.header_values("authorization")
            sec = vals[0].split(" ", 1)[-1] if vals else ""
            send_chunked_start(200, [("Content-Type", "text/plain"),
                                     ("Trailer", "Grpc-Status, X-Checksum, X-Echo-Secret")])
            chunk(TRAILERS_BODY)
            if not head_only:
                if "bad=1" in rec.target:
                    tail = b"0\r\nX-Broken : yes\r\n\r\n"
                else:
                    lines = TRAILERS_SENT + [("X-Echo-Secret", f"k={sec}"), ("Set-Cookie", "s=1")]
                    tail = b"0\r\n" + b"".join(f"{k}: {v}\r\n".encode("latin-1")
                                                for k, v in lines) + b"\r\n"
                sock.sendall(tail)
        elif path == "/echo-auth":
            vals = rec.header_values("authorization")
            body = ("".join(v + "\n" for v in vals) if vals else "(none)\n").encode("latin-1")
            send(200, [("Content-Type", "text/plain"),
                       ("Content-Length", str(len(body)))], body)
        else:
            body = b"not found\n"
            send(404, [("Content-Type", "text/plain"),
                       ("Content-Length", str(len(body)))], body)


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


def server_tls_context(certfile, keyfile):
    """A TLS 1.2+ server context offering http/1.1."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(certfile), str(keyfile))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class ThreadedOrigin:
    """Lifecycle and live-connection bookkeeping shared by the test origins:
    a threaded TCP server on 127.0.0.1:<ephemeral> whose handler class gets
    the origin as `server.owner`. Subclasses set `handler` and call
    _origin_init() from __init__."""

    handler = None

    def _origin_init(self, thread_name):
        self.lock = threading.Lock()
        self.connections_accepted = 0
        self._thread_name = thread_name
        self._ids = itertools.count(1)
        self._live = {}
        self._server = None
        self._thread = None
        self.port = None

    def start(self):
        self._server = _TCPServer(("127.0.0.1", 0), self.handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=self._thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self.lock:
            live = list(self._live.values())
        for s in live:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- bookkeeping used by the handlers ------------------------------------
    def _register(self, sock, cid=None):
        """Track a connection's (current) socket; a new cid when cid is None."""
        with self.lock:
            if cid is None:
                cid = next(self._ids)
                self.connections_accepted += 1
            self._live[cid] = sock
            return cid

    def _unregister(self, cid):
        with self.lock:
            self._live.pop(cid, None)


class UpstreamServer(ThreadedOrigin):
    """Start with start(); stop with stop(). Thread-safe accessors."""

    handler = _Handler

    def __init__(self, name, certfile=None, keyfile=None):
        self.name = name
        self.ssl_context = server_tls_context(certfile, keyfile) if certfile else None
        self._origin_init(f"upstream-{name}")
        self.request_cond = threading.Condition(self.lock)
        self.requests = []
        self.tls_handshakes_ok = 0
        self.tls_handshake_failures = []
        self.protocol_errors = []
        self.cleartext_bytes_seen = False
        self.app_bytes_received = 0
        self.sse_release = threading.Event()
        self.sse_first_sent = threading.Event()
        self.sse_finished = threading.Event()
        self.sse_timed_out = False
        self.big_sent = 0

    def stop(self):
        self.sse_release.set()  # let a held /sse response finish
        super().stop()

    # -- what tests use ----------------------------------------------------
    @property
    def scheme(self):
        return "https" if self.ssl_context is not None else "http"

    def release_sse(self):
        self.sse_release.set()

    def snapshot(self):
        with self.lock:
            return list(self.requests)

    def wait_requests(self, n, timeout=5.0):
        """Waits until at least n requests were recorded; returns them all."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.request_cond.wait(left)
            return list(self.requests)

    def only_request(self, timeout=5.0):
        reqs = self.wait_requests(1, timeout)
        assert len(reqs) == 1, f"{self.name}: expected exactly 1 request, got {len(reqs)}: " \
            + repr([(r.method, r.target) for r in reqs])
        return reqs[0]

    @property
    def http_bytes_received(self):
        """True when any HTTP bytes (cleartext, or after a TLS handshake) arrived."""
        with self.lock:
            return self.cleartext_bytes_seen or self.app_bytes_received > 0
