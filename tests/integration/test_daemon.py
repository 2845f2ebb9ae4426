"""The daemon as a program: `check`, the embedded default configuration, the
exchange log line, shutdown, and secrets staying out of its output."""
import base64
import signal
import time

import pytest

from avtest import client
from avtest.checks import auth_values, run_cli
from avtest.daemon import base_env, config_text, find_leaks, forbidden_strings, plain_service


def _env(secrets, tmp_path):
    e = base_env(tmp_path)
    e.update(secrets.env())
    return e


def test_check_accepts_good_config(tmp_path, secrets):
    f = tmp_path / "good.conf"
    f.write_text(config_text(secrets, tokens=True, proxy_extra="allow_private = 10.0.0.0/8",
                             extra=plain_service(8080)))
    p = run_cli(["check", "-c", f], env=_env(secrets, tmp_path))
    assert p.returncode == 0, f"stdout={p.stdout!r} stderr={p.stderr!r}"


BAD_CONFIGS = {
    "bogus-auth": ('[proxy]\nunmatched = passthrough\n[service "openai"]\n'
                   'host = api.openai.com\nauth = bogus\nsecret = env:OPENAI_API_KEY\n'),
    "unknown-key": "[proxy]\nunmatched = passthrough\nfrobnicate = yes\n",
    "unknown-section": "[proxy]\nunmatched = deny\n\n[nonsense]\n",
    "bad-unmatched": "[proxy]\nunmatched = maybe\n",
}
BAD_LINES = {"bogus-auth": 5, "unknown-key": 3, "unknown-section": 4, "bad-unmatched": 2}


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_check_rejects_bad_config_with_line(tmp_path, secrets, name):
    f = tmp_path / "bad.conf"
    f.write_text(BAD_CONFIGS[name])
    p = run_cli(["check", "-c", f], env=_env(secrets, tmp_path))
    assert p.returncode == 1, f"rc={p.returncode} stderr={p.stderr!r}"
    assert f":{BAD_LINES[name]}:" in p.stderr, p.stderr


def test_embedded_default_config(daemon, upstream, secrets, tmp_path, client_home):
    xdg = tmp_path / "xdg-state"
    d = daemon(config=False, state_dir=None, env={"XDG_STATE_HOME": str(xdg)})
    ca = client.run_curl([f"http://127.0.0.1:{d.port}/ca.pem"], home=client_home).ok()
    assert ca.status == 200 and b"BEGIN CERTIFICATE" in ca.body
    ca_file = tmp_path / "embedded-ca.pem"
    ca_file.write_bytes(ca.body)
    # the root was created under the temporary HOME / XDG_STATE_HOME
    stored = [p for p in tmp_path.rglob("ca.pem") if p.read_bytes() == ca.body]
    assert stored, "the daemon's CA is not stored under HOME or XDG_STATE_HOME"
    r = d.curl("-H", "Authorization: Bearer dummy", "https://api.openai.com/echo",
               cacert=ca_file).ok()
    assert r.status == 200, r.describe()
    assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]
    assert f"HTTPS_PROXY=http://127.0.0.1:{d.port}" in d.log_text(), d.log_dump()


def test_exchange_log_line_has_no_query(daemon, upstream):
    d = daemon()
    d.curl("https://api.openai.com/echo?qmarker=q7f3a9e1").ok()
    words = ("GET", "api.openai.com", "/echo", "openai", "200")
    d.wait_log(lambda line: all(w in line for w in words))
    text = d.log_text()
    assert "qmarker" not in text and "q7f3a9e1" not in text, \
        "the query string appears in the daemon's output"


def test_sigterm_idle_exits_zero(daemon):
    d = daemon()
    t0 = time.monotonic()
    assert d.stop() == 0, d.log_dump()
    assert time.monotonic() - t0 < 5


def test_sigterm_drains_inflight_exchange(daemon, upstream):
    d = daemon()
    s = d.streaming_curl("https://api.openai.com/sse")
    try:
        s.wait_line(b"data: first", timeout=6)
        d.signal(signal.SIGTERM)
        # Deliberate delay (not synchronisation): the exchange must still be in
        # flight while the daemon is shutting down.
        time.sleep(0.3)
        assert d.proc.poll() is None, "the daemon exited with an exchange in flight"
        upstream.release_sse()
        s.wait_line(b"data: second", timeout=6)
        assert s.finish() == 0, s.stderr
    finally:
        upstream.release_sse()
        s.kill()
    assert d.wait(5) == 0, d.log_dump()


def test_secrets_never_in_output(daemon, upstream, plain_upstream, secrets):
    port = plain_upstream.port
    d = daemon(config_text(secrets, tokens=True, extra=plain_service(port)),
               extra_resolve=[f"plain.test:{port}:127.0.0.1"])
    ui = f"agent:{secrets.agent_token}"
    d.curl("https://api.openai.com/echo", userinfo=ui).ok()
    d.curl("https://api.github.com/repos/a/b", userinfo=ui).ok()
    d.curl(f"http://plain.test:{port}/echo", userinfo=ui).ok()
    d.curl("--proxy-header", f"Proxy-Authorization: Bearer {secrets.agent_token}",
           "https://api.openai.com/echo").ok()
    r = d.curl("https://api.openai.com/echo", userinfo="agent:wrong")
    assert r.transfer.connect_status == 407, r.describe()
    assert len(upstream.snapshot()) == 3 and len(plain_upstream.snapshot()) == 1
    assert d.stop() == 0
    text = d.log_text()
    assert text.strip(), "the daemon logged nothing at --log-level debug"
    leaks = find_leaks(text, forbidden_strings(secrets))
    assert not leaks, f"{len(leaks)} secret string(s) in the daemon's output"
    assert base64.b64encode(ui.encode()).decode() not in text
