"""WebSocket origin servers for tests/integration/test_websocket.py.

WsUpstream: websockets 10.4 (legacy asyncio API) server on 127.0.0.1:<port>,
TLS with the test CA's server certificate (or cleartext when no cert is
given), running its own event loop in a background thread. It records every
connection (WsConn): request target and headers (raw names, in order), the
status it answered, negotiated extensions and subprotocol, each message
received (("text", str) / ("binary", bytes)), control frames received
(("ping"|"pong", bytes)), the close frame received (code, reason), WebSocket
bytes received on the wire after the handshake, and when it ended.

Paths (query strings ignored for dispatch):
  /echo           echo every message
  /record         record only
  /big?n=BYTES    send n bytes as 256 KiB binary messages (message i is
                  bytes([i % 251]) * size); WsConn.big_sent counts the bytes
                  whose send() returned
  /close-4001     after the first message: close with 4001 "upstream bye"
  /drop           after the first message: drop TCP, no close frame
  /greet          send GREET_TEXT then GREET_BINARY, then echo
  /ping-client    send a ping (PING_PAYLOAD) and wait <= 3 s for its pong
                  (WsConn.pong_ok), then echo
  /status-NNN     plain HTTP answer NNN (no upgrade), body STATUS_BODY(NNN);
                  401 adds WWW-Authenticate
  anything else   404 (plain HTTP)

RawWsUpstream: plain TLS socket server (no websockets library) answering
upgrade requests with broken (or correct) 101s; see RAW_PATHS.
"""
import asyncio
import base64
import hashlib
import http
import itertools
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field

import websockets
import websockets.legacy.server as wsserver
from websockets.frames import OP_CLOSE, OP_PING, OP_PONG, Close

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BIG_CHUNK = 256 * 1024
GREET_TEXT = "hello __OPENAI_KEY__ \u2713 caf\u00e9"
GREET_BINARY = b"\x00__OPENAI_KEY__\xff\xfe"
PING_PAYLOAD = b"up-ping-1"
SUBPROTOCOLS = ["chat.v1"]
UPSTREAM_101_HEADER = ("X-Upstream-Ws", "yes")
IO_TIMEOUT = 20.0


def accept_for(key):
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def big_message(i):
    return bytes([i % 251]) * BIG_CHUNK


def status_body(code):
    return f"upstream status {code}\n".encode()


def _server_ctx(certfile, keyfile):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(certfile), str(keyfile))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


@dataclass
class WsConn:
    conn_id: int
    target: str = ""
    headers: list = field(default_factory=list)   # [(raw name, value)] in order
    status: int = 0                                # 101, or the plain HTTP status
    extensions: list = field(default_factory=list)  # negotiated extension names
    response_extensions: str = None                # Sec-WebSocket-Extensions answered
    subprotocol: str = None
    messages: list = field(default_factory=list)   # [("text", str) | ("binary", bytes)]
    control: list = field(default_factory=list)    # [("ping"|"pong", bytes)]
    close_code: int = None                         # from the close frame received
    close_reason: str = None
    wire_bytes_in: int = 0                         # bytes received after the handshake
    big_sent: int = 0
    pong_ok: bool = None
    error: str = None                              # handler exception (if any)
    ended_at: float = None                         # time.monotonic() when it ended

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

    @property
    def ended(self):
        return self.ended_at is not None


class _Protocol(wsserver.WebSocketServerProtocol):
    """Server protocol that records into a WsConn."""

    owner = None  # set on the subclass made per server

    def connection_made(self, transport):
        super().connection_made(transport)
        self.av_rec = self.owner._new_conn()
        self.av_handshake_done = False

    def data_received(self, data):
        if self.av_handshake_done:
            self.av_rec.wire_bytes_in += len(data)
        super().data_received(data)

    def connection_lost(self, exc):
        super().connection_lost(exc)
        self.owner._ended(self.av_rec)

    async def read_frame(self, max_size):
        frame = await super().read_frame(max_size)
        if frame.opcode == OP_PING:
            self.av_rec.control.append(("ping", bytes(frame.data)))
        elif frame.opcode == OP_PONG:
            self.av_rec.control.append(("pong", bytes(frame.data)))
        elif frame.opcode == OP_CLOSE:
            try:
                close = Close.parse(frame.data)
                self.av_rec.close_code, self.av_rec.close_reason = close.code, close.reason
            except Exception as e:  # noqa: BLE001 - a bad close frame is recorded as such
                self.av_rec.close_code, self.av_rec.close_reason = -1, repr(e)
        return frame

    async def process_request(self, path, request_headers):
        rec = self.av_rec
        rec.target = path
        rec.headers = list(request_headers.raw_items())
        self.owner._notify()
        p = path.split("?", 1)[0]
        if p.startswith("/status-") and p[8:].isdigit():
            code = int(p[8:])
            headers = [("Content-Type", "text/plain"), ("X-Upstream-Plain", "yes")]
            if code == 401:
                headers.append(("WWW-Authenticate", 'Bearer realm="test"'))
            rec.status = code
            self.owner._notify()
            return http.HTTPStatus(code), headers, status_body(code)
        if p not in ("/echo", "/record", "/big", "/close-4001", "/drop", "/greet",
                     "/ping-client"):
            rec.status = 404
            self.owner._notify()
            return http.HTTPStatus.NOT_FOUND, [("Content-Type", "text/plain")], \
                b"no such websocket path\n"
        # The handshake bytes are all in; count what follows it.
        self.av_handshake_done = True
        return None


def _query(target):
    out = {}
    if "?" in target:
        for part in target.split("?", 1)[1].split("&"):
            k, _, v = part.partition("=")
            out[k] = v
    return out


class WsUpstream:
    """start() / stop(); conns() snapshots; wait_conn(i) / wait(pred)."""

    def __init__(self, certfile=None, keyfile=None, name="ws"):
        self.name = name
        self.ssl_context = _server_ctx(certfile, keyfile) if certfile else None
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self._conns = []
        self._ids = itertools.count(1)
        self.handler_errors = []
        self.loop = None
        self._server = None
        self._thread = None

    # -- lifecycle -----------------------------------------------------------
    def start(self):
        ready = threading.Event()
        self.loop = asyncio.new_event_loop()

        failure = []

        def run():
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self._start_server())
            except BaseException as e:  # noqa: BLE001 - reported by start()
                failure.append(e)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()
            self.loop.close()

        self._thread = threading.Thread(target=run, name=f"ws-upstream-{self.name}",
                                        daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("WebSocket upstream did not start")
        if failure:
            self.loop = None
            raise RuntimeError(f"WebSocket upstream did not start: {failure[0]!r}")
        return self

    async def _start_server(self):
        proto = type("_OwnedProtocol", (_Protocol,), {"owner": self})
        self._server = await websockets.serve(
            self._handler, "127.0.0.1", 0, ssl=self.ssl_context, create_protocol=proto,
            compression="deflate", subprotocols=SUBPROTOCOLS,
            extra_headers=[UPSTREAM_101_HEADER], ping_interval=None, close_timeout=2,
            max_size=None)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self):
        if self.loop is None:
            return

        async def shutdown():
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 5)
            except asyncio.TimeoutError:
                pass

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    # -- bookkeeping ---------------------------------------------------------
    def _new_conn(self):
        with self.lock:
            rec = WsConn(next(self._ids))
            self._conns.append(rec)
            self.cond.notify_all()
            return rec

    def _ended(self, rec):
        with self.lock:
            rec.ended_at = time.monotonic()
            self.cond.notify_all()

    def _notify(self):
        with self.lock:
            self.cond.notify_all()

    async def _handler(self, ws):
        rec = ws.av_rec
        rec.extensions = [e.name for e in ws.extensions]
        rec.response_extensions = ws.response_headers.get("Sec-WebSocket-Extensions")
        rec.subprotocol = ws.subprotocol
        rec.status = 101  # last: wait_conn() treats a status as "recorded"
        self._notify()
        path = rec.path
        try:
            if path == "/greet":
                await ws.send(GREET_TEXT)
                await ws.send(GREET_BINARY)
            elif path == "/ping-client":
                waiter = await ws.ping(PING_PAYLOAD)
                try:
                    await asyncio.wait_for(waiter, 3)
                    rec.pong_ok = True
                except asyncio.TimeoutError:
                    rec.pong_ok = False
                self._notify()
            elif path == "/big":
                n = int(_query(rec.target).get("n", "0"))
                i = 0
                while rec.big_sent < n:
                    msg = big_message(i)[:n - rec.big_sent]
                    await ws.send(msg)
                    rec.big_sent += len(msg)
                    i += 1
                self._notify()
            async for msg in ws:
                rec.messages.append(("text", msg) if isinstance(msg, str) else
                                    ("binary", bytes(msg)))
                self._notify()
                if path in ("/echo", "/greet", "/ping-client"):
                    await ws.send(msg)
                elif path == "/close-4001":
                    await ws.close(4001, "upstream bye")
                    break
                elif path == "/drop":
                    ws.transport.abort()
                    break
        except websockets.ConnectionClosed:
            pass
        except Exception as e:  # noqa: BLE001 - recorded for the test to see
            rec.error = repr(e)
            with self.lock:
                self.handler_errors.append(f"conn {rec.conn_id}: {e!r}")
        finally:
            self._notify()

    # -- what tests use ------------------------------------------------------
    def conns(self):
        with self.lock:
            return list(self._conns)

    def wait(self, pred, timeout=5.0, what="condition"):
        """Blocks until pred() is true (re-evaluated on every change)."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                v = pred()
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: timed out after {timeout}s waiting "
                                         f"for {what}; connections: {self._conns!r}"[:4000])
                self.cond.wait(min(left, 0.05))

    def _conn_ready(self, index):
        if len(self._conns) <= index:
            return None
        c = self._conns[index]
        # request recorded and answered (for a 101: the handler has started)
        return c if c.target and c.status else None

    def wait_conn(self, index=0, timeout=5.0):
        """The index-th connection once its request was recorded and answered
        (for a 101: once extensions and subprotocol are recorded)."""
        return self.wait(lambda: self._conn_ready(index), timeout, f"connection #{index}")

    async def await_(self, pred, timeout=5.0, what="condition"):
        """Async polling form of wait() for use inside a client event loop."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                v = pred()
            if v:
                return v
            if time.monotonic() >= deadline:
                with self.lock:
                    raise AssertionError(f"{self.name}: timed out after {timeout}s waiting "
                                         f"for {what}; connections: {self._conns!r}"[:4000])
            await asyncio.sleep(0.01)

    async def aconn(self, index=0, timeout=5.0):
        """Async form of wait_conn()."""
        return await self.await_(lambda: self._conn_ready(index), timeout,
                                 f"connection #{index}")


# ---- raw upstream for broken handshakes --------------------------------------

LEAK_FRAME = b"\x81\x04leak"  # unmasked text frame "leak", sent after a bad 101

# path -> function(key) returning the response head lines after the status line
RAW_PATHS = {
    "/ok": lambda key: ["Upgrade: websocket", "Connection: Upgrade",
                        f"Sec-WebSocket-Accept: {accept_for(key)}"],
    "/bad-accept": lambda key: ["Upgrade: websocket", "Connection: Upgrade",
                                "Sec-WebSocket-Accept: " +
                                base64.b64encode(b"\x00" * 20).decode()],
    "/no-upgrade-header": lambda key: ["Connection: Upgrade",
                                       f"Sec-WebSocket-Accept: {accept_for(key)}"],
    "/wrong-upgrade": lambda key: ["Upgrade: h2c", "Connection: Upgrade",
                                   f"Sec-WebSocket-Accept: {accept_for(key)}"],
    "/no-connection-upgrade": lambda key: ["Upgrade: websocket", "Connection: keep-alive",
                                           f"Sec-WebSocket-Accept: {accept_for(key)}"],
    "/no-accept": lambda key: ["Upgrade: websocket", "Connection: Upgrade"],
}


@dataclass
class RawRecord:
    target: str
    headers: list
    received_after: bytes = b""


class _RawHandler(socketserver.BaseRequestHandler):
    def handle(self):
        owner = self.server.owner
        sock = self.request
        sock.settimeout(IO_TIMEOUT)
        try:
            sock = owner.ssl_context.wrap_socket(sock, server_side=True)
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            head, rest = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            target = lines[0].split(" ")[1]
            headers = []
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers.append((k, v.strip()))
            rec = RawRecord(target, headers, rest)
            with owner.lock:
                owner.records.append(rec)
                owner.cond.notify_all()
            key = next((v for k, v in headers if k.lower() == "sec-websocket-key"), "")
            make = RAW_PATHS.get(target.split("?", 1)[0])
            if make is None:
                sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                return
            resp = ["HTTP/1.1 101 Switching Protocols"] + make(key)
            sock.sendall(("\r\n".join(resp) + "\r\n\r\n").encode() + LEAK_FRAME)
            # Keep the connection until the peer goes away, recording bytes.
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                with owner.lock:
                    rec.received_after += data
        except (OSError, ssl.SSLError):
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class RawWsUpstream:
    def __init__(self, certfile, keyfile):
        self.ssl_context = _server_ctx(certfile, keyfile)
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.records = []

    def start(self):
        self._server = _TCPServer(("127.0.0.1", 0), _RawHandler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def snapshot(self):
        with self.lock:
            return list(self.records)

    def wait_records(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self.records) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return list(self.records)
