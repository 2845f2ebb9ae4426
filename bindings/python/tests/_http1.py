"""A minimal HTTP/1.1 response reader for raw sockets (open_stream tests)."""
from dataclasses import dataclass


@dataclass
class Response:
    status: int
    reason: str
    headers: list        # [(name, value)]
    body: bytes
    raw: bytes           # everything read for this response

    def header(self, name):
        n = name.lower()
        vals = [v for k, v in self.headers if k.lower() == n]
        return vals[0] if vals else None


class Reader:
    """Reads successive responses from one socket (keep-alive)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.raw = b""

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buf += data

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        self.raw += out
        return out

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        i = self.buf.index(b"\r\n")
        return self._take(i + 2)[:-2]

    def at_eof(self):
        """True when the peer closed with nothing pending."""
        if self.buf:
            return False
        return self.sock.recv(1) == b""

    def response(self, head_only=False):
        self.raw = b""
        status_line = self._line().decode("latin-1")
        version, code, *reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers = []
        while True:
            line = self._line()
            if not line:
                break
            k, _, v = line.decode("latin-1").partition(":")
            headers.append((k, v.strip()))
        resp = Response(int(code), reason[0] if reason else "", headers, b"", b"")
        status = resp.status
        if head_only or status in (204, 304) or 100 <= status < 200:
            resp.raw = self.raw
            return resp
        te = (resp.header("transfer-encoding") or "").lower()
        if te == "chunked":
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                body += self._take(size)
                assert self._take(2) == b"\r\n"
            resp.body = body
        elif resp.header("content-length") is not None:
            resp.body = self._take(int(resp.header("content-length")))
        else:  # read until close
            try:
                while True:
                    self._fill()
            except EOFError:
                pass
            resp.body = self._take(len(self.buf))
        resp.raw = self.raw
        return resp


def request(method, target, host, headers=(), body=b""):
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
