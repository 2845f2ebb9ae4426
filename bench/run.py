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

Pinning (on a machine with >= 2 cores): the proxy under test runs under
`taskset -c 1`, the load client and the origins under `taskset -c 0`.

Results are measurements, not tests: nothing here compares against a
threshold.  See bench/README.md.
"""
import argparse
import datetime
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SECRET = "benchkey"
TARGETS = ["direct", "agentvault", "mitmproxy"]
SCENARIOS = ["idle", "keepalive", "newconn", "newhost", "sse", "ws", "h2"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
AGENTVAULT_BIN = os.environ.get("AGENTVAULT", f"{ROOT}/build/daemon/agentvault")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


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


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    return 0


def stop(proc):
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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
    subprocess.run([cc, "-O2", "-Wall", "-Wno-format-truncation", "-o", out,
                    f"{HERE}/avload.c", "-lssl", "-lcrypto", "-lnghttp2"], check=True)
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
        ssl_session_tickets off;
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


class Rig:
    """Origins (nginx + streaming origin), certificates and the load client."""

    def __init__(self, wd):
        self.wd = wd
        self.procs = []
        gen_certs(wd)
        self.avload = build_avload(wd)
        self.origin_port = free_port()
        self.stream_port = free_port()
        self.h2_port = free_port()
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            raise RuntimeError("nginx not found (apt-get install -y nginx-light)")
        os.makedirs(f"{wd}/nginx-tmp", exist_ok=True)
        with open(f"{wd}/nginx.conf", "w") as f:
            f.write(NGINX_CONF.format(wd=wd, port=self.origin_port, h2port=self.h2_port,
                                      secret=SECRET))
        self.procs.append(subprocess.Popen(pin(0) + [nginx, "-p", wd, "-c", f"{wd}/nginx.conf"],
                                           stderr=open(f"{wd}/nginx.out", "w")))
        self.procs.append(subprocess.Popen(
            pin(0) + [sys.executable, f"{HERE}/origin_stream.py", "--port", str(self.stream_port),
                      "--cert", f"{wd}/origin.pem", "--key", f"{wd}/origin.key",
                      "--key-value", SECRET],
            stderr=open(f"{wd}/origin-stream.out", "w")))
        wait_port(self.origin_port, proc=self.procs[0])
        wait_port(self.stream_port, proc=self.procs[1])
        wait_port(self.h2_port, proc=self.procs[0])

    def close(self):
        for p in self.procs:
            stop(p)


# ---------------------------------------------------------------- proxies

class Direct:
    name = "direct"
    pid = None

    def __init__(self, rig, nhosts):
        self.rig = rig
        self.cafile = f"{rig.wd}/origin-ca.pem"

    def client_args(self, scenario):
        port = (self.rig.stream_port if scenario in ("sse", "ws") else
                self.rig.h2_port if scenario == "h2" else self.rig.origin_port)
        return ["--target", f"127.0.0.1:{port}", "--auth", "Bearer " + SECRET]

    def stop(self):
        pass


class AgentVault:
    name = "agentvault"

    def __init__(self, rig, nhosts):
        wd = rig.wd
        self.rig = rig
        binary = AGENTVAULT_BIN
        if not os.access(binary, os.X_OK):
            raise RuntimeError(f"{binary} not built")
        state = f"{wd}/av-state"
        os.makedirs(state, mode=0o700, exist_ok=True)
        lines = ["[proxy]", "unmatched = deny",
                 f"resolve = bench.test:443:127.0.0.1:{rig.origin_port}",
                 f"resolve = stream.bench.test:443:127.0.0.1:{rig.stream_port}",
                 f"resolve = h2.bench.test:443:127.0.0.1:{rig.h2_port}"]
        lines += [f"resolve = h{i:04d}.bench.test:443:127.0.0.1:{rig.origin_port}"
                  for i in range(1, nhosts + 1)]
        lines += ["", '[service "bench"]', "host = bench.test", "auth = bearer",
                  "secret = env:BENCH_KEY", "", '[service "benchwild"]', "host = *.bench.test",
                  "auth = bearer", "secret = env:BENCH_KEY", ""]
        conf = f"{wd}/agentvault.conf"
        with open(conf, "w") as f:
            f.write("\n".join(lines))
        self.port = free_port()
        env = dict(os.environ, BENCH_KEY=SECRET)
        self.proc = subprocess.Popen(
            pin(1) + [binary, "serve", "-c", conf, "--listen", f"127.0.0.1:{self.port}",
                      "--state-dir", state, "--upstream-cacert", f"{wd}/origin-ca.pem",
                      "--log-level", "warn"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(f"{wd}/agentvault.log", "a"))
        self.pid = self.proc.pid
        t = time.time() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("agentvault exited: see %s/agentvault.log" % wd)
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.time() > t:
                raise RuntimeError("agentvault did not become healthy")
            time.sleep(0.05)
        self.cafile = f"{state}/ca.pem"

    def client_args(self, scenario):
        return ["--proxy", f"127.0.0.1:{self.port}"]

    def stop(self):
        stop(self.proc)


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
        self.proc = subprocess.Popen(
            pin(1) + [mitmdump, "--listen-host", "127.0.0.1", "--listen-port", str(self.port),
                      "--set", f"confdir={confdir}",
                      "--set", f"ssl_verify_upstream_trusted_ca={wd}/origin-ca.pem",
                      "-s", f"{HERE}/mitm_inject.py", "-q"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(f"{wd}/mitmproxy.log", "a"))
        self.pid = self.proc.pid
        wait_port(self.port, timeout=60, proc=self.proc)
        self.cafile = f"{confdir}/mitmproxy-ca-cert.pem"
        t = time.time() + 20
        while not os.path.exists(self.cafile) and time.time() < t:
            time.sleep(0.05)

    def client_args(self, scenario):
        return ["--proxy", f"127.0.0.1:{self.port}"]

    def stop(self):
        stop(self.proc)


PROXIES = {"direct": Direct, "agentvault": AgentVault, "mitmproxy": Mitmproxy}


# ---------------------------------------------------------------- scenarios

def params(smoke, duration):
    d = 0.3 if smoke else duration
    w = 0.1 if smoke else 1.0
    return {
        "keepalive": dict(mode="ka", conns=10, duration=d, warmup=w),
        "newconn": dict(mode="newconn", conns=10, duration=d, warmup=w),
        # The new-host run stays below agentvault's minting burst (400 leaves,
        # then 200/s: AV_CA_MINT_BURST/RATE in av_ca.c) so that it measures
        # minting, not the rate limit.
        "newhost": dict(mode="newhost", conns=10, hosts=20 if smoke else 390,
                        duration=60),
        "sse": dict(mode="sse", conns=20, duration=d if smoke else duration, warmup=w,
                    interval=10),
        "ws": dict(mode="ws", conns=10, duration=d, warmup=w, msg=32),
        "idle": dict(mode="idle", conns=50 if smoke else 1000, duration=60),
        # One agent connection (CONNECT + TLS, ALPN h2) with 64 concurrent
        # streams: every completed stream is replaced at once.
        "h2": dict(mode="h2", conns=1, streams=64, duration=d, warmup=w),
    }


def run_avload(rig, px, scen, p, wd):
    host = ("stream.bench.test" if scen in ("sse", "ws") else
            "h2.bench.test" if scen == "h2" else "bench.test")
    path = {"sse": "/sse?interval=%d" % p.get("interval", 10), "ws": "/ws"}.get(scen, "/")
    cmd = pin(0) + [rig.avload, "--mode", p["mode"], "--cafile", px.cafile, "--host", host,
                    "--path", path, "--conns", str(p["conns"]),
                    "--duration", str(p["duration"]), "--warmup", str(p.get("warmup", 0))]
    cmd += px.client_args(scen)
    if scen == "newhost":
        cmd += ["--host-fmt", "h%04d.bench.test", "--hosts", str(p["hosts"])]
    if scen == "ws":
        cmd += ["--msg-size", str(p["msg"])]
    if scen == "h2":
        cmd += ["--streams", str(p["streams"])]
    res = {}
    if scen == "idle":
        # Warm the proxy with one short keep-alive run, then measure.
        if px.pid:
            warm = pin(0) + [rig.avload, "--mode", "ka", "--cafile", px.cafile, "--host",
                             "bench.test", "--conns", "2", "--duration", "0.2"] + \
                px.client_args("keepalive")
            subprocess.run(warm, capture_output=True, timeout=60)
            time.sleep(0.3)
            rss0 = rss_kb(px.pid)
        c0 = cpu_seconds(px.pid) if px.pid else 0
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        try:
            out = json.loads(line)
        except ValueError:
            proc.kill()
            return {"error": "avload idle: " + (line + proc.stderr.read())[:300]}
        time.sleep(1.0)
        if px.pid:
            rss1 = rss_kb(px.pid)
            res["rss_before_kb"] = rss0
            res["rss_after_kb"] = rss1
            if out["ok_total"]:
                res["rss_per_conn_kb"] = (rss1 - rss0) / out["ok_total"]
            res["cpu_us_per_conn"] = (cpu_seconds(px.pid) - c0) * 1e6 / max(1, out["ok_total"])
        proc.stdin.close()
        proc.wait(60)
    else:
        c0 = cpu_seconds(px.pid) if px.pid else 0
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        c1 = cpu_seconds(px.pid) if px.pid else 0
        try:
            out = json.loads(cp.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": "avload failed: " + (cp.stdout + cp.stderr)[:300]}
        if px.pid and out["ok_total"]:
            res["cpu_us_per_op"] = (c1 - c0) * 1e6 / out["ok_total"]
    res.update(out)
    if not out["ok_total"]:
        res["error"] = out["first_error"] or "no operation completed"
    return res


# metric rows: (scenario, label, key, unit kind)
ROWS = [
    ("keepalive", "req/s", "rate"),
    ("keepalive", "p50 latency us", "lat_p50_us"),
    ("keepalive", "p99 latency us", "lat_p99_us"),
    ("keepalive", "proxy CPU us/req", "cpu_us_per_op"),
    ("newconn", "conn/s", "rate"),
    ("newconn", "p50 conn+req us", "lat_p50_us"),
    ("newconn", "p99 conn+req us", "lat_p99_us"),
    ("newconn", "proxy CPU us/conn", "cpu_us_per_op"),
    ("newhost", "conn/s", "rate"),
    ("newhost", "p50 conn+req us", "lat_p50_us"),
    ("newhost", "p99 conn+req us", "lat_p99_us"),
    ("newhost", "proxy CPU us/conn", "cpu_us_per_op"),
    ("sse", "events/s", "rate"),
    ("sse", "p50 delay us", "lat_p50_us"),
    ("sse", "p99 delay us", "lat_p99_us"),
    ("sse", "proxy CPU us/event", "cpu_us_per_op"),
    ("ws", "msg round trips/s", "rate"),
    ("ws", "p50 RTT us", "lat_p50_us"),
    ("ws", "p99 RTT us", "lat_p99_us"),
    ("ws", "proxy CPU us/msg", "cpu_us_per_op"),
    ("h2", "req/s (1 conn x 64)", "rate"),
    ("h2", "p50 stream latency us", "lat_p50_us"),
    ("h2", "p99 stream latency us", "lat_p99_us"),
    ("h2", "proxy CPU us/req", "cpu_us_per_op"),
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
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--no-spin", action="store_true",
                    help="do not run SCHED_IDLE spinners (see README: VM idle wake-up latency)")
    ap.add_argument("--json", help="output file (default bench/results-<timestamp>.json)")
    ap.add_argument("--agentvault", default=os.environ.get("AGENTVAULT",
                                                           f"{ROOT}/build/daemon/agentvault"),
                    help="daemon binary (default $AGENTVAULT or build/daemon/agentvault)")
    a = ap.parse_args()
    global AGENTVAULT_BIN
    AGENTVAULT_BIN = os.path.abspath(a.agentvault)
    reps = 1 if a.smoke else a.reps
    targets = [t for t in a.targets.split(",") if t]
    scens = [s for s in a.only.split(",") if s]
    for t in targets:
        if t not in PROXIES:
            ap.error("unknown target " + t)
    for s in scens:
        if s not in SCENARIOS:
            ap.error("unknown scenario " + s)
    P = params(a.smoke, a.duration)
    nhosts = P["newhost"]["hosts"]
    wd = tempfile.mkdtemp(prefix="avbench-")
    log(f"work dir {wd}; pinning: proxy {pin(1) or 'none'}, client/origins {pin(0) or 'none'}")
    results = {t: {s: [] for s in scens} for t in targets}
    failures = []
    rig = None
    spinners = []
    try:
        if not a.no_spin and pin(0) and shutil.which("chrt"):
            # Keep both vCPUs from halting: on a VM, waking an idle vCPU can
            # take ~4 ms, which then dominates every proxied round trip.
            # SCHED_IDLE threads yield to any runnable task; they are not
            # counted in the proxy's CPU time.
            for core in (0, 1):
                spinners.append(subprocess.Popen(
                    ["taskset", "-c", str(core), "chrt", "--idle", "0",
                     "sh", "-c", "while :; do :; done"]))
        rig = Rig(wd)
        for rep in range(reps):
            k = rep % len(targets)
            order = targets[k:] + targets[:k]  # rotate the order every repetition
            for t in order:
                log(f"rep {rep + 1}/{reps}: {t}")
                try:
                    px = PROXIES[t](rig, nhosts)
                except Exception as e:  # noqa: BLE001
                    for s in scens:
                        if s == "idle" and t == "direct":
                            continue
                        results[t][s].append({"error": f"{t} did not start: {e}"})
                        failures.append((t, s, str(e)))
                    continue
                try:
                    for s in scens:
                        if s == "idle" and t == "direct":
                            continue
                        try:
                            r = run_avload(rig, px, s, P[s], wd)
                        except Exception as e:  # noqa: BLE001 (timeout, crash: a failed run)
                            r = {"error": f"{type(e).__name__}: {e}"[:300]}
                        if "rss_after_kb" in r:
                            r["rss_after_mb"] = r["rss_after_kb"] / 1024
                        results[t][s].append(r)
                        if "error" in r or (a.smoke and r.get("errors")):
                            failures.append((t, s, r.get("error") or r.get("first_error")))
                        log(f"  {s:10s} ok={r.get('ok_total')} err={r.get('errors')} "
                            f"rate={r.get('rate')} cpu={fmt(r.get('cpu_us_per_op', r.get('cpu_us_per_conn')))}"
                            + (f" ERROR {r['error']}" if 'error' in r else ""))
                finally:
                    px.stop()
    finally:
        if rig:
            rig.close()
        for sp in spinners:
            stop(sp)

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
        di = row.get("direct")
        if isinstance(av, (int, float)) and isinstance(di, (int, float)) and di:
            row["av/direct"] = av / di
        table.append(row)
        med[(s, label)] = row

    cols = targets + (["av/mitm"] if "agentvault" in targets and "mitmproxy" in targets else []) \
        + (["av/direct"] if "agentvault" in targets and "direct" in targets else [])
    hdr = f"{'scenario':10s} {'metric':22s}" + "".join(f"{c:>12s}" for c in cols)
    print(hdr)
    notes = []
    for row in table:
        line = f"{row['scenario']:10s} {row['metric']:22s}"
        for c in cols:
            v = row.get(c)
            line += f"{(fmt(v) + 'x') if c.startswith('av/') and v is not None else fmt(v):>12s}"
        print(line)
        for n in row.get("notes", []):
            if n not in notes:
                notes.append(n)
    for n in notes:
        print("  note:", n)
    print(f"(medians of {reps} repetition(s); latencies in microseconds; "
          f"idle: {P['idle']['conns']} connections; newhost: {nhosts} fresh hosts; "
          f"h2: {P['h2']['conns']} connection x {P['h2']['streams']} streams)")

    out = a.json or os.path.join(HERE, "results-%s.json" % datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    meta = {"time": datetime.datetime.now().isoformat(), "smoke": a.smoke, "reps": reps,
            "duration": a.duration, "params": P, "cpus": os.cpu_count(),
            "pinning": {"proxy": pin(1), "client_and_origins": pin(0)},
            "idle_spinners": bool(spinners),
            "uname": os.uname().release}
    with open(out, "w") as f:
        json.dump({"meta": meta, "table": table, "runs": results,
                   "failures": failures}, f, indent=1, default=str)
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
