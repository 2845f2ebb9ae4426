#!/usr/bin/env python3
"""Benchmark harness for agentvault (issue 7).

Runs every scenario against a direct (no proxy) baseline, agentvault and
mitmproxy (mitmdump + bench/mitm_inject.py), alternating the targets within
each repetition, on 127.0.0.1.  Prints a table of medians and the
agentvault/mitmproxy ratio, and writes bench/results-<timestamp>.json.

  bench/run.py                 full run (3 repetitions, ~5 s per measurement)
  bench/run.py --smoke         every scenario very briefly; exit 0 iff all ran
  bench/run.py --reps 5 --duration 10 --only keepalive,newconn
  bench/run.py --targets direct,agentvault
  bench/run.py --agentvault /tmp/bench-build/daemon/agentvault   (or AGENTVAULT=path)
  bench/run.py --baseline /tmp/main-build/daemon/agentvault  (before/after in one run: av/base)

Pinning (on a machine with >= 2 cores): the proxy under test runs under
`taskset -c 1`, the load client and the origins under `taskset -c 0`.

Results are measurements, not tests: nothing here compares against a
threshold.  See bench/README.md.
"""
import argparse
import ctypes
import datetime
import http.client
import glob
import json
import os
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SECRET = "benchkey"
TARGETS = ["direct", "agentvault", "mitmproxy"]
SCENARIOS = ["idle", "keepalive", "newconn", "resumed", "upclose", "upclosenx", "newhost", "sse",
             "ws", "wsz", "h2"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
AGENTVAULT_BIN = os.environ.get("AGENTVAULT", f"{ROOT}/build/daemon/agentvault")
# --baseline PATH: a second agentvault binary (say, a build of main before a
# change) measured in the same run as target "baseline".
BASELINE_BIN = None
# --callgrind: the agentvault targets run under valgrind's callgrind, which
# counts the instructions they execute during each measurement ("proxy Ir
# per op"): repeatable on a shared, noisy machine where CPU time is not.
CALLGRIND = False
CALLGRIND_WARMUP = 4.0


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes
#
# Nothing may outlive the run, whatever ends it: every child runs in its own
# process group (stop() signals the whole group, e.g. nginx's worker too),
# gets SIGTERM from the kernel if this process dies (PR_SET_PDEATHSIG: even a
# SIGKILL of run.py cleans up), and SIGTERM/SIGINT/SIGHUP and the --smoke time
# budget (SIGALRM) raise Abort, which unwinds through the finally blocks that
# stop everything and still write the JSON.

class Abort(BaseException):
    """A signal or the time budget ended the run (not caught per scenario)."""


_aborted = []
_children = []   # every Popen started through spawn(), for the last sweep
_PARENT = os.getpid()
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:
    _libc = None


def _on_signal(signum, frame):
    if _aborted:        # already unwinding: do not interrupt the clean-up
        return
    why = ("time budget exceeded" if signum == signal.SIGALRM
           else "killed by " + signal.Signals(signum).name)
    _aborted.append(why)
    raise Abort(why)


def _child_setup():
    # runs in the child between fork and exec; setsid via start_new_session
    if _libc is not None:
        _libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != _PARENT:   # the parent died before prctl
        os._exit(1)


def spawn(cmd, **kw):
    """Popen for everything the harness starts (see above)."""
    p = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_child_setup, **kw)
    _children.append(p)
    return p


def run_child(cmd, timeout, env=None):
    """subprocess.run(capture_output=True, text=True) through spawn(); kills
    the child's group on timeout or any exception (Abort included)."""
    p = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        stop(p, term_wait=0)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def pin(core):
    """Command prefix pinning to |core| when the machine has two cores."""
    if os.cpu_count() and os.cpu_count() >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(core)]
    return []


def cpuidle_driver():
    """The kernel's cpuidle driver ("haltpoll" in a KVM guest that polls
    before halting a vCPU), or ""."""
    try:
        with open("/sys/devices/system/cpu/cpuidle/current_driver") as f:
            return f.read().strip()
    except OSError:
        return ""


def wait_port(port, timeout=20.0, proc=None):
    t = time.time() + timeout
    while time.time() < t:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d did not open" % port)


def https_status(port, host, cafile, auth=True, timeout=2.0):
    """Status of GET / over HTTPS/1.1 to 127.0.0.1:|port| with SNI |host|,
    verified against |cafile|."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: %s\r\n%sConnection: close\r\n\r\n"
                      % (host.encode(), b"Authorization: Bearer %s\r\n" % SECRET.encode()
                         if auth else b""))
            head = b""
            while b"\r\n" not in head:
                b = s.recv(4096)
                if not b:
                    break
                head += b
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.") else None


def check_until(what, probe, want, procs, timeout=20.0):
    """Wait until probe() returns |want|: the origin is up, and really ours
    (a port stolen by another process, or an nginx still retrying bind()
    before giving up, answers something else or nothing)."""
    t = time.time() + timeout
    got = None
    while True:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: process exited with {p.returncode}")
        try:
            got = probe()
            if got == want:
                return
        except (OSError, ValueError, IndexError) as e:
            got = f"{type(e).__name__}: {e}"
        if time.time() > t:
            raise RuntimeError(f"{what}: expected {want}, got {got}")
        time.sleep(0.1)


def connect_status(port, host="bench.test", timeout=5.0):
    """Status of the answer of the proxy at 127.0.0.1:|port| to CONNECT."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"CONNECT %s:443 HTTP/1.1\r\nHost: %s:443\r\n\r\n" % ((host.encode(),) * 2))
        head = b""
        while b"\r\n" not in head:
            b = s.recv(4096)
            if not b:
                break
            head += b
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.") else None


def cpu_seconds(pid):
    """CPU time of the process: the sum of its threads' schedstat run time
    (nanosecond resolution; /proc/PID/stat utime+stime has only clock-tick
    resolution, too coarse for --smoke).  Falls back to utime+stime."""
    total = 0
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        if total:
            return total / 1e9
    except OSError:
        pass
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tail(path, n=600):
    """The last |n| characters of a log file, on one line ("" if none)."""
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read()[-n:].strip().splitlines())
    except OSError:
        return ""


def read_from(path, off):
    try:
        with open(path, errors="replace") as f:
            f.seek(off)
            return f.read()
    except OSError:
        return ""


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    return 0


def _killpg(proc, sig):
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(proc, term_wait=10):
    """SIGTERM to the process group of |proc| (started by spawn()), SIGKILL
    after |term_wait| s; then SIGKILL whatever is left in the group."""
    if not proc:
        return
    if proc.poll() is None:
        _killpg(proc, signal.SIGTERM if term_wait else signal.SIGKILL)
        try:
            proc.wait(term_wait or 10)
        except subprocess.TimeoutExpired:
            _killpg(proc, signal.SIGKILL)
            proc.wait()
    # the leader is gone; members it left behind (an nginx worker) are not
    _killpg(proc, signal.SIGKILL)
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f:
            try:
                f.close()
            except OSError:
                pass


# ---------------------------------------------------------------- setup

def gen_certs(wd):
    def ossl(*a):
        subprocess.run(["openssl", *a], check=True, capture_output=True)
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", f"{wd}/origin-ca.key", "-out", f"{wd}/origin-ca.pem", "-days", "30",
         "-subj", "/CN=avbench origin CA")
    ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", f"{wd}/origin.key", "-out", f"{wd}/origin.csr", "-subj", "/CN=bench.test")
    with open(f"{wd}/ext.cnf", "w") as f:
        f.write("subjectAltName=DNS:bench.test,DNS:*.bench.test\n"
                "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    ossl("x509", "-req", "-in", f"{wd}/origin.csr", "-CA", f"{wd}/origin-ca.pem",
         "-CAkey", f"{wd}/origin-ca.key", "-CAcreateserial", "-days", "30",
         "-extfile", f"{wd}/ext.cnf", "-out", f"{wd}/origin.pem")


def build_avload(wd):
    out = f"{wd}/avload"
    cc = os.environ.get("CC", "cc")
    cp = run_child([cc, "-O2", "-Wall", "-Wno-format-truncation", "-o", out,
                    f"{HERE}/avload.c", "-lssl", "-lcrypto", "-lnghttp2"], timeout=120)
    if cp.returncode:
        raise RuntimeError("building avload failed: " + (cp.stdout + cp.stderr)[-500:])
    return out


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {wd}/nginx.pid;
error_log {wd}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {wd}/nginx-tmp;
    proxy_temp_path {wd}/nginx-tmp;
    fastcgi_temp_path {wd}/nginx-tmp;
    uwsgi_temp_path {wd}/nginx-tmp;
    scgi_temp_path {wd}/nginx-tmp;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        server_name bench.test *.bench.test;
        ssl_certificate {wd}/origin.pem;
        ssl_certificate_key {wd}/origin.key;
        # TLS 1.3 tickets (random keys of nginx's own): the direct target
        # of the resumed scenario resumes with nginx
        ssl_session_tickets on;
        ssl_session_cache off;
        location / {{
            if ($http_authorization != "Bearer {secret}") {{ return 401; }}
            default_type text/plain;
            return 200 "ok";
        }}
    }}
    # The upclosenx scenario's origin (closenx.bench.test): closes every
    # connection after its response, so a proxy dials it anew for every
    # agent connection, resuming its TLS session when it kept a ticket.
    # nginx (OpenSSL) sends no new ticket on a resumed handshake, so a
    # client that uses each ticket once resumes every other dial.  The
    # upclose scenario's origin is bench/origin_renew.go instead, which
    # renews the ticket on every handshake.
    server {{
        listen 127.0.0.1:{closeport} ssl backlog=4096;
        server_name closenx.bench.test;
        keepalive_timeout 0;
        ssl_certificate {wd}/origin.pem;
        ssl_certificate_key {wd}/origin.key;
        ssl_session_tickets on;
        ssl_session_cache off;
        location / {{
            if ($http_authorization != "Bearer {secret}") {{ return 401; }}
            default_type text/plain;
            return 200 "ok";
        }}
    }}
    # The h2 scenario's origin (h2.bench.test): HTTP/2 only.  426 unless the
    # request arrived over h2, so a proxy that downgrades the upstream side
    # to HTTP/1.1 fails the scenario instead of silently measuring h2->h1.
    server {{
        listen 127.0.0.1:{h2port} ssl http2 backlog=4096;
        server_name h2.bench.test;
        ssl_certificate {wd}/origin.pem;
        ssl_certificate_key {wd}/origin.key;
        ssl_session_tickets off;
        ssl_session_cache off;
        http2_max_concurrent_streams 128;
        location / {{
            if ($http_authorization != "Bearer {secret}") {{ return 401; }}
            if ($http2 != "h2") {{ return 426; }}
            default_type text/plain;
            return 200 "ok";
        }}
    }}
}}
"""


def build_origin_renew(wd):
    """go build bench/origin_renew.go (standard library only, no network)
    into |wd|, with a Go build cache inside |wd|."""
    go = shutil.which("go")
    if not go:
        raise RuntimeError("go not found, needed by the upclose scenario's origin "
                           "(apt-get install -y golang-go), or leave upclose out with --only")
    out = f"{wd}/origin_renew"
    env = dict(os.environ, GOCACHE=f"{wd}/gocache", GOPATH=f"{wd}/gopath", GOPROXY="off",
               GOFLAGS="", GO111MODULE="auto", CGO_ENABLED="0")
    cp = run_child([go, "build", "-o", out, f"{HERE}/origin_renew.go"], timeout=300, env=env)
    if cp.returncode:
        raise RuntimeError("building origin_renew failed: " + (cp.stdout + cp.stderr)[-500:])
    return out


class Rig:
    """Origins (nginx, streaming origin and, for upclose, the Go origin that
    renews tickets), certificates and the load client."""

    def __init__(self, wd, renew_origin=True):
        self.wd = wd
        self.procs = []
        self.renew_origin = renew_origin
        try:
            self._start(wd)
        except BaseException:
            self.close()
            raise

    def _start(self, wd):
        gen_certs(wd)
        self.avload = build_avload(wd)
        self.origin_port = free_port()
        self.stream_port = free_port()
        self.h2_port = free_port()
        self.close_port = free_port()
        self.renew_port = free_port()
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            raise RuntimeError("nginx not found (apt-get install -y nginx-light)")
        os.makedirs(f"{wd}/nginx-tmp", exist_ok=True)
        with open(f"{wd}/nginx.conf", "w") as f:
            f.write(NGINX_CONF.format(wd=wd, port=self.origin_port, h2port=self.h2_port,
                                      closeport=self.close_port,
                                      secret=SECRET))
        with open(f"{wd}/nginx.out", "w") as err:
            self.procs.append(spawn(pin(0) + [nginx, "-p", wd, "-c", f"{wd}/nginx.conf"],
                                    stderr=err))
        with open(f"{wd}/origin-stream.out", "w") as err:
            self.procs.append(spawn(
                pin(0) + [sys.executable, f"{HERE}/origin_stream.py", "--port",
                          str(self.stream_port), "--cert", f"{wd}/origin.pem",
                          "--key", f"{wd}/origin.key", "--key-value", SECRET],
                stderr=err))
        ca = f"{wd}/origin-ca.pem"
        try:
            check_until("nginx bench.test", lambda: https_status(self.origin_port, "bench.test", ca),
                        200, self.procs[:1])
            check_until("nginx bench.test without the credential",
                        lambda: https_status(self.origin_port, "bench.test", ca, auth=False),
                        401, self.procs[:1])
            # the h2-only origin must refuse HTTP/1.1 (426), or the h2
            # scenario would not prove that the proxy talks h2 upstream
            check_until("nginx closenx.bench.test",
                        lambda: https_status(self.close_port, "closenx.bench.test", ca), 200,
                        self.procs[:1])
            check_until("nginx h2.bench.test over HTTP/1.1",
                        lambda: https_status(self.h2_port, "h2.bench.test", ca), 426,
                        self.procs[:1])
        except RuntimeError as e:
            raise RuntimeError(f"{e}: {tail(wd + '/nginx-error.log')} "
                               f"{tail(wd + '/nginx.out')}") from None
        try:
            check_until("origin_stream.py",
                        lambda: https_status(self.stream_port, "stream.bench.test", ca), 200,
                        self.procs[1:2])
        except RuntimeError as e:
            raise RuntimeError(f"{e}: {tail(wd + '/origin-stream.out')}") from None
        if not self.renew_origin:
            return
        renew = build_origin_renew(wd)
        with open(f"{wd}/origin-renew.out", "w") as err:
            self.procs.append(spawn(
                pin(0) + [renew, "-listen", f"127.0.0.1:{self.renew_port}", "-cert",
                          f"{wd}/origin.pem", "-key", f"{wd}/origin.key", "-auth",
                          "Bearer " + SECRET], stderr=err))
        try:
            check_until("origin_renew close.bench.test",
                        lambda: https_status(self.renew_port, "close.bench.test", ca), 200,
                        self.procs[2:3])
            check_until("origin_renew close.bench.test without the credential",
                        lambda: https_status(self.renew_port, "close.bench.test", ca, auth=False),
                        401, self.procs[2:3])
        except RuntimeError as e:
            raise RuntimeError(f"{e}: {tail(wd + '/origin-renew.out')}") from None

    def close(self):
        for p in self.procs:
            stop(p)
        self.procs = []


# ---------------------------------------------------------------- proxies

class Direct:
    name = "direct"
    pid = None

    def __init__(self, rig, nhosts):
        self.rig = rig
        self.cafile = f"{rig.wd}/origin-ca.pem"

    def client_args(self, scenario):
        port = (self.rig.stream_port if scenario in ("sse", "ws", "wsz") else
                self.rig.h2_port if scenario == "h2" else
                self.rig.renew_port if scenario == "upclose" else
                self.rig.close_port if scenario == "upclosenx" else self.rig.origin_port)
        return ["--target", f"127.0.0.1:{port}", "--auth", "Bearer " + SECRET]

    def cpu_pid(self, scenario):
        """For newconn and resumed, the CPU of the nginx worker: a plain TLS
        accept (full or resumed) plus one exchange, measured in the same run
        as the proxy's new connections (the "direct" column of their CPU
        rows). Other scenarios: none."""
        if scenario not in ("newconn", "resumed"):
            return None
        master = self.rig.procs[0].pid
        try:
            with open(f"/proc/{master}/task/{master}/children") as f:
                kids = f.read().split()
        except OSError:
            return None
        return int(kids[0]) if len(kids) == 1 else None

    def stop(self):
        pass

    def new_log(self):
        return ""


class AgentVault:
    name = "agentvault"
    proxy_extra = []
    # One event loop pinned to core 1 (the load client and the origins are
    # on core 0): the figures every earlier run reported.
    workers = 1
    core = 1

    def binary(self):
        return AGENTVAULT_BIN

    def conf_extra(self):
        return [f"workers = {self.workers}"] if self.workers else []

    def __init__(self, rig, nhosts):
        wd = rig.wd
        self.rig = rig
        binary = self.binary()
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"{binary} not built")
        state = f"{wd}/{self.name}-state"
        os.makedirs(state, mode=0o700, exist_ok=True)
        lines = ["[proxy]", "unmatched = deny"] + self.proxy_extra + self.conf_extra() + [
                 f"resolve = bench.test:443:127.0.0.1:{rig.origin_port}",
                 f"resolve = close.bench.test:443:127.0.0.1:{rig.renew_port}",
                 f"resolve = closenx.bench.test:443:127.0.0.1:{rig.close_port}",
                 f"resolve = stream.bench.test:443:127.0.0.1:{rig.stream_port}",
                 f"resolve = h2.bench.test:443:127.0.0.1:{rig.h2_port}"]
        lines += [f"resolve = h{i:04d}.bench.test:443:127.0.0.1:{rig.origin_port}"
                  for i in range(1, nhosts + 1)]
        lines += ["", '[service "bench"]', "host = bench.test", "auth = bearer",
                  "secret = env:BENCH_KEY", "", '[service "benchwild"]', "host = *.bench.test",
                  "auth = bearer", "secret = env:BENCH_KEY", ""]
        conf = f"{wd}/{self.name}.conf"
        with open(conf, "w") as f:
            f.write("\n".join(lines))
        self.port = free_port()
        env = dict(os.environ, BENCH_KEY=SECRET)
        self.logfile = f"{wd}/{self.name}.log"
        self.log_off = os.path.getsize(self.logfile) if os.path.exists(self.logfile) else 0
        with open(self.logfile, "a") as err:
            vg = (["valgrind", "--tool=callgrind", "--instr-atstart=no", "--vgdb=yes",
                   f"--callgrind-out-file={wd}/{self.name}.cg.%p"] if CALLGRIND else [])
            self.proc = spawn(
                (pin(self.core) if self.core is not None else []) + vg + [binary, "serve", "-c", conf, "--listen", f"127.0.0.1:{self.port}",
                          "--state-dir", state, "--upstream-cacert", f"{wd}/origin-ca.pem",
                          "--log-level", "warn"],
                env=env, stdout=subprocess.DEVNULL, stderr=err)
        self.pid = self.proc.pid
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.cafile = f"{state}/ca.pem"

    def _wait_healthy(self):
        t = time.time() + (120 if CALLGRIND else 20)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("agentvault exited (%s): %s"
                                   % (self.proc.returncode, tail(self.logfile)))
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            try:
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    break
            except (OSError, http.client.HTTPException):
                pass
            finally:
                c.close()
            if time.time() > t:
                raise RuntimeError("agentvault did not become healthy")
            time.sleep(0.05)

    def client_args(self, scenario):
        return ["--proxy", f"127.0.0.1:{self.port}"]

    def stop(self):
        stop(self.proc)

    def new_log(self):
        """What the proxy logged since it started (agentvault: warnings and
        errors only, after the "listening on" line)."""
        return read_from(self.logfile, self.log_off)


class Mitmproxy:
    name = "mitmproxy"

    def __init__(self, rig, nhosts):
        wd = rig.wd
        mitmdump = shutil.which("mitmdump")
        if not mitmdump:
            raise RuntimeError("mitmdump not found (apt-get install -y mitmproxy)")
        confdir = f"{wd}/mitm-conf"
        os.makedirs(confdir, exist_ok=True)
        self.port = free_port()
        env = dict(os.environ, BENCH_KEY=SECRET, BENCH_ORIGIN=f"127.0.0.1:{rig.origin_port}",
                   BENCH_STREAM_ORIGIN=f"127.0.0.1:{rig.stream_port}",
                   BENCH_H2_ORIGIN=f"127.0.0.1:{rig.h2_port}")
        self.logfile = f"{wd}/mitmproxy.log"
        self.log_off = os.path.getsize(self.logfile) if os.path.exists(self.logfile) else 0
        with open(self.logfile, "a") as err:
            self.proc = spawn(
                pin(1) + [mitmdump, "--listen-host", "127.0.0.1", "--listen-port", str(self.port),
                          "--set", f"confdir={confdir}",
                          "--set", f"ssl_verify_upstream_trusted_ca={wd}/origin-ca.pem",
                          "-s", f"{HERE}/mitm_inject.py", "-q"],
                env=env, stdout=subprocess.DEVNULL, stderr=err)
        self.pid = self.proc.pid
        self.cafile = f"{confdir}/mitmproxy-ca-cert.pem"
        try:
            try:
                wait_port(self.port, timeout=60, proc=self.proc)
                check_until("mitmdump CONNECT bench.test:443", lambda: connect_status(self.port),
                            200, [self.proc])
            except RuntimeError as e:
                raise RuntimeError(f"mitmdump: {e}: {tail(self.logfile)}") from None
            t = time.time() + 20
            while not os.path.exists(self.cafile):
                if time.time() > t:
                    raise RuntimeError("mitmdump wrote no " + self.cafile)
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def client_args(self, scenario):
        return ["--proxy", f"127.0.0.1:{self.port}"]

    def stop(self):
        stop(self.proc)

    def new_log(self):
        return read_from(self.logfile, self.log_off)


class Baseline(AgentVault):
    """The same daemon set-up with the --baseline binary: before/after
    figures for a change come from one run, as ratios to each other."""
    name = "baseline"
    workers = None  # a build from before [proxy] workers: one loop, no key

    def binary(self):
        return BASELINE_BIN


class NoResume(AgentVault):
    """The same binary as agentvault with [proxy] tls_resumption = off:
    what resumption saves, from one build in one run (column av/nores)."""
    name = "noresume"
    proxy_extra = ["tls_resumption = off"]


class Workers1(AgentVault):
    """[proxy] workers = 1, not pinned: the scheduler may use both cores,
    as for av-w2; the pair gives the scaling ratio (column w2/w1) from one
    run. The load client and the origins stay pinned to core 0, so the
    second worker shares that core with them (bench/README.md, "Workers")."""
    name = "av-w1"
    workers = 1
    core = None


class Workers2(Workers1):
    """[proxy] workers = 2, not pinned."""
    name = "av-w2"
    workers = 2


PROXIES = {"direct": Direct, "agentvault": AgentVault, "mitmproxy": Mitmproxy,
           "baseline": Baseline, "noresume": NoResume, "av-w1": Workers1, "av-w2": Workers2}


def with_port_retry(start, attempts=3):
    """start() (which picks its ports with free_port()), again if it failed
    because another process took a port in between (the machine may be
    running other tests)."""
    for i in range(attempts):
        try:
            return start()
        except RuntimeError as e:
            if i + 1 == attempts or "in use" not in str(e).lower():
                raise
            log(f"  port taken meanwhile, retrying: {str(e)[:200]}")


# ---------------------------------------------------------------- scenarios

def params(smoke, duration):
    d = 0.3 if smoke else duration
    w = 0.1 if smoke else 1.0
    g = 5 if smoke else 10   # avload --grace: in-flight operations after the end
    return {
        "keepalive": dict(mode="ka", conns=10, duration=d, warmup=w, grace=g),
        "newconn": dict(mode="newconn", conns=10, duration=d, warmup=w, grace=g),
        # newconn where each worker resumes its previous TLS session
        "resumed": dict(mode="newconn", conns=10, duration=d, warmup=w, grace=g, resume=1),
        # newconn to close.bench.test, whose origin (bench/origin_renew.go)
        # closes every connection and sends a new ticket on every handshake:
        # every agent connection makes a new upstream TLS connection, which
        # resumes the session the proxy kept from the previous one
        "upclose": dict(mode="newconn", conns=10, duration=d, warmup=w, grace=g),
        # the same against nginx (closenx.bench.test), which renews no
        # ticket on a resumed handshake: about every other dial resumes
        "upclosenx": dict(mode="newconn", conns=10, duration=d, warmup=w, grace=g),
        # The new-host run stays below agentvault's minting burst (400 leaves,
        # then 200/s: AV_CA_MINT_BURST/RATE in av_ca.c) so that it measures
        # minting, not the rate limit.  It ends when every host has been used;
        # |duration| only bounds a stalled run.
        "newhost": dict(mode="newhost", conns=10, hosts=20 if smoke else 390,
                        duration=20 if smoke else 60, grace=g),
        # (--smoke: a longer warm-up, so that mitmproxy, ~10 ms of CPU per
        # handshake, has all 20 streams up before the measurement starts)
        "sse": dict(mode="sse", conns=20, duration=d, warmup=0.5 if smoke else w, grace=g,
                    interval=10),
        "ws": dict(mode="ws", conns=10, duration=d, warmup=w, grace=g, msg=32),
        # the same with permessage-deflate offered by the client (the origin
        # accepts it and compresses its echoes)
        "wsz": dict(mode="ws", conns=10, duration=d, warmup=w, grace=g, msg=32),
        # |duration|: the deadline for opening all the idle connections
        "idle": dict(mode="idle", conns=50 if smoke else 1000, duration=20 if smoke else 120),
        # One agent connection (CONNECT + TLS, ALPN h2) with 64 concurrent
        # streams: every completed stream is replaced at once.
        "h2": dict(mode="h2", conns=1, streams=64, duration=d, warmup=w, grace=g),
    }


def readline_timeout(f, timeout):
    """One line from the pipe |f| (a text file of a child), or "" on timeout."""
    sel = selectors.DefaultSelector()
    sel.register(f, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            return ""
    finally:
        sel.close()
    return f.readline()


def run_avload(rig, px, scen, p, wd):
    host = ("stream.bench.test" if scen in ("sse", "ws", "wsz") else
            "h2.bench.test" if scen == "h2" else
            "close.bench.test" if scen == "upclose" else
            "closenx.bench.test" if scen == "upclosenx" else "bench.test")
    path = {"sse": "/sse?interval=%d" % p.get("interval", 10), "ws": "/ws", "wsz": "/ws"}.get(scen, "/")
    cmd = pin(0) + [rig.avload, "--mode", p["mode"], "--cafile", px.cafile, "--host", host,
                    "--path", path, "--conns", str(p["conns"]),
                    "--duration", str(p["duration"]), "--warmup", str(p.get("warmup", 0))]
    cmd += px.client_args(scen)
    if "grace" in p:
        cmd += ["--grace", str(p["grace"])]
    if p.get("resume"):
        cmd += ["--resume", "1"]
    if scen == "newhost":
        cmd += ["--host-fmt", "h%04d.bench.test", "--hosts", str(p["hosts"])]
    if scen in ("ws", "wsz"):
        cmd += ["--msg-size", str(p["msg"])]
    if scen == "wsz":
        cmd += ["--ws-deflate", "1"]
    if scen == "h2":
        cmd += ["--streams", str(p["streams"])]
    # avload ends by itself after warm-up + duration + grace; the timeout
    # only catches a hung client
    timeout = p.get("warmup", 0) + p["duration"] + p.get("grace", 0) + 15
    res = {}
    if scen == "idle":
        # Warm the proxy with one short keep-alive run, then measure.
        if px.pid:
            warm = pin(0) + [rig.avload, "--mode", "ka", "--cafile", px.cafile, "--host",
                             "bench.test", "--conns", "2", "--duration", "0.2",
                             "--grace", "5"] + px.client_args("keepalive")
            run_child(warm, timeout=30)
            time.sleep(0.3)
            rss0 = rss_kb(px.pid)
        c0 = cpu_seconds(px.pid) if px.pid else 0
        proc = spawn(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
        try:
            line = readline_timeout(proc.stdout, timeout)
            try:
                out = json.loads(line)
            except ValueError:
                stop(proc, term_wait=0)
                return {"error": "avload idle: " + (line or "no output in %d s " % timeout
                                                    + proc.stderr.read())[:300]}
            time.sleep(1.0)
            if px.pid:
                rss1 = rss_kb(px.pid)
                res["rss_before_kb"] = rss0
                res["rss_after_kb"] = rss1
                if out["ok_total"]:
                    res["rss_per_conn_kb"] = (rss1 - rss0) / out["ok_total"]
                res["cpu_us_per_conn"] = ((cpu_seconds(px.pid) - c0) * 1e6
                                          / max(1, out["ok_total"]))
            proc.stdin.close()
            proc.wait(30)
        finally:
            stop(proc, term_wait=0)
    else:
        cg = CALLGRIND and isinstance(px, AgentVault)
        tls0 = tls_counters(px.port) if isinstance(px, AgentVault) else None
        pid = px.cpu_pid(scen) if hasattr(px, "cpu_pid") else px.pid
        c0 = cpu_seconds(pid) if pid else 0
        if cg:
            # Count from the end of avload's warm-up (connections and their
            # handshakes made, CALLGRIND_WARMUP seconds) to its exit, per
            # operation of its measurement window: per-connection costs do
            # not blur the per-operation figure.
            child = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                time.sleep(p.get("warmup", 0))
                callgrind_ctl(px.pid, "-z")
                callgrind_ctl(px.pid, "-i", "on")
                so, se = child.communicate(timeout=timeout * 20)
            finally:
                stop(child, term_wait=0)
            cp = subprocess.CompletedProcess(cmd, child.returncode, so, se)
            callgrind_ctl(px.pid, "-i", "off")
            ir = callgrind_ir(px.pid, rig.wd)
        else:
            cp = run_child(cmd, timeout=timeout)
        c1 = cpu_seconds(pid) if pid else 0
        if tls0 is not None:
            tls_deltas(tls0, tls_counters(px.port), res)
        try:
            out = json.loads(cp.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": "avload failed (exit %s): %s"
                    % (cp.returncode, (cp.stdout + cp.stderr)[:300])}
        if pid and out["ok_total"]:
            res["cpu_us_per_op"] = (c1 - c0) * 1e6 / out["ok_total"]
            if cg and ir is not None and out.get("ok"):
                res["ir_per_op"] = ir / out["ok"]
    res.update(out)
    if not out["ok_total"]:
        res["error"] = out["first_error"] or "no operation completed"
    return res


TLS_COUNTERS = {
    'agentvault_tls_handshakes_total{side="agent"}': "agent_handshakes",
    'agentvault_tls_handshakes_total{side="upstream"}': "up_handshakes",
    'agentvault_tls_resumed_total{side="agent"}': "agent_resumed",
    'agentvault_tls_resumed_total{side="upstream"}': "up_resumed",
}


def tls_counters(port):
    """agentvault's TLS handshake and resumption counters from its /metrics,
    or None when it has none."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", "/metrics")
        r = c.getresponse()
        body = r.read().decode()
        if r.status != 200:
            raise RuntimeError(f"/metrics: {r.status}")
    finally:
        c.close()
    out = {}
    for ln in body.splitlines():
        name, _, val = ln.rpartition(" ")
        if name in TLS_COUNTERS:
            out[TLS_COUNTERS[name]] = int(val)
    if len(out) != len(TLS_COUNTERS):
        return None  # a build from before the counters (a --baseline): rows n/a
    return out


def tls_deltas(before, after, res):
    """Handshakes and resumptions on either side during one avload run
    (warm-up included) into |res|, with the resumed share in percent;
    nothing for a daemon without the counters."""
    if before is None or after is None:
        return
    for k in TLS_COUNTERS.values():
        res[k] = after[k] - before[k]
    for side in ("agent", "up"):
        if res[f"{side}_handshakes"]:
            res[f"{side}_resumed_pct"] = 100.0 * res[f"{side}_resumed"] / res[f"{side}_handshakes"]


def callgrind_ctl(pid, *args):
    """callgrind_control ARGS PID (through vgdb); raises if it fails."""
    cp = subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, text=True,
                        timeout=120)
    if cp.returncode != 0:
        raise RuntimeError(f"callgrind_control {' '.join(args)} {pid}: {cp.stderr or cp.stdout}"[:300])
    return cp.stdout


def callgrind_ir(pid, wd):
    """Instructions the process executed since the last zeroing: dump
    (callgrind_control -d) and read the newest dump's 'totals:' line."""
    callgrind_ctl(pid, "-d")
    best = None
    for f in sorted(glob.glob(f"{wd}/*.cg.{pid}*"), key=os.path.getmtime):
        best = f
    if not best:
        return None
    with open(best) as fh:
        for line in fh:
            if line.startswith("totals:"):  # ("summary:" is 0 in a -d dump)
                return int(line.split()[1])
    return None


# metric rows: (scenario, label, key, unit kind)
ROWS = [
    ("keepalive", "req/s", "rate"),
    ("keepalive", "p50 latency us", "lat_p50_us"),
    ("keepalive", "p99 latency us", "lat_p99_us"),
    ("keepalive", "proxy CPU us/req", "cpu_us_per_op"),
    ("keepalive", "proxy Ir/req", "ir_per_op"),
    ("newconn", "conn/s", "rate"),
    ("newconn", "p50 conn+req us", "lat_p50_us"),
    ("newconn", "p99 conn+req us", "lat_p99_us"),
    ("newconn", "proxy CPU us/conn", "cpu_us_per_op"),
    ("newconn", "proxy Ir/conn", "ir_per_op"),
    ("resumed", "conn/s", "rate"),
    ("resumed", "p50 conn+req us", "lat_p50_us"),
    ("resumed", "proxy CPU us/conn", "cpu_us_per_op"),
    ("resumed", "proxy Ir/conn", "ir_per_op"),
    ("resumed", "resumed conns", "resumed"),
    ("resumed", "agent resumed %", "agent_resumed_pct"),
    ("upclose", "conn/s", "rate"),
    ("upclose", "p50 conn+req us", "lat_p50_us"),
    ("upclose", "proxy CPU us/conn", "cpu_us_per_op"),
    ("upclose", "proxy Ir/conn", "ir_per_op"),
    ("upclose", "upstream resumed %", "up_resumed_pct"),
    ("upclosenx", "conn/s", "rate"),
    ("upclosenx", "p50 conn+req us", "lat_p50_us"),
    ("upclosenx", "proxy CPU us/conn", "cpu_us_per_op"),
    ("upclosenx", "proxy Ir/conn", "ir_per_op"),
    ("upclosenx", "upstream resumed %", "up_resumed_pct"),
    ("newhost", "conn/s", "rate"),
    ("newhost", "p50 conn+req us", "lat_p50_us"),
    ("newhost", "p99 conn+req us", "lat_p99_us"),
    ("newhost", "proxy CPU us/conn", "cpu_us_per_op"),
    ("sse", "events/s", "rate"),
    ("sse", "p50 delay us", "lat_p50_us"),
    ("sse", "p99 delay us", "lat_p99_us"),
    ("sse", "proxy CPU us/event", "cpu_us_per_op"),
    ("sse", "proxy Ir/event", "ir_per_op"),
    ("ws", "msg round trips/s", "rate"),
    ("ws", "p50 RTT us", "lat_p50_us"),
    ("ws", "p99 RTT us", "lat_p99_us"),
    ("ws", "proxy CPU us/msg", "cpu_us_per_op"),
    ("ws", "proxy Ir/msg", "ir_per_op"),
    ("wsz", "msg round trips/s", "rate"),
    ("wsz", "p50 RTT us", "lat_p50_us"),
    ("wsz", "p99 RTT us", "lat_p99_us"),
    ("wsz", "proxy CPU us/msg", "cpu_us_per_op"),
    ("wsz", "proxy Ir/msg", "ir_per_op"),
    ("h2", "req/s (1 conn x 64)", "rate"),
    ("h2", "p50 stream latency us", "lat_p50_us"),
    ("h2", "p99 stream latency us", "lat_p99_us"),
    ("h2", "proxy CPU us/req", "cpu_us_per_op"),
    ("h2", "proxy Ir/req", "ir_per_op"),
    ("idle", "RSS KiB/idle conn", "rss_per_conn_kb"),
    ("idle", "RSS MiB at N idle", "rss_after_mb"),
    ("idle", "proxy CPU us/conn", "cpu_us_per_conn"),
]


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if abs(v) >= 100:
        return "%.0f" % v
    if abs(v) >= 10:
        return "%.1f" % v
    return "%.2f" % v


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="every scenario very briefly, 1 repetition")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    ap.add_argument("--targets", default=None,
                    help="comma-separated (default direct,agentvault,mitmproxy, plus baseline "
                         "with --baseline; also noresume, and av-w1,av-w2: workers = 1 and 2, "
                         "unpinned, column w2/w1)")
    ap.add_argument("--callgrind", action="store_true",
                    help="run the agentvault targets under callgrind and report instructions per "
                         "operation (repeatable on a noisy machine; throughput is then meaningless)")
    ap.add_argument("--baseline", default=None,
                    help="a second agentvault binary, measured as target 'baseline' in the same "
                         "run (before/after figures for a change: column av/base)")
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--spin", choices=("auto", "on", "off"), default="auto",
                    help="SCHED_IDLE busy loops on both cores (see README: idle spinners); "
                         "auto: on unless the guest polls before halting (cpuidle haltpoll)")
    ap.add_argument("--no-spin", action="store_true", help="same as --spin off")
    ap.add_argument("--json", help="output file (default bench/results-<timestamp>.json)")
    ap.add_argument("--agentvault", default=os.environ.get("AGENTVAULT",
                                                           f"{ROOT}/build/daemon/agentvault"),
                    help="daemon binary (default $AGENTVAULT or build/daemon/agentvault)")
    ap.add_argument("--budget", type=float, default=None,
                    help="abort (and fail) after this many seconds; default 100 with "
                         "--smoke, none otherwise")
    a = ap.parse_args()
    global AGENTVAULT_BIN
    AGENTVAULT_BIN = os.path.abspath(a.agentvault)
    global BASELINE_BIN, CALLGRIND
    CALLGRIND = a.callgrind
    if a.baseline:
        BASELINE_BIN = os.path.abspath(a.baseline)
    if a.targets is None:
        a.targets = ",".join(TARGETS + (["baseline"] if a.baseline else []))
    if "baseline" in a.targets.split(",") and not a.baseline:
        ap.error("target baseline needs --baseline PATH")
    reps = 1 if a.smoke else a.reps
    targets = [t for t in a.targets.split(",") if t]
    scens = [s for s in a.only.split(",") if s]
    for t in targets:
        if t not in PROXIES:
            ap.error("unknown target " + t)
    for s in scens:
        if s not in SCENARIOS:
            ap.error("unknown scenario " + s)
    budget = a.budget if a.budget is not None else (100 if a.smoke else 0)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, _on_signal)
    if budget > 0:
        signal.alarm(max(1, int(budget)))
    t_start = time.time()
    P = params(a.smoke, a.duration)
    if CALLGRIND:  # handshakes under valgrind take seconds: warm up longer
        for sp in P.values():
            if "warmup" in sp:
                sp["warmup"] = max(sp["warmup"], CALLGRIND_WARMUP)
    nhosts = P["newhost"]["hosts"]
    wd = tempfile.mkdtemp(prefix="avbench-")
    log(f"work dir {wd}; pinning: proxy {pin(1) or 'none'}, client/origins {pin(0) or 'none'}")
    results = {t: {s: [] for s in scens} for t in targets}
    proxy_logs = {t: [] for t in targets}
    failures = []
    warnings = []
    rig = None
    spinners = []
    current = ["setup", "-"]
    try:
        spin = "off" if a.no_spin else a.spin
        if spin == "auto":
            spin = "off" if cpuidle_driver() == "haltpoll" else "on"
        log(f"idle spinners: {spin} (cpuidle driver: {cpuidle_driver() or 'none'})")
        if spin == "on" and pin(0) and shutil.which("chrt"):
            # Keep both vCPUs from halting: on a VM, waking an idle vCPU can
            # take ~4 ms, which then dominates every proxied round trip.
            # SCHED_IDLE threads yield to any runnable task; they are not
            # counted in the proxy's CPU time.
            for core in (0, 1):
                spinners.append(spawn(
                    ["taskset", "-c", str(core), "chrt", "--idle", "0",
                     "sh", "-c", "while :; do :; done"]))
        rig = with_port_retry(lambda: Rig(wd, renew_origin="upclose" in scens))
        for rep in range(reps):
            k = rep % len(targets)
            order = targets[k:] + targets[:k]  # rotate the order every repetition
            for t in order:
                log(f"rep {rep + 1}/{reps}: {t}")
                current[:] = [t, "start"]
                try:
                    px = with_port_retry(lambda: PROXIES[t](rig, nhosts))
                except Exception as e:  # noqa: BLE001
                    for s in scens:
                        if s == "idle" and t == "direct":
                            continue
                        results[t][s].append({"error": f"{t} did not start: {e}"[:500]})
                        failures.append((t, s, f"did not start: {e}"[:500]))
                    continue
                try:
                    for s in scens:
                        if s == "idle" and t == "direct":
                            continue
                        current[:] = [t, s]
                        try:
                            r = run_avload(rig, px, s, P[s], wd)
                        except Exception as e:  # noqa: BLE001 (timeout, crash: a failed run)
                            r = {"error": f"{type(e).__name__}: {e}"[:300]}
                        if "rss_after_kb" in r:
                            r["rss_after_mb"] = r["rss_after_kb"] / 1024
                        results[t][s].append(r)
                        if "error" in r or (a.smoke and r.get("errors")):
                            failures.append((t, s, r.get("error") or r.get("first_error")))
                        elif r.get("errors"):
                            warnings.append(f"{t} {s} rep {rep + 1}: {r['errors']} error(s), "
                                            f"first: {r.get('first_error')}")
                        if "error" not in r and not r.get("ok") and s != "idle":
                            warnings.append(f"{t} {s} rep {rep + 1}: {r.get('ok_total')} "
                                            "operation(s), none inside the measurement window")
                        log(f"  {s:10s} ok={r.get('ok_total')} err={r.get('errors')} "
                            f"rate={r.get('rate')} cpu={fmt(r.get('cpu_us_per_op', r.get('cpu_us_per_conn')))}"
                            + (f" tls agent {r['agent_resumed']}/{r['agent_handshakes']} resumed,"
                               f" upstream {r['up_resumed']}/{r['up_handshakes']}"
                               if "up_handshakes" in r else "")
                            + (f" ERROR {r['error']}" if 'error' in r else "")
                            + (f" ({r['first_error']})" if r.get('errors') and 'error' not in r
                               else ""))
                    current[:] = [t, "stop"]
                finally:
                    px.stop()
                    # what the proxy logged (agentvault at --log-level warn:
                    # only its "listening" line unless something went wrong)
                    lg = "\n".join(ln for ln in px.new_log().splitlines()
                                   if ln.strip() and "listening on" not in ln
                                   and "open files limit" not in ln)
                    if lg:
                        proxy_logs[t].append({"rep": rep + 1, "log": lg[-4000:]})
                        warnings.append(f"{t} rep {rep + 1} logged: " + lg[-300:].replace("\n", " | "))
    except Abort as e:
        failures.append((current[0], current[1], f"run aborted: {e}"))
        log(f"ABORTED ({e}) during {current[0]} {current[1]}")
    except Exception as e:  # noqa: BLE001 (rig setup: nginx, certificates, avload build)
        failures.append((current[0], current[1], f"{type(e).__name__}: {e}"[:800]))
        log(f"ERROR during {current[0]} {current[1]}: {type(e).__name__}: {e}")
    finally:
        signal.alarm(0)
        _aborted.append("cleanup")   # ignore signals from here on: clean up, write JSON
        if rig:
            rig.close()
        for sp in spinners:
            stop(sp)
        for c in _children:          # anything else still running (should be nothing)
            stop(c, term_wait=5)

    # medians
    table = []
    med = {}
    for s, label, key in ROWS:
        if s not in scens:
            continue
        row = {"scenario": s, "metric": label}
        for t in targets:
            runs = results[t][s]
            vals = [r[key] for r in runs if "error" not in r and r.get(key) is not None]
            errs = [r["error"] for r in runs if "error" in r]
            if vals:
                row[t] = statistics.median(vals)
            elif errs:
                row[t] = "n/a"
                row.setdefault("notes", []).append(f"{t}: {errs[0]}")
            else:
                row[t] = None
        av, mi = row.get("agentvault"), row.get("mitmproxy")
        if isinstance(av, (int, float)) and isinstance(mi, (int, float)) and mi:
            row["av/mitm"] = av / mi
        ba = row.get("baseline")
        if isinstance(av, (int, float)) and isinstance(ba, (int, float)) and ba:
            row["av/base"] = av / ba
        w1, w2 = row.get("av-w1"), row.get("av-w2")
        if isinstance(w1, (int, float)) and isinstance(w2, (int, float)) and w1:
            row["w2/w1"] = w2 / w1
        nr = row.get("noresume")
        if isinstance(av, (int, float)) and isinstance(nr, (int, float)) and nr:
            row["av/nores"] = av / nr
        di = row.get("direct")
        if isinstance(av, (int, float)) and isinstance(di, (int, float)) and di:
            row["av/direct"] = av / di
        table.append(row)
        med[(s, label)] = row

    cols = targets + (["av/mitm"] if "agentvault" in targets and "mitmproxy" in targets else []) \
        + (["av/direct"] if "agentvault" in targets and "direct" in targets else []) \
        + (["av/base"] if "agentvault" in targets and "baseline" in targets else []) \
        + (["av/nores"] if "agentvault" in targets and "noresume" in targets else []) \
        + (["w2/w1"] if "av-w1" in targets and "av-w2" in targets else [])
    hdr = f"{'scenario':10s} {'metric':22s}" + "".join(f"{c:>12s}" for c in cols)
    print(hdr)
    notes = []
    for row in table:
        line = f"{row['scenario']:10s} {row['metric']:22s}"
        for c in cols:
            v = row.get(c)
            ratio = c.startswith("av/") or c == "w2/w1"
            line += f"{(fmt(v) + 'x') if ratio and v is not None else fmt(v):>12s}"
        print(line)
        for n in row.get("notes", []):
            if n not in notes:
                notes.append(n)
    # Issue 15's ratios, per target, within this run: a new connection whose
    # upstream is dialed anew (upclose) against one with a pooled upstream
    # (newconn); a resumed agent connection against a full one; and for
    # CPU and instructions alike.
    derived = {}
    for t in targets:
        for label, key in (("CPU", "proxy CPU us/conn"), ("Ir", "proxy Ir/conn")):
            nc = med.get(("newconn", key), {}).get(t)
            for s in ("upclose", "upclosenx", "resumed"):
                v = med.get((s, key), {}).get(t)
                if isinstance(v, (int, float)) and isinstance(nc, (int, float)) and nc:
                    derived[f"{t} {s}/newconn {label}"] = v / nc
    for k, v in derived.items():
        print(f"  ratio {k}: {v:.2f}x")
    for n in notes:
        print("  note:", n)
    for w in warnings:
        print("  warning:", w)
    print(f"(medians of {reps} repetition(s); latencies in microseconds; "
          f"idle: {P['idle']['conns']} connections; newhost: {nhosts} fresh hosts; "
          f"h2: {P['h2']['conns']} connection x {P['h2']['streams']} streams)")

    out = a.json or os.path.join(HERE, "results-%s.json" % datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    meta = {"time": datetime.datetime.now().isoformat(), "smoke": a.smoke, "reps": reps,
            "duration": a.duration, "params": P, "cpus": os.cpu_count(),
            "pinning": {"proxy": pin(1), "client_and_origins": pin(0)},
            "idle_spinners": bool(spinners), "cpuidle_driver": cpuidle_driver(), "budget_s": budget,
            "elapsed_s": round(time.time() - t_start, 1),
            "uname": os.uname().release}
    out_dir = os.path.dirname(os.path.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    with open(out, "w") as f:
        json.dump({"meta": meta, "table": table, "ratios": derived, "runs": results, "failures": failures,
                   "warnings": warnings, "proxy_logs": proxy_logs}, f, indent=1, default=str)
    print("wrote", out)
    if a.keep or failures:
        log("work dir kept:", wd)
    else:
        shutil.rmtree(wd, ignore_errors=True)
    if failures:
        for t, s, e in failures:
            log(f"FAILED {t} {s}: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
