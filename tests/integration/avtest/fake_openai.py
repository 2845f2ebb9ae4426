"""A fake OpenAI Responses server for the real Codex CLI (and other clients).

One port on 127.0.0.1 serves, per connection, TLS (the test CA's server
certificate, which covers api.openai.com) and, when built with
plain_ok=True, cleartext HTTP too (the first byte decides: 0x16 is a TLS
ClientHello). On it:

  GET  /v1/responses + Upgrade: websocket
       RFC 6455 handshake done here, never negotiating permessage-deflate,
       so clients send plain text frames. Each text frame is a
       `response.create`; a warm-up (`"generate": false`) is answered with
       response.created + response.completed, any other with the turn
       events (see turn_events()). Masked client frames are required;
       server frames are unmasked. Ping -> Pong, Close -> Close, EOF without
       Close is fine (Codex drops TCP when it exits).
       With ws_status=N (e.g. 426) the upgrade is answered with that status.
  POST /v1/responses
       200 text/event-stream with the turn events as `event:`/`data:`
       blocks, chunked (default) or close-delimited (sse_mode="close").
  anything else
       404 (recorded, so tests can see unexpected calls).

Recorded per request (FakeRequest): transport ("ws", "ws-refused", "sse",
"other"), method, path, headers, body, the client's WebSocket text
messages, and whether the connection was TLS. saw(needle) tells whether a
string occurred anywhere a client sent (request heads, bodies, frame
payloads). Every blocking operation has a timeout.
"""
import base64
import hashlib
import itertools
import json
import os
import signal
import socket
import socketserver
import ssl
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

from .upstream import ProtocolError, ThreadedOrigin, _Reader, server_tls_context

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
IO_TIMEOUT = 120.0          # per recv; Codex keeps its socket open until it exits
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
MAX_FRAME = 16 * 1024 * 1024


def ws_accept(key):
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


# ProtocolError comes from avtest.upstream (the shared request reader raises it).


@dataclass
class FakeRequest:
    conn_id: int
    tls: bool
    method: str
    path: str
    headers: list                      # [(name, value)] as received
    body: bytes = b""
    transport: str = "other"           # ws | ws-refused | sse | other
    status: int = 0
    messages: list = field(default_factory=list)   # WebSocket text payloads (str)
    closed_cleanly: bool = False       # WebSocket: client sent Close

    def header(self, name):
        n = name.lower()
        vals = [v for k, v in self.headers if k.lower() == n]
        return vals[0] if vals else None

    def header_values(self, name):
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def json_messages(self):
        out = []
        for m in self.messages:
            try:
                out.append(json.loads(m))
            except ValueError:
                out.append(None)
        return out


def _event_blocks(text, resp_id):
    """Events of a turn that makes Codex print `text` (codex.md 4.3)."""
    item_id = "msg_" + resp_id
    usage = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": 2, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": 12}
    return [
        {"type": "response.created", "response": {"id": resp_id}},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"type": "message", "id": item_id, "role": "assistant", "content": []}},
        {"type": "response.content_part.added", "item_id": item_id, "output_index": 0,
         "content_index": 0, "part": {"type": "output_text", "text": ""}},
        {"type": "response.output_text.delta", "item_id": item_id, "output_index": 0,
         "content_index": 0, "delta": text},
        {"type": "response.output_text.done", "item_id": item_id, "output_index": 0,
         "content_index": 0, "text": text},
        {"type": "response.output_item.done", "output_index": 0,
         "item": {"type": "message", "id": item_id, "role": "assistant",
                  "content": [{"type": "output_text", "text": text}]}},
        {"type": "response.completed",
         "response": {"id": resp_id, "usage": usage}},
    ]


def _warmup_events(resp_id):
    return [{"type": "response.created", "response": {"id": resp_id}},
            {"type": "response.completed", "response": {"id": resp_id}}]


class _Conn(_Reader):
    """Buffered reads over a (possibly TLS) socket, recording every byte
    (the request reader of avtest.upstream, with this server's accounting)."""

    def _record(self, data):
        self.owner._record_bytes(data)

    def read_exact_or_eof(self, n):
        """Like read_exact, but returns None on a clean EOF before any byte."""
        if not self.buf:
            try:
                self._fill()
            except EOFError:
                return None
        return self.read_exact(n, "a WebSocket frame")


def _parse_head(head):
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ProtocolError(f"bad request line {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(f"bad header line {line!r}")
        headers.append((name, value.strip(" \t")))
    return parts[0], parts[1], parts[2], headers


def _hv(headers, name):
    n = name.lower()
    return [v for k, v in headers if k.lower() == n]


class _Handler(socketserver.BaseRequestHandler):
    def handle(self):
        owner = self.server.owner
        sock = self.request
        sock.settimeout(IO_TIMEOUT)
        conn_id = owner._register(sock)
        tls = False
        try:
            try:
                first = sock.recv(1, socket.MSG_PEEK)
            except OSError:
                return
            if not first:
                return
            if first == b"\x16":
                try:
                    sock = owner.ssl_context.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError) as e:
                    owner._error(f"conn {conn_id}: TLS handshake failed: {e!r}")
                    return
                tls = True
                owner._register(sock, conn_id)
            elif not owner.plain_ok:
                owner._error(f"conn {conn_id}: cleartext bytes on a TLS-only port")
                return
            self._serve(_Conn(sock, owner), conn_id, tls, owner)
        except ProtocolError as e:
            owner._error(f"conn {conn_id}: {e}")
        except (OSError, EOFError):
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass
            owner._unregister(conn_id)

    # -- HTTP -------------------------------------------------------------
    def _serve(self, conn, conn_id, tls, owner):
        while True:
            head = conn.read_head()
            if head is None:
                return
            method, target, version, headers = _parse_head(head)
            path = target.split("?", 1)[0]
            te = _hv(headers, "transfer-encoding")
            cl = _hv(headers, "content-length")
            if te:
                if te[-1].lower() != "chunked":
                    raise ProtocolError(f"unsupported Transfer-Encoding {te}")
                body = self._read_chunked(conn)
            elif cl:
                n = int(cl[0])
                if n > MAX_BODY:
                    raise ProtocolError("body too large")
                body = conn.read_exact(n)
            else:
                body = b""
            rec = FakeRequest(conn_id, tls, method, path, headers, body)
            upgrade = any(v.lower() == "websocket" for v in _hv(headers, "upgrade"))
            if path == "/v1/responses" and method == "GET" and upgrade:
                if owner.ws_status is not None:
                    rec.transport = "ws-refused"
                    rec.status = owner.ws_status
                    owner._add(rec)
                    msg = b"websocket refused by the fake server\n"
                    self._send(conn, owner.ws_status, [("Content-Type", "text/plain"),
                                                       ("Content-Length", str(len(msg)))], msg)
                    continue
                rec.transport = "ws"
                rec.status = 101
                owner._add(rec)
                self._websocket(conn, rec, owner)
                return
            if path == "/v1/responses" and method == "POST":
                rec.transport = "sse"
                rec.status = 200
                owner._add(rec)
                keep = self._sse(conn, rec, owner)
                if not keep:
                    return
                continue
            rec.status = 404
            owner._add(rec)
            msg = b'{"error":{"message":"not found (fake server)","type":"invalid_request_error"}}'
            self._send(conn, 404, [("Content-Type", "application/json"),
                                   ("Content-Length", str(len(msg)))], msg)

    @staticmethod
    def _read_chunked(conn):
        parts = []
        total = 0
        while True:
            line = conn.readline()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size line {line!r}")
            if size == 0:
                while conn.readline() != b"":
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY:
                raise ProtocolError("body too large")
            parts.append(conn.read_exact(size))
            if conn.read_exact(2) != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")

    @staticmethod
    def _send(conn, status, headers, body=b""):
        reason = {101: "Switching Protocols", 200: "OK", 404: "Not Found",
                  426: "Upgrade Required"}.get(status, "Status")
        lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
        conn.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    # -- SSE --------------------------------------------------------------
    def _sse(self, conn, rec, owner):
        text = owner.reply_text
        resp_id = owner._next_id()
        try:
            req = json.loads(rec.body or b"{}")
        except ValueError:
            req = None
        rec.messages.append(rec.body.decode("utf-8", "replace"))
        events = _event_blocks(text, resp_id)
        if isinstance(req, dict) and req.get("generate") is False:
            events = _warmup_events(resp_id)
        blocks = [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]
        if owner.sse_mode == "close":
            self._send(conn, 200, [("Content-Type", "text/event-stream"),
                                   ("Cache-Control", "no-cache"), ("Connection", "close")])
            for b in blocks:
                conn.sock.sendall(b)
            owner._count("sse_turns")
            return False
        self._send(conn, 200, [("Content-Type", "text/event-stream"),
                               ("Cache-Control", "no-cache"),
                               ("Transfer-Encoding", "chunked")])
        for b in blocks:
            conn.sock.sendall(b"%x\r\n%s\r\n" % (len(b), b))
        conn.sock.sendall(b"0\r\n\r\n")
        owner._count("sse_turns")
        return True

    # -- WebSocket --------------------------------------------------------
    def _websocket(self, conn, rec, owner):
        keys = _hv(rec.headers, "sec-websocket-key")
        versions = _hv(rec.headers, "sec-websocket-version")
        if len(keys) != 1 or versions != ["13"]:
            owner._error(f"bad WebSocket handshake: key={keys} version={versions}")
            self._send(conn, 400, [("Content-Length", "0"), ("Connection", "close")])
            return
        accept = ws_accept(keys[0])
        # No Sec-WebSocket-Extensions: permessage-deflate is declined.
        self._send(conn, 101, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                               ("Sec-WebSocket-Accept", accept)])
        owner._count("ws_handshakes")
        frag_op, frag = None, []
        while True:
            frame = self._read_frame(conn)
            if frame is None:
                return   # EOF without Close: fine
            fin, opcode, payload = frame
            if opcode == 0x8:
                rec.closed_cleanly = True
                code = payload[:2] if len(payload) >= 2 else b""
                self._send_frame(conn, 0x8, code)
                return
            if opcode == 0x9:
                self._send_frame(conn, 0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode in (0x1, 0x2):
                if frag_op is not None:
                    raise ProtocolError("new data frame inside a fragmented message")
                frag_op, frag = opcode, [payload]
            elif opcode == 0x0:
                if frag_op is None:
                    raise ProtocolError("continuation frame without a message")
                frag.append(payload)
            else:
                raise ProtocolError(f"unknown opcode {opcode:#x}")
            if not fin:
                continue
            op, data = frag_op, b"".join(frag)
            frag_op, frag = None, []
            if op == 0x2:
                raise ProtocolError("binary WebSocket message (expected JSON text)")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError("text frame is not UTF-8")
            with owner.lock:
                rec.messages.append(text)
            self._answer_ws(conn, text, owner)

    def _answer_ws(self, conn, text, owner):
        try:
            msg = json.loads(text)
        except ValueError:
            owner._error(f"WebSocket message is not JSON: {text[:200]!r}")
            msg = None
        resp_id = owner._next_id()
        if not isinstance(msg, dict) or msg.get("type") != "response.create":
            owner._error(f"unexpected WebSocket message: {text[:200]!r}")
            events = [{"type": "error", "status": 400,
                       "error": {"type": "invalid_request_error",
                                 "message": "fake server expects response.create"}}]
        elif msg.get("generate") is False:
            events = _warmup_events(resp_id)
            owner._count("ws_warmups")
        else:
            events = _event_blocks(owner.reply_text, resp_id)
            owner._count("ws_turns")
        for e in events:
            self._send_frame(conn, 0x1, json.dumps(e).encode())

    @staticmethod
    def _read_frame(conn):
        h = conn.read_exact_or_eof(2)
        if h is None:
            return None
        b0, b1 = h[0], h[1]
        if b0 & 0x70:
            raise ProtocolError(f"RSV bits set ({b0:#04x}) but no extension was negotiated")
        fin, opcode = bool(b0 & 0x80), b0 & 0x0F
        if not b1 & 0x80:
            raise ProtocolError("unmasked client frame")
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", conn.read_exact(2, "a frame length"))[0]
        elif n == 127:
            n = struct.unpack("!Q", conn.read_exact(8, "a frame length"))[0]
        if n > MAX_FRAME:
            raise ProtocolError(f"frame too large ({n})")
        if opcode >= 0x8 and (n > 125 or not fin):
            raise ProtocolError("bad control frame")
        mask = conn.read_exact(4, "a frame mask")
        data = conn.read_exact(n, "a frame payload")
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        conn.owner._record_bytes(payload)
        return fin, opcode, payload

    @staticmethod
    def _send_frame(conn, opcode, payload):
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
        conn.sock.sendall(head + payload)


class FakeOpenAI(ThreadedOrigin):
    """start() / stop(); all accessors are thread-safe.

    cert, key    PEM server certificate and key (TLS)
    plain_ok     also accept cleartext HTTP on the same port
    reply_text   what the assistant says in a turn
    ws_status    if set, answer every WebSocket upgrade with this status
    sse_mode     "chunked" or "close"
    """

    handler = _Handler

    def __init__(self, cert, key, *, plain_ok=False, reply_text="hello", ws_status=None,
                 sse_mode="chunked"):
        self._origin_init("fake-openai")
        self.ssl_context = server_tls_context(cert, key)
        self.plain_ok = plain_ok
        self.reply_text = reply_text
        self.ws_status = ws_status
        assert sse_mode in ("chunked", "close")
        self.sse_mode = sse_mode
        self.cond = threading.Condition(self.lock)
        self.requests = []
        self.errors = []
        self.counts = {"ws_handshakes": 0, "ws_warmups": 0, "ws_turns": 0, "sse_turns": 0}
        self._raw = bytearray()      # everything clients sent (decrypted), plus frame payloads
        self._resp_ids = itertools.count(1)

    # -- used by the handler ----------------------------------------------
    def _record_bytes(self, data):
        with self.lock:
            self._raw += data

    def _add(self, rec):
        with self.lock:
            self.requests.append(rec)
            self.cond.notify_all()

    def _count(self, what):
        with self.lock:
            self.counts[what] += 1
            self.cond.notify_all()

    def _error(self, msg):
        with self.lock:
            self.errors.append(msg)
            self.cond.notify_all()

    def _next_id(self):
        with self.lock:
            return f"resp_fake{next(self._resp_ids)}"

    # -- what tests use -----------------------------------------------------
    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def snapshot(self):
        with self.lock:
            return list(self.requests)

    def count(self, what):
        with self.lock:
            return self.counts[what]

    def by_transport(self, transport):
        return [r for r in self.snapshot() if r.transport == transport]

    def authorizations(self):
        """[(transport, [Authorization values])] for every request."""
        return [(r.transport, r.header_values("authorization")) for r in self.snapshot()]

    def saw(self, needle):
        """Whether needle occurred in anything a client sent (heads, bodies,
        chunk framing, unmasked WebSocket payloads)."""
        if isinstance(needle, str):
            needle = needle.encode()
        with self.lock:
            return needle in self._raw

    def wait_for(self, predicate, timeout=10.0):
        """Waits until predicate(self) is true (checked on every event)."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self.cond:
                self.cond.wait(min(left, 0.2))

    def describe(self):
        lines = [f"fake OpenAI on 127.0.0.1:{self.port}: {self.connections_accepted} connection(s), "
                 f"counts={self.counts}, errors={self.errors}"]
        for r in self.snapshot():
            lines.append(f"  conn {r.conn_id} {'tls' if r.tls else 'plain'} {r.method} {r.path} "
                         f"-> {r.status} [{r.transport}] messages={len(r.messages)}")
        return "\n".join(lines)


# ---- helpers shared by test_codex.py and test_node_ws.py ----------------------

def openai_service_config(websocket_off=False):
    """The daemon config of the Codex tests: one bearer service for api.openai.com."""
    lines = ["[proxy]", "", '[service "openai"]', "host = api.openai.com", "auth = bearer",
             "secret = env:OPENAI_API_KEY"]
    if websocket_off:
        lines.append("websocket = off")
    return "\n".join(lines) + "\n"


@dataclass
class ProcResult:
    argv: list
    returncode: int
    stdout: str
    stderr: str
    elapsed: float
    timed_out: bool

    def describe(self, limit=6000):
        return (f"command: {' '.join(map(str, self.argv))}\n"
                f"exit={self.returncode} elapsed={self.elapsed:.1f}s"
                f"{' TIMED OUT' if self.timed_out else ''}\n"
                f"--- stdout ---\n{self.stdout[-limit:]}\n--- stderr ---\n{self.stderr[-limit:]}")


def run_bounded(argv, *, env, cwd=None, timeout=90.0):
    """Runs argv in its own process group with stdin=/dev/null; on timeout the
    whole group (e.g. codex.js and its native child) is killed."""
    t0 = time.monotonic()
    p = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                         cwd=str(cwd) if cwd else None, start_new_session=True)
    timed_out = False
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            out, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            out, err = b"", b"(output lost: pipes still open after SIGKILL)"
    # Leftovers of the group (a native child that outlived its launcher).
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return ProcResult([str(a) for a in argv], p.returncode, out.decode("utf-8", "replace"),
                      err.decode("utf-8", "replace"), time.monotonic() - t0, timed_out)


def files_containing(root, needles):
    """[(path, needle)] for every file under root whose bytes contain a needle."""
    hits = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            for n in needles:
                if n and n.encode() in data:
                    hits.append((path, n))
    return hits
