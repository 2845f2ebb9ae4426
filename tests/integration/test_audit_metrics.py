"""Audit log and /metrics (issue 5): one JSON record per exchange in a 0600
file, never a secret; Prometheus counters on the proxy port."""
import json
import re
import stat
import urllib.request

from avtest.checks import assert_curl_proxy_error, run_cli
from avtest.daemon import base_env, config_text, find_leaks


def _records(path):
    return [json.loads(l) for l in path.read_text().splitlines()]


def test_audit_records(daemon, upstream, secrets, tmp_path):
    audit = tmp_path / "audit.jsonl"
    d = daemon(config_text(secrets, proxy_extra=f"audit = {audit}", tokens=True))
    who = f"agent:{secrets.agent_token}"
    assert d.curl("https://api.openai.com/echo?key=sk-in-query", userinfo=who).ok().status == 200
    assert d.curl("--http2", "-X", "POST", "--data-binary", "hello",
                  "https://api.github.com/repos/acme/x", userinfo=who).ok().status == 404
    r = d.curl("-X", "TRACE", "https://api.openai.com/x", userinfo=who).ok()
    assert_curl_proxy_error(r, 405)
    assert stat.S_IMODE(audit.stat().st_mode) == 0o600
    recs = _records(audit)
    assert len(recs) == 3, recs
    a, b, c = recs
    assert a["token"] == "agent1" and a["service"] == "openai" and a["method"] == "GET"
    assert a["host"] == "api.openai.com:443" and a["path"] == "/echo" and a["status"] == 200
    assert a["injected"] == ["env:OPENAI_API_KEY"] and a["error"] is None
    # /echo reflects the request, credential included: scrubbed once
    assert a["bytes_down"] > 0 and a["ms"] >= 0 and a["redactions"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", a["time"])
    assert b["service"] == "github" and b["method"] == "POST" and b["bytes_up"] == 5
    assert b["proto"] == "h2>h1" and b["injected"] == [f"file:{secrets.github_token_file}"]
    assert c["status"] == 405 and "TRACE" in c["error"] and c["injected"] == []
    text = audit.read_text()
    assert "sk-in-query" not in text, "the query string reached the audit log"
    assert find_leaks(text, secrets.values()) == []


def test_audit_config_errors(tmp_path, secrets):
    f = tmp_path / "a.conf"
    f.write_text("[proxy]\naudit = relative.log\n")
    p = run_cli(["check", "-c", f], env=base_env(tmp_path))
    assert p.returncode == 1 and "audit must be an absolute file path" in p.stderr, p.stderr


def test_audit_unwritable_fails_start(secrets, tmp_path):
    bad = tmp_path / "no" / "such" / "dir" / "audit.log"
    f = tmp_path / "a.conf"
    f.write_text(config_text(secrets, proxy_extra=f"audit = {bad}"))
    env = base_env(tmp_path)
    env.update(secrets.env())
    p = run_cli(["serve", "-c", f, "--listen", "127.0.0.1:0", "--state-dir", tmp_path / "st"], env=env)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert f"cannot open audit log {bad}" in p.stderr, p.stderr


def _metrics(d):
    with urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def _value(text, name):
    m = re.search(r"^" + re.escape(name) + r" (\d+)$", text, re.M)
    assert m, f"{name} missing from /metrics:\n{text}"
    return int(m.group(1))


def test_metrics_counts(daemon, upstream, secrets):
    d = daemon(config_text(secrets, unmatched="deny"))
    for _ in range(2):
        assert d.curl("https://api.openai.com/echo").ok().status == 200
    assert d.curl("--http2", "https://api.openai.com/echo").ok().status == 200
    r = d.curl("https://upstream.test/echo").ok()
    assert_curl_proxy_error(r, 403)
    text = _metrics(d)
    assert _value(text, 'agentvault_exchanges_total{service="openai",status="200"}') == 3
    assert _value(text, 'agentvault_exchanges_total{service="",status="403"}') == 1
    assert _value(text, "agentvault_injected_total") == 3
    assert _value(text, "agentvault_connections_total") >= 4
    assert _value(text, 'agentvault_tls_handshakes_total{side="agent"}') >= 4
    assert _value(text, 'agentvault_tls_handshakes_total{side="upstream"}') >= 1
    assert _value(text, "agentvault_leaf_cache_misses_total") >= 1
    assert _value(text, "agentvault_leaf_cache_hits_total") >= 2
    assert find_leaks(text, secrets.values()) == []


def wait_records(path, n, timeout=10):
    import time
    deadline = time.time() + timeout
    while len(_records(path)) < n and time.time() < deadline:
        time.sleep(0.05)
    return len(_records(path))


def test_reload_audit_off_closes_the_file(daemon, upstream, secrets, tmp_path):
    """A reload that turns the audit log off (or to stdout) closes the file it
    wrote to: before, its descriptor stayed open for the life of the daemon."""
    import os
    import signal
    import time

    audit = tmp_path / "audit.jsonl"
    d = daemon(config_text(secrets, proxy_extra=f"audit = {audit}"))
    assert d.curl("https://api.openai.com/echo").ok().status == 200

    def audit_fds():
        fds = f"/proc/{d.proc.pid}/fd"
        out = []
        for n in os.listdir(fds):
            try:
                if os.readlink(f"{fds}/{n}") == str(audit):
                    out.append(n)
            except OSError:
                pass
        return out
    assert len(audit_fds()) == 1
    for extra in ("", "audit = stdout"):
        conf = d.workdir / "agentvault.conf"
        conf.write_text(config_text(secrets, proxy_extra=extra))
        before = d.log_text().count("configuration reloaded")
        d.signal(signal.SIGHUP)
        deadline = time.time() + 10
        while d.log_text().count("configuration reloaded") == before and time.time() < deadline:
            time.sleep(0.05)
        assert d.log_text().count("configuration reloaded") > before, d.log_dump()
        assert audit_fds() == [], f"{extra or 'audit off'}: the old audit file is still open"
        assert d.curl("https://api.openai.com/echo").ok().status == 200
        conf.write_text(config_text(secrets, proxy_extra=f"audit = {audit}"))
        d.signal(signal.SIGHUP)
        deadline = time.time() + 10
        while len(audit_fds()) != 1 and time.time() < deadline:
            time.sleep(0.05)
        assert len(audit_fds()) == 1
        assert d.curl("https://api.openai.com/echo").ok().status == 200
    # the first request and one after each reopening; none while it was off
    assert wait_records(audit, 3) == 3
