"""Helpers for test_gateway.py: gateway config sections, the ports the daemon
bound for them, raw HTTP/1.1 on a gateway, h2c with avtest.h2_client's
H2Client over a cleartext socket (PlainPipe), nghttp, and a non-loopback
local address for the allow_remote tests.

Everything a gateway client receives through these helpers is added to
avtest.client.RECEIVED, so conftest's no_secret_reaches_a_client checks it
like curl output.
"""
import os
import re
import shutil
import socket
import subprocess

from . import client
from .daemon import config_text
from .h2_client import H2Client, TlsPipe, all_received_text

GATEWAY_RE = re.compile(r"agentvault: gateway (\S+) on http://(\S+):(\d+) -> (\S+)$")
NGHTTP = "/usr/bin/nghttp"
GW_TOKEN_REASON = "gateway token required: send X-Agentvault-Token"


def gateway_section(name, upstream="https://api.openai.com", listen="127.0.0.1:0", *,
                    token=None, allow_remote=None):
    """The text of one [gateway "NAME"] section."""
    lines = [f'[gateway "{name}"]', f"listen = {listen}", f"upstream = {upstream}"]
    if allow_remote is not None:
        lines.append(f"allow_remote = {allow_remote}")
    if token is not None:
        lines.append(f"token = {token}")
    return "\n".join(lines) + "\n"


def gw_config(secrets, *sections, **kw):
    """config_text() (default services: openai bearer, github on /repos/*)
    followed by the given gateway sections (default: one "openai" gateway to
    https://api.openai.com on 127.0.0.1:0)."""
    if not sections:
        sections = (gateway_section("openai"),)
    extra = kw.pop("extra", "")
    return config_text(secrets, extra="\n".join(sections) + "\n" + extra, **kw)


def gateways(d):
    """{name: (host, port, upstream)} from the daemon's start-up lines."""
    out = {}
    for line in list(d.stderr_lines):
        m = GATEWAY_RE.search(line)
        if m:
            out[m.group(1)] = (m.group(2), int(m.group(3)), m.group(4))
    return out


def gw_port(d, name="openai", timeout=5.0):
    """The port of gateway NAME (waits for its start-up line: the daemon
    prints it after the proxy's "listening on" line)."""
    try:
        d.wait_log(lambda line: GATEWAY_RE.search(line) is not None
                   and GATEWAY_RE.search(line).group(1) == name, timeout)
    except AssertionError:
        raise AssertionError(f"no 'agentvault: gateway {name} on http://HOST:PORT -> ...' "
                             f"line\n{d.log_dump()}") from None
    gws = gateways(d)
    port = gws[name][1]
    assert 0 < port < 65536, gws
    return port


def gw_url(d, name="openai", host="127.0.0.1"):
    return f"http://{host}:{gw_port(d, name)}"


def received(*blobs):
    """Record what a non-curl client received for the suite's leak check."""
    for b in blobs:
        if isinstance(b, str):
            b = b.encode("utf-8", "replace")
        client.RECEIVED.append(bytes(b))


class GwConn(client.RawConn):
    """A raw HTTP/1.1 connection to a gateway (keep-alive, pipelining)."""

    @classmethod
    def open(cls, port, host="127.0.0.1", source=None, timeout=10.0):
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        s.settimeout(timeout)
        if source:
            s.bind((source, 0))
        s.connect((host, port))
        return cls(s, timeout)

    @staticmethod
    def head(method, target, headers=(), body=None, host="gateway.local"):
        lines = [f"{method} {target} HTTP/1.1"]
        if host is not None:
            lines.append(f"Host: {host}")
        lines += [f"{k}: {v}" for k, v in headers]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")

    def send_request(self, method, target, headers=(), body=None, host="gateway.local"):
        self.send(self.head(method, target, headers, body, host))

    def response(self, method="GET"):
        r = self.read_response(method=method)
        received(r.raw_head, r.body)
        return r

    def request(self, method, target, headers=(), body=None, host="gateway.local"):
        self.send_request(method, target, headers, body, host)
        return self.response(method)


def run_nghttp(args, timeout=30.0, home="/tmp"):
    """nghttp (h2c with prior knowledge for http:// URLs unless -u)."""
    assert os.access(NGHTTP, os.X_OK), f"{NGHTTP} missing (Debian package nghttp2-client)"
    cmd = [NGHTTP] + [str(a) for a in args]
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout,
                           env={"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C"})
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"nghttp did not finish in {timeout}s: {cmd}\n"
                             f"{(e.stdout or b'')[-3000:]!r}")
    received(p.stdout, p.stderr)
    return p


def nghttp_statuses(out):
    """The :status values `nghttp -v` printed (one per response)."""
    return [int(line.rsplit(":", 1)[1].strip()) for line in out.splitlines()
            if "recv (stream_id=" in line and ":status:" in line]


def _ip_tool():
    return shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin")


def non_loopback_ipv4():
    """A local IPv4 address outside 127.0.0.0/8 that can be bound, or None."""
    cands = []
    ip = _ip_tool()
    if ip:
        out = subprocess.run([ip, "-4", "-o", "addr"], capture_output=True, text=True,
                             timeout=10).stdout
        cands += re.findall(r"\binet (\d+\.\d+\.\d+\.\d+)/", out)
    try:
        # No packet is sent: connect() on UDP only picks a source address.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.connect(("10.255.255.255", 9))
            cands.append(u.getsockname()[0])
    except OSError:
        pass
    for a in cands:
        if a.startswith("127.") or a == "0.0.0.0":
            continue
        try:
            with socket.socket() as s:
                s.bind((a, 0))
        except OSError:
            continue
        return a
    return None


def add_test_address(addr="192.0.2.77"):
    """As root only: add addr/32 to lo (not 127/8, so not "loopback" for the
    gateway's check). Returns a function that removes it."""
    ip = _ip_tool()
    assert ip and os.geteuid() == 0, \
        "this machine has no non-loopback IPv4 address and the tests are not root: cannot " \
        "test allow_remote"
    subprocess.run([ip, "addr", "add", f"{addr}/32", "dev", "lo"], check=True, timeout=10)

    def remove():
        subprocess.run([ip, "addr", "del", f"{addr}/32", "dev", "lo"], timeout=10)
    return remove


class _PlainSink:
    """Stands in for TlsPipe's incoming MemoryBIO: bytes go straight to rbuf."""

    def __init__(self, pipe):
        self.pipe = pipe

    def write(self, data):
        self.pipe.rbuf += data

    def write_eof(self):
        pass


class PlainPipe(TlsPipe):
    """TlsPipe's interface (io, write, take, flush, eof) over a cleartext
    socket, so that H2Client can speak h2c with prior knowledge."""

    def __init__(self, sock):  # no TLS: TlsPipe.__init__ is not called
        self.sock = sock
        sock.setblocking(False)
        self._in = _PlainSink(self)
        self.outbuf = bytearray()
        self.rbuf = bytearray()
        self.eof = False
        self.eof_reason = None
        self.write_failed = False
        self.raw_eof = False
        self.bytes_in = 0

    @property
    def alpn(self):
        return None

    def _move_out(self):
        pass

    def _decrypt(self):
        if self.raw_eof:
            self.eof = True

    def write(self, data):
        if not self.write_failed:
            self.outbuf += data


def h2c_client(port, host="127.0.0.1", timeout=10.0):
    """An H2Client speaking h2c (prior knowledge) to a gateway; the peer's
    SETTINGS have arrived. Requests need scheme="http"."""
    s = socket.create_connection((host, port), timeout=timeout)
    c = H2Client(PlainPipe(s))
    c.wait_settings()
    return c


def h2c_received(c):
    """Adds everything an H2Client received to the suite's leak check."""
    received(all_received_text(c))
