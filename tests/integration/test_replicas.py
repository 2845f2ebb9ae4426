"""Stateless replicas behind a load balancer, run the way deploy/ ships them.

Three daemons on 127.0.0.2-4 behind Debian's HAProxy (TCP mode, HTTP health
checks on the Deployment's probe path), a load of curl clients (HTTP/1.1
and HTTP/2 inside the MITM tunnel) through HAProxy; one replica gets
SIGTERM, then another SIGKILL, mid-load.

What the recipes say is what runs (avtest/deploy_files.py reads them):
the Dockerfile's ENTRYPOINT + CMD (tini, `agentvault serve ...`), its USER
(uid/gid 10001, no such user needed: setpriv), its HEALTHCHECK command, the
ConfigMap's agentvault.conf, and the Secret mounted the way Kubernetes
mounts a projected volume (files reached through the `..data` symbolic
link, 0440 root:10001 as fsGroup makes them). Host substitutions, and only
these: the built binary for /usr/bin/agentvault; temporary directories for
/etc/agentvault, /var/lib/agentvault (left root-owned: read-only to the
daemon) and /run/secrets/agentvault; 127.0.0.N and a free port for
0.0.0.0:14322; and, appended, --resolve and --upstream-cacert, so that
api.openai.com is a local origin. No container is built or run.
"""
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from avtest import daemon as avd
from avtest import deploy_files as df

REAL_KEY = "sk-replica-real-" + os.urandom(12).hex()
ORIGIN_DELAY = 0.4          # seconds each origin answer takes: requests are in flight
CHECK_INTER_MS = 500        # HAProxy health check interval; fall 2 -> DOWN within ~1 s
WORKERS = 6
PRIVILEGED = os.geteuid() == 0


# ---- the origin: api.openai.com on 127.0.0.1 --------------------------------

class _SlowHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        o = self.server.owner
        ok = self.headers.get_all("Authorization") == [f"Bearer {REAL_KEY}"]
        m = re.fullmatch(r"/v1/slow/(\d+)", self.path)
        with o.lock:
            o.requests += 1
            if not ok:
                o.bad_auth += 1
        time.sleep(ORIGIN_DELAY)
        body = f"ok {m.group(1)}\n".encode() if (m and ok) else b"bad request\n"
        self.send_response(200 if (m and ok) else 400)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _TLSServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        pass  # a replica killed mid-answer: its connections just end

    def finish_request(self, request, client_address):
        # the handshake on the connection's own thread, not the acceptor's
        try:
            request = self.owner.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        super().finish_request(request, client_address)


class SlowOrigin:
    def __init__(self, certfile, keyfile):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(certfile), str(keyfile))
        self.ctx.set_alpn_protocols(["http/1.1"])
        self.lock = threading.Lock()
        self.requests = 0
        self.bad_auth = 0
        self.srv = _TLSServer(("127.0.0.1", 0), _SlowHandler)
        self.srv.owner = self
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


# ---- the files a replica gets -------------------------------------------------

UID, GID = df.image().uid_gid


def _private_tree():
    """A directory uid 10001 can traverse (pytest's tmp_path is 0700 root)."""
    d = Path(tempfile.mkdtemp(prefix="av-replicas-"))
    d.chmod(0o755)
    return d


def _run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, **kw)


class SecretVolume:
    """A directory laid out like a Kubernetes Secret (projected) volume:
    NAME -> ..data/NAME, ..data -> ..<version>/, files 0440 root:GID. update()
    swaps ..data atomically, as the kubelet does."""

    def __init__(self, path):
        self.path = path
        path.mkdir(mode=0o755)
        self.version = 0

    def update(self, files):
        self.version += 1
        vdir = self.path / f"..2026_12_07_{self.version:02d}"
        vdir.mkdir(mode=0o755)
        for name, data in files.items():
            p = vdir / name
            p.write_bytes(data)
            os.chown(p, 0, GID)
            p.chmod(0o440)
        tmp = self.path / "..data_tmp"
        tmp.symlink_to(vdir.name)
        os.replace(tmp, self.path / "..data")
        for name in files:
            link = self.path / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")


def _make_ca_and_token(work, name="agent"):
    """ca.pem, ca.key and a token store with one token, as secret.yaml says
    to make them; returns (dir, token)."""
    gen = work / f"gen-{name}"
    binary = str(avd.require_binary())
    env = avd.base_env(work)
    r = _run([binary, "ca", "pem", "--state-dir", str(gen)], env=env)
    assert r.returncode == 0, r.stderr
    r = _run([binary, "token", "create", "--name", name, "--state-dir", str(gen)], env=env)
    assert r.returncode == 0, r.stderr
    return gen, r.stdout.strip()


def _token_store(work, name):
    """A token store holding one new token NAME; returns (bytes, token)."""
    gen = work / f"tok-{name}"
    r = _run([str(avd.require_binary()), "token", "create", "--name", name, "--state-dir", str(gen)],
             env=avd.base_env(work))
    assert r.returncode == 0, r.stderr
    return (gen / "tokens").read_bytes(), r.stdout.strip()


def _config_for(work, secrets_dir, state_dir):
    """The ConfigMap's agentvault.conf with the pod's paths mapped to ours."""
    text = df.k8s_config_text()
    text = text.replace("/run/secrets/agentvault", str(secrets_dir))
    text = text.replace("/var/lib/agentvault", str(state_dir))
    etc = work / "etc"
    etc.mkdir(mode=0o755, exist_ok=True)
    conf = etc / "agentvault.conf"
    conf.write_text(text)
    conf.chmod(0o644)
    return conf


def _free_port(addrs):
    for _ in range(200):
        port = random.randint(20000, 45000)
        socks = []
        try:
            for a in addrs:
                s = socket.socket()
                s.bind((a, port))
                socks.append(s)
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port")


# ---- a replica: the image's ENTRYPOINT + CMD as its USER -------------------

class Replica:
    def __init__(self, name, addr, port, conf, state_dir, origin_port, cacert, work):
        img = df.image()
        argv = list(img.entrypoint) + list(img.cmd)
        i = argv.index("agentvault")
        argv[i] = str(avd.require_binary())
        sub = {"/etc/agentvault/agentvault.conf": str(conf),
               "/var/lib/agentvault": str(state_dir),
               f"0.0.0.0:{img.port}": f"{addr}:{port}"}
        argv = [sub.get(a, a) for a in argv]
        for a in argv:
            assert not a.startswith(("/etc/", "/var/", "0.0.0.0")), f"unmapped recipe path {a}"
        argv += ["--resolve", f"api.openai.com:443:127.0.0.1:{origin_port}", "--upstream-cacert", str(cacert)]
        uid, gid = img.uid_gid
        self.argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"] + argv
        self.name, self.addr, self.port = name, addr, port
        env = avd.base_env(work)
        env["TINI_SUBREAPER"] = "1"  # what tini gets for free as a container's PID 1
        self.out, self.err = [], []
        self.proc = subprocess.Popen(self.argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._threads = [threading.Thread(target=self._pump, args=(s, sink), daemon=True)
                         for s, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._threads:
            t.start()

    def _pump(self, stream, sink):
        for raw in iter(stream.readline, b""):
            sink.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def wait_listening(self, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if any(f"listening on {self.addr}:{self.port}" in line for line in self.err):
                return
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not start (rc {self.proc.poll()})\n{self.dump()}")

    def daemon_pid(self):
        """The agentvault process under tini (a container's main process)."""
        kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        assert len(kids) == 1, kids
        return int(kids[0])

    def get(self, path):
        """GET |path| from the replica itself: (status, body)."""
        with socket.create_connection((self.addr, self.port), timeout=5) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {self.addr}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    def healthcheck(self):
        """The image's HEALTHCHECK command against this replica: its exit code."""
        img = df.image()
        cmd = [a.replace(f"127.0.0.1/{img.port}", f"{self.addr}/{self.port}") for a in img.healthcheck_cmd]
        assert cmd != img.healthcheck_cmd, "HEALTHCHECK does not name 127.0.0.1/PORT"
        return subprocess.run(cmd, timeout=float(img.healthcheck_options["timeout"].rstrip("s"))).returncode

    def wait(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            for t in self._threads:
                t.join(2)

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.kill(self.daemon_pid(), signal.SIGKILL)
            except (OSError, AssertionError, FileNotFoundError):
                pass
            self.proc.kill()
            self.proc.wait(5)

    def dump(self):
        return (f"--- {self.name}: {' '.join(self.argv)}\nstderr:\n" + "\n".join(self.err[-60:]) +
                "\nstdout (last 30):\n" + "\n".join(self.out[-30:]))


def _check_output(rep, forbidden):
    """stdout: one JSON object a line (logs and audit records); no secret in
    either stream; no sanitizer report."""
    for line in rep.out:
        obj = json.loads(line)
        assert isinstance(obj, dict) and ("level" in obj or "end" in obj), line
    text = "\n".join(rep.out + rep.err)
    assert not [f for f in forbidden if f in text], f"{rep.name}: a secret in its output"
    assert "Sanitizer" not in text and "runtime error:" not in text, rep.dump()


# ---- HAProxy ----------------------------------------------------------------

def _haproxy_config(path, front_port, replicas):
    probe = df.k8s_container()["readinessProbe"]["httpGet"]["path"]
    servers = "\n".join(f"    server {r.name} {r.addr}:{r.port}" for r in replicas)
    path.write_text(f"""global
    log stdout format raw local0
    maxconn 2000
defaults
    mode tcp
    log global
    option tcplog
    option redispatch
    retries 3
    timeout connect 1s
    timeout client 60s
    timeout server 60s
frontend vault_in
    bind 127.0.0.1:{front_port}
    default_backend vaults
backend vaults
    balance roundrobin
    option httpchk
    http-check send meth GET uri {probe} ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
    default-server check inter {CHECK_INTER_MS}ms fall 2 rise 2
{servers}
""")


class HAProxy:
    def __init__(self, cfg):
        r = _run(["haproxy", "-c", "-f", str(cfg)])
        assert r.returncode == 0, r.stdout + r.stderr
        self.lines = []
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self):
        for raw in iter(self.proc.stdout.readline, b""):
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def wait_listening(self, port):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                assert self.proc.poll() is None, "haproxy exited:\n" + "\n".join(self.lines)
                time.sleep(0.05)
        raise AssertionError("haproxy does not listen:\n" + "\n".join(self.lines))

    def servers_by_client_port(self):
        """From the TCP log: client port -> the server the session went to."""
        out = {}
        for line in self.lines:
            m = re.match(r"127\.0\.0\.1:(\d+) \[[^\]]+\] vault_in vaults/(\S+) ", line)
            if m:
                out.setdefault(int(m.group(1)), []).append(m.group(2))
        return out

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._t.join(2)


# ---- the load -----------------------------------------------------------------

class Load:
    """WORKERS threads, each running curl requests one after another through
    HAProxy, alternating HTTP/1.1 and HTTP/2 inside the tunnel; a failed
    request is retried (at most 5 times) before the next."""

    def __init__(self, front_port, token, cacert, home):
        self.front, self.token, self.cacert, self.home = front_port, token, cacert, home
        self.attempts = []   # dicts: id, proto, start, end, ok, code, port, stderr
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ids = iter(range(1, 10 ** 6))
        self.threads = [threading.Thread(target=self._worker, args=(i,), daemon=True) for i in range(WORKERS)]

    def start(self):
        for t in self.threads:
            t.start()

    def _one(self, rid, proto):
        start = time.monotonic()
        r = subprocess.run(
            ["curl", "-q", "-sS", proto, "--max-time", "20", "-o", "-", "-w", "\n%{http_code} %{local_port}",
             "-x", f"http://agent:{self.token}@127.0.0.1:{self.front}", "--cacert", str(self.cacert),
             f"https://api.openai.com/v1/slow/{rid}"],
            capture_output=True, text=True, env={"HOME": str(self.home), "PATH": "/usr/bin:/bin"}, timeout=30)
        end = time.monotonic()
        body, _, tail = r.stdout.rpartition("\n")
        code, _, port = tail.partition(" ")
        ok = r.returncode == 0 and code == "200" and body == f"ok {rid}\n"
        return {"id": rid, "proto": proto, "start": start, "end": end, "ok": ok, "code": code,
                "port": int(port) if port.isdigit() else 0, "stderr": r.stderr.strip()}

    def _worker(self, i):
        n = 0
        while not self.stop.is_set():
            with self.lock:
                rid = next(self.ids)
            proto = "--http2" if (i + n) % 2 else "--http1.1"
            n += 1
            for _ in range(6):
                a = self._one(rid, proto)
                with self.lock:
                    self.attempts.append(a)
                if a["ok"]:
                    break
                time.sleep(0.2)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(60)
        assert not any(t.is_alive() for t in self.threads), "a load worker hangs"


# ---- the test -------------------------------------------------------------------

@pytest.fixture
def replica_env(test_ca):
    assert PRIVILEGED, "the replica tests run the daemons as uid 10001 (setpriv): run them as root"
    for tool in ("haproxy", "tini", "setpriv", "curl"):
        assert shutil.which(tool), f"{tool} is not installed (scripts/setup.sh installs it)"
    work = _private_tree()
    origin = SlowOrigin(test_ca.server_cert, test_ca.server_key)
    # the origin's CA where uid 10001 can read it (pytest's tmp is 0700)
    origin.cacert = work / "origin-ca.pem"
    shutil.copy(test_ca.ca_pem, origin.cacert)
    origin.cacert.chmod(0o644)
    started = []
    yield work, origin, started
    for x in started:
        (x.kill if isinstance(x, Replica) else x.stop)()
    origin.stop()
    shutil.rmtree(work, ignore_errors=True)


def test_three_replicas_behind_haproxy_sigterm_then_sigkill(replica_env, test_ca):
    work, origin, started = replica_env
    gen, token = _make_ca_and_token(work)
    ca_pem = (gen / "ca.pem").read_bytes()
    secrets = SecretVolume(work / "secrets")
    secrets.update({"ca.pem": ca_pem, "ca.key": (gen / "ca.key").read_bytes(),
                    "tokens": (gen / "tokens").read_bytes(), "openai-api-key": REAL_KEY.encode() + b"\n"})
    state = work / "state"          # root-owned 0755: read-only to the daemons
    state.mkdir(mode=0o755)
    conf = _config_for(work, secrets.path, state)
    delay, timeout = df.drain_seconds(conf.read_text())
    assert delay * 1000 > 2 * CHECK_INTER_MS, "drain_delay must outlast HAProxy's fall x inter"

    addrs = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    port = _free_port(addrs)
    reps = [Replica(f"r{i + 1}", a, port, conf, state, origin.port, origin.cacert, work)
            for i, a in enumerate(addrs)]
    started += reps
    for r in reps:
        r.wait_listening()
    # Every replica serves the root of the Secret, healthy.
    for r in reps:
        assert r.get("/ca.pem") == (200, ca_pem), r.name
        assert r.get("/healthz") == (200, b"ok\n"), r.name
        assert r.healthcheck() == 0, f"{r.name}: the image's HEALTHCHECK fails on a healthy replica"

    front = _free_port(["127.0.0.1"])
    cfg = work / "haproxy.cfg"
    _haproxy_config(cfg, front, reps)
    hap = HAProxy(cfg)
    started.append(hap)
    hap.wait_listening(front)
    home = work / "home"
    home.mkdir()
    load = Load(front, token, work / "secrets" / "ca.pem", home)
    load.start()
    time.sleep(2.0)

    # SIGTERM r1 (to tini, as `docker stop` / the kubelet do): /healthz
    # turns 503 while it still accepts, HAProxy takes it out, it drains.
    r1, r2, r3 = reps
    t_term = time.monotonic()
    r1.proc.send_signal(signal.SIGTERM)
    deadline = t_term + 1.5   # well inside drain_delay: the listener must still accept
    while r1.get("/healthz") != (503, b"draining\n"):
        assert time.monotonic() < deadline, f"/healthz still 200 after SIGTERM\n{r1.dump()}"
        time.sleep(0.05)
    assert r1.healthcheck() != 0, "the image's HEALTHCHECK passes on a draining replica"
    assert r3.healthcheck() == 0
    rc = r1.wait(delay + timeout + 10)
    t_r1_gone = time.monotonic()
    assert rc == 0, f"r1 exited {rc} after SIGTERM\n{r1.dump()}"
    assert t_r1_gone - t_term >= delay - 0.2, "r1 closed its listener before drain_delay"
    time.sleep(1.0)

    # SIGKILL r2's daemon mid-load.
    t_kill = time.monotonic()
    os.kill(r2.daemon_pid(), signal.SIGKILL)
    r2.wait(10)
    time.sleep(3.0)
    load.finish()
    hap.stop()

    attempts = load.attempts
    by_port = hap.servers_by_client_port()
    failed = [a for a in attempts if not a["ok"]]
    ids = {a["id"] for a in attempts}
    done = {a["id"] for a in attempts if a["ok"]}
    report = (f"{len(attempts)} attempts, {len(failed)} failed:\n" +
              "\n".join(f"  id {a['id']} {a['proto']} {a['start'] - t_kill:+.2f}..{a['end'] - t_kill:+.2f}s "
                        f"code {a['code']} port {a['port']} -> {by_port.get(a['port'])}: {a['stderr']}"
                        for a in failed[:20]) +
              f"\nhaproxy:\n" + "\n".join(l for l in hap.lines if "vault_in" not in l)[-3000:])
    assert len(attempts) >= 40, report
    # The SIGKILL did cut requests short (else this proves nothing).
    assert failed, report
    # After a SIGTERM no request fails: every failure is one of r2's
    # in-flight requests at the SIGKILL ...
    for a in failed:
        assert a["start"] <= t_kill <= a["end"], report
        assert by_port.get(a["port"]) == ["r2"], report
    # ... and the clients' retries succeed.
    assert ids == done, report
    assert origin.bad_auth == 0
    # Each replica served requests through HAProxy, all with the one root
    # (every client trusted only the Secret's ca.pem), HTTP/1.1 and HTTP/2.
    served = {s for a in attempts if a["ok"] for s in by_port.get(a["port"], [])}
    assert served == {"r1", "r2", "r3"}, served
    assert {a["proto"] for a in attempts if a["ok"]} == {"--http1.1", "--http2"}
    assert r3.get("/ca.pem") == (200, ca_pem)
    # The read-only state directory stayed empty.
    assert list(state.iterdir()) == []
    # JSON logs and audit records on stdout, no secret anywhere.
    forbidden = [REAL_KEY, token]
    for r in reps:
        _check_output(r, forbidden)
        audits = [json.loads(l) for l in r.out if '"end"' in l]
        assert any(x["end"] == "complete" and x["status"] == 200 for x in audits), r.dump()
    assert any("shutting down" in json.loads(l).get("msg", "") for l in r1.out), r1.dump()
    r3.proc.send_signal(signal.SIGINT)   # SIGINT: no drain_delay
    t = time.monotonic()
    assert r3.wait(timeout + 5) == 0, r3.dump()
    assert time.monotonic() - t < delay, "SIGINT waited for drain_delay"
    _check_output(r3, forbidden)


def test_tokens_file_follows_the_secret(replica_env, test_ca):
    """tokens_file is re-read within about a second of the kubelet swapping
    the Secret's ..data link; a bad version keeps the tokens in force (one
    error), a SIGHUP re-reads it too, and a good version replaces them."""
    work, origin, started = replica_env
    gen, token1 = _make_ca_and_token(work)
    store2, token2 = _token_store(work, "agent2")
    secrets = SecretVolume(work / "secrets")
    base = {"ca.pem": (gen / "ca.pem").read_bytes(), "ca.key": (gen / "ca.key").read_bytes(),
            "openai-api-key": REAL_KEY.encode()}
    secrets.update({**base, "tokens": (gen / "tokens").read_bytes()})
    state = work / "state"
    state.mkdir(mode=0o755)
    conf = _config_for(work, secrets.path, state)
    port = _free_port(["127.0.0.2"])
    rep = Replica("t1", "127.0.0.2", port, conf, state, origin.port, origin.cacert, work)
    started.append(rep)
    rep.wait_listening()
    home = work / "home"
    home.mkdir()

    def status(tok):
        r = subprocess.run(["curl", "-q", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                            "-x", f"http://agent:{tok}@127.0.0.2:{port}", "http://unmatched.test/"],
                           capture_output=True, text=True, env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
        return r.stdout

    def eventually(tok, want, within=4.0):
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if status(tok) == want:
                return
            time.sleep(0.1)
        raise AssertionError(f"token still answers {status(tok)}, expected {want}\n{rep.dump()}")

    # unmatched = deny: a valid token gets 403 for an unknown host, a bad one 407.
    assert status(token1) == "403" and status(token2) == "407"
    secrets.update({**base, "tokens": (gen / "tokens").read_bytes() + store2})
    eventually(token2, "403")
    assert status(token1) == "403"
    errors_before = sum("reload failed" in l for l in rep.out)
    secrets.update({**base, "tokens": b"agent3\tnot-a-hash\n"})
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline and sum("reload failed" in l for l in rep.out) == errors_before:
        time.sleep(0.1)
    time.sleep(1.5)  # more polls of the same bad version: no more errors
    fails = [l for l in rep.out if "reload failed" in l][errors_before:]
    assert len(fails) == 1 and "malformed token line" in fails[0], rep.dump()
    assert status(token2) == "403" and status(token1) == "403"   # kept
    rep.proc.send_signal(signal.SIGHUP)   # to tini, which forwards it
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline and len([l for l in rep.out if "reload failed" in l]) < errors_before + 2:
        time.sleep(0.1)
    assert len([l for l in rep.out if "reload failed" in l]) == errors_before + 2, rep.dump()
    assert status(token2) == "403"
    secrets.update({**base, "tokens": store2})   # token1 revoked
    eventually(token1, "407")
    assert status(token2) == "403"
    rep.proc.send_signal(signal.SIGTERM)
    assert rep.wait(30) == 0, rep.dump()
    _check_output(rep, [REAL_KEY, token1, token2])
    assert list(state.iterdir()) == []


def test_read_only_state_dir(replica_env, test_ca):
    """Without ca_cert/ca_key the root comes from the state directory: a
    read-only one without a CA fails the start with one clear line; with
    ca.pem and ca.key in it the daemon starts and writes nothing."""
    work, origin, started = replica_env
    gen, token = _make_ca_and_token(work)
    secrets = SecretVolume(work / "secrets")
    secrets.update({"tokens": (gen / "tokens").read_bytes(), "openai-api-key": REAL_KEY.encode()})
    state = work / "state"
    state.mkdir(mode=0o755)
    conf = _config_for(work, secrets.path, state)
    text = "\n".join(l for l in conf.read_text().splitlines() if not l.startswith(("ca_cert", "ca_key")))
    conf.write_text(text + "\n")
    port = _free_port(["127.0.0.2"])
    rep = Replica("ro1", "127.0.0.2", port, conf, state, origin.port, origin.cacert, work)
    started.append(rep)
    assert rep.wait(15) == 1, rep.dump()
    msg = [l for l in rep.err if l.startswith("agentvault: state directory")]
    assert msg == [f"agentvault: state directory {state} is not writable (Permission denied) and holds no "
                   f"CA: copy ca.pem and ca.key there, or set [proxy] ca_cert and ca_key"], rep.dump()
    assert list(state.iterdir()) == []

    shutil.copy(gen / "ca.pem", state / "ca.pem")
    shutil.copy(gen / "ca.key", state / "ca.key")
    os.chown(state / "ca.key", UID, GID)
    (state / "ca.key").chmod(0o600)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in state.iterdir())
    rep = Replica("ro2", "127.0.0.2", port, conf, state, origin.port, origin.cacert, work)
    started.append(rep)
    rep.wait_listening()
    assert rep.get("/ca.pem") == (200, (gen / "ca.pem").read_bytes())
    rep.proc.send_signal(signal.SIGINT)
    assert rep.wait(15) == 0, rep.dump()
    assert sorted((p.name, p.stat().st_mtime_ns) for p in state.iterdir()) == before


def test_read_only_state_dir_and_decide_ask(replica_env, test_ca):
    """The control socket of decide = ask lives in the state directory: a
    read-only one starts without it (one notice line) unless a service asks
    a person, which fails the start; a reload that adds decide = ask fails
    with a reason and the daemon keeps its configuration."""
    work, origin, started = replica_env
    gen, token = _make_ca_and_token(work)
    secrets = SecretVolume(work / "secrets")
    secrets.update({"ca.pem": (gen / "ca.pem").read_bytes(), "ca.key": (gen / "ca.key").read_bytes(),
                    "tokens": (gen / "tokens").read_bytes(), "openai-api-key": REAL_KEY.encode()})
    state = work / "state"
    state.mkdir(mode=0o755)
    conf = _config_for(work, secrets.path, state)
    base = conf.read_text()
    ask = base + '\n[service "held"]\nhost = held.example\nauth = bearer\nsecret = env:HOME\ndecide = ask\n'
    port = _free_port(["127.0.0.2"])
    conf.write_text(ask)
    rep = Replica("a1", "127.0.0.2", port, conf, state, origin.port, origin.cacert, work)
    started.append(rep)
    assert rep.wait(15) == 1, rep.dump()
    assert rep.err[-1] == f"agentvault: control socket {state}/control.sock: Permission denied", rep.dump()

    conf.write_text(base)
    rep = Replica("a2", "127.0.0.2", port, conf, state, origin.port, origin.cacert, work)
    started.append(rep)
    rep.wait_listening()
    assert (f"agentvault: no control socket: the state directory {state} is not writable "
            "(decide = ask cannot be used)") in rep.err, rep.dump()
    conf.write_text(ask)
    rep.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any("reload failed" in l for l in rep.out):
        time.sleep(0.05)
    fails = [l for l in rep.out if "reload failed" in l]
    assert len(fails) == 1 and "decide = ask needs the control socket" in fails[0], rep.dump()
    assert rep.get("/healthz")[0] == 200
    assert list(state.iterdir()) == []
    rep.proc.send_signal(signal.SIGINT)
    assert rep.wait(15) == 0, rep.dump()


def test_ca_key_reference_too_open(replica_env, test_ca):
    """A ca_key file others can read fails the start with one clear line
    (0440, what fsGroup gives a Secret file, is accepted: the tests above)."""
    work, origin, started = replica_env
    gen, token = _make_ca_and_token(work)
    secrets = SecretVolume(work / "secrets")
    secrets.update({"ca.pem": (gen / "ca.pem").read_bytes(), "ca.key": (gen / "ca.key").read_bytes(),
                    "tokens": (gen / "tokens").read_bytes(), "openai-api-key": REAL_KEY.encode()})
    key = (secrets.path / "..data" / "ca.key").resolve()
    key.chmod(0o444)
    state = work / "state"
    state.mkdir(mode=0o755)
    conf = _config_for(work, secrets.path, state)
    rep = Replica("k1", "127.0.0.2", _free_port(["127.0.0.2"]), conf, state, origin.port, origin.cacert, work)
    started.append(rep)
    assert rep.wait(15) == 1, rep.dump()
    assert rep.err[-1] == (f"agentvault: [proxy] ca_key: {secrets.path}/ca.key: permissions 0444 are too open: "
                           "the CA key must not be readable by others nor writable by group or others "
                           "(chmod 0400 or 0440)"), rep.dump()
    assert (gen / "ca.key").read_bytes().decode() not in "\n".join(rep.err + rep.out)


def test_ca_pem_command_prints_ca_cert(replica_env):
    """`agentvault ca pem -c` with the ConfigMap's configuration prints the
    Secret's root and leaves the (read-only) state directory alone."""
    work, origin, started = replica_env
    gen, token = _make_ca_and_token(work)
    secrets = SecretVolume(work / "secrets")
    secrets.update({"ca.pem": (gen / "ca.pem").read_bytes(), "ca.key": (gen / "ca.key").read_bytes(),
                    "tokens": (gen / "tokens").read_bytes(), "openai-api-key": REAL_KEY.encode()})
    state = work / "state"
    state.mkdir(mode=0o755)
    conf = _config_for(work, secrets.path, state)
    r = _run(["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups", str(avd.require_binary()),
              "ca", "pem", "-c", str(conf)], env=avd.base_env(work))
    assert r.returncode == 0 and r.stdout == (gen / "ca.pem").read_text(), r.stderr
    assert list(state.iterdir()) == []
