"""HTTP/2 clients for tests/integration/test_h2.py (python3-h2 4.1, hyperframe,
hpack; no network beyond 127.0.0.1).

TlsPipe        non-blocking TLS over a TCP socket through memory BIOs, used by
               both ends (this client and avtest.h2_upstream). One thread
               drives it, so reads and writes interleave without ever running
               OpenSSL on one SSL object from two threads, and a test can keep
               reading while it floods (or stop reading on purpose).
connect_tunnel / open_tls
               CONNECT host:port through the proxy's plain listener, then TLS
               with ALPN (default h2, http/1.1) trusting the daemon's CA;
               asserts the negotiated protocol.
H2Client       small synchronous python3-h2 client: request(), send_data(),
               poll()/wait() with timeouts, per-stream results (StreamResult)
               with arrival times of each DATA chunk, GOAWAY seen.
RawH2          frame-level client (hyperframe + hpack, no h2 state machine)
               for hostile tests: arbitrary HEADERS/CONTINUATION/RST_STREAM/
               SETTINGS; decodes the peer's HEADERS; records RST_STREAM and
               GOAWAY.
Forwarder      local TCP listener; each accepted connection is spliced
               through its own CONNECT tunnel to the proxy (for nghttp,
               which has no proxy option).
ws_frame / WsFrameReader
               WebSocket framing for RFC 8441 streams (client frames masked).
"""
import os
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
from hyperframe.frame import (ContinuationFrame, Frame, GoAwayFrame, HeadersFrame,
                              PingFrame, RstStreamFrame, SettingsFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_TIMEOUT = 10.0

# HTTP/2 error codes (RFC 9113 section 7)
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
REFUSED_STREAM = 0x7
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB
ERROR_NAMES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR",
               3: "FLOW_CONTROL_ERROR", 4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED",
               6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM", 8: "CANCEL",
               9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR", 11: "ENHANCE_YOUR_CALM",
               12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED"}

SETTINGS_ENABLE_CONNECT_PROTOCOL = 0x8


def error_name(code):
    return ERROR_NAMES.get(code, f"0x{code:x}")


# ---- TLS over memory BIOs -------------------------------------------------------

class TlsPipe:
    """TLS on a non-blocking socket, driven by io(). write() queues plaintext;
    take() returns the plaintext received so far. `eof` is set when the peer
    closed (TCP EOF, reset, close_notify or a TLS error)."""

    def __init__(self, sock, ctx, *, server_side=False, server_hostname=None,
                 timeout=DEFAULT_TIMEOUT):
        self.sock = sock
        sock.setblocking(False)
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self._in, self._out, server_side=server_side,
                                server_hostname=server_hostname)
        self.outbuf = bytearray()   # ciphertext not yet written to the socket
        self.rbuf = bytearray()     # plaintext received, not yet taken
        self.eof = False            # no more plaintext will arrive
        self.eof_reason = None
        self.write_failed = False   # the peer stopped accepting bytes (EPIPE/RST)
        self.raw_eof = False
        self.bytes_in = 0
        self._handshake(timeout)

    def _handshake(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            self._move_out()
            if self.raw_eof:
                raise ssl.SSLError(f"connection closed during the TLS handshake "
                                   f"({self.eof_reason})")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("TLS handshake did not complete")
            self._io_raw(min(left, 0.1), feed_only=True)
        self._move_out()
        self.flush(deadline - time.monotonic())

    @property
    def alpn(self):
        return self.obj.selected_alpn_protocol()

    def _move_out(self):
        data = self._out.read()
        if data:
            self.outbuf += data

    def _io_raw(self, wait, want_read=True, feed_only=False):
        """One select round on the socket. Returns True if bytes moved."""
        self._move_out()
        r = [self.sock] if want_read and not self.raw_eof else []
        w = [self.sock] if self.outbuf and not self.write_failed else []
        if not r and not w:
            if wait > 0:
                time.sleep(min(wait, 0.05))
            return False
        try:
            rr, ww, _ = select.select(r, w, [], max(0.0, wait))
        except (OSError, ValueError):
            self._set_eof("socket closed")
            return False
        moved = False
        if ww:
            try:
                n = self.sock.send(self.outbuf)
                del self.outbuf[:n]
                moved = n > 0
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                self.write_failed = True
                self.outbuf.clear()
                self._note(f"send: {e!r}")
        if rr:
            try:
                data = self.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError as e:
                data = b""
                self._note(f"recv: {e!r}")
            if data is not None:
                moved = True
                if not data:
                    self.raw_eof = True
                    self._note(self.eof_reason or "TCP EOF")
                    self._in.write_eof()
                else:
                    self.bytes_in += len(data)
                    self._in.write(data)
                if not feed_only:
                    self._decrypt()
        return moved

    def _note(self, reason):
        if self.eof_reason is None:
            self.eof_reason = reason

    def _set_eof(self, reason):
        self._note(reason)
        self.eof = True
        self.raw_eof = True

    def _decrypt(self):
        while True:
            try:
                d = self.obj.read(262144)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._set_eof("TLS close_notify")
                break
            except ssl.SSLError as e:
                self._set_eof(f"TLS: {e!r}")
                break
            if not d:
                self._set_eof("TLS EOF")
                break
            self.rbuf += d
        if self.raw_eof:
            self.eof = True
        self._move_out()

    def io(self, wait=0.0, want_read=True):
        return self._io_raw(wait, want_read)

    def write(self, data):
        if self.write_failed:
            return
        try:
            self.obj.write(data)
        except ssl.SSLError as e:
            self.write_failed = True
            self._note(f"TLS write: {e!r}")
            return
        self._move_out()

    def take(self):
        data = bytes(self.rbuf)
        self.rbuf.clear()
        return data

    def flush(self, timeout=DEFAULT_TIMEOUT, want_read=True):
        """Writes out everything queued (reading meanwhile unless want_read is
        False). Returns False on a timeout or when the peer stopped reading."""
        deadline = time.monotonic() + max(0.0, timeout)
        while self.outbuf and not self.write_failed:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._io_raw(min(left, 0.05), want_read)
        return not self.write_failed

    def pending_out(self):
        self._move_out()
        return len(self.outbuf)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def client_context(cafile, alpn=("h2", "http/1.1")):
    ctx = ssl.create_default_context(cafile=str(cafile))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def _read_connect_response(sock, timeout):
    """Reads the CONNECT response head byte by byte (nothing beyond it)."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        c = sock.recv(1)
        if not c:
            break
        buf += c
        if len(buf) > 65536:
            break
    return buf


def connect_tunnel(proxy_port, target, *, headers=(), rcvbuf=None, timeout=DEFAULT_TIMEOUT):
    """CONNECT target through the proxy's plain listener; returns the socket
    after a 200 (asserts it)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", proxy_port))
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"] + \
        [f"{k}: {v}" for k, v in headers]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = _read_connect_response(s, timeout)
    if not head.startswith(b"HTTP/1.1 200"):
        s.close()
        raise AssertionError(f"CONNECT {target} answered {head[:300]!r}")
    return s


def open_tls(proxy_port, cafile, host="api.openai.com", port=443, *, alpn=("h2", "http/1.1"),
             expect_alpn="h2", sni=None, connect_headers=(), rcvbuf=None,
             timeout=DEFAULT_TIMEOUT):
    """CONNECT host:port through the proxy, then TLS inside the tunnel
    (trusting cafile, SNI host) offering `alpn`. Asserts the negotiated
    protocol equals expect_alpn (unless None). Returns a TlsPipe."""
    s = connect_tunnel(proxy_port, f"{host}:{port}", headers=connect_headers, rcvbuf=rcvbuf,
                       timeout=timeout)
    return _tls(s, cafile, sni or host, alpn, expect_alpn, timeout,
                f"MITM TLS inside CONNECT {host}:{port}")


def open_tls_direct(port, cafile, host="api.openai.com", *, alpn=("h2", "http/1.1"),
                    expect_alpn="h2", timeout=DEFAULT_TIMEOUT):
    """TLS straight to 127.0.0.1:port (harness self-tests)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return _tls(s, cafile, host, alpn, expect_alpn, timeout, f"TLS to 127.0.0.1:{port}")


def open_tls_daemon(d, host="api.openai.com", port=443, **kw):
    """open_tls through a started avtest.daemon.Daemon."""
    return open_tls(d.port, d.ca_pem, host, port, **kw)


def _tls(sock, cafile, sni, alpn, expect_alpn, timeout, what):
    try:
        pipe = TlsPipe(sock, client_context(cafile, alpn), server_hostname=sni,
                       timeout=timeout)
    except BaseException:
        sock.close()
        raise
    if expect_alpn is not None:
        assert pipe.alpn == expect_alpn, \
            f"{what}: ALPN negotiated {pipe.alpn!r}, expected {expect_alpn!r} (offered {alpn})"
    return pipe


# ---- python3-h2 client ------------------------------------------------------------

@dataclass
class StreamResult:
    stream_id: int
    opened: float = field(default_factory=time.monotonic)
    headers: list = None          # final response head [(name, value)] (str)
    informational: list = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    chunks: list = field(default_factory=list)   # [(monotonic time, bytes)]
    trailers: list = None
    ended: bool = False           # END_STREAM received
    reset: int = None             # RST_STREAM error code received
    end_time: float = None
    head_time: float = None

    @property
    def done(self):
        return self.ended or self.reset is not None

    @property
    def status(self):
        if self.headers is None:
            return None
        for k, v in self.headers:
            if k == ":status":
                return int(v)
        return None

    def header_values(self, name):
        n = name.lower()
        return [v for k, v in (self.headers or []) if k.lower() == n]

    def header(self, name):
        vals = self.header_values(name)
        assert len(vals) <= 1, f"{name} appears {len(vals)} times: {vals!r}"
        return vals[0] if vals else None

    @property
    def body(self):
        return bytes(self.data)

    def describe(self):
        return (f"stream {self.stream_id}: status={self.status} ended={self.ended} "
                f"reset={None if self.reset is None else error_name(self.reset)} "
                f"headers={self.headers!r} body={bytes(self.data[:300])!r}")


class H2Client:
    """Synchronous HTTP/2 client over a TlsPipe. Everything happens in the
    calling thread: poll() does one I/O round and processes what arrived."""

    def __init__(self, pipe, *, validate=True, window=16 << 20, settings=None):
        self.pipe = pipe
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                        validate_outbound_headers=validate,
                                        normalize_outbound_headers=validate,
                                        validate_inbound_headers=True)
        self.conn = h2.connection.H2Connection(cfg)
        self.conn.initiate_connection()
        local = {h2.settings.SettingCodes.ENABLE_PUSH: 0,
                 h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: min(window, (1 << 31) - 1)}
        local.update(settings or {})
        self.conn.update_settings(local)
        if window > 65535:
            self.conn.increment_flow_control_window(window - 65535)
        self.streams = {}
        self.goaway = None            # last GOAWAY frame received (hyperframe)
        self.goaways = []
        self.goaway_time = None       # when the first one arrived
        self._inbuf = bytearray()
        self.remote_settings_seen = False
        self.closed = False
        self.close_time = None
        self.error = None             # h2 ProtocolError raised on input
        self.flush()

    # -- I/O -------------------------------------------------------------------
    def flush(self, timeout=DEFAULT_TIMEOUT):
        """Hands h2's output to TLS and writes it to the socket (so that a
        test may block elsewhere right after a request)."""
        data = self.conn.data_to_send()
        if data:
            self.pipe.write(data)
        if self.pipe.outbuf:
            self.pipe.flush(timeout)

    def poll(self, timeout=0.05):
        self.flush()
        self.pipe.io(timeout)
        data = self._strip_goaway(self.pipe.take())
        if data and self.error is None:
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError as e:
                self.error = e
                events = []
            self._handle(events)
            self.flush()
        if self.pipe.eof and not self.closed:
            self.closed = True
            self.close_time = time.monotonic()
            for st in self.streams.values():
                if not st.done and st.end_time is None:
                    st.end_time = self.close_time

    def _strip_goaway(self, data):
        """Returns the complete frames received, minus GOAWAY frames, which
        are recorded here: python3-h2 refuses every frame after a GOAWAY,
        while RFC 9113 lets the streams at or below last_stream_id finish."""
        self._inbuf += data
        out = bytearray()
        pos = 0
        buf = self._inbuf
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            end = pos + 9 + length
            if len(buf) < end:
                break
            if buf[pos + 3] == 0x7:
                f = GoAwayFrame(0)
                f.parse_body(memoryview(bytes(buf[pos + 9:end])))
                if self.goaway is None:
                    self.goaway_time = time.monotonic()
                self.goaway = f
                self.goaways.append(f)
            else:
                out += buf[pos:end]
            pos = end
        del buf[:pos]
        return bytes(out)

    def wait(self, pred, timeout=DEFAULT_TIMEOUT, what="condition"):
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            if v:
                return v
            if self.closed:
                v = pred()
                if v:
                    return v
                raise AssertionError(f"connection closed ({self.pipe.eof_reason}) while "
                                     f"waiting for {what}; {self.state()}")
            if self.error is not None:
                raise AssertionError(f"h2 protocol error from the peer while waiting for "
                                     f"{what}: {self.error!r}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"{self.state()}")
            self.poll(min(left, 0.05))

    def state(self):
        open_ = [s.describe() for s in self.streams.values() if not s.done][:5]
        g = None if self.goaway is None else (error_name(self.goaway.error_code),
                                              self.goaway.last_stream_id)
        return f"goaway={g} closed={self.closed} open streams (first 5)={open_}"

    def _handle(self, events):
        now = time.monotonic()
        for ev in events:
            st = self.streams.get(getattr(ev, "stream_id", None))
            if isinstance(ev, h2.events.ResponseReceived):
                st.headers = list(ev.headers)
                st.head_time = now
            elif isinstance(ev, h2.events.InformationalResponseReceived):
                st.informational.append(list(ev.headers))
            elif isinstance(ev, h2.events.DataReceived):
                if st is not None:
                    st.data += ev.data
                    st.chunks.append((now, bytes(ev.data)))
                if ev.flow_controlled_length:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length,
                                                        ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                st.trailers = list(ev.headers)
            elif isinstance(ev, h2.events.StreamEnded):
                st.ended = True
                st.end_time = now
            elif isinstance(ev, h2.events.StreamReset):
                if st is not None:
                    st.reset = ev.error_code
                    st.end_time = now
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                self.remote_settings_seen = True

    # -- requests ----------------------------------------------------------------
    def request(self, method="GET", path="/echo", *, authority="api.openai.com",
                scheme="https", headers=(), body=None, end_stream=None, protocol=None):
        """Opens a stream. body: bytes sent (flow-controlled) after the head.
        end_stream (default True): END_STREAM after the head/body; False
        leaves the stream open for send_data(). Returns the stream id."""
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method)]
        if protocol is not None:
            hdrs.append((":protocol", protocol))
        if scheme is not None:
            hdrs.append((":scheme", scheme))
        if path is not None:
            hdrs.append((":path", path))
        if authority is not None:
            hdrs.append((":authority", authority))
        hdrs += list(headers)
        if end_stream is None:
            end_stream = True
        self.streams[sid] = StreamResult(sid)
        self.conn.send_headers(sid, hdrs, end_stream=end_stream and body is None)
        self.flush()
        if body is not None:
            self.send_data(sid, body, end_stream=end_stream)
        return sid

    def send_data(self, sid, data, end_stream=False, timeout=DEFAULT_TIMEOUT):
        """Sends data on a stream within the peer's flow-control windows."""
        data = memoryview(bytes(data))
        deadline = time.monotonic() + timeout
        while len(data):
            window = min(self.conn.local_flow_control_window(sid),
                         self.conn.max_outbound_frame_size)
            if window <= 0 or self.pipe.pending_out() > (1 << 20):
                if time.monotonic() > deadline:
                    raise AssertionError(f"stream {sid}: no flow-control window for "
                                         f"{timeout}s; {self.state()}")
                if self.closed:
                    raise AssertionError(f"connection closed while sending on {sid}")
                self.poll(0.05)
                continue
            n = min(window, len(data))
            self.conn.send_data(sid, data[:n].tobytes())
            data = data[n:]
            self.flush()
            self.poll(0)
        if end_stream:
            self.conn.end_stream(sid)
        self.flush()
        self.poll(0)

    def end_stream(self, sid):
        self.conn.end_stream(sid)
        self.flush()

    def reset_stream(self, sid, code=CANCEL):
        self.conn.reset_stream(sid, code)
        self.flush()

    def response(self, sid, timeout=DEFAULT_TIMEOUT):
        """Waits until the stream ended (or was reset); returns its StreamResult."""
        st = self.streams[sid]
        self.wait(lambda: st.done, timeout, f"the end of stream {sid}")
        return st

    def get(self, path="/echo", *, method="GET", timeout=DEFAULT_TIMEOUT, **kw):
        return self.response(self.request(method, path, **kw), timeout)

    def remote_setting(self, code):
        return self.conn.remote_settings.get(code)

    def wait_settings(self, timeout=DEFAULT_TIMEOUT):
        self.wait(lambda: self.remote_settings_seen, timeout, "the peer's SETTINGS")

    def close(self):
        try:
            if not self.closed:
                self.conn.close_connection()
                self.flush()
                self.pipe.flush(0.5)
        except Exception:  # noqa: BLE001 - best effort
            pass
        self.pipe.close()


def all_received_text(c):
    """Every header and body the H2Client received, as one string (leak scans)."""
    parts = []
    for st in c.streams.values():
        for blk in [st.headers or [], st.trailers or []] + st.informational:
            parts += [f"{k}: {v}" for k, v in blk]
        parts.append(bytes(st.data).decode("latin-1"))
    return "\n".join(parts)


# ---- frame-level client ----------------------------------------------------------

@dataclass
class RawEvent:
    time: float
    frame: object
    headers: list = None     # decoded header block (HEADERS + CONTINUATIONs)


class RawH2:
    """HTTP/2 at the frame level, one thread, no state machine. Sends the
    preface and a SETTINGS frame, acknowledges the peer's SETTINGS (unless
    auto_ack is False), decodes the peer's header blocks, records every
    frame (events)."""

    def __init__(self, pipe, settings=None, auto_ack=True):
        self.pipe = pipe
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder(max_header_list_size=1 << 20)
        self.events = []
        self.inbuf = bytearray()
        self.auto_ack = auto_ack
        self.goaway = None
        self.goaway_time = None
        self.peer_settings = {}
        self._hblock = None   # (first frame, bytearray) while a block is open
        self.next_stream = 1
        self.write(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())

    # -- output --------------------------------------------------------------
    def write(self, data):
        self.pipe.write(data)

    def new_stream(self):
        sid = self.next_stream
        self.next_stream += 2
        return sid

    def header_block(self, headers):
        """HPACK-encodes headers ([(name, value)], str or bytes, order kept,
        no validation)."""
        return self.enc.encode([(k.encode() if isinstance(k, str) else k,
                                 v.encode() if isinstance(v, str) else v)
                                for k, v in headers], huffman=True)

    @staticmethod
    def headers_frames(sid, block, end_stream=True, max_frame=16384, end_headers=True):
        """Bytes of HEADERS (+ CONTINUATION frames) carrying block."""
        parts = [block[i:i + max_frame] for i in range(0, len(block), max_frame)] or [b""]
        out = []
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = []
            if last and end_headers:
                flags.append("END_HEADERS")
            if i == 0:
                if end_stream:
                    flags.append("END_STREAM")
                out.append(HeadersFrame(sid, data=part, flags=flags).serialize())
            else:
                out.append(ContinuationFrame(sid, data=part, flags=flags).serialize())
        return b"".join(out)

    def send_request(self, headers, sid=None, end_stream=True):
        """Sends a request head (HEADERS, split into CONTINUATIONs as needed);
        returns the stream id."""
        sid = sid or self.new_stream()
        self.write(self.headers_frames(sid, self.header_block(headers), end_stream))
        self.pipe.flush()
        return sid

    # -- input ---------------------------------------------------------------
    def pump(self, wait=0.0, want_read=True):
        self.pipe.io(wait, want_read)
        if want_read:
            self._parse(self.pipe.take())

    def _parse(self, data):
        if data:
            self.inbuf += data
        while len(self.inbuf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.inbuf[:9]))
            if len(self.inbuf) < 9 + length:
                break
            body = bytes(self.inbuf[9:9 + length])
            del self.inbuf[:9 + length]
            frame.parse_body(memoryview(body))
            self._on_frame(frame)

    def _on_frame(self, frame):
        now = time.monotonic()
        ev = RawEvent(now, frame)
        if isinstance(frame, (HeadersFrame, ContinuationFrame)):
            if isinstance(frame, HeadersFrame):
                self._hblock = (frame, bytearray(frame.data))
            elif self._hblock is not None:
                self._hblock[1].extend(frame.data)
            if "END_HEADERS" in frame.flags and self._hblock is not None:
                first, block = self._hblock
                self._hblock = None
                hdrs = [(k.decode("latin-1") if isinstance(k, bytes) else k,
                         v.decode("latin-1") if isinstance(v, bytes) else v)
                        for k, v in self.dec.decode(bytes(block))]
                ev = RawEvent(now, first, hdrs)
                self.events.append(ev)
            return
        self.events.append(ev)
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.peer_settings.update(frame.settings)
            if self.auto_ack:
                self.write(SettingsFrame(0, flags=["ACK"]).serialize())
        elif isinstance(frame, PingFrame) and "ACK" not in frame.flags and self.auto_ack:
            self.write(PingFrame(0, opaque_data=frame.opaque_data, flags=["ACK"]).serialize())
        elif isinstance(frame, GoAwayFrame) and self.goaway is None:
            self.goaway = frame
            self.goaway_time = now

    @property
    def closed(self):
        return self.pipe.eof

    def wait(self, pred, timeout=DEFAULT_TIMEOUT, what="condition"):
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            if v:
                return v
            if self.closed:
                self._parse(self.pipe.take())
                v = pred()
                if v:
                    return v
                raise AssertionError(f"connection closed ({self.pipe.eof_reason}) while "
                                     f"waiting for {what}; frames: {self.summary()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"frames: {self.summary()}")
            self.pump(min(left, 0.05))

    def stream_outcome(self, sid):
        """('headers', [(k, v)]) for the first response head on sid,
        ('rst', code) for a RST_STREAM, or None so far."""
        for ev in self.events:
            if getattr(ev.frame, "stream_id", None) != sid:
                continue
            if ev.headers is not None:
                status = dict(ev.headers).get(":status", "")
                if not status.startswith("1"):
                    return ("headers", ev.headers)
            if isinstance(ev.frame, RstStreamFrame):
                return ("rst", ev.frame.error_code)
        return None

    def wait_stream(self, sid, timeout=DEFAULT_TIMEOUT):
        return self.wait(lambda: self.stream_outcome(sid), timeout, f"stream {sid}'s outcome")

    def stream_ended(self, sid):
        for ev in self.events:
            f = ev.frame
            if getattr(f, "stream_id", None) == sid and (
                    "END_STREAM" in getattr(f, "flags", ()) or isinstance(f, RstStreamFrame)):
                return True
        return False

    def stream_body(self, sid):
        return b"".join(ev.frame.data for ev in self.events
                        if ev.frame.type == 0x0 and ev.frame.stream_id == sid)

    def wait_response(self, sid, timeout=DEFAULT_TIMEOUT):
        """(status, headers, body) once the stream ended; asserts a response."""
        out = self.wait_stream(sid, timeout)
        assert out[0] == "headers", f"stream {sid}: {out[0]} {error_name(out[1])}"
        self.wait(lambda: self.stream_ended(sid), timeout, f"end of stream {sid}")
        hdrs = out[1]
        return int(dict(hdrs)[":status"]), hdrs, self.stream_body(sid)

    def wait_goaway_or_close(self, timeout):
        """Reads until a GOAWAY arrives or the connection closes; returns
        (goaway frame or None, closed, seconds waited)."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while self.goaway is None and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.pump(min(left, 0.05))
        self._parse(self.pipe.take())
        return self.goaway, self.closed, time.monotonic() - t0

    def summary(self, last=12):
        out = []
        for ev in self.events[-last:]:
            f = ev.frame
            s = f"{type(f).__name__}(sid={f.stream_id}"
            if isinstance(f, RstStreamFrame):
                s += f", {error_name(f.error_code)}"
            if isinstance(f, GoAwayFrame):
                s += f", last={f.last_stream_id}, {error_name(f.error_code)}"
            if ev.headers is not None:
                s += f", {ev.headers!r}"
            out.append(s + ")")
        return f"{len(self.events)} frames, last: " + "; ".join(out)

    def close(self):
        self.pipe.close()


def rst_frame(sid, code=CANCEL):
    return RstStreamFrame(sid, error_code=code).serialize()


def settings_frame(settings):
    return SettingsFrame(0, settings=settings).serialize()


def continuation_frame(sid, data, end_headers=False):
    return ContinuationFrame(sid, data=data,
                             flags=["END_HEADERS"] if end_headers else []).serialize()


def headers_frame(sid, block, *, end_stream=True, end_headers=True):
    flags = (["END_STREAM"] if end_stream else []) + (["END_HEADERS"] if end_headers else [])
    return HeadersFrame(sid, data=block, flags=flags).serialize()


# ---- TCP forwarder through CONNECT -------------------------------------------------

class Forwarder:
    """Listens on 127.0.0.1:<port>; every accepted connection gets its own
    CONNECT target through the proxy and bytes are spliced both ways."""

    def __init__(self, proxy_port, target, connect_headers=()):
        self.proxy_port = proxy_port
        self.target = target
        self.connect_headers = list(connect_headers)
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(32)
        self.port = self.lsock.getsockname()[1]
        self.accepted = 0
        self.errors = []
        self._stop = threading.Event()
        self._socks = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name="h2-forwarder")

    def start(self):
        self._thread.start()
        return self

    def _accept_loop(self):
        self.lsock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                c, _ = self.lsock.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                break
            with self._lock:
                self.accepted += 1
                self._socks.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            u = connect_tunnel(self.proxy_port, self.target, headers=self.connect_headers)
        except Exception as e:  # noqa: BLE001 - recorded for the test
            with self._lock:
                self.errors.append(repr(e))
            c.close()
            return
        with self._lock:
            self._socks.append(u)
        splice(c, u, self._stop)

    def stop(self):
        self._stop.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
        self._thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def splice(a, b, stop=None):
    """Copies bytes both ways between sockets a and b until both directions
    ended; half-closes are propagated."""
    a.setblocking(False)
    b.setblocking(False)
    peer = {a: b, b: a}
    open_in = {a, b}
    pending = {a: bytearray(), b: bytearray()}   # bytes waiting to be written TO key
    try:
        while open_in or any(pending.values()):
            if stop is not None and stop.is_set():
                break
            r = [s for s in open_in if len(pending[peer[s]]) < (1 << 20)]
            w = [s for s in (a, b) if pending[s]]
            if not r and not w:
                break
            rr, ww, _ = select.select(r, w, [], 0.2)
            for s in rr:
                try:
                    data = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if data:
                    pending[peer[s]] += data
                else:
                    open_in.discard(s)
                    if not pending[peer[s]]:
                        try:
                            peer[s].shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
            for s in ww:
                try:
                    n = s.send(pending[s])
                    del pending[s][:n]
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    pending[s].clear()
                    open_in.discard(peer[s])
                if not pending[s] and peer[s] not in open_in:
                    try:
                        s.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
    finally:
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass


# ---- WebSocket framing (RFC 6455) over an h2 stream ----------------------------------

WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def ws_frame(opcode, payload, *, mask=True, fin=True):
    b0 = (0x80 if fin else 0) | opcode
    m = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, m | 127]) + n.to_bytes(8, "big")
    if mask:
        key = os.urandom(4)
        head += key
        payload = bytes(x ^ key[i % 4] for i, x in enumerate(payload))
    return head + payload


def ws_close_payload(code, reason=""):
    return code.to_bytes(2, "big") + reason.encode()


def ws_parse(buf):
    """Parses complete frames from bytearray buf (consumed). Returns
    [(fin, opcode, masked, payload)]."""
    out = []
    while len(buf) >= 2:
        n = buf[1] & 0x7F
        off = 2
        if n == 126:
            if len(buf) < 4:
                break
            n = int.from_bytes(buf[2:4], "big")
            off = 4
        elif n == 127:
            if len(buf) < 10:
                break
            n = int.from_bytes(buf[2:10], "big")
            off = 10
        masked = bool(buf[1] & 0x80)
        if masked:
            off += 4
        if len(buf) < off + n:
            break
        payload = bytes(buf[off:off + n])
        if masked:
            key = buf[off - 4:off]
            payload = bytes(x ^ key[i % 4] for i, x in enumerate(payload))
        out.append((bool(buf[0] & 0x80), buf[0] & 0x0F, masked, payload))
        del buf[:off + n]
    return out
