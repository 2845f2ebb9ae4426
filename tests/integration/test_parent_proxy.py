"""Parent (upstream) proxies: [proxy] upstream_proxy, upstream_proxy_auth,
upstream_no_proxy, per-service overrides and `env`.

Real parents started once per module on 127.0.0.1: one squid 5 (a plain
port, a port requiring basic auth, a TLS-fronted https_port with the test
CA's certificate; an ACL refusing CONNECT to one port), microsocks with and
without username/password, and NameSocks, a small SOCKS5 server here that
records the names it is asked for and maps them to local origins (microsocks
would need DNS for names). Each parent is reached through a Tap, a relay
that records every connection and the first bytes the daemon sent: proof
that the traffic went through the parent, and what it asked for (the
checked address, a name, the credential).
"""
import asyncio
import base64
import os
import re
import secrets as pysecrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time

import pytest
import websockets

from avtest import client
from avtest.checks import wait_until
from avtest.daemon import config_text, plain_service, require_binary, base_env
from avtest.h2_upstream import H2Upstream
from avtest.upstream import UpstreamServer
from avtest.ws_upstream import WsUpstream

OPENAI = "api.openai.com"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=15.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


# ---- peers ---------------------------------------------------------------------

class Tap:
    """TCP relay to 127.0.0.1:target recording each connection's first bytes
    from the client (up to 4 KiB)."""

    def __init__(self, target):
        self.target = target
        self.lock = threading.Lock()
        self.conns = []  # bytearray per connection: what the daemon sent first
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                a, _ = self.lsock.accept()
            except OSError:
                return
            rec = bytearray()
            with self.lock:
                self.conns.append(rec)
            try:
                b = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                b.settimeout(None)
            except OSError:
                a.close()
                continue
            threading.Thread(target=self._pipe, args=(a, b, rec), daemon=True).start()
            threading.Thread(target=self._pipe, args=(b, a, None), daemon=True).start()

    def _pipe(self, src, dst, rec):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if rec is not None and len(rec) < 4096:
                    with self.lock:
                        rec += data[:4096 - len(rec)]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def snapshot(self):
        with self.lock:
            return [bytes(c) for c in self.conns]

    def connect_lines(self):
        """The first line of each connection (HTTP parents)."""
        return [c.split(b"\r\n", 1)[0].decode("latin-1") for c in self.snapshot()]

    def reset(self):
        with self.lock:
            self.conns.clear()

    def stop(self):
        self.stopped = True
        self.lsock.close()


def socks_requests(raw, auth):
    """Parses what a SOCKS5 client sent: (methods, (user, password) or None,
    (atyp, address, port))."""
    assert raw[0] == 5, raw
    n = raw[1]
    methods = list(raw[2:2 + n])
    i = 2 + n
    cred = None
    if auth:
        assert raw[i] == 1, raw
        ul = raw[i + 1]
        user = raw[i + 2:i + 2 + ul]
        pl = raw[i + 2 + ul]
        pw = raw[i + 3 + ul:i + 3 + ul + pl]
        cred = (user.decode(), pw.decode())
        i += 3 + ul + pl
    assert raw[i:i + 3] == b"\x05\x01\x00", raw[i:]
    atyp = raw[i + 3]
    if atyp == 1:
        addr = socket.inet_ntop(socket.AF_INET, raw[i + 4:i + 8])
        port = struct.unpack(">H", raw[i + 8:i + 10])[0]
    elif atyp == 4:
        addr = socket.inet_ntop(socket.AF_INET6, raw[i + 4:i + 20])
        port = struct.unpack(">H", raw[i + 20:i + 22])[0]
    else:
        ln = raw[i + 4]
        addr = raw[i + 5:i + 5 + ln].decode()
        port = struct.unpack(">H", raw[i + 5 + ln:i + 7 + ln])[0]
    return methods, cred, (atyp, addr, port)


class NameSocks:
    """SOCKS5 server (no auth) that records the requests and connects names
    through |names| (name -> local port), addresses as given; others get
    REP 05. Its BND.ADDR is a name (ATYP 03), which a client must skip."""

    def __init__(self):
        self.names = {}
        self.requests = []
        self.lock = threading.Lock()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
    def _read(s, n):
        b = b""
        while len(b) < n:
            d = s.recv(n - len(b))
            if not d:
                raise OSError("eof")
            b += d
        return b

    def _serve(self, a):
        try:
            head = self._read(a, 2)
            self._read(a, head[1])
            a.sendall(b"\x05\x00")
            req = self._read(a, 4)
            if req[3] == 1:
                host = socket.inet_ntop(socket.AF_INET, self._read(a, 4))
            elif req[3] == 4:
                host = socket.inet_ntop(socket.AF_INET6, self._read(a, 16))
            else:
                host = self._read(a, self._read(a, 1)[0]).decode()
            port = struct.unpack(">H", self._read(a, 2))[0]
            with self.lock:
                self.requests.append((req[3], host, port))
            target = self.names.get(host) if req[3] == 3 else port
            bnd = b"\x03\x0bbound.local\x00\x00"  # a name: 13 bytes to skip
            if target is None:
                a.sendall(b"\x05\x05\x00" + bnd)
                a.close()
                return
            b = socket.create_connection(("127.0.0.1", target), timeout=5)
            b.settimeout(None)
            a.sendall(b"\x05\x00\x00" + bnd)
        except OSError:
            a.close()
            return
        for src, dst in ((a, b), (b, a)):
            threading.Thread(target=Tap._pipe, args=(None, src, dst, None), daemon=True).start()

    def stop(self):
        self.lsock.close()


SQUID_USER = "avparent"


class Squid:
    def __init__(self, ca, denied_port):
        self.dir = tempfile.mkdtemp(prefix="av-squid-")
        os.chmod(self.dir, 0o755)
        self.password = "sq-" + pysecrets.token_hex(8)
        pw = subprocess.run(["openssl", "passwd", "-apr1", self.password], check=True,
                            capture_output=True, text=True).stdout.strip()
        d = self.dir
        with open(f"{d}/passwd", "w") as f:
            f.write(f"{SQUID_USER}:{pw}\n")
        shutil.copy(ca.server_cert, f"{d}/cert.pem")
        shutil.copy(ca.server_key, f"{d}/key.pem")
        for n in ("passwd", "cert.pem", "key.pem"):
            os.chmod(f"{d}/{n}", 0o644)
        self.plain, self.auth, self.tls = free_port(), free_port(), free_port()
        conf = f"""
http_port 127.0.0.1:{self.plain} name=plain
http_port 127.0.0.1:{self.auth} name=authp
https_port 127.0.0.1:{self.tls} name=tlsp tls-cert={d}/cert.pem tls-key={d}/key.pem
auth_param basic program /usr/lib/squid/basic_ncsa_auth {d}/passwd
auth_param basic realm parent-test
acl authport myportname authp
acl authed proxy_auth REQUIRED
acl blocked port {denied_port}
http_access deny blocked
http_access deny authport !authed
acl lo src 127.0.0.0/8
http_access allow lo
http_access deny all
cache deny all
shutdown_lifetime 1 seconds
cache_log {d}/cache.log
access_log stdio:{d}/access.log
pid_filename {d}/squid.pid
coredump_dir {d}
"""
        with open(f"{d}/squid.conf", "w") as f:
            f.write(conf)
        shutil.chown(d, user="proxy")
        self.proc = subprocess.Popen(["squid", "-N", "-f", f"{d}/squid.conf"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for p in (self.plain, self.auth, self.tls):
            wait_port(p, proc=self.proc)

    def access_log(self):
        try:
            with open(f"{self.dir}/access.log") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Microsocks:
    def __init__(self, user=None, password=None):
        self.port = free_port()
        cmd = ["microsocks", "-i", "127.0.0.1", "-p", str(self.port)]
        if user:
            cmd += ["-u", user, "-P", password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Peers:
    pass


@pytest.fixture(scope="module")
def peers(test_ca):
    p = Peers()
    p.denied_port = free_port()  # squid refuses CONNECT to it; nothing listens there
    p.squid = Squid(test_ca, p.denied_port)
    p.socks_user, p.socks_pw = "sockuser", "so-" + pysecrets.token_hex(8)
    p.socks = Microsocks()
    p.socks_auth = Microsocks(p.socks_user, p.socks_pw)
    p.names = NameSocks()
    p.taps = []
    yield p
    for t in p.taps:
        t.stop()
    p.names.stop()
    p.socks.stop()
    p.socks_auth.stop()
    p.squid.stop()


def tap(peers, port):
    t = Tap(port)
    peers.taps.append(t)
    return t


# kind -> (scheme, port attribute on peers, needs the credential)
PARENTS = {
    "squid": ("http", lambda p: p.squid.plain, False),
    "squid-auth": ("http", lambda p: p.squid.auth, True),
    "squid-tls": ("https", lambda p: p.squid.tls, False),
    "microsocks": ("socks5", lambda p: p.socks.port, False),
    "microsocks-auth": ("socks5", lambda p: p.socks_auth.port, True),
}


def credential(peers, kind, wrong=False):
    if kind.startswith("squid"):
        user, pw = SQUID_USER, peers.squid.password
    else:
        user, pw = peers.socks_user, peers.socks_pw
    if wrong:
        pw = "wrong-" + pysecrets.token_hex(6)
    return user, pw


def parent_conf(peers, kind, t, wrong=False, extra_proxy=""):
    scheme, _, auth = PARENTS[kind]
    lines = [f"upstream_proxy = {scheme}://127.0.0.1:{t.port}"]
    env = {}
    if auth:
        lines.append("upstream_proxy_auth = env:PARENT_CRED")
        user, pw = credential(peers, kind, wrong)
        env["PARENT_CRED"] = f"{user}:{pw}"
    if extra_proxy:
        lines.append(extra_proxy)
    return "\n".join(lines), env


def assert_not_leaked(d, text_blobs, pw):
    """|pw| and the base64 of its Basic credential appear nowhere."""
    forbidden = [pw] + [base64.b64encode(f"{u}:{pw}".encode()).decode()
                        for u in (SQUID_USER, "sockuser")]
    blobs = [d.log_text()] + list(text_blobs)
    audit = d.workdir / "audit.jsonl"
    if audit.exists():
        blobs.append(audit.read_text(errors="replace"))
    for b in blobs:
        for f in forbidden:
            assert f not in b, "the parent's credential leaked"


def ws_roundtrip(d, host=OPENAI, path="/echo"):
    """wss://host/path through the daemon; returns the echo of one message."""
    async def run():
        c, resp = client.connect_tunnel(d.port, f"{host}:443", timeout=10)
        assert resp.status == 200
        ctx = ssl.create_default_context(cafile=str(d.ca_pem))
        ctx.set_alpn_protocols(["http/1.1"])
        ws = await websockets.connect(f"wss://{host}{path}", sock=c.sock, ssl=ctx,
                                      server_hostname=host, ping_interval=None, close_timeout=2,
                                      open_timeout=10)
        await ws.send("hello through the parent")
        got = await asyncio.wait_for(ws.recv(), 10)
        await ws.close()
        return got
    return asyncio.run(run())


def offers_psk(raw):
    """The TLS ClientHello at the start of |raw| offers a session
    (pre_shared_key, extension 41)."""
    if len(raw) < 9 or raw[0] != 0x16 or raw[5] != 1:
        return False
    hs = raw[9:]
    i = 2 + 32
    i += 1 + hs[i]                                   # session id
    i += 2 + int.from_bytes(hs[i:i + 2], "big")      # cipher suites
    i += 1 + hs[i]                                   # compression methods
    end = i + 2 + int.from_bytes(hs[i:i + 2], "big")
    i += 2
    while i + 4 <= min(end, len(hs)):
        typ, n = int.from_bytes(hs[i:i + 2], "big"), int.from_bytes(hs[i + 2:i + 4], "big")
        if typ == 41:
            return True
        i += 4 + n
    return False


def h2_origin(test_ca):
    return H2Upstream(test_ca.server_cert, test_ca.server_key, "h2-parent").start()


# ---- every parent: h1 and h2 agents, an HTTP/2 origin, a WebSocket, cleartext -----

@pytest.mark.parametrize("kind", list(PARENTS))
def test_through_parent(kind, peers, daemon, upstream, plain_upstream, secrets, test_ca):
    t = tap(peers, PARENTS[kind][1](peers))
    h2o = h2_origin(test_ca)
    ws = WsUpstream(test_ca.server_cert, test_ca.server_key, "ws-parent").start()
    try:
        proxy, env = parent_conf(peers, kind, t)
        conf = config_text(secrets, proxy_extra=proxy,
                           extra=plain_service(plain_upstream.port) +
                           '\n[service "h2"]\nhost = api.anthropic.com\nauth = bearer\n'
                           'secret = env:OPENAI_API_KEY\n'
                           '\n[service "ws"]\nhost = upstream.test\nauth = bearer\n'
                           'secret = env:OPENAI_API_KEY\n')
        d = daemon(conf, env=env, resolve=[
            f"{OPENAI}:443:127.0.0.1:{upstream.port}",
            f"api.anthropic.com:443:127.0.0.1:{h2o.port}",
            f"upstream.test:443:127.0.0.1:{ws.port}",
            f"plain.test:{plain_upstream.port}:127.0.0.1"])
        # HTTP/1.1 and HTTP/2 agents to an HTTP/1.1 origin
        for i, ver in enumerate(("--http1.1", "--http2")):
            r = d.curl(ver, f"https://{OPENAI}/echo?n={i}").ok()
            assert r.status == 200
            rec = upstream.wait_requests(i + 1)[i]
            assert (rec.target, rec.header("authorization")) == (f"/echo?n={i}", f"Bearer {secrets.openai_key}")
        # an HTTP/2 origin
        r = d.curl("--http2", "https://api.anthropic.com/echo").ok()
        assert r.status == 200
        rec = h2o.only_request()
        assert rec.header("authorization") == f"Bearer {secrets.openai_key}"
        # a WebSocket
        assert ws_roundtrip(d, "upstream.test") == "hello through the parent"
        assert ws.conns()[0].header("authorization") == f"Bearer {secrets.openai_key}"
        # a cleartext origin: CONNECT (or SOCKS) too
        r = d.curl("--http1.1", f"http://plain.test:{plain_upstream.port}/echo").ok()
        assert r.status == 200
        assert plain_upstream.only_request().header("authorization") == f"Bearer {secrets.plain_key}"

        wanted = {upstream.port, h2o.port, ws.port, plain_upstream.port}
        conns = t.snapshot()
        scheme = PARENTS[kind][0]
        asked = set()
        if scheme == "http":
            for c in conns:
                head = c.decode("latin-1")
                m = re.match(r"CONNECT 127\.0\.0\.1:(\d+) HTTP/1\.1\r\nHost: 127\.0\.0\.1:\1\r\n", head)
                assert m, head[:200]
                asked.add(int(m.group(1)))
                has_auth = "\r\nProxy-Authorization: Basic " in head
                assert has_auth == PARENTS[kind][2]
                if has_auth:
                    user, pw = credential(peers, kind)
                    b64 = base64.b64encode(f"{user}:{pw}".encode()).decode()
                    assert f"\r\nProxy-Authorization: Basic {b64}\r\n" in head
        elif scheme == "socks5":
            for c in conns:
                methods, cred, (atyp, addr, port) = socks_requests(c, PARENTS[kind][2])
                assert (atyp, addr) == (1, "127.0.0.1")  # the checked address
                assert methods == ([0, 2] if PARENTS[kind][2] else [0])
                if cred:
                    assert cred == credential(peers, kind)
                asked.add(port)
        else:  # TLS to the parent: only the handshake can be seen here
            for c in conns:
                assert c[:1] == b"\x16", c[:16]
            asked = wanted if len(conns) >= len(wanted) else set()
            # squid sends no session tickets: nothing to resume (see
            # test_tls_parent_session_resumed)
            assert not any(offers_psk(c) for c in conns)
        assert asked == wanted, (asked, wanted)
        metrics = d.curl(f"http://127.0.0.1:{d.port}/metrics", proxy=False).text
        assert f'agentvault_parent_connections_total{{parent="127.0.0.1:{t.port}"}} {len(conns)}\n' in metrics
        assert f'agentvault_parent_failures_total{{parent="127.0.0.1:{t.port}"}} 0\n' in metrics
        if kind == "squid-tls":
            d.stop()  # squid logs a tunnel when it closes
            wait_until(lambda: f"CONNECT 127.0.0.1:{upstream.port}" in peers.squid.access_log(), 10)
            assert f"TCP_TUNNEL/200" in peers.squid.access_log()
    finally:
        h2o.stop()
        ws.stop()


# ---- refusals ------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(PARENTS))
def test_parent_refuses_connect(kind, peers, daemon, secrets):
    """squid's ACL refuses the port (403); microsocks finds it closed (05)."""
    t = tap(peers, PARENTS[kind][1](peers))
    proxy, env = parent_conf(peers, kind, t)
    conf = config_text(secrets, proxy_extra=proxy,
                       extra='[service "denied"]\nhost = denied.test\nauth = bearer\n'
                             'secret = env:OPENAI_API_KEY\n')
    d = daemon(conf, env=env, resolve=[f"denied.test:443:127.0.0.1:{peers.denied_port}"])
    r = d.curl("--http1.1", "https://denied.test/echo")
    assert r.status == 502, r.describe()
    err = r.header("x-agentvault-error")
    if kind.startswith("squid"):
        assert err == f"parent proxy 127.0.0.1:{t.port} refused CONNECT: 403 Forbidden", err
    else:
        assert err == f"SOCKS5 parent 127.0.0.1:{t.port} failed: connection refused (05)", err
    d.wait_log(lambda text: err in text)
    assert len(t.snapshot()) == 1
    metrics = d.curl(f"http://127.0.0.1:{d.port}/metrics", proxy=False).text
    assert f'agentvault_parent_failures_total{{parent="127.0.0.1:{t.port}"}} 1\n' in metrics


@pytest.mark.parametrize("kind", ["squid-auth", "microsocks-auth"])
def test_wrong_parent_password(kind, peers, daemon, secrets):
    t = tap(peers, PARENTS[kind][1](peers))
    proxy, env = parent_conf(peers, kind, t, wrong=True)
    d = daemon(config_text(secrets, proxy_extra=proxy), env=env)
    r = d.curl("--http1.1", f"https://{OPENAI}/echo")
    assert r.status == 502, r.describe()
    err = r.header("x-agentvault-error")
    if kind == "squid-auth":
        assert err == f"parent proxy 127.0.0.1:{t.port} refused CONNECT: 407 Proxy Authentication Required"
    else:
        assert re.fullmatch(rf"SOCKS5 parent 127\.0\.0\.1:{t.port} rejected the username/password "
                            r"\(status 0[1-9a-f]\)", err), err
    d.wait_log(lambda text: err in text)
    pw = env["PARENT_CRED"].split(":", 1)[1]
    assert pw.encode() in b"".join(t.snapshot()) or kind == "squid-auth"  # it was sent to the parent
    d.stop()
    assert_not_leaked(d, [r.stdout.decode("latin-1"), r.describe()], pw)


class OneShotPeer:
    """Accepts connections; answers each with |answer| (None: never)."""

    def __init__(self, answer):
        self.answer = answer
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self.held = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            self.held.append(c)
            if self.answer is not None:
                try:
                    c.recv(4096)
                    c.sendall(self.answer)
                except OSError:
                    pass

    def stop(self):
        self.lsock.close()
        for c in self.held:
            c.close()


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_parent_silent_or_malformed(scheme, daemon, secrets):
    """A parent that never answers: 504 within connect_timeout, naming it; one
    that answers garbage: 502 naming it."""
    silent, garbage = OneShotPeer(None), OneShotPeer(b"SSH-2.0-OpenSSH\r\n\r\n")
    try:
        d = daemon(config_text(secrets, proxy_extra=f"upstream_proxy = {scheme}://127.0.0.1:{silent.port}\n"
                                                 "connect_timeout = 1"))
        t0 = time.monotonic()
        r = d.curl(f"https://{OPENAI}/echo")
        assert r.status == 504, r.describe()
        assert time.monotonic() - t0 < 5
        what = "parent proxy" if scheme == "http" else "SOCKS5 parent"
        assert r.header("x-agentvault-error") == \
            f"upstream connect timed out: no tunnel through {what} 127.0.0.1:{silent.port} within connect_timeout"
        d2 = daemon(config_text(secrets, proxy_extra=f"upstream_proxy = {scheme}://127.0.0.1:{garbage.port}"))
        r = d2.curl(f"https://{OPENAI}/echo")
        assert r.status == 502, r.describe()
        want = (f"parent proxy 127.0.0.1:{garbage.port} sent a malformed answer to CONNECT" if scheme == "http"
                else f"SOCKS5 parent 127.0.0.1:{garbage.port} sent a malformed reply")
        assert r.header("x-agentvault-error") == want
    finally:
        silent.stop()
        garbage.stop()


def test_tls_parent_certificate_is_verified(daemon, secrets, test_ca):
    """An https:// parent whose certificate does not verify (untrusted CA):
    502 naming the parent, and no CONNECT is sent."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    port = lsock.getsockname()[1]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(test_ca.bad_server_cert, test_ca.bad_server_key)
    received = []

    def serve():
        try:
            c, _ = lsock.accept()
            try:
                t = ctx.wrap_socket(c, server_side=True)
                received.append(t.recv(100))
            except (ssl.SSLError, OSError):
                pass
            c.close()
        except OSError:
            pass
    threading.Thread(target=serve, daemon=True).start()
    try:
        d = daemon(config_text(secrets, proxy_extra=f"upstream_proxy = https://127.0.0.1:{port}"))
        r = d.curl(f"https://{OPENAI}/echo")
        assert r.status == 502, r.describe()
        err = r.header("x-agentvault-error")
        assert err.startswith(f"TLS to parent proxy 127.0.0.1:{port} failed: "), err
        assert "certificate" in err, err
        assert received == []
    finally:
        lsock.close()


def test_missing_parent_credential_fails_start(peers, tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text("[proxy]\nupstream_proxy = http://127.0.0.1:3128\n"
                    "upstream_proxy_auth = env:NO_SUCH_PARENT_CRED\n")
    p = subprocess.run([str(require_binary()), "serve", "-c", str(conf), "--listen", "127.0.0.1:0",
                        "--state-dir", str(tmp_path / "st")], env=base_env(tmp_path),
                       capture_output=True, text=True, timeout=20)
    assert p.returncode != 0
    assert "upstream_proxy credential: environment variable NO_SUCH_PARENT_CRED is not set" in p.stderr


# ---- socks5 vs socks5h -----------------------------------------------------------

def test_socks5h_sends_names(peers, daemon, upstream, secrets):
    """socks5h: a name goes to the parent as ATYP 03; a --resolve override as
    its address; an unknown name is refused by the parent (REP 05)."""
    ns = peers.names
    ns.names["api.openai.com"] = upstream.port
    t = tap(peers, ns.port)
    d = daemon(config_text(secrets, proxy_extra=f"upstream_proxy = socks5h://127.0.0.1:{t.port}",
                           extra='[service "nx"]\nhost = nx.test\nauth = bearer\n'
                                 'secret = env:OPENAI_API_KEY\n'),
               resolve=[f"api.github.com:443:127.0.0.1:{upstream.port}"])
    d.curl(f"https://{OPENAI}/echo").ok()
    assert upstream.only_request().header("authorization") == f"Bearer {secrets.openai_key}"
    d.curl("https://api.github.com/repos/x").ok()
    assert upstream.wait_requests(2)[1].target == "/repos/x"
    with ns.lock:
        reqs = list(ns.requests)
    assert (3, "api.openai.com", 443) in reqs
    assert (1, "127.0.0.1", upstream.port) in reqs
    r = d.curl("https://nx.test/")
    assert r.status == 502
    assert r.header("x-agentvault-error") == \
        f"SOCKS5 parent 127.0.0.1:{t.port} failed: connection refused (05)"
    # what the guard can still judge: a loopback name
    r = d.curl("https://localhost/")
    assert r.status == 403, r.describe()


def test_socks5_resolves_locally(peers, daemon, upstream, secrets):
    """socks5: the proxy resolves and checks; the parent is asked for the
    address (never the name), and a refused address never reaches it."""
    ns = peers.names
    t = tap(peers, ns.port)
    d = daemon(config_text(secrets, proxy_extra=f"upstream_proxy = socks5://127.0.0.1:{t.port}"))
    before = len(ns.requests)
    d.curl(f"https://{OPENAI}/echo").ok()
    with ns.lock:
        new = ns.requests[before:]
    assert new == [(1, "127.0.0.1", upstream.port)]
    # the SSRF guard keeps its meaning: 10.0.0.1 is refused before any dial
    n = len(t.snapshot())
    c, resp = client.connect_tunnel(d.port, "10.0.0.1:443")
    c.close()
    assert resp.status == 403
    assert len(t.snapshot()) == n


# ---- routing: no_proxy, per-service, env, opaque tunnels, reload --------------------

def test_no_proxy_and_service_direct(peers, daemon, upstream, plain_upstream, secrets):
    t = tap(peers, peers.squid.plain)
    conf = config_text(secrets, proxy_extra=f"upstream_proxy = http://127.0.0.1:{t.port}\n"
                                             "upstream_no_proxy = .github.com",
                       extra=plain_service(plain_upstream.port).replace(
                           "auth = bearer", "auth = bearer\nupstream_proxy = direct"))
    d = daemon(conf, extra_resolve=[f"plain.test:{plain_upstream.port}:127.0.0.1"])
    d.curl("https://api.github.com/repos/x").ok()
    d.curl(f"http://plain.test:{plain_upstream.port}/echo").ok()
    assert t.snapshot() == []  # neither went through the parent
    d.curl(f"https://{OPENAI}/echo").ok()
    assert t.connect_lines() == [f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1"]
    # no cleartext warning for the direct service
    assert "crosses the parent" not in d.log_text()


def test_cleartext_service_warning(peers, daemon, plain_upstream, secrets):
    t = tap(peers, peers.squid.plain)
    d = daemon(config_text(secrets, proxy_extra=f"upstream_proxy = http://127.0.0.1:{t.port}",
                           extra=plain_service(plain_upstream.port)))
    d.wait_log(lambda text: "service plain: scheme = http through parent proxy" in text)


def test_upstream_proxy_env(peers, daemon, upstream, secrets):
    t = tap(peers, peers.squid.auth)
    env = {"HTTPS_PROXY": f"http://{SQUID_USER}:{peers.squid.password}@127.0.0.1:{t.port}",
           "NO_PROXY": "api.github.com"}
    d = daemon(config_text(secrets, proxy_extra="upstream_proxy = env"), env=env)
    d.curl(f"https://{OPENAI}/echo").ok()
    assert upstream.only_request().header("authorization") == f"Bearer {secrets.openai_key}"
    d.curl("https://api.github.com/repos/x").ok()
    lines = t.connect_lines()
    assert lines == [f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1"]
    assert b"Proxy-Authorization: Basic " in t.snapshot()[0]
    d.stop()
    assert_not_leaked(d, [], peers.squid.password)


def test_parent_is_this_proxy(daemon, secrets):
    """HTTPS_PROXY pointing at this proxy itself with upstream_proxy = env:
    a loop, refused with 502 before anything is sent."""
    port = free_port()
    d = daemon(config_text(secrets, proxy_extra="upstream_proxy = env"),
               env={"HTTPS_PROXY": f"http://127.0.0.1:{port}"}, listen=f"127.0.0.1:{port}")
    r = d.curl(f"https://{OPENAI}/echo")
    assert r.status == 502, r.describe()
    assert r.header("x-agentvault-error") == \
        f"parent proxy 127.0.0.1:{port} is this proxy's own listener: upstream_proxy would loop"


def test_opaque_tunnel_through_parent(peers, daemon, secrets):
    """A passthrough host's opaque tunnel goes through the parent too."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    port = lsock.getsockname()[1]

    def serve():
        try:
            c, _ = lsock.accept()
            c.sendall(b"220 banner\r\n")
            c.sendall(b"echo:" + c.recv(100))
            c.close()
        except OSError:
            pass
    threading.Thread(target=serve, daemon=True).start()
    t = tap(peers, peers.squid.plain)
    d = daemon(config_text(secrets, proxy_extra=f"upstream_proxy = http://127.0.0.1:{t.port}\n"
                                             "passthrough = opaque.test"),
               extra_resolve=[f"opaque.test:{port}:127.0.0.1"])
    c, resp = client.connect_tunnel(d.port, f"opaque.test:{port}")
    assert resp.status == 200
    c.sock.settimeout(10)
    got = b""
    while b"\r\n" not in got:
        got += c.sock.recv(100)
    assert got == b"220 banner\r\n"
    c.sock.sendall(b"ping")
    got = b""
    while len(got) < 9:
        d_ = c.sock.recv(100)
        if not d_:
            break
        got += d_
    assert got == b"echo:ping"
    c.close()
    lsock.close()
    assert t.connect_lines() == [f"CONNECT 127.0.0.1:{port} HTTP/1.1"]


def test_reload_changes_parent(peers, daemon, upstream, secrets, test_ca):
    """A pooled connection (HTTP/1.1) or HTTP/2 mux through parent A never
    serves a request after a reload routes it through parent B: the pool and
    mux keys name the parent."""
    ta, tb = tap(peers, peers.squid.plain), tap(peers, peers.squid.plain)
    h2o = h2_origin(test_ca)
    try:
        # one worker: the pool and its muxes are per worker, and this test
        # counts which pooled tunnel each new client connection reuses
        d = daemon(config_text(secrets, proxy_extra=f"upstream_proxy = http://127.0.0.1:{ta.port}",
                               extra='[service "h2"]\nhost = api.anthropic.com\nauth = bearer\n'
                                     'secret = env:OPENAI_API_KEY\n'),
                   extra_resolve=[f"api.anthropic.com:443:127.0.0.1:{h2o.port}"], args=["--workers", "1"])
        for _ in range(2):
            d.curl("--http1.1", f"https://{OPENAI}/echo").ok()
            d.curl("--http2", "https://api.anthropic.com/echo").ok()
        # the second requests reused the pooled tunnel and the mux
        assert sorted(ta.connect_lines()) == sorted([f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1",
                                                     f"CONNECT 127.0.0.1:{h2o.port} HTTP/1.1"])
        conf = d.workdir / "agentvault.conf"
        conf.write_text(conf.read_text().replace(f"127.0.0.1:{ta.port}", f"127.0.0.1:{tb.port}"))
        d.signal(signal.SIGHUP)
        d.wait_log(lambda text: "configuration reloaded" in text)
        d.curl("--http1.1", f"https://{OPENAI}/echo").ok()
        d.curl("--http2", "https://api.anthropic.com/echo").ok()
        assert len(ta.snapshot()) == 2
        assert sorted(tb.connect_lines()) == sorted([f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1",
                                                     f"CONNECT 127.0.0.1:{h2o.port} HTTP/1.1"])
        assert h2o.h2_connections == 2
    finally:
        h2o.stop()


def test_service_own_parent(peers, daemon, upstream, secrets):
    """A service's own upstream_proxy (with its own credential) overrides
    [proxy]'s."""
    ta, tb = tap(peers, peers.squid.plain), tap(peers, peers.socks_auth.port)
    conf = config_text(secrets, proxy_extra=f"upstream_proxy = http://127.0.0.1:{ta.port}")
    conf = conf.replace('secret = env:OPENAI_API_KEY\n',
                        'secret = env:OPENAI_API_KEY\n'
                        f'upstream_proxy = socks5://127.0.0.1:{tb.port}\n'
                        'upstream_proxy_auth = env:SVC_PARENT\n', 1)
    d = daemon(conf, env={"SVC_PARENT": f"{peers.socks_user}:{peers.socks_pw}"})
    d.curl(f"https://{OPENAI}/echo").ok()
    d.curl("https://api.github.com/repos/x").ok()
    assert ta.connect_lines() == [f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1"]  # github
    (conn,) = tb.snapshot()  # openai
    _, cred, target = socks_requests(conn, True)
    assert cred == (peers.socks_user, peers.socks_pw)
    assert target == (1, "127.0.0.1", upstream.port)
    d.wait_log(lambda text: f"service openai: upstream parent proxy socks5://127.0.0.1:{tb.port}" in text)


# ---- configuration errors ---------------------------------------------------------

BAD = [
    ("upstream_proxy = ftp://p:21", "upstream_proxy: the scheme must be http://"),
    ("upstream_proxy = http://proxy.example", "needs an explicit port"),
    ("upstream_proxy = http://u:p@proxy.example:3128", "credentials do not belong in the URL"),
    ("upstream_proxy = http://proxy.example:3128/path", "no path"),
    ("upstream_proxy = http://proxy.example:99999", "invalid port"),
    ("upstream_proxy = http://pro xy:3128", "invalid host"),
    ("upstream_proxy_auth = env:X", "upstream_proxy_auth needs upstream_proxy"),
    ("upstream_proxy = http://p.example:3128\nupstream_proxy_auth = plain-text-password",
     "upstream_proxy_auth must be env:NAME"),
    ("upstream_proxy = http://p.example:3128\nupstream_no_proxy = *, a.example", "must be the whole value"),
    ("upstream_proxy = http://p.example:3128\nupstream_no_proxy = 10.0.0.0/33", "invalid entry"),
]


@pytest.mark.parametrize("line,reason", BAD)
def test_check_refuses_bad_values(line, reason, tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text(f"[proxy]\n{line}\n")
    p = subprocess.run([str(require_binary()), "check", "-c", str(conf)], env=base_env(tmp_path),
                       capture_output=True, text=True, timeout=20)
    assert p.returncode != 0
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and reason in lines[0], p.stderr


def test_check_service_override(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text('[service "s"]\nhost = a.example\nauth = bearer\nsecret = env:K\n'
                    "upstream_proxy = env\n")
    p = subprocess.run([str(require_binary()), "check", "-c", str(conf)], env=base_env(tmp_path),
                       capture_output=True, text=True, timeout=20)
    assert p.returncode != 0 and "a [proxy] setting" in p.stderr
    conf.write_text('[service "s"]\nhost = a.example\nauth = bearer\nsecret = env:K\n'
                    "upstream_proxy = socks5h://[::1]:1080\nupstream_proxy_auth = env:PC\n")
    p = subprocess.run([str(require_binary()), "check", "-c", str(conf)], env=base_env(tmp_path),
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stderr


class TlsConnectParent:
    """An https:// parent in Python (TLS 1.3 with session tickets, which
    squid does not send): CONNECT to 127.0.0.1 only, then a relay. Records
    whether each connection's TLS session was resumed."""

    def __init__(self, cert, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.resumed = []
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        import select
        up = None
        try:
            c.settimeout(10)
            t = self.ctx.wrap_socket(c, server_side=True)
            self.resumed.append(t.session_reused)
            head = b""
            while b"\r\n\r\n" not in head:
                data = t.recv(4096)
                if not data:
                    return
                head += data
            head, rest = head.split(b"\r\n\r\n", 1)
            m = re.match(rb"CONNECT 127\.0\.0\.1:(\d+) HTTP/1\.1\r\n", head)
            if not m:
                t.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            up = socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=10)
            t.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                up.sendall(rest)
            t.setblocking(False)
            up.setblocking(False)
            while True:
                r, _, _ = select.select([t, up], [], [], 10)
                if not r:
                    return
                for s in r:
                    try:
                        data = s.recv(65536)
                    except (ssl.SSLWantReadError, BlockingIOError):
                        continue
                    if not data:
                        return
                    other = up if s is t else t
                    other.setblocking(True)
                    other.sendall(data)
                    other.setblocking(False)
        except (OSError, ssl.SSLError):
            pass
        finally:
            c.close()
            if up:
                up.close()

    def stop(self):
        self.lsock.close()


def test_tls_parent_session_resumed(daemon, upstream, secrets, test_ca):
    """The TLS session with an https:// parent is resumed by the next
    connection to it (a ticket kept under the parent's identity), and the
    origin's TLS inside still verifies."""
    p = TlsConnectParent(test_ca.server_cert, test_ca.server_key)
    try:
        d = daemon(config_text(secrets, proxy_extra=f"upstream_proxy = https://127.0.0.1:{p.port}"),
                   resolve=[f"{OPENAI}:443:127.0.0.1:{upstream.port}",
                            f"api.github.com:443:127.0.0.1:{upstream.port}"])
        # two services: two pool keys, two parent connections
        assert d.curl(f"https://{OPENAI}/echo").ok().status == 200
        assert d.curl("https://api.github.com/echo").ok().status == 200
        assert p.resumed == [False, True], p.resumed
        reqs = upstream.wait_requests(2)
        assert reqs[0].header("authorization") == f"Bearer {secrets.openai_key}"
        metrics = d.curl(f"http://127.0.0.1:{d.port}/metrics", proxy=False).text
        assert 'agentvault_tls_resumed_total{side="upstream"} 1\n' in metrics, metrics
    finally:
        p.stop()
