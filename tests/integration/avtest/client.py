"""Clients: a curl wrapper and raw-socket HTTP helpers.

curl is run with -q (no .curlrc), a clean environment (no *_proxy variables),
--http1.1 by default, and a hard subprocess timeout.
"""
import json
import queue
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CURL = "/usr/bin/curl"
DEFAULT_TIMEOUT = 20.0


def clean_env(home):
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C"}


def parse_header_blocks(raw):
    """Splits a curl -D dump into [(status, reason, [(name, value)])] blocks."""
    blocks = []
    cur = None
    for line in raw.decode("latin-1").split("\r\n"):
        if line.startswith("HTTP/"):
            parts = line.split(" ", 2)
            cur = (int(parts[1]), parts[2] if len(parts) > 2 else "", [])
            blocks.append(cur)
        elif line == "":
            cur = None
        elif cur is not None and ":" in line:
            k, v = line.split(":", 1)
            cur[2].append((k, v.strip()))
    return blocks


def header_values(headers, name):
    n = name.lower()
    return [v for k, v in headers if k.lower() == n]


def one_header(headers, name):
    vals = header_values(headers, name)
    assert len(vals) <= 1, f"header {name} appears {len(vals)} times: {vals!r}"
    return vals[0] if vals else None


@dataclass
class Transfer:
    info: dict        # curl -w %{json}
    body: bytes

    @property
    def status(self):
        return int(self.info.get("http_code") or self.info.get("response_code") or 0)

    @property
    def connect_status(self):
        return int(self.info.get("http_connect") or 0)

    @property
    def num_connects(self):
        return int(self.info.get("num_connects"))


# Everything curl received (bodies and response heads) in the current test:
# conftest's no_secret_reaches_a_client checks it for the suite's secrets.
RECEIVED = []


@dataclass
class CurlResult:
    args: list
    returncode: int
    stdout: bytes
    stderr: str
    transfers: list
    header_blocks: list = field(default_factory=list)
    elapsed: float = 0.0

    def describe(self):
        return (f"curl {' '.join(map(str, self.args))}\n rc={self.returncode}\n"
                f" stderr:\n{self.stderr[-4000:]}")

    @property
    def transfer(self):
        assert len(self.transfers) == 1, self.describe()
        return self.transfers[0]

    @property
    def status(self):
        return self.transfer.status

    @property
    def body(self):
        return self.transfer.body

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json_body(self):
        try:
            return json.loads(self.body)
        except ValueError:
            raise AssertionError(f"body is not JSON: {self.body[:500]!r}\n{self.describe()}")

    @property
    def headers(self):
        """Headers of the final response of the (single) transfer."""
        assert self.header_blocks, f"no response headers\n{self.describe()}"
        return self.header_blocks[-1][2]

    def header(self, name):
        return one_header(self.headers, name)

    def ok(self):
        assert self.returncode == 0, self.describe()
        return self


def run_curl(args, *, home, urls_count=1, timeout=DEFAULT_TIMEOUT, input=None,
             http1=True):
    """Runs curl with `args` (options and URLs). Each transfer's body is written
    to its own file: pass `urls_count` when there are several URLs."""
    with tempfile.TemporaryDirectory(prefix="avcurl-") as td:
        td = Path(td)
        outs = []
        for i in range(urls_count):
            outs += ["-o", str(td / f"body{i}")]
        hdr = td / "headers"
        full = [CURL, "-q", "-sS", "-v", "-D", str(hdr), "-w", "%{json}\\n"]
        if http1:
            full.append("--http1.1")
        full += outs + [str(a) for a in args]
        t0 = time.monotonic()
        try:
            p = subprocess.run(full, input=input, capture_output=True, timeout=timeout,
                               env=clean_env(home))
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"curl did not finish in {timeout}s: {full}\n"
                                 f"stderr: {(e.stderr or b'')[-3000:]!r}")
        elapsed = time.monotonic() - t0
        infos = []
        for line in p.stdout.decode("utf-8", "replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                infos.append(json.loads(line))
        transfers = []
        for i, info in enumerate(infos):
            f = td / f"body{i}"
            transfers.append(Transfer(info, f.read_bytes() if f.exists() else b""))
        raw_heads = hdr.read_bytes() if hdr.exists() else b""
        blocks = parse_header_blocks(raw_heads) if raw_heads else []
        RECEIVED.append(b"".join(t.body for t in transfers) + b"\n" + raw_heads)
        return CurlResult(full, p.returncode, p.stdout,
                          p.stderr.decode("utf-8", "replace"), transfers, blocks, elapsed)


class StreamingCurl:
    """curl running in the background whose stdout is read line by line."""

    def __init__(self, args, *, home, timeout=DEFAULT_TIMEOUT):
        self.args = [CURL, "-q", "-sS", "-N", "--http1.1"] + [str(a) for a in args]
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=clean_env(home))
        self.deadline = time.monotonic() + timeout
        self.lines = queue.Queue()
        self.seen = []
        self._stderr = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self):
        for line in iter(self.proc.stdout.readline, b""):
            self.lines.put(line)
        self.lines.put(None)

    def _pump_err(self):
        for line in iter(self.proc.stderr.readline, b""):
            self._stderr.append(line.decode("utf-8", "replace"))

    def wait_line(self, wanted, timeout):
        """Waits for a stdout line equal to `wanted` (bytes, without newline)."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line {wanted!r} within {timeout}s; got {self.seen!r}; "
                                     f"stderr={''.join(self._stderr)[-2000:]}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.lines.put(None)
                raise AssertionError(f"curl ended before {wanted!r}; got {self.seen!r}; "
                                     f"stderr={''.join(self._stderr)[-2000:]}")
            self.seen.append(line)
            if line.rstrip(b"\r\n") == wanted:
                return

    def finish(self, timeout=10.0):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"curl did not finish within {timeout}s; seen {self.seen!r}")
        while True:
            try:
                line = self.lines.get(timeout=2)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
        return rc

    @property
    def stderr(self):
        return "".join(self._stderr)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


# ---- raw sockets ------------------------------------------------------------

@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list
    body: bytes
    raw_head: bytes
    trailers: list = None  # [(name, value)] of a chunked trailer section

    def header(self, name):
        return one_header(self.headers, name)


class RawConn:
    """A socket with a receive buffer; plain or TLS."""

    def __init__(self, sock, timeout=10.0):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buf = b""

    @classmethod
    def connect(cls, port, host="127.0.0.1", timeout=10.0):
        return cls(socket.create_connection((host, port), timeout=timeout), timeout)

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buf += data

    def read_head(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        return head

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_response(self, method="GET", skip_1xx=True):
        while True:
            head = self.read_head()
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            assert parts[0].startswith("HTTP/1."), f"not an HTTP response: {head[:200]!r}"
            status = int(parts[1])
            reason = parts[2] if len(parts) > 2 else ""
            headers = []
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers.append((k, v.strip()))
            if skip_1xx and 100 <= status < 200:
                continue
            break
        lower = [(k.lower(), v) for k, v in headers]
        te = [v for k, v in lower if k == "transfer-encoding"]
        cl = [v for k, v in lower if k == "content-length"]
        trailers = []
        if method in ("HEAD", "CONNECT") and (method == "HEAD" or 200 <= status < 300):
            body = b""
        elif status in (204, 304):
            body = b""
        elif te and te[-1].lower() == "chunked":
            chunks = []
            while True:
                size = int(self.read_line().split(b";")[0], 16)
                if size == 0:
                    while True:
                        line = self.read_line()
                        if line == b"":
                            break
                        k, _, v = line.decode("latin-1").partition(":")
                        trailers.append((k, v.strip()))
                    break
                chunks.append(self.read_exact(size))
                assert self.read_exact(2) == b"\r\n"
            body = b"".join(chunks)
        elif cl:
            body = self.read_exact(int(cl[0]))
        else:
            body = self.read_to_eof()
        return RawResponse(status, reason, headers, body, head, trailers)

    def read_to_eof(self):
        while True:
            try:
                self._fill()
            except EOFError:
                break
        data, self.buf = self.buf, b""
        return data

    def is_closed(self, timeout=5.0):
        """True when the peer closes (EOF/reset/TLS close) within timeout with no
        further data; False on a timeout. Leftover bytes count as not closed."""
        if self.buf:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1)
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return True
        except ssl.SSLError:
            return True
        except (socket.timeout, TimeoutError):
            return False
        return data == b""

    def start_tls(self, cafile, server_hostname, check_hostname=True, alpn=("http/1.1",)):
        ctx = ssl.create_default_context(cafile=str(cafile))
        ctx.check_hostname = check_hostname
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        assert not self.buf, f"unexpected bytes before TLS: {self.buf!r}"
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        return self

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def connect_tunnel(port, target, *, headers=(), timeout=10.0):
    """Opens a plain connection to the proxy and sends CONNECT target.
    Returns (RawConn, RawResponse of the CONNECT)."""
    c = RawConn.connect(port, timeout=timeout)
    host = target
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {host}"] + [f"{k}: {v}" for k, v in headers]
    c.send(("\r\n".join(lines) + "\r\n\r\n").encode())
    return c, c.read_response(method="CONNECT")
