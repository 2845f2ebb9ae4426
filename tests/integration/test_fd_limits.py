"""Descriptor limits and the connection cap (issue 12, item 1).

At the open-files limit the accept watcher must not spin: accepting pauses
for a short back-off and resumes by itself, and what happens is logged at
most once per second with a count. Over [proxy] max_connections new
connections are closed at once and counted in /metrics.
"""
import re
import socket
import time
import urllib.request

from avtest import daemon as avd
from avtest.daemon import config_text
from avtest.gateway import gateway_section, gw_config, gw_port

CLK_TCK = 100  # os.sysconf("SC_CLK_TCK") on Linux
LIMIT_RE = re.compile(r"connection limit \((\d+)\) reached: refused (\d+) connection")


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _nlines(d):
    with d._cond:
        return len(d.stdout_lines) + len(d.stderr_lines)


def _open_idle(port, n):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        socks.append(s)
    return socks


def _hold_all(port, n):
    """|n| idle connections that the daemon accepted and keeps, and how many
    were refused on the way. The start-up probe's connection may still be
    closing (a lingering close counts against the cap until the probe's EOF
    is read): while one of the |n| is refused, close them all and try again."""
    refused = 0
    for _ in range(50):
        socks = _open_idle(port, n)
        time.sleep(0.2)
        closed = sum(1 for s in socks if _closed_at_once(s, timeout=0.05))
        if not closed:
            return socks, refused
        refused += closed
        for s in socks:
            s.close()
        time.sleep(0.1)
    raise AssertionError(f"the daemon never kept {n} idle connections")


def _closed_at_once(s, timeout=3.0):
    """True when the daemon closes |s| without an answer within |timeout|."""
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def _metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def _metric(text, name):
    m = re.search(r"^" + re.escape(name) + r" (\d+)$", text, re.M)
    assert m, f"{name} missing from /metrics:\n{text}"
    return int(m.group(1))


def _prlimit(nofile):
    return ["prlimit", f"--nofile={nofile}", str(avd.require_binary())]


def test_saturated_descriptors_do_not_spin(daemon, upstream, secrets):
    # A cap far above what 64 descriptors allow: accept itself fails (EMFILE).
    d = daemon(config_text(secrets, proxy_extra="max_connections = 1000\nheader_timeout = 60"),
               argv0=_prlimit("64:64"))
    flood = _open_idle(d.port, 200)
    try:
        time.sleep(1.0)  # the daemon reaches the limit
        lines0, cpu0, t0 = _nlines(d), _cpu_seconds(d.proc.pid), time.monotonic()
        time.sleep(3.0)
        lines1, cpu1, t1 = _nlines(d), _cpu_seconds(d.proc.pid), time.monotonic()
        wall = t1 - t0
        busy = (cpu1 - cpu0) / wall
        grown = lines1 - lines0
        print(f"EMFILE flood: {busy:.1%} of a core, log +{grown} lines in {wall:.1f}s")
        assert busy < 0.3, f"the daemon used {busy:.0%} of a core while saturated\n{d.log_dump(3000)}"
        assert grown <= 8, f"the log grew by {grown} lines in {wall:.1f}s\n{d.log_dump(3000)}"
        assert "Too many open files" in d.log_text(), d.log_dump(3000)
    finally:
        for s in flood:
            s.close()
    # Accepting resumes by itself once the flood is gone.
    r = d.curl("https://api.openai.com/echo").ok()
    assert r.status == 200, r.describe()


def test_default_cap_under_a_small_limit_refuses_without_spinning(daemon, upstream, secrets):
    d = daemon(config_text(secrets, proxy_extra="header_timeout = 60"), argv0=_prlimit("64:64"))
    flood = _open_idle(d.port, 200)
    try:
        time.sleep(1.0)
        lines0, cpu0, t0 = _nlines(d), _cpu_seconds(d.proc.pid), time.monotonic()
        time.sleep(3.0)
        busy = (_cpu_seconds(d.proc.pid) - cpu0) / (time.monotonic() - t0)
        grown = _nlines(d) - lines0
        print(f"capped flood: {busy:.1%} of a core, log +{grown} lines")
        assert busy < 0.3, f"the daemon used {busy:.0%} of a core\n{d.log_dump(3000)}"
        assert grown <= 8, f"the log grew by {grown} lines\n{d.log_dump(3000)}"
    finally:
        for s in flood:
            s.close()
    r = d.curl("https://api.openai.com/echo").ok()
    assert r.status == 200, r.describe()
    # The refusals were counted and logged with a count, not one line each.
    text = _metrics(d.port)
    refused = _metric(text, 'agentvault_limit_hits_total{limit="connections"}')
    assert refused > 100, text
    lines = [m for m in (LIMIT_RE.search(x) for x in d.log_text().splitlines()) if m]
    assert 1 <= len(lines) <= 8, d.log_dump(3000)


def test_soft_limit_raised_to_hard_and_logged(daemon, upstream, secrets):
    d = daemon(argv0=_prlimit("64:512"))
    with open(f"/proc/{d.proc.pid}/limits") as f:
        row = [x for x in f if x.startswith("Max open files")][0]
    assert row.split()[3:5] == ["512", "512"], row
    line = d.wait_log(lambda x: "open files limit" in x)
    assert "512" in line, line
    assert d.curl("https://api.openai.com/echo").ok().status == 200


def test_max_connections_refuses_at_accept(daemon, upstream, secrets):
    d = daemon(config_text(secrets, proxy_extra="max_connections = 5\nheader_timeout = 60"))
    held, refused_before = _hold_all(d.port, 5)
    extra = []
    try:
        s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        extra.append(s)
        assert _closed_at_once(s), "connection 6 was not closed at once"
        more = _open_idle(d.port, 40)
        extra += more
        assert all(_closed_at_once(x) for x in more)
        # Log lines come with a count, at most one a second.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            counts = [int(m.group(2)) for m in (LIMIT_RE.search(x) for x in d.log_text().splitlines()) if m]
            if sum(counts) == 41 + refused_before:
                break
            time.sleep(0.1)
        assert sum(counts) == 41 + refused_before, d.log_dump(3000)
        assert len(counts) <= 4, d.log_dump(3000)
        assert all(LIMIT_RE.search(x).group(1) == "5" for x in d.log_text().splitlines() if LIMIT_RE.search(x))
    finally:
        for x in held + extra:
            x.close()
    # The held connections are gone: the daemon serves again.
    deadline, retries = time.monotonic() + 5, 0
    while True:
        try:
            text = _metrics(d.port)
            break
        except OSError:  # refused too, while the closes are on their way
            if time.monotonic() > deadline:
                raise
            retries += 1
            time.sleep(0.1)
    assert _metric(text, 'agentvault_limit_hits_total{limit="connections"}') == 41 + refused_before + retries, text
    assert d.curl("https://api.openai.com/echo").ok().status == 200


def test_max_connections_covers_gateway_listeners(daemon, upstream, secrets):
    d = daemon(gw_config(secrets, gateway_section("openai"),
                         proxy_extra="max_connections = 3\nheader_timeout = 60"))
    port = gw_port(d)
    held, _ = _hold_all(d.port, 3)
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        held.append(s)
        assert _closed_at_once(s), "the gateway accepted a connection over the cap"
        d.wait_log(lambda x: LIMIT_RE.search(x) is not None)
    finally:
        for x in held:
            x.close()
    time.sleep(0.3)
    r = d.curl(f"http://127.0.0.1:{port}/echo", proxy=False)
    assert r.status == 200, r.describe()


def test_max_connections_config_errors(tmp_path):
    binary = avd.require_binary()
    import subprocess
    for bad in ("0", "-3", "abc", "100000000"):
        conf = tmp_path / "a.conf"
        conf.write_text(f"[proxy]\nmax_connections = {bad}\n")
        r = subprocess.run([str(binary), "check", "-c", str(conf)], capture_output=True, text=True,
                           env=avd.base_env(tmp_path), timeout=30)
        assert r.returncode == 1, (bad, r.stdout, r.stderr)
        err = r.stderr.strip()
        assert "max_connections" in err and len(err.splitlines()) == 1, err
