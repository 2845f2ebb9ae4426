"""A recording HTTP/2 origin server (TLS, ALPN "h2" only) on python3-h2.

Threaded like avtest.upstream.ThreadedOrigin (one thread per TCP
connection). Each connection is driven by one loop over a TlsPipe (memory
BIOs), so a slow response (/slow, /sse) never blocks other streams, and
large bodies are sent as the peer's flow-control windows allow.

Recorded per request (H2Request): method, path, authority, scheme, all
header fields as received ([(name, value)] str pairs, pseudo-headers
included, in order), body bytes, the TCP connection id and the stream id.
Also: connections_accepted, max_concurrent_streams_seen (the most streams
open at once on one connection), streams_started (HEADERS received,
complete or not), protocol_errors (anything the h2 state machine refused,
or a peer that did not negotiate h2 -- fixtures assert it stays empty),
resets_received, goaways_received, data_bytes_received (request DATA
payload bytes, complete requests or not).

Endpoints (query string ignored for dispatch; responses start after the
request's END_STREAM):
  /echo          200 application/json {method, path, authority, headers,
                 body_length, body_sha256, conn_id, stream_id}
  /big/N         200, N bytes of big_body(N) (content-length N), sent in
                 16 KiB DATA frames as the windows allow
  /sse           200 text/event-stream, no content-length: SSE_EVENTS, one
                 every SSE_INTERVAL seconds, then END_STREAM
  /slow[?ms=M]   waits M ms (default 500), then 200 "slow\\n"
  /trailers      200 "trailers body\\n" (content-length), then trailing HEADERS:
                 grpc-status 0, x-checksum, x-echo-secret k=<bearer secret
                 received> (scrubbing) and set-cookie (the proxy drops it)
  anything else  404 "not found\\n"
With bearer_check set (a callable on the bearer token), every request whose
token it refuses gets 401 instead.

Options: max_concurrent_streams (SETTINGS_MAX_CONCURRENT_STREAMS, default
100); initial_window_size (SETTINGS_INITIAL_WINDOW_SIZE, default 1 MiB) and
connection_window (default 4 MiB; received DATA is acknowledged at once, so
these only pace uploads); goaway_after=N: once the N-th request of a connection is complete,
send GOAWAY(NO_ERROR, last_stream_id = that stream), ignore every stream
above it (never answered, never recorded: ignored_streams counts them),
finish the others, then close; goaway_conns=K limits that to the first K
connections (ids 1..K; default: every connection).
"""
import hashlib
import json
import random
import ssl
import threading
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from .h2_client import TlsPipe
from .upstream import ThreadedOrigin

SSE_EVENTS = [b"data: event-%d\n\n" % i for i in range(1, 5)]
SSE_INTERVAL = 0.3
SLOW_DEFAULT_MS = 500
CHUNK = 16384
IO_TIMEOUT = 20.0


def big_body(n):
    """The deterministic body of /big/n (pseudo-random, so reordering or a
    lost chunk is detected)."""
    return random.Random(n).randbytes(n)


def h2_server_context(certfile, keyfile, alpn=("h2",)):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(certfile), str(keyfile))
    ctx.set_alpn_protocols(list(alpn))
    return ctx


@dataclass
class H2Request:
    conn_id: int
    stream_id: int
    headers: list                # [(name, value)] as received, pseudo-headers included
    body: bytes = b""
    time: float = field(default_factory=time.monotonic)

    def _pseudo(self, name):
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def method(self):
        return self._pseudo(":method")

    @property
    def target(self):
        return self._pseudo(":path")

    @property
    def path(self):
        t = self.target or ""
        return t.split("?", 1)[0]

    @property
    def authority(self):
        return self._pseudo(":authority")

    @property
    def scheme(self):
        return self._pseudo(":scheme")

    def header_values(self, name):
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def header(self, name):
        vals = self.header_values(name)
        assert len(vals) <= 1, f"{name} received {len(vals)} times: {vals!r}"
        return vals[0] if vals else None

    @property
    def regular_headers(self):
        return [(k, v) for k, v in self.headers if not k.startswith(":")]


class _Stream:
    def __init__(self, sid, headers):
        self.sid = sid
        self.headers = headers
        self.body = bytearray()
        self.out = bytearray()      # response body waiting for window
        self.out_end = False        # END_STREAM after self.out
        self.trailers = None        # trailing HEADERS instead of a plain END_STREAM
        self.done = False           # response ended or stream reset
        self.ignored = False        # above our GOAWAY's last_stream_id


def _query(target):
    out = {}
    if "?" in target:
        for part in target.split("?", 1)[1].split("&"):
            k, _, v = part.partition("=")
            out[k] = v
    return out


class _Conn:
    """One TCP connection: an h2 server session driven by a single loop."""

    def __init__(self, owner, pipe, conn_id):
        self.owner = owner
        self.pipe = pipe
        self.conn_id = conn_id
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                        validate_inbound_headers=True,
                                        normalize_inbound_headers=False)
        self.h2 = h2.connection.H2Connection(cfg)
        self.streams = {}
        self.timers = []            # [(when, fn)]
        self.requests_done = 0
        self.goaway_last = None
        self.open_now = 0
        self.closing = False

    def run(self):
        h = self.h2
        h.initiate_connection()
        h.update_settings({
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.owner.max_concurrent_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.owner.initial_window_size,
        })
        if self.owner.connection_window > 65535:
            h.increment_flow_control_window(self.owner.connection_window - 65535)
        self._flush()
        last_activity = time.monotonic()
        while True:
            now = time.monotonic()
            due = [t for t in self.timers if t[0] <= now]
            if due:
                self.timers = [t for t in self.timers if t[0] > now]
                for _, fn in sorted(due, key=lambda t: t[0]):
                    fn()
            self._pump_out()
            self._flush()
            if self.closing and self.pipe.pending_out() == 0:
                return
            if self.goaway_last is not None and not self._live_streams():
                # every stream at or below last_stream_id is answered
                self.h2.close_connection(last_stream_id=self.goaway_last)
                self._flush()
                self.pipe.flush(2)
                return
            wait = 0.05
            if self.timers:
                wait = max(0.0, min(wait, min(t[0] for t in self.timers) - now))
            if self.pipe.io(wait):
                last_activity = time.monotonic()
            data = self.pipe.take()
            if data:
                try:
                    events = h.receive_data(data)
                except h2.exceptions.ProtocolError as e:
                    self.owner._protocol_error(f"conn {self.conn_id}: {e!r}")
                    self._flush()
                    self.pipe.flush(1)
                    return
                self._handle(events)
            if self.pipe.eof:
                return
            if time.monotonic() - last_activity > 120:
                return

    def _live_streams(self):
        return [s for s in self.streams.values() if not s.done and not s.ignored]

    def _flush(self):
        data = self.h2.data_to_send()
        if data:
            self.pipe.write(data)

    # -- input ---------------------------------------------------------------
    def _handle(self, events):
        owner = self.owner
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                st = _Stream(ev.stream_id, list(ev.headers))
                self.streams[ev.stream_id] = st
                with owner.lock:
                    owner.streams_started += 1
                if self.goaway_last is not None and ev.stream_id > self.goaway_last:
                    st.ignored = True
                    with owner.lock:
                        owner.ignored_streams += 1
                    continue
                self.open_now += 1
                with owner.lock:
                    owner.max_concurrent_streams_seen = max(
                        owner.max_concurrent_streams_seen, self.open_now)
                    owner.cond.notify_all()
            elif isinstance(ev, h2.events.DataReceived):
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.body += ev.data
                with owner.lock:
                    owner.data_bytes_received += len(ev.data)
                if ev.flow_controlled_length:
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                st = self.streams.get(ev.stream_id)
                if st is None or st.ignored:
                    continue
                if self.goaway_last is not None and ev.stream_id > self.goaway_last:
                    st.ignored = True
                    self.open_now -= 1
                    with owner.lock:
                        owner.ignored_streams += 1
                    continue
                self._request_complete(st)
            elif isinstance(ev, h2.events.StreamReset):
                st = self.streams.get(ev.stream_id)
                with owner.lock:
                    owner.resets_received.append((self.conn_id, ev.stream_id, ev.error_code))
                    owner.cond.notify_all()
                if st is not None and not st.done and not st.ignored:
                    st.done = True
                    self.open_now -= 1
            elif isinstance(ev, h2.events.ConnectionTerminated):
                with owner.lock:
                    owner.goaways_received.append(
                        (self.conn_id, ev.error_code, ev.last_stream_id))
                    owner.cond.notify_all()
            elif isinstance(ev, h2.events.TrailersReceived):
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.headers += list(ev.headers)

    def _request_complete(self, st):
        owner = self.owner
        rec = H2Request(self.conn_id, st.sid, st.headers, bytes(st.body))
        self.requests_done += 1
        with owner.lock:
            owner.requests.append(rec)
            owner.cond.notify_all()
        if owner.goaway_after and self.requests_done == owner.goaway_after \
                and self.goaway_last is None and (owner.goaway_conns is None
                                                  or self.conn_id <= owner.goaway_conns):
            # A GOAWAY written around h2's state machine, so that the
            # streams at or below last_stream_id can still be answered.
            self._flush()
            self.goaway_last = st.sid
            self.pipe.write(GoAwayFrame(0, last_stream_id=st.sid, error_code=0).serialize())
            with owner.lock:
                owner.goaways_sent += 1
        self._respond(st, rec)

    # -- output --------------------------------------------------------------
    def _send_head(self, st, status, headers, end_stream=False):
        if st.done:
            return
        try:
            self.h2.send_headers(st.sid, [(":status", str(status))] + headers,
                                 end_stream=end_stream)
        except h2.exceptions.StreamClosedError:
            st.done = True
            return
        if end_stream:
            self._finished(st)

    def _queue(self, st, data, end=False):
        st.out += data
        st.out_end = st.out_end or end

    def _finished(self, st):
        if not st.done:
            st.done = True
            self.open_now -= 1

    def _pump_out(self):
        h = self.h2
        for st in list(self.streams.values()):
            if st.done or st.ignored or (not st.out and not st.out_end):
                continue
            while st.out and self.pipe.pending_out() < (1 << 20):
                try:
                    window = min(h.local_flow_control_window(st.sid), h.max_outbound_frame_size,
                                 CHUNK)
                except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError):
                    self._finished(st)
                    break
                if window <= 0:
                    break
                n = min(window, len(st.out))
                try:
                    h.send_data(st.sid, bytes(st.out[:n]))
                except h2.exceptions.StreamClosedError:
                    self._finished(st)
                    break
                del st.out[:n]
                self._flush()
            if not st.done and not st.out and st.out_end:
                try:
                    if st.trailers:
                        h.send_headers(st.sid, st.trailers, end_stream=True)
                    else:
                        h.end_stream(st.sid)
                except h2.exceptions.StreamClosedError:
                    pass
                self._finished(st)

    def _respond(self, st, rec):
        path, target = rec.path, rec.target or ""
        check = self.owner.bearer_check
        auth = rec.header_values("authorization")
        if check is not None and not check(auth[0][7:] if auth and auth[0].startswith("Bearer ") else ""):
            body = b'{"error":"invalid_token"}'
            self._send_head(st, 401, [("content-type", "application/json"),
                                      ("content-length", str(len(body)))])
            self._queue(st, body, end=True)
        elif path == "/echo":
            body = json.dumps({
                "method": rec.method, "path": target, "authority": rec.authority,
                "headers": [[k, v] for k, v in rec.headers],
                "body_length": len(rec.body),
                "body_sha256": hashlib.sha256(rec.body).hexdigest(),
                "conn_id": rec.conn_id, "stream_id": rec.stream_id,
            }).encode() + b"\n"
            self._send_head(st, 200, [("content-type", "application/json"),
                                      ("content-length", str(len(body)))])
            self._queue(st, body, end=True)
        elif path.startswith("/big/") and path[5:].isdigit():
            n = int(path[5:])
            self._send_head(st, 200, [("content-type", "application/octet-stream"),
                                      ("content-length", str(n))], end_stream=n == 0)
            if n:
                self._queue(st, big_body(n), end=True)
        elif path == "/trailers":
            auth = rec.header_values("authorization")
            sec = auth[0].split(" ", 1)[-1] if auth else ""
            body = b"trailers body\n"
            self._send_head(st, 200, [("content-type", "text/plain"),
                                      ("content-length", str(len(body)))])
            st.trailers = [("grpc-status", "0"), ("x-checksum", "abc123"),
                           ("x-echo-secret", f"k={sec}"), ("set-cookie", "s=1")]
            self._queue(st, body, end=True)
        elif path == "/sse":
            self._send_head(st, 200, [("content-type", "text/event-stream"),
                                      ("cache-control", "no-cache")])
            t0 = time.monotonic()
            for i, ev in enumerate(SSE_EVENTS):
                last = i == len(SSE_EVENTS) - 1
                self.timers.append((t0 + i * SSE_INTERVAL,
                                    lambda ev=ev, last=last: self._queue(st, ev, end=last)))
        elif path == "/slow":
            ms = _query(target).get("ms", "")
            delay = (int(ms) if ms.isdigit() else SLOW_DEFAULT_MS) / 1000.0

            def answer():
                self._send_head(st, 200, [("content-type", "text/plain"),
                                          ("content-length", "5")])
                self._queue(st, b"slow\n", end=True)
            self.timers.append((time.monotonic() + delay, answer))
        else:
            body = b"not found\n"
            self._send_head(st, 404, [("content-type", "text/plain"),
                                      ("content-length", str(len(body)))])
            self._queue(st, body, end=True)


def _handle_connection(owner, sock):
    conn_id = owner._register(sock)
    try:
        try:
            pipe = TlsPipe(sock, owner.ssl_context, server_side=True, timeout=IO_TIMEOUT)
        except (ssl.SSLError, OSError) as e:
            with owner.lock:
                owner.tls_handshake_failures.append(repr(e))
            return
        if pipe.alpn != "h2":
            owner._protocol_error(f"conn {conn_id}: ALPN {pipe.alpn!r}, not h2 "
                                  f"(this origin speaks only h2)")
            return
        with owner.lock:
            owner.h2_connections += 1
        _Conn(owner, pipe, conn_id).run()
    except Exception as e:  # noqa: BLE001 - recorded for the fixture to report
        with owner.lock:
            owner.handler_errors.append(f"conn {conn_id}: {e!r}")
    finally:
        try:
            sock.close()
        except OSError:
            pass
        owner._unregister(conn_id)
        with owner.lock:
            owner.connections_closed += 1
            owner.cond.notify_all()


class _Handler:
    """socketserver handler (the class is called with request, address, server)."""

    def __init__(self, request, client_address, server):
        _handle_connection(server.owner, request)


class H2Upstream(ThreadedOrigin):
    """start() / stop(); wait_requests(n); snapshot(); only_request()."""

    handler = _Handler

    def __init__(self, certfile, keyfile, name="h2", *, max_concurrent_streams=100,
                 goaway_after=None, goaway_conns=None, alpn=("h2",),
                 initial_window_size=1 << 20,
                 connection_window=4 << 20):
        self.name = name
        self.bearer_check = None  # callable(token) -> bool: 401 when False (test_oauth)
        self.ssl_context = h2_server_context(certfile, keyfile, alpn)
        self.max_concurrent_streams = max_concurrent_streams
        self.goaway_after = goaway_after
        self.goaway_conns = goaway_conns
        self.initial_window_size = initial_window_size
        self.connection_window = connection_window
        self._origin_init(f"h2-upstream-{name}")
        self.cond = threading.Condition(self.lock)
        self.requests = []
        self.streams_started = 0
        self.max_concurrent_streams_seen = 0
        self.protocol_errors = []
        self.handler_errors = []
        self.tls_handshake_failures = []
        self.resets_received = []
        self.goaways_received = []
        self.goaways_sent = 0
        self.ignored_streams = 0
        self.h2_connections = 0
        self.connections_closed = 0
        self.data_bytes_received = 0

    def _protocol_error(self, msg):
        with self.lock:
            self.protocol_errors.append(msg)
            self.cond.notify_all()

    @property
    def scheme(self):
        return "https"

    def snapshot(self):
        with self.lock:
            return list(self.requests)

    def wait(self, pred, timeout=5.0, what="condition"):
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                v = pred()
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: timed out after {timeout}s waiting "
                                         f"for {what}; {len(self.requests)} requests, "
                                         f"{self.connections_accepted} connections, "
                                         f"protocol errors {self.protocol_errors!r}")
                self.cond.wait(min(left, 0.05))

    def wait_requests(self, n, timeout=5.0):
        """Waits until at least n requests were recorded; returns them all."""
        try:
            self.wait(lambda: len(self.requests) >= n, timeout, f"{n} requests")
        except AssertionError:
            pass
        return self.snapshot()

    def only_request(self, timeout=5.0):
        reqs = self.wait_requests(1, timeout)
        assert len(reqs) == 1, f"{self.name}: expected exactly 1 request, got {len(reqs)}: " \
            + repr([(r.method, r.target) for r in reqs])
        return reqs[0]

    def stats(self):
        with self.lock:
            return {"connections_accepted": self.connections_accepted,
                    "h2_connections": self.h2_connections,
                    "requests": len(self.requests),
                    "streams_started": self.streams_started,
                    "data_bytes_received": self.data_bytes_received,
                    "max_concurrent_streams_seen": self.max_concurrent_streams_seen,
                    "ignored_streams": self.ignored_streams,
                    "goaways_sent": self.goaways_sent,
                    "resets_received": len(self.resets_received),
                    "goaways_received": list(self.goaways_received),
                    "protocol_errors": list(self.protocol_errors)}
