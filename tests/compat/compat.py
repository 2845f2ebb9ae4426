"""The compatibility suite's harness: fake origins that check the key, a
daemon with one service and one gateway per origin, running real clients
through `agentvault run` (proxy mode) or against a gateway (base-URL mode),
and the client x mode matrix. See README.md in this directory.
"""
import base64
import contextlib
import hashlib
import json
import os
import secrets as _secrets
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))

from avtest import certs  # noqa: E402
from avtest import daemon as avd  # noqa: E402
from avtest import h2_upstream  # noqa: E402
from avtest.gateway import gw_port  # noqa: E402
from avtest.h2_client import TlsPipe  # noqa: E402
from avtest.upstream import ProtocolError, ThreadedOrigin, _parse_head, _Reader, _reason  # noqa: E402

# Names on the origins' certificate: the well-known API hosts (for the
# embedded-default tests) and any NAME.compat.test.
ORIGIN_DNS_NAMES = ["compat.test", "*.compat.test", "api.openai.com", "api.anthropic.com",
                    "api.github.com", "github.com", "localhost"]
IO_TIMEOUT = 20.0
CLIENT_TIMEOUT = 120.0
EXCHANGE_RE = __import__("re").compile(r" exchange method=\S+ host=(\S+) .* proto=(\S+)")
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Dummy credentials clients are given; none may reach an origin.
DUMMY_KEYS = ("agentvault-placeholder", "sk-compat-dummy", "compat-dummy-key")


# --------------------------------------------------------------------------
# Matrix
# --------------------------------------------------------------------------

def matrix_path():
    """$AV_COMPAT_MATRIX, else compat-matrix.jsonl next to the daemon's build
    directory (build/compat-matrix.jsonl for build/daemon/agentvault)."""
    p = os.environ.get("AV_COMPAT_MATRIX")
    if p:
        return Path(p)
    return avd.binary_path().resolve().parent.parent / "compat-matrix.jsonl"


_matrix_lock = threading.Lock()


def record(client, mode, ok, agent_proto, origin_proto, note=""):
    """Appends one matrix row: client (e.g. "curl"), mode ("proxy",
    "gateway"), ok (bool), the protocols on the agent side and on the origin
    side ("h1", "h2", "h1+ws", "-" when unknown), and a short note."""
    row = {"client": client, "mode": mode, "ok": bool(ok), "agent": agent_proto or "-",
           "origin": origin_proto or "-", "note": note or "", "time": time.time()}
    p = matrix_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    with _matrix_lock, open(p, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


# --------------------------------------------------------------------------
# Fake origins
# --------------------------------------------------------------------------

@dataclass
class Request:
    """One request an origin received (HTTP/1.1 or HTTP/2)."""
    proto: str                  # "h1" or "h2"
    method: str
    target: str                 # path and query as received
    headers: list               # [(name, value)] without pseudo-headers
    body: bytes
    authority: str = ""
    websocket: bool = False
    problem: str = ""           # why the key check failed ("" = it passed)
    time: float = field(default_factory=time.monotonic)

    @property
    def path(self):
        return self.target.split("?", 1)[0]

    @property
    def query(self):
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    def header_values(self, name):
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def header(self, name):
        vals = self.header_values(name)
        return vals[0] if vals else None


@dataclass
class Response:
    status: int = 200
    headers: list = field(default_factory=list)   # [(name, value)]
    body: object = b""        # bytes, or a list of bytes (sent as chunks / DATA frames)


def json_response(obj, status=200, headers=()):
    body = json.dumps(obj).encode() + b"\n"
    return Response(status, [("content-type", "application/json")] + list(headers), body)


def echo_app(req):
    """The default application: 200 JSON describing the request (never the
    credential headers' values, so nothing secret reaches a client)."""
    hidden = {"authorization", "x-api-key", "x-goog-api-key", "cookie"}
    return json_response({
        "ok": True, "proto": req.proto, "method": req.method, "path": req.target,
        "headers": [[k, "(hidden)" if k.lower() in hidden else v] for k, v in req.headers],
        "body_length": len(req.body), "body_sha256": hashlib.sha256(req.body).hexdigest(),
    })


class KeyCheck:
    """What an origin accepts: at least one of `accept` [(header, value)]
    must be present exactly; the key may appear nowhere else in the head
    (nothing else added); no dummy value in the head, target or body."""

    def __init__(self, key, accept, dummies=DUMMY_KEYS):
        self.key = key
        self.accept = [(h.lower(), v) for h, v in accept]
        self.dummies = list(dummies)

    def problem(self, req):
        lower = [(k.lower(), v) for k, v in req.headers]
        hit = [(k, v) for k, v in lower if (k, v) in self.accept]
        if not hit:
            names = sorted({h for h, _ in self.accept})
            got = {k: ("(the key)" if self.key in v else "(other value)")
                   for k, v in lower if k in names}
            return f"no accepted credential header ({', '.join(names)}): got {got or 'none'}"
        if len(hit) > 1:
            return f"credential sent {len(hit)} times: {[k for k, _ in hit]}"
        for k, v in lower:
            if (k, v) not in hit and (self.key in v or k in {h for h, _ in self.accept}):
                return f"extra credential header {k!r} besides {hit[0][0]!r}"
        blob = req.target + "\n" + "\n".join(f"{k}: {v}" for k, v in req.headers)
        blob += "\n" + req.body.decode("latin-1")
        for d in self.dummies:
            if d and d in blob:
                return f"a dummy credential ({d[:12]}...) reached the origin"
        if self.key in req.target or self.key.encode() in req.body:
            return "the key reached the origin outside the credential header"
        return ""


def auth_accept(auth, key):
    """The [(header, value)] an origin accepts for an agentvault `auth` spec."""
    a = auth.strip()
    if a == "bearer":
        return [("authorization", f"Bearer {key}")]
    if a.startswith("basic "):
        user = a[6:].strip().strip('"')
        return [("authorization", "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode())]
    if a.startswith("header "):
        _, name, tmpl = a.split(" ", 2)
        return [(name, tmpl.strip('"').replace("{secret}", key))]
    raise ValueError(f"auth spec {auth!r}: give accept= explicitly")


class _PipeSock:
    """recv/sendall over a TlsPipe, for the HTTP/1.1 side of an origin."""

    def __init__(self, pipe):
        self.pipe = pipe

    def recv(self, _n):
        deadline = time.monotonic() + IO_TIMEOUT
        while True:
            if not self.pipe.eof:
                # records that came with the end of the handshake are still
                # in the TLS object: TlsPipe decrypts only after a socket read
                self.pipe._decrypt()
            data = self.pipe.take()
            if data:
                return data
            if self.pipe.eof:
                return b""
            if time.monotonic() > deadline:
                raise TimeoutError("origin read timeout")
            self.pipe.io(0.05)

    def sendall(self, data):
        self.pipe.write(data)
        if not self.pipe.flush(IO_TIMEOUT):
            raise OSError("origin write failed")


class _QuietReader(_Reader):
    def _record(self, data):
        pass


class _H2Conn(h2_upstream._Conn):
    """avtest's HTTP/2 origin connection, answering with the origin's app."""

    def _request_complete(self, st):
        rec = h2_upstream.H2Request(self.conn_id, st.sid, st.headers, bytes(st.body))
        hdrs = [(k, v) for k, v in rec.headers if not k.startswith(":")]
        req = Request("h2", rec.method or "", rec.target or "", hdrs, rec.body,
                      authority=rec.authority or "")
        resp = self.owner._dispatch(req)
        body = resp.body
        chunks = body if isinstance(body, list) else [body]
        head = [(k.lower(), str(v)) for k, v in resp.headers
                if k.lower() not in ("connection", "transfer-encoding", "keep-alive")]
        if not isinstance(body, list) and not any(k == "content-length" for k, _ in head) \
                and resp.status not in (204, 304):
            head.append(("content-length", str(len(body))))
        total = b"".join(chunks)
        no_body = req.method == "HEAD" or resp.status in (204, 304)
        self._send_head(st, resp.status, head, end_stream=no_body or not total)
        if not no_body and total:
            for i, c in enumerate(chunks):
                self._queue(st, c, end=i == len(chunks) - 1)


class FakeOrigin(ThreadedOrigin):
    """An HTTPS origin on 127.0.0.1:<port> speaking HTTP/1.1 and HTTP/2 (ALPN
    `alpn`), WebSocket echo on HTTP/1.1 (`websocket=True`), answering every
    request whose credential passes `check` with app(Request) -> Response,
    and every other request with 401. Every request is recorded."""

    def __init__(self, name, host, certfile, keyfile, check, app=None, alpn=("h2", "http/1.1"),
                 websocket=True):
        self.name = name
        self.host = host
        self.check = check
        self.app = app or echo_app
        self.alpn = tuple(alpn)
        self.websocket = websocket
        self.ssl_context = h2_upstream.h2_server_context(certfile, keyfile, self.alpn)
        self._origin_init(f"compat-origin-{name}")
        self.cond = threading.Condition(self.lock)
        self.requests = []
        self.errors = []            # handler exceptions, protocol errors
        self.ws_messages = []       # (opcode, payload) echoed
        # attributes avtest.h2_upstream._Conn uses
        self.max_concurrent_streams = 100
        self.initial_window_size = 1 << 20
        self.connection_window = 4 << 20
        self.goaway_after = None
        self.goaway_conns = None
        self.streams_started = 0
        self.ignored_streams = 0
        self.max_concurrent_streams_seen = 0
        self.data_bytes_received = 0
        self.resets_received = []
        self.goaways_received = []
        self.goaways_sent = 0

    class handler:
        def __init__(self, request, client_address, server):
            server.owner._serve_conn(request)

    # -- what tests use --------------------------------------------------------
    @property
    def url(self):
        return f"https://{self.host}"

    def snapshot(self):
        with self.lock:
            return list(self.requests)

    def bad_requests(self):
        return [r for r in self.snapshot() if r.problem]

    def protos(self):
        return sorted({r.proto + ("+ws" if r.websocket else "") for r in self.snapshot()})

    def wait_requests(self, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return list(self.requests)

    def assert_all_keyed(self, at_least=1):
        """Every request carried the real key, no dummy; at least `at_least`."""
        reqs = self.snapshot()
        assert len(reqs) >= at_least, f"origin {self.name}: {len(reqs)} request(s), " \
            f"expected at least {at_least}"
        bad = [(r.method, r.path, r.problem) for r in reqs if r.problem]
        assert not bad, f"origin {self.name}: requests without the real key: {bad}"
        assert not self.errors, f"origin {self.name}: errors {self.errors}"

    # -- internals ---------------------------------------------------------------
    def _protocol_error(self, msg):
        with self.lock:
            self.errors.append(msg)

    def _dispatch(self, req):
        req.problem = self.check.problem(req) if self.check else ""
        with self.lock:
            self.requests.append(req)
            self.cond.notify_all()
        if req.problem:
            return json_response({"error": {"type": "authentication_error",
                                             "message": "invalid key: " + req.problem}}, 401)
        try:
            return self.app(req)
        except Exception as e:  # noqa: BLE001 - reported by assert_all_keyed
            with self.lock:
                self.errors.append(f"app: {e!r}")
            return Response(500, [("content-type", "text/plain")], b"app error\n")

    def _serve_conn(self, sock):
        cid = self._register(sock)
        try:
            try:
                pipe = TlsPipe(sock, self.ssl_context, server_side=True, timeout=IO_TIMEOUT)
            except (ssl.SSLError, OSError, TimeoutError) as e:
                with self.lock:
                    self.errors.append(f"TLS handshake: {e!r}")
                return
            pipe._decrypt()  # data that arrived with the handshake's last flight
            if pipe.alpn == "h2":
                _H2Conn(self, pipe, cid).run()
            else:
                self._serve_h1(pipe)
        except (OSError, EOFError, TimeoutError):
            pass
        except Exception as e:  # noqa: BLE001
            with self.lock:
                self.errors.append(f"conn {cid}: {e!r}")
        finally:
            try:
                sock.close()
            except OSError:
                pass
            self._unregister(cid)

    def _serve_h1(self, pipe):
        ps = _PipeSock(pipe)
        reader = _QuietReader(ps, self)
        while True:
            try:
                head = reader.read_head()
            except ProtocolError as e:
                self._protocol_error(str(e))
                return
            if head is None:
                return
            method, target, version, headers = _parse_head(head)
            lower = {k.lower(): v for k, v in headers}
            if lower.get("expect", "").lower() == "100-continue":
                ps.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            if "chunked" in lower.get("transfer-encoding", "").lower():
                body = self._read_chunked(reader)
            else:
                body = reader.read_exact(int(lower.get("content-length", "0") or 0))
            is_ws = (lower.get("upgrade", "").lower() == "websocket" and self.websocket)
            req = Request("h1", method, target, headers, body, authority=lower.get("host", ""),
                          websocket=is_ws)
            if is_ws:
                req.problem = self.check.problem(req) if self.check else ""
                with self.lock:
                    self.requests.append(req)
                    self.cond.notify_all()
                if req.problem:
                    self._send_h1(ps, method, Response(401, [("content-type", "text/plain")],
                                                       b"invalid key\n"), False)
                    return
                accept = base64.b64encode(hashlib.sha1(
                    (lower.get("sec-websocket-key", "") + WS_GUID).encode()).digest()).decode()
                extra = ""
                proto = lower.get("sec-websocket-protocol")
                if proto:
                    extra = f"Sec-WebSocket-Protocol: {proto.split(',')[0].strip()}\r\n"
                ps.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                            f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
                            ).encode())
                self._ws_echo(ps, reader)
                return
            resp = self._dispatch(req)
            conn = lower.get("connection", "").lower()
            keep = "close" not in conn and version == "HTTP/1.1"
            self._send_h1(ps, method, resp, keep)
            if not keep:
                return

    @staticmethod
    def _read_chunked(reader):
        out = []
        while True:
            line = reader.readline()
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while reader.readline() != b"":
                    pass
                return b"".join(out)
            out.append(reader.read_exact(size))
            reader.read_exact(2)

    @staticmethod
    def _send_h1(ps, method, resp, keep):
        head = [(k, str(v)) for k, v in resp.headers
                if k.lower() not in ("connection", "transfer-encoding", "content-length")]
        chunked = isinstance(resp.body, list)
        no_body = resp.status in (204, 304)
        if chunked and not no_body:
            head.append(("Transfer-Encoding", "chunked"))
        elif not no_body:
            head.append(("Content-Length", str(len(resp.body))))
        if not keep:
            head.append(("Connection", "close"))
        data = f"HTTP/1.1 {resp.status} {_reason(resp.status)}\r\n".encode()
        data += b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in head) + b"\r\n"
        if method != "HEAD" and not no_body:
            if chunked:
                data += b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in resp.body if c)
                data += b"0\r\n\r\n"
            else:
                data += resp.body
        ps.sendall(data)

    def _ws_echo(self, ps, reader):
        """Echoes text and binary messages; answers ping and close."""
        while True:
            b0, b1 = reader.read_exact(2, "ws frame")
            op, masked, n = b0 & 0x0F, b1 & 0x80, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", reader.read_exact(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", reader.read_exact(8))[0]
            if n > (16 << 20):
                raise ProtocolError("ws frame too large")
            mask = reader.read_exact(4) if masked else b"\0\0\0\0"
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(reader.read_exact(n)))
            if op in (1, 2):
                with self.lock:
                    self.ws_messages.append((op, payload))
                ps.sendall(_ws_frame(op, payload))
            elif op == 9:
                ps.sendall(_ws_frame(10, payload))
            elif op == 8:
                ps.sendall(_ws_frame(8, payload[:2]))
                return


def _ws_frame(op, payload):
    n = len(payload)
    if n < 126:
        hdr = struct.pack("!BB", 0x80 | op, n)
    elif n < 65536:
        hdr = struct.pack("!BBH", 0x80 | op, 126, n)
    else:
        hdr = struct.pack("!BBQ", 0x80 | op, 127, n)
    return hdr + payload


# --------------------------------------------------------------------------
# The stack: origins + daemon + clients
# --------------------------------------------------------------------------

def make_compat_ca(directory):
    """A CA and one leaf for ORIGIN_DNS_NAMES; returns (ca_pem, leaf_pem, leaf_key)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca = certs.make_ca("agentvault compat CA", directory, "compat-ca")
    leaf = certs.issue(ca, ORIGIN_DNS_NAMES, ["127.0.0.1"], directory, "compat-origin")
    return ca.cert_path, leaf.cert_path, leaf.key_path


@dataclass
class Origin:
    """A FakeOrigin plus what the daemon config needs for it."""
    name: str
    host: str
    key: str
    env_var: str
    auth: str
    server: FakeOrigin
    service: bool = True          # write a [service] for it
    gateway: bool = True          # write a [gateway] for it
    service_extra: str = ""       # extra lines in its [service]


@dataclass
class ClientResult:
    argv: list
    returncode: int
    stdout: str
    stderr: str

    def check(self):
        assert self.returncode == 0, (f"{' '.join(map(str, self.argv))} exited "
                                      f"{self.returncode}\n--- stdout ---\n{self.stdout[-4000:]}"
                                      f"\n--- stderr ---\n{self.stderr[-4000:]}")
        return self


class Stack:
    """Built by the `stack` fixture. add_origin() first, then start()."""

    def __init__(self, workdir, ca):
        self.work = Path(workdir)
        self.ca_pem, self.leaf_pem, self.leaf_key = ca
        self.origins = {}
        self.daemon = None
        self.outputs = []           # everything clients printed (leak check)
        self.home = self.work / "client-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self._audit_seen = 0

    # -- set-up ----------------------------------------------------------------
    def add_origin(self, name, *, host=None, auth="bearer", accept=None, app=None,
                   alpn=("h2", "http/1.1"), websocket=True, service=True, gateway=True,
                   service_extra="", key=None, env_var=None):
        """Starts a FakeOrigin at NAME.compat.test (or `host`) whose key is a
        fresh random secret given to the daemon as $COMPAT_<NAME>_KEY, with a
        [service] using `auth` and a [gateway "NAME"] to it. `accept`
        overrides the accepted credential headers (default: from `auth`)."""
        assert self.daemon is None, "add origins before start()"
        host = host or f"{name}.compat.test"
        key = key or f"sk-real-{name}-" + _secrets.token_hex(16)
        env_var = env_var or "COMPAT_" + name.upper().replace("-", "_") + "_KEY"
        check = KeyCheck(key, accept if accept is not None else auth_accept(auth, key))
        srv = FakeOrigin(name, host, self.leaf_pem, self.leaf_key, check, app, alpn,
                         websocket).start()
        o = Origin(name, host, key, env_var, auth, srv, service, gateway, service_extra)
        self.origins[name] = o
        return o

    def new_key(self, name):
        """A fresh random key for origin NAME (for add_external_origin)."""
        return f"sk-real-{name}-" + _secrets.token_hex(16)

    def add_external_origin(self, name, server, key, *, host=None, auth="bearer",
                            service=True, gateway=True, service_extra="", env_var=None):
        """Like add_origin for a server of the test's own (e.g. a grpcio
        server): it must have .port (TLS on 127.0.0.1), .stop() and
        .assert_all_keyed(at_least); the test started it with `key`."""
        assert self.daemon is None, "add origins before start()"
        host = host or f"{name}.compat.test"
        env_var = env_var or "COMPAT_" + name.upper().replace("-", "_") + "_KEY"
        o = Origin(name, host, key, env_var, auth, server, service, gateway, service_extra)
        self.origins[name] = o
        return o

    def config_text(self, extra=""):
        lines = ["[proxy]", "unmatched = deny", f"audit = {self.work / 'audit.jsonl'}", ""]
        for o in self.origins.values():
            if o.service:
                lines += [f'[service "{o.name}"]', f"host = {o.host}", f"auth = {o.auth}",
                          f"secret = env:{o.env_var}"]
                if o.service_extra:
                    lines.append(o.service_extra.strip("\n"))
                lines.append("")
            if o.gateway:
                lines += [f'[gateway "{o.name}"]', "listen = 127.0.0.1:0",
                          f"upstream = https://{o.host}", ""]
        if extra:
            lines.append(extra.strip("\n"))
        return "\n".join(lines) + "\n"

    def start(self, extra_config="", config=None, env=None, args=()):
        """Starts the daemon (config: default config_text(extra_config);
        config=False: no -c, the embedded default, whose services come from
        the origins' env_var names: OPENAI_API_KEY, ANTHROPIC_API_KEY,
        GITHUB_TOKEN)."""
        binary = avd.require_binary()
        dwork = self.work / "daemon"
        dwork.mkdir(exist_ok=True)
        home = dwork / "home"
        home.mkdir(exist_ok=True)
        cmd = [str(binary), "serve"]
        if config is not False:
            conf = dwork / "agentvault.conf"
            conf.write_text(config if config is not None else self.config_text(extra_config))
            cmd += ["-c", str(conf)]
        self.state_dir = dwork / "state"
        cmd += ["--listen", "127.0.0.1:0",
               "--state-dir", str(self.state_dir), "--upstream-cacert", str(self.ca_pem),
               "--log-level", "debug"]
        for o in self.origins.values():
            cmd += ["--resolve", f"{o.host}:443:127.0.0.1:{o.server.port}"]
        cmd += list(args)
        denv = avd.base_env(home)
        denv.update({o.env_var: o.key for o in self.origins.values()})
        denv.update(env or {})
        secrets_ = _KeySecrets([o.key for o in self.origins.values()])
        self.daemon = avd.Daemon(cmd, denv, dwork, self.state_dir, secrets_, self.home)
        self.daemon.start()
        return self.daemon

    # -- clients -----------------------------------------------------------------
    @property
    def proxy_url(self):
        return self.daemon.proxy_url()

    def gateway_url(self, name):
        return f"http://127.0.0.1:{gw_port(self.daemon, name)}"

    def base_env(self, extra=None):
        """A minimal client environment (no proxy variables)."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
               "LANG": "C.UTF-8", "TMPDIR": str(self.work)}
        for k in ("GOCACHE", "GOPATH", "GOFLAGS", "NODE_PATH"):
            if k in os.environ:
                env[k] = os.environ[k]
        env.update(extra or {})
        return env

    def run_client(self, argv, *, env=None, cwd=None, timeout=CLIENT_TIMEOUT, input=None):
        """Runs argv directly (gateway mode, or a proxy env you set)."""
        try:
            p = subprocess.run([str(a) for a in argv], env=self.base_env(env), cwd=cwd,
                               input=input, capture_output=True, timeout=timeout, text=True,
                               errors="replace")
            res = ClientResult(list(argv), p.returncode, p.stdout, p.stderr)
        except subprocess.TimeoutExpired as e:
            res = ClientResult(list(argv), -1, _txt(e.stdout), _txt(e.stderr) +
                               f"\n(timed out after {timeout}s)")
        self.outputs.append(res.stdout + res.stderr)
        return res

    def run_proxied(self, argv, *, env=None, **kw):
        """Runs `agentvault run --proxy URL -- argv` (proxy mode)."""
        run = [str(avd.require_binary()), "run", "--proxy", self.proxy_url, "--"] + list(argv)
        return self.run_client(run, env=env, **kw)

    # -- matrix ------------------------------------------------------------------
    def audit_records(self):
        """The daemon's audit records; for a daemon without an audit log (the
        embedded default), the same fields from its exchange log lines."""
        p = self.work / "audit.jsonl"
        if p.exists():
            return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        if self.daemon is None:
            return []
        out = []
        for line in self.daemon.log_text().splitlines():
            m = EXCHANGE_RE.search(line)
            if m:
                out.append({"host": m.group(1), "proto": m.group(2)})
        return out

    @contextlib.contextmanager
    def case(self, client, mode, origin=None, note=""):
        """Records one matrix row for the block: pass when it raises nothing.
        The protocols come from the daemon's audit records written during the
        block ("proto": "AGENT>ORIGIN"), for `origin`'s host when given."""
        start = len(self.audit_records())
        info = {"note": note}
        ok = False
        try:
            yield info
            ok = True
        finally:
            agent, up = self.protos_since(start, origin)
            record(client, mode, ok, info.get("agent") or agent, info.get("origin") or up,
                   info.get("note", ""))

    def protos_since(self, start, origin=None):
        time.sleep(0.05)  # the audit record follows the response's last byte
        recs = self.audit_records()[start:]
        if origin is not None:
            recs = [r for r in recs if r.get("host", "").split(":")[0] == origin.host]
        ag = sorted({r["proto"].split(">")[0] for r in recs if ">" in r.get("proto", "")})
        up = sorted({r["proto"].split(">")[1] for r in recs if ">" in r.get("proto", "")} - {"-"})
        return "+".join(ag) or "-", "+".join(up) or "-"

    # -- teardown ----------------------------------------------------------------
    def close(self):
        problems = []
        d = self.daemon
        forbidden = []
        for o in self.origins.values():
            forbidden.append(o.key)
            forbidden += avd.base64_fragments(o.key, prefixes=[""] + [u + ":" for u in
                                                                     avd.BASIC_USERS])
        if d is not None and d.proc is not None:
            if d.failed_start:
                d.kill()
            else:
                rc = d.stop()
                if rc != 0:
                    problems.append(f"daemon exited {rc} after SIGTERM\n{d.log_dump()}")
            if avd.find_leaks(d.log_text(), forbidden):
                problems.append("a real key in the daemon's output")
            audit = self.work / "audit.jsonl"
            if audit.exists() and avd.find_leaks(audit.read_text(errors="replace"), forbidden):
                problems.append("a real key in the audit log")
        for out in self.outputs:
            if avd.find_leaks(out, forbidden):
                problems.append("a real key reached a client's output")
                break
        for o in self.origins.values():
            o.server.stop()
        return problems


class _KeySecrets:
    """What avtest.daemon.Daemon wants from a secrets object."""

    def __init__(self, values):
        self._values = values

    def values(self):
        return list(self._values)


def _txt(b):
    if b is None:
        return ""
    return b if isinstance(b, str) else b.decode("utf-8", "replace")


def which(prog):
    """Path of prog, or fail the test (a missing client is a failure)."""
    import pytest
    p = shutil.which(prog)
    if not p:
        pytest.fail(f"{prog} not found: install it (scripts/setup.sh)", pytrace=False)
    return p


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
