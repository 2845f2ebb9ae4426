"""Secret sources beyond env: and file: (issue 5): command: runs a program
without a shell, without blocking the event loop, once for many concurrent
requests, cached for secret_ttl; failures fail the request closed (502 with
the reason, nothing sent upstream)."""
import concurrent.futures
import stat
import time

from avtest.checks import assert_curl_proxy_error, auth_values, run_cli
from avtest.daemon import base_env, config_text

KEY = "sk-cmd-0123456789abcdef"


def _script(tmp_path, name, body):
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return p


def _service(ref, name="openai", host="api.openai.com"):
    return f'[service "{name}"]\nhost = {host}\nauth = bearer\nsecret = {ref}\n'


def test_command_secret_injected_and_cached(daemon, upstream, secrets, tmp_path):
    count = tmp_path / "runs"
    prog = _script(tmp_path, "getkey", f'echo x >> "{count}"\nsleep 0.3\necho {KEY}\n')
    d = daemon(config_text(secrets, services=False, proxy_extra="secret_ttl = 60",
                           extra=_service(f"command:{prog}")))
    # Concurrent first requests share one run; none is sent bare.
    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        results = list(ex.map(lambda i: d.curl(f"https://api.openai.com/echo?i={i}").ok(), range(6)))
    for r in results:
        assert r.status == 200, r.describe()
    d.curl("https://api.openai.com/echo?later").ok()
    assert count.read_text().count("x") == 1, "the command ran more than once within its TTL"
    recs = upstream.snapshot()
    assert len(recs) == 7
    for rec in recs:
        assert auth_values(rec) == [f"Bearer {KEY}"]


def test_command_does_not_block_other_traffic(daemon, upstream, secrets, tmp_path):
    slow = _script(tmp_path, "slow", f"sleep 2\necho {KEY}\n")
    extra = _service(f"command:{slow}") + "\n" + _service("env:PLAIN_API_KEY", "gh", "api.github.com")
    d = daemon(config_text(secrets, services=False, extra=extra))
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        pending = ex.submit(lambda: d.curl("https://api.openai.com/echo").ok())
        time.sleep(0.3)  # the command is running now
        t0 = time.monotonic()
        r = d.curl("https://api.github.com/echo").ok()
        elapsed = time.monotonic() - t0
        assert not pending.done()
        done = pending.result(10)
    assert r.status == 200, r.describe()
    assert elapsed < 1.5, f"a request to another service waited {elapsed:.1f}s for the command"
    assert done.status == 200, done.describe()


def test_command_ttl_zero_runs_every_time(daemon, upstream, secrets, tmp_path):
    count = tmp_path / "runs"
    prog = _script(tmp_path, "getkey", f'echo x >> "{count}"\necho {KEY}\n')
    d = daemon(config_text(secrets, services=False, proxy_extra="secret_ttl = 0",
                           extra=_service(f"command:{prog} --flag 'two words'")))
    for _ in range(3):
        assert d.curl("https://api.openai.com/echo").ok().status == 200
    assert count.read_text().count("x") == 3


def test_command_arguments_without_shell(daemon, upstream, secrets, tmp_path):
    out = tmp_path / "argv.out"
    prog = _script(tmp_path, "argv", f'for a in "$@"; do echo "[$a]" >> "{out}"; done\necho {KEY}\n')
    d = daemon(config_text(secrets, services=False,
                           extra=_service(f"command:{prog} plain 'two words' \"$HOME\" ;ls")))
    assert d.curl("https://api.openai.com/echo").ok().status == 200
    assert out.read_text().splitlines() == ["[plain]", "[two words]", "[$HOME]", "[;ls]"]


def test_failing_command_fails_closed(daemon, upstream, secrets, tmp_path):
    prog = _script(tmp_path, "fail", f"echo {KEY}\nexit 4\n")
    d = daemon(config_text(secrets, services=False, extra=_service(f"command:{prog}")))
    r = d.curl("https://api.openai.com/echo").ok()
    assert_curl_proxy_error(r, 502, mentions="exited with status 4")
    assert KEY not in r.body.decode() + repr(r.headers)
    assert upstream.snapshot() == [], "a request went upstream without its credential"


def test_command_timeout_fails_closed(daemon, upstream, secrets, tmp_path):
    prog = _script(tmp_path, "hang", "sleep 30\n")
    d = daemon(config_text(secrets, services=False, proxy_extra="command_timeout = 0.5",
                           extra=_service(f"command:{prog}")))
    t0 = time.monotonic()
    r = d.curl("https://api.openai.com/echo").ok()
    assert time.monotonic() - t0 < 5
    assert_curl_proxy_error(r, 502, mentions="did not finish")
    assert upstream.snapshot() == []


def test_command_secret_over_http2(daemon, upstream, secrets, tmp_path):
    prog = _script(tmp_path, "getkey", f"sleep 0.2\necho {KEY}\n")
    d = daemon(config_text(secrets, services=False, extra=_service(f"command:{prog}")))
    r = d.curl("--http2", "https://api.openai.com/echo").ok()
    assert r.status == 200, r.describe()
    assert auth_values(upstream.only_request()) == [f"Bearer {KEY}"]


def test_relative_command_rejected_by_check(tmp_path):
    f = tmp_path / "bad.conf"
    f.write_text('[service "x"]\nhost = a.example\nauth = bearer\nsecret = command:pass show x\n')
    p = run_cli(["check", "-c", f], env=base_env(tmp_path))
    assert p.returncode == 1, p.stderr
    assert "bad.conf:4:" in p.stderr and "command:/absolute/path" in p.stderr, p.stderr
