#!/usr/bin/python3
"""bench/soak.py - a bounded soak of the agentvault daemon on loopback.

    bench/soak.py --minutes 10                 # the README's reliability run
    bench/soak.py --minutes 1                  # quick (samples every 10 s)
    bench/soak.py --agentvault build/daemon/agentvault --conns 1000 --rate 200

It holds --conns agent connections open through the proxy, a mix of HTTP/1.1
keep-alive (40 %), HTTP/2 (25 %), WebSocket (20 %) and SSE (15 %), and sends
operations over them at --rate per second in total (a token bucket), against
a local TLS origin in a process of its own. A tenth of the operations are
hostile, each on a fresh connection: oversize heads, bad chunking, slowloris
heads, HTTP/2 RST_STREAM and PING floods, bad WebSocket frames, CONNECT to
blocked addresses, absolute-form with a mismatched Host, abrupt resets.
Some origin answers reflect the injected secret (raw, base64, split across
chunks); every byte the agents receive, the daemon's log and its audit log
are searched for the secrets.

Every --interval seconds (30; 10 when --minutes < 5) it prints the daemon's
RSS (/proc/PID/status), its open descriptors (/proc/PID/fd), the p99 latency
of the normal operations of that interval, and counts.

Verdict (exit 0 = pass). The first interval is warm-up (the connections are
opened then) and is not judged. Over the samples after it, a metric fails
when it grows monotonically: it rises at every sample AND the last sample
exceeds the first by more than its tolerance (RSS 5 MiB + 10 %, fds 20 +
5 %, p99 20 ms + 100 %); RSS and fds also fail when the mean of the last
third of the samples exceeds the mean of the first third by more than that
tolerance (the p99 is not held to that: on a shared machine it follows the
machine's load, printed as "load", the 1-minute load average). The run also
fails if a secret appears in an agent-visible byte or a log, if the daemon
dies, if the origin sees a request without the credential, or if a normal
operation fails. This is a measurement rig, not a CI test: it is not part of
tests/run_all.sh.
"""
import argparse
import asyncio
import base64
import json
import os
import random
import resource
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

HOSTS = ("api.openai.com", "upstream.test")
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TIMEOUT = 30.0


def secret_forms(key):
    k = key.encode()
    return [k, base64.b64encode(k), k.hex().encode(), k.hex().upper().encode()]


# ==== the origin (a process of its own) ==========================================

async def origin_handle(reader, writer, keys, stats):
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ssl.SSLError):
                return
            lines = head[:-4].decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            hdrs = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                hdrs.setdefault(k.strip().lower(), []).append(v.strip())
            host = hdrs.get("host", [""])[0].split(":")[0]
            want = keys.get(host)
            stats["requests"] += 1
            if want is None or hdrs.get("authorization") != [f"Bearer {want}"]:
                stats["bad_credential"] += 1
            if "transfer-encoding" in hdrs:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        while await reader.readuntil(b"\r\n") != b"\r\n":
                            pass
                        break
                    await reader.readexactly(size + 2)
            elif "content-length" in hdrs:
                await reader.readexactly(int(hdrs["content-length"][0]))
            path = target.split("?")[0]
            if path == "/ws":
                key = hdrs.get("sec-websocket-key", [""])[0]
                import hashlib
                acc = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
                writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              f"Connection: Upgrade\r\nSec-WebSocket-Accept: {acc}\r\n\r\n").encode())
                await origin_ws(reader, writer)
                return
            if path == "/sse":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
                for i in range(4):
                    ev = b"data: event %d\n\n" % i
                    writer.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                    await writer.drain()
                    await asyncio.sleep(0.05)
                writer.write(b"0\r\n\r\n")
            elif path == "/reflect" and want:
                parts = [b"key ", want.encode(), b" b64 ", base64.b64encode(want.encode()),
                         b" split ", want[:7].encode(), want[7:].encode(), b"\n"]
                out = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                for p in parts:
                    out += b"%x\r\n%s\r\n" % (len(p), p)
                writer.write(out + b"0\r\n\r\n")
            else:
                body = b"ok " + path.encode()[:100] + b"\n"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
            await writer.drain()
            if hdrs.get("connection", [""])[0].lower() == "close":
                return
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, ValueError, asyncio.LimitOverrunError):
        return
    finally:
        writer.close()


async def origin_ws(reader, writer):
    while True:
        op, payload = await ws_read(reader)
        if op == 8:
            writer.write(ws_frame(8, payload[:2], mask=False))
            await writer.drain()
            return
        if op in (1, 2):
            writer.write(ws_frame(op, payload, mask=False))
            await writer.drain()


async def origin_main(args):
    keys = json.loads(args.origin_keys)
    stats = {"requests": 0, "bad_credential": 0}
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.origin_cert, args.origin_key)
    ctx.set_alpn_protocols(["http/1.1"])
    srv = await asyncio.start_server(lambda r, w: origin_handle(r, w, keys, stats), "127.0.0.1", 0,
                                     ssl=ctx, backlog=2048, limit=1 << 17)
    print(f"PORT {srv.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    print("STATS " + json.dumps(stats), flush=True)


# ==== WebSocket framing =========================================================

def ws_frame(op, payload, mask=True, fin=True):
    n = len(payload)
    b0 = (0x80 if fin else 0) | op
    if n < 126:
        head = bytes([b0, (0x80 if mask else 0) | n])
    elif n < 65536:
        head = bytes([b0, (0x80 if mask else 0) | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, (0x80 if mask else 0) | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    m = os.urandom(4)
    return head + m + bytes(c ^ m[i % 4] for i, c in enumerate(payload))


async def ws_read(reader):
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack(">H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", await reader.readexactly(8))[0]
    m = await reader.readexactly(4) if b1 & 0x80 else None
    p = await reader.readexactly(n)
    if m:
        p = bytes(c ^ m[i % 4] for i, c in enumerate(p))
    return b0 & 0x0F, p


# ==== clients ===================================================================

class Stats:
    def __init__(self):
        self.lat = []            # latencies of this interval (s)
        self.ops = 0
        self.errors = 0
        self.error_kinds = {}
        self.hostile = 0
        self.hostile_kinds = {}
        self.leaks = 0
        self.reflected = 0       # answers in which the origin reflected a secret
        self.total_ops = 0
        self.total_errors = 0
        self.total_hostile = 0

    def ok(self, t):
        self.lat.append(t)
        self.ops += 1
        self.total_ops += 1

    def error(self, kind):
        self.errors += 1
        self.total_errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


class Bucket:
    """A token bucket shared by the workers: acquire() waits for the next slot."""

    def __init__(self, rate):
        self.interval = 1.0 / rate
        self.t = time.monotonic()

    async def acquire(self):
        now = time.monotonic()
        self.t = max(self.t + self.interval, now - 1.0)
        if self.t > now:
            await asyncio.sleep(self.t - now)


class Rig:
    def __init__(self, args, proxy_port, ca_pem, keys, stats):
        self.args = args
        self.port = proxy_port
        self.ctx = ssl.create_default_context(cafile=str(ca_pem))
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.ctx_h2 = ssl.create_default_context(cafile=str(ca_pem))
        self.ctx_h2.set_alpn_protocols(["h2"])
        self.forms = [f for k in keys.values() for f in secret_forms(k)]
        self.maxform = max(len(f) for f in self.forms)
        self.stats = stats
        self.stop = False
        self.normal = Bucket(args.rate * 0.9)
        self.hostile = Bucket(args.rate * 0.1)

    def scan(self, data):
        for f in self.forms:
            if f in data:
                self.stats.leaks += 1
                return

    async def tunnel(self, host, h2=False):
        r, w = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 18)
        w.write(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
        head = await r.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            w.close()
            raise ConnectionError(f"CONNECT answered {head[:40]!r}")
        await w.start_tls(self.ctx_h2 if h2 else self.ctx, server_hostname=host)
        return r, w

    async def read_response(self, r):
        head = await r.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        low = head.lower()
        body = b""
        if b"transfer-encoding: chunked" in low:
            while True:
                line = await r.readuntil(b"\r\n")
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    await r.readuntil(b"\r\n")
                    break
                body += (await r.readexactly(size + 2))[:-2]
        else:
            i = low.find(b"content-length:")
            if i >= 0:
                n = int(low[i + 15:low.find(b"\r\n", i)].strip())
                body = await r.readexactly(n)
        return status, head + body

    # -- normal workers ------------------------------------------------------------
    async def worker(self, kind, delay):
        await asyncio.sleep(delay)
        while not self.stop:
            try:
                await getattr(self, "conn_" + kind)()
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ssl.SSLError,
                    ValueError, EOFError, ConnectionError) as e:
                if not self.stop:
                    self.stats.error(f"{kind}: {type(e).__name__}")
                    await asyncio.sleep(1.0)

    async def conn_h1(self):
        host = random.choice(HOSTS)
        r, w = await asyncio.wait_for(self.tunnel(host), OP_TIMEOUT)
        try:
            for _ in range(random.randint(20, 60)):
                await self.normal.acquire()
                if self.stop:
                    return
                x = random.random()
                if x < 0.05 and host == "api.openai.com":
                    req = f"GET /reflect HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
                elif x < 0.5:
                    body = os.urandom(random.randint(10, 4000)).hex().encode()
                    req = (f"POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\n"
                           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
                else:
                    req = f"GET /echo?i={random.randint(0, 1 << 30)} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
                t0 = time.monotonic()
                w.write(req)
                status, data = await asyncio.wait_for(self.read_response(r), OP_TIMEOUT)
                self.scan(data)
                self.stats.reflected += req.startswith(b"GET /reflect") and b" b64 " in data
                if status != 200:
                    self.stats.error(f"h1: status {status}")
                else:
                    self.stats.ok(time.monotonic() - t0)
        finally:
            w.close()

    async def conn_sse(self):
        host = random.choice(HOSTS)
        r, w = await asyncio.wait_for(self.tunnel(host), OP_TIMEOUT)
        try:
            for _ in range(random.randint(10, 30)):
                await self.normal.acquire()
                if self.stop:
                    return
                t0 = time.monotonic()
                w.write(f"GET /sse HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
                # Latency of a stream: until its first event (the origin
                # spaces the events 50 ms apart).
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), OP_TIMEOUT)
                status = int(head.split(b" ", 2)[1])
                data, first = head, None
                while b"transfer-encoding: chunked" in head.lower():
                    line = await asyncio.wait_for(r.readuntil(b"\r\n"), OP_TIMEOUT)
                    size = int(line.split(b";")[0], 16)
                    if size == 0:
                        await r.readuntil(b"\r\n")
                        break
                    data += (await asyncio.wait_for(r.readexactly(size + 2), OP_TIMEOUT))[:-2]
                    if first is None:
                        first = time.monotonic() - t0
                self.scan(data)
                if status != 200 or data.count(b"data: event") != 4:
                    self.stats.error(f"sse: status {status}")
                else:
                    self.stats.ok(first)
        finally:
            w.close()

    async def conn_ws(self):
        host = random.choice(HOSTS)
        r, w = await asyncio.wait_for(self.tunnel(host), OP_TIMEOUT)
        try:
            key = base64.b64encode(os.urandom(16)).decode()
            w.write((f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), OP_TIMEOUT)
            if not head.startswith(b"HTTP/1.1 101"):
                self.stats.error("ws: no 101")
                return
            for _ in range(random.randint(20, 60)):
                await self.normal.acquire()
                if self.stop:
                    break
                msg = os.urandom(random.randint(8, 2000)).hex().encode()
                t0 = time.monotonic()
                w.write(ws_frame(1, msg))
                op, payload = await asyncio.wait_for(ws_read(r), OP_TIMEOUT)
                self.scan(payload)
                if op != 1 or payload != msg:
                    self.stats.error("ws: bad echo")
                    return
                self.stats.ok(time.monotonic() - t0)
            w.write(ws_frame(8, struct.pack(">H", 1000)))
            await asyncio.wait_for(ws_read(r), OP_TIMEOUT)
        finally:
            w.close()

    async def conn_h2(self):
        import h2.config
        import h2.connection
        import h2.events
        host = random.choice(HOSTS)
        r, w = await asyncio.wait_for(self.tunnel(host, h2=True), OP_TIMEOUT)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                    header_encoding="utf-8"))
        conn.initiate_connection()
        w.write(conn.data_to_send())
        try:
            for _ in range(random.randint(20, 60)):
                await self.normal.acquire()
                if self.stop:
                    return
                sid = conn.get_next_available_stream_id()
                path = "/reflect" if host == "api.openai.com" and random.random() < 0.05 else \
                    f"/echo?i={random.randint(0, 1 << 30)}"
                t0 = time.monotonic()
                conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":path", path),
                                        (":authority", host)], end_stream=True)
                w.write(conn.data_to_send())
                status, data, done = None, b"", False
                while not done:
                    chunk = await asyncio.wait_for(r.read(65536), OP_TIMEOUT)
                    if not chunk:
                        raise ConnectionError("h2: connection closed")
                    for ev in conn.receive_data(chunk):
                        if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                            status = int(dict(ev.headers)[":status"])
                        elif isinstance(ev, h2.events.DataReceived):
                            data += ev.data
                            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)) \
                                and ev.stream_id == sid:
                            done = True
                        elif isinstance(ev, h2.events.ConnectionTerminated):
                            raise ConnectionError("h2: GOAWAY")
                    w.write(conn.data_to_send())
                self.scan(data)
                self.stats.reflected += path == "/reflect" and b" b64 " in data
                if status != 200:
                    self.stats.error(f"h2: status {status}")
                else:
                    self.stats.ok(time.monotonic() - t0)
        finally:
            w.close()

    # -- hostile operations -----------------------------------------------------------
    async def hostile_dispatcher(self):
        """Starts one hostile operation per token of the hostile bucket (at
        most 300 at once: slowloris heads are held for 12 s)."""
        kinds = ["oversize_head", "bad_chunking", "slowloris", "h2_flood", "ws_bad_frame",
                 "connect_blocked", "absolute_bad_host", "abrupt_reset"]
        sem = asyncio.Semaphore(300)
        running = set()
        while not self.stop:
            await self.hostile.acquire()
            await sem.acquire()
            if self.stop:
                break
            kind = random.choice(kinds)
            self.stats.hostile += 1
            self.stats.total_hostile += 1
            self.stats.hostile_kinds[kind] = self.stats.hostile_kinds.get(kind, 0) + 1
            t = asyncio.create_task(self.hostile_one(kind, sem))
            running.add(t)
            t.add_done_callback(running.discard)
        for t in list(running):
            t.cancel()

    async def hostile_one(self, kind, sem):
        try:
            await asyncio.wait_for(getattr(self, "hostile_" + kind)(), OP_TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ssl.SSLError,
                ValueError, EOFError, ConnectionError):
            pass  # a close or a reset is a fine answer to a hostile client
        finally:
            sem.release()

    async def drain_all(self, r, w, limit=1 << 20):
        """Reads what the proxy answers until it closes; scans it."""
        data = b""
        try:
            while len(data) < limit:
                chunk = await asyncio.wait_for(r.read(65536), 15)
                if not chunk:
                    break
                data += chunk
        finally:
            w.close()
        self.scan(data)
        return data

    async def hostile_oversize_head(self):
        r, w = await self.tunnel("api.openai.com")
        w.write(b"GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
        await self.drain_all(r, w)

    async def hostile_bad_chunking(self):
        r, w = await self.tunnel("api.openai.com")
        w.write(b"POST /echo HTTP/1.1\r\nHost: api.openai.com\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"zz\r\nhello\r\n0\r\n\r\n")
        await self.drain_all(r, w)

    async def hostile_slowloris(self):
        r, w = await self.tunnel("upstream.test")
        w.write(b"GET /echo HTTP/1.1\r\nHost: upstream.test\r\n")
        for _ in range(6):
            await asyncio.sleep(2)
            w.write(b"X-Slow: 1\r\n")
        await self.drain_all(r, w)

    async def hostile_h2_flood(self):
        r, w = await self.tunnel("api.openai.com", h2=True)
        out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        if random.random() < 0.5:
            for _ in range(2000):  # PING flood
                out += b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + os.urandom(8)
        else:
            import hpack
            block = hpack.Encoder().encode([(":method", "GET"), (":scheme", "https"), (":path", "/echo"),
                                            (":authority", "api.openai.com")])
            for sid in range(1, 2000, 2):  # HEADERS then RST_STREAM, over and over
                out += struct.pack(">I", len(block))[1:] + b"\x01\x05" + struct.pack(">I", sid) + block
                out += b"\x00\x00\x04\x03\x00" + struct.pack(">I", sid) + b"\x00\x00\x00\x08"
        w.write(out)
        await self.drain_all(r, w, limit=1 << 22)

    async def hostile_ws_bad_frame(self):
        r, w = await self.tunnel("upstream.test")
        key = base64.b64encode(os.urandom(16)).decode()
        w.write((f"GET /ws HTTP/1.1\r\nHost: upstream.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        await r.readuntil(b"\r\n\r\n")
        bad = random.choice([bytes([0x83, 0x80]) + os.urandom(4),          # reserved opcode
                             bytes([0x81, 0x05]) + b"hello",                 # unmasked client frame
                             bytes([0xF1, 0x80]) + os.urandom(4),           # RSV bits
                             bytes([0x89, 0xFE, 0x01, 0x00]) + os.urandom(260)])  # long control frame
        w.write(bad)
        await self.drain_all(r, w)

    async def hostile_connect_blocked(self):
        target = random.choice(["169.254.169.254:443", "127.0.0.1:22", "10.0.0.1:443", "[::1]:443",
                                f"127.0.0.1:{self.port}"])
        r, w = await asyncio.open_connection("127.0.0.1", self.port)
        w.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 15)
        if head.startswith(b"HTTP/1.1 200"):
            w.write(b"\x16\x03\x01\x00\x05hello")  # garbage in place of a ClientHello
        await self.drain_all(r, w)

    async def hostile_absolute_bad_host(self):
        r, w = await asyncio.open_connection("127.0.0.1", self.port)
        w.write(b"GET http://api.openai.com/echo HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        await self.drain_all(r, w)

    async def hostile_abrupt_reset(self):
        r, w = await self.tunnel(random.choice(HOSTS))
        w.write(b"POST /echo HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
        await w.drain()
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()


# ==== the run ========================================================================

def proc_sample(pid):
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def p99(values):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(0.99 * len(v)))]


def judge(samples):
    """The trend rule (see the module docstring). Returns a list of failures."""
    after = samples[1:]
    out = []
    if len(after) < 3:
        return [f"too few samples after warm-up ({len(after)}; need 3)"]
    rules = {"rss": (5 << 20, 0.10), "fds": (20, 0.05), "p99": (0.020, 1.00)}
    for key, (absolute, rel) in rules.items():
        xs = [s[key] for s in after]
        tol = absolute + rel * xs[0]
        rising = all(b > a for a, b in zip(xs, xs[1:]))
        if rising and xs[-1] - xs[0] > tol:
            out.append(f"{key} grows monotonically: {xs[0]:.4g} -> {xs[-1]:.4g}")
        if key == "p99":
            continue  # on a shared machine the p99 follows its load: only a steady rise counts
        third = max(1, len(xs) // 3)
        first, last = sum(xs[:third]) / third, sum(xs[-third:]) / third
        tol = absolute + rel * first
        if last - first > tol:
            out.append(f"{key}: mean of the last third {last:.4g} exceeds the first third's "
                       f"{first:.4g} by more than {tol:.4g}")
    return out


async def run(args, d_pid, proxy_port, ca_pem, keys):
    stats = Stats()
    rig = Rig(args, proxy_port, ca_pem, keys, stats)
    mix = [("h1", 0.40), ("h2", 0.25), ("ws", 0.20), ("sse", 0.15)]
    tasks = []
    ramp = max(1.0, args.interval * 0.5)  # open the connections over half the first interval
    for kind, share in mix:
        for _ in range(round(args.conns * share)):
            tasks.append(asyncio.create_task(rig.worker(kind, random.uniform(0, ramp))))
    tasks.append(asyncio.create_task(rig.hostile_dispatcher()))
    samples = []
    t_start = time.monotonic()
    end = t_start + args.minutes * 60
    print(f"{'time':>6} {'rss MiB':>8} {'fds':>6} {'p99 ms':>8} {'ops':>7} {'errors':>6} {'hostile':>7} "
          f"{'leaks':>5} {'load':>5}", flush=True)
    while time.monotonic() < end:
        await asyncio.sleep(min(args.interval, end - time.monotonic()))
        try:
            rss, fds = proc_sample(d_pid)
        except FileNotFoundError:
            print("the daemon is gone", flush=True)
            rig.stop = True
            return samples, stats, ["the daemon died"]
        s = {"t": round(time.monotonic() - t_start), "rss": rss, "fds": fds, "p99": p99(stats.lat),
             "ops": stats.ops, "errors": stats.errors, "hostile": stats.hostile, "leaks": stats.leaks,
             "load": os.getloadavg()[0]}
        samples.append(s)
        print(f"{s['t']:>5}s {rss / 1048576:>8.1f} {fds:>6} {s['p99'] * 1000:>8.1f} {s['ops']:>7} "
              f"{s['errors']:>6} {s['hostile']:>7} {s['leaks']:>5} {s['load']:>5.1f}"
              + (f"  {stats.error_kinds}" if stats.error_kinds else ""), flush=True)
        stats.lat, stats.ops, stats.errors, stats.hostile, stats.error_kinds = [], 0, 0, 0, {}
    rig.stop = True
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return samples, stats, []


def main():
    ap = argparse.ArgumentParser(description="bounded soak of the agentvault daemon (loopback only)")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=200, help="operations per second, in total")
    ap.add_argument("--interval", type=float, default=None, help="seconds between samples")
    ap.add_argument("--agentvault", default=os.environ.get("AGENTVAULT", str(REPO / "build" / "daemon" / "agentvault")))
    ap.add_argument("--json", help="write the samples and the verdict here")
    ap.add_argument("--origin", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--origin-cert", help=argparse.SUPPRESS)
    ap.add_argument("--origin-key", help=argparse.SUPPRESS)
    ap.add_argument("--origin-keys", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.origin:
        asyncio.run(origin_main(args))
        return 0
    if args.interval is None:
        args.interval = 30.0 if args.minutes >= 5 else 10.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the daemon and origin
    from avtest import certs
    import secrets as _secrets
    work = Path(tempfile.mkdtemp(prefix="avsoak-"))
    tca = certs.build_test_ca(work / "ca")
    keys = {"api.openai.com": "sk-soak-" + _secrets.token_hex(16),
            "upstream.test": "pk-soak-" + _secrets.token_hex(16)}
    origin = subprocess.Popen([sys.executable, __file__, "--origin", "--origin-cert", str(tca.server_cert),
                               "--origin-key", str(tca.server_key), "--origin-keys", json.dumps(keys)],
                              stdout=subprocess.PIPE, text=True)
    oport = int(origin.stdout.readline().split()[1])
    audit = work / "audit.jsonl"
    conf = work / "agentvault.conf"
    conf.write_text(f"""[proxy]
unmatched = deny
audit = {audit}

[service "openai"]
host = api.openai.com
auth = bearer
secret = env:SOAK_OPENAI_KEY

[service "plain"]
host = upstream.test
auth = bearer
secret = env:SOAK_PLAIN_KEY
""")
    state = work / "state"
    log_path = work / "daemon.log"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "SOAK_OPENAI_KEY": keys["api.openai.com"],
           "SOAK_PLAIN_KEY": keys["upstream.test"]}
    argv = [args.agentvault, "serve", "-c", str(conf), "--listen", "127.0.0.1:0", "--state-dir", str(state),
            "--upstream-cacert", str(tca.ca_pem), "--log-level", "info"]
    for h in HOSTS:
        argv += ["--resolve", f"{h}:443:127.0.0.1:{oport}"]
    logf = open(log_path, "wb")
    d = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env)
    port = None
    for _ in range(200):
        time.sleep(0.05)
        text = log_path.read_text(errors="replace")
        if "listening on 127.0.0.1:" in text:
            port = int(text.split("listening on 127.0.0.1:")[1].split()[0])
            break
    failures = []
    samples, stats = [], Stats()
    try:
        if port is None:
            failures.append("the daemon did not start")
        else:
            print(f"soak: {args.minutes:g} min, {args.conns} connections, {args.rate} ops/s "
                  f"(a tenth hostile), daemon pid {d.pid}, work dir {work}", flush=True)
            samples, stats, f = asyncio.run(run(args, d.pid, port, state / "ca.pem", keys))
            failures += f
    finally:
        alive = d.poll() is None
        if alive:
            d.send_signal(signal.SIGTERM)
        try:
            rc = d.wait(15)
        except subprocess.TimeoutExpired:
            d.kill()
            rc = None
        origin.send_signal(signal.SIGTERM)
        try:
            ostats = json.loads(origin.stdout.readline().split(" ", 1)[1])
        except (IndexError, ValueError):
            ostats = {}
        origin.wait(10)
        logf.close()
    if not alive and port is not None:
        failures.append("the daemon died during the run")
    if rc not in (0,):
        failures.append(f"the daemon exited {rc} after SIGTERM")
    logs = log_path.read_bytes() + (audit.read_bytes() if audit.exists() else b"")
    log_leaks = sum(1 for k in keys.values() for f in secret_forms(k) if f in logs)
    if log_leaks:
        failures.append(f"{log_leaks} secret form(s) in the daemon's log or audit log")
    if stats.leaks:
        failures.append(f"a secret reached agent-visible bytes {stats.leaks} time(s)")
    if ostats.get("bad_credential"):
        failures.append(f"the origin saw {ostats['bad_credential']} request(s) without the credential")
    if stats.total_errors:
        failures.append(f"{stats.total_errors} normal operation(s) failed")
    failures += judge(samples) if samples else ["no samples"]
    audit_records = audit.read_text().count("\n") if audit.exists() else 0
    print(f"normal operations {stats.total_ops}, failed {stats.total_errors}; hostile {stats.total_hostile} "
          f"{stats.hostile_kinds}; answers reflecting a secret {stats.reflected}; origin requests {ostats.get('requests')}; audit records {audit_records}; "
          f"log {len(logs) >> 10} KiB searched for secrets", flush=True)
    verdict = "PASS" if not failures else "FAIL"
    print(f"soak: {verdict}" + "".join(f"\n  - {f}" for f in failures), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()
                                                        if not k.startswith("origin")},
                                               "samples": samples, "failures": failures,
                                               "verdict": verdict}, indent=1))
    if not failures:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
