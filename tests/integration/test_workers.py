"""Worker threads (issue 17, part 1): [proxy] workers = N runs N event loops,
each accepting on its own SO_REUSEPORT listener. These tests start their
daemons with two workers whatever AVTEST_WORKERS says, and check what must
hold across workers: both take connections, /metrics sums them, a reload
reaches every worker, a drain waits for the exchanges of every worker, a
token's rate is per process, audit records stay whole, and the setting's
errors are clear."""
import json
import re
import signal
import socket
import time
import urllib.request

from avtest.checks import assert_curl_proxy_error, run_cli, run_concurrently
from avtest.daemon import base_env, config_text

WORKERS = ["--workers", "2"]


def _metrics(d):
    with urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics", timeout=10) as r:
        assert r.status == 200
        return r.read().decode()


def _value(text, name):
    m = re.search(r"^" + re.escape(name) + r" (\d+)$", text, re.M)
    assert m, f"{name} missing from /metrics:\n{text}"
    return int(m.group(1))


def _per_worker(d):
    """Connections each worker accepted, by worker number."""
    rows = re.findall(r'^agentvault_worker_connections_total\{worker="(\d+)"\} (\d+)$', _metrics(d), re.M)
    return {int(w): int(n) for w, n in rows}


def _delta(before, after):
    return {w: after[w] - before.get(w, 0) for w in after}


def _healthz(port):
    """One GET /healthz on a new connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data
    return data


def _both_took_some(delta):
    assert sorted(delta) == [0, 1], delta
    assert all(n >= 1 for n in delta.values()), f"one worker took every connection: {delta}"


def test_two_workers_both_accept(daemon):
    d = daemon(args=WORKERS)
    assert "2 worker(s)" in d.log_text(), d.log_dump()
    before = _per_worker(d)
    for _ in range(40):
        _healthz(d.port)
    delta = _delta(before, _per_worker(d))
    # 40 connections plus the /metrics request that read the counters
    assert sum(delta.values()) == 41, delta
    _both_took_some(delta)


def test_one_worker_has_one_row(daemon):
    d = daemon(args=["--workers", "1"])
    assert "1 worker(s)" in d.log_text(), d.log_dump()
    assert sorted(_per_worker(d)) == [0]


def test_metrics_sum_every_worker(daemon, upstream, secrets):
    d = daemon(config_text(secrets), args=WORKERS)
    before = _per_worker(d)
    for _ in range(16):
        assert d.curl("https://api.openai.com/echo").ok().status == 200
    text = _metrics(d)
    assert _value(text, 'agentvault_exchanges_total{service="openai",status="200"}') == 16
    assert _value(text, "agentvault_injected_total") == 16
    assert _value(text, 'agentvault_exchange_ends_total{end="complete"}') == 16
    assert _value(text, 'agentvault_tls_handshakes_total{side="agent"}') == 16
    _both_took_some(_delta(before, _per_worker(d)))


def test_reload_reaches_every_worker(daemon, upstream, secrets, tmp_path):
    new_token = "av-new-token-" + "7" * 24
    tok_file = tmp_path / "new-token"
    tok_file.write_text(new_token)
    tok_file.chmod(0o600)
    conf_old = config_text(secrets, tokens=True)
    d = daemon(conf_old, args=WORKERS)
    old_who, new_who = f"agent:{secrets.agent_token}", f"agent:{new_token}"
    assert d.curl("https://api.openai.com/echo", userinfo=old_who).ok().status == 200
    conf = d.workdir / "agentvault.conf"
    conf.write_text(conf.read_text().replace("secret = env:AGENT1_TOKEN", f"secret = file:{tok_file}"))
    before = d.log_text().count("configuration reloaded")
    d.signal(signal.SIGHUP)
    d.wait_log(lambda text: text.count("configuration reloaded") > before, timeout=10)
    assert "(every worker)" in d.log_text(), d.log_dump()
    seen = _per_worker(d)
    for _ in range(12):
        r = d.curl("https://api.openai.com/echo", userinfo=new_who).ok()
        assert r.status == 200, r.describe()
        r = d.curl("https://api.openai.com/echo", userinfo=old_who)
        assert r.transfer.connect_status == 407, r.describe()
    _both_took_some(_delta(seen, _per_worker(d)))


def test_drain_waits_for_every_worker(daemon, upstream):
    d = daemon(args=WORKERS)
    before = _per_worker(d)
    streams = [d.streaming_curl("https://api.openai.com/sse") for _ in range(12)]
    try:
        for s in streams:
            s.wait_line(b"data: first", timeout=10)
        _both_took_some(_delta(before, _per_worker(d)))
        d.signal(signal.SIGTERM)
        d.wait_log(lambda text: "shutting down" in text, timeout=5)
        # Deliberate delay (not synchronisation): every exchange must still be
        # in flight while both workers drain.
        time.sleep(0.3)
        assert d.proc.poll() is None, "the daemon exited with exchanges in flight"
        with socket.socket() as s:  # no worker accepts any more
            assert s.connect_ex(("127.0.0.1", d.port)) != 0
        upstream.release_sse()
        for s in streams:
            s.wait_line(b"data: second", timeout=10)
            assert s.finish() == 0, s.stderr
    finally:
        upstream.release_sse()
        for s in streams:
            s.kill()
    assert d.wait(10) == 0, d.log_dump()
    # the count covers every worker's connections (plus, perhaps, the /metrics
    # connection the daemon has not seen closed yet)
    m = re.search(r"shutting down: (\d+) connection\(s\) to drain", d.log_text())
    assert m and int(m.group(1)) in (12, 13), d.log_dump()


def test_rate_is_per_process(daemon, upstream, secrets):
    cfg = config_text(secrets, extra='[token "agent1"]\nsecret = env:AGENT1_TOKEN\nrate = 1/min\nburst = 4\n')
    d = daemon(cfg, args=WORKERS)
    who = f"agent:{secrets.agent_token}"
    before = _per_worker(d)
    statuses = []
    for _ in range(14):
        r = d.curl("https://api.openai.com/echo", userinfo=who).ok()
        statuses.append(r.status)
        if r.status != 200:
            assert_curl_proxy_error(r, 429, mentions="rate limit of token agent1 exceeded")
    _both_took_some(_delta(before, _per_worker(d)))
    # one bucket for the process: 4 requests, not 4 per worker
    assert statuses.count(200) == 4, statuses
    assert len(upstream.snapshot()) == 4


def test_audit_records_whole_from_every_worker(daemon, upstream, secrets, tmp_path):
    audit = tmp_path / "audit.jsonl"
    d = daemon(config_text(secrets, proxy_extra=f"audit = {audit}"), args=WORKERS)
    before = _per_worker(d)
    path = "/big/60000"  # long records: the path repeats in every line

    def five():
        return [d.curl(f"https://api.openai.com/echo?{i}").ok().status for i in range(5)] + \
               [d.curl(f"https://api.openai.com{path}").ok().status]
    results = run_concurrently(five, 8)
    assert all(r == [200] * 6 for r in results), results
    _both_took_some(_delta(before, _per_worker(d)))
    lines = audit.read_text().splitlines()
    assert len(lines) == 48, len(lines)
    recs = [json.loads(line) for line in lines]  # every line one whole record
    assert sorted(r["path"] for r in recs).count("/echo") == 40


def test_command_secret_runs_once_for_every_worker(daemon, upstream, secrets, tmp_path):
    """A command: secret runs once per TTL for the process: the worker that
    asks first runs it, the others wait for that run."""
    count = tmp_path / "runs"
    prog = tmp_path / "getkey"
    prog.write_text(f'#!/bin/sh\necho x >> "{count}"\nsleep 0.5\necho {secrets.openai_key}\n')
    prog.chmod(0o700)
    cfg = config_text(secrets, services=False, proxy_extra="secret_ttl = 60",
                      extra=f'[service "openai"]\nhost = api.openai.com\nauth = bearer\nsecret = command:{prog}\n')
    d = daemon(cfg, args=WORKERS)
    before = _per_worker(d)
    results = run_concurrently(lambda: d.curl("https://api.openai.com/echo").ok().status, 12)
    assert results == [200] * 12, results
    _both_took_some(_delta(before, _per_worker(d)))
    for _ in range(6):  # later requests, on either worker, use the cached answer
        assert d.curl("https://api.openai.com/echo").ok().status == 200
    assert count.read_text().count("x") == 1, "the command ran more than once within its TTL"
    auths = [r.header("authorization") for r in upstream.snapshot()]
    assert auths == [f"Bearer {secrets.openai_key}"] * 18, auths


def test_workers_config_errors(tmp_path):
    for value in ("0", "65", "two", "-1", "2.5"):
        f = tmp_path / "w.conf"
        f.write_text(f"[proxy]\nworkers = {value}\n")
        p = run_cli(["check", "-c", f], env=base_env(tmp_path))
        assert p.returncode == 1, (value, p.stderr)
        assert "workers must be a whole number in [1, 64] or auto" in p.stderr, p.stderr
    for value in ("auto", "1", "64"):
        f = tmp_path / "w.conf"
        f.write_text(f"[proxy]\nworkers = {value}\n")
        p = run_cli(["check", "-c", f], env=base_env(tmp_path))
        assert p.returncode == 0, (value, p.stderr)
    p = run_cli(["serve", "--workers", "0", "--state-dir", tmp_path / "st"], env=base_env(tmp_path))
    assert p.returncode == 2 and "--workers must be a whole number in [1, 64] or auto" in p.stderr, p.stderr


def test_workers_cannot_change_on_reload(daemon, upstream, secrets):
    d = daemon(config_text(secrets, proxy_extra="workers = 2"))
    assert "2 worker(s)" in d.log_text(), d.log_dump()
    conf = d.workdir / "agentvault.conf"
    conf.write_text(conf.read_text().replace("workers = 2", "workers = 1"))
    d.signal(signal.SIGHUP)
    d.wait_log(lambda text: "reload failed" in text, timeout=10)
    assert "workers cannot change on reload (2 running): restart instead" in d.log_text(), d.log_dump()
    assert d.curl("https://api.openai.com/echo").ok().status == 200
