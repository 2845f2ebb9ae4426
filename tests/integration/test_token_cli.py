"""`agentvault token create | list | revoke` (issue 5): a token is printed
once and stored as a hash; the daemon loads the store at start and on
SIGHUP; a token may use only its services; revoked and expired tokens are
refused."""
import signal
import stat
import time

import base64

from avtest import client
from avtest.checks import assert_curl_proxy_error, auth_values, run_cli
from avtest.daemon import base_env, config_text


def _connect_status(d, tok=None):
    """The proxy's answer to CONNECT api.openai.com:443 with this token."""
    hdr = ""
    if tok is not None:
        hdr = "Proxy-Authorization: Basic " + base64.b64encode(f"agent:{tok}".encode()).decode() + "\r\n"
    c = client.RawConn.connect(d.port, timeout=10)
    try:
        c.send(("CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n" + hdr + "\r\n").encode())
        return c.read_response(method="CONNECT").status
    finally:
        c.close()


def _cli(tmp_path, secrets, state, *args):
    conf = tmp_path / "cli.conf"
    conf.write_text(config_text(secrets))
    env = base_env(tmp_path)
    env.update(secrets.env())
    return run_cli(["token", *args, "-c", conf, "--state-dir", state], env=env)


def _wait_log(d, text, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in d.log_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the daemon log:\n{d.log_dump()}")


def test_token_lifecycle(daemon, upstream, secrets, tmp_path):
    state = tmp_path / "state"
    p = _cli(tmp_path, secrets, state, "create", "--name", "ci", "--services", "openai", "--ttl", "24h")
    assert p.returncode == 0, p.stderr
    tok = p.stdout.strip()
    assert tok.startswith("avt_") and len(tok) == 47, tok
    store = state / "tokens"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert tok not in store.read_text(), "the token itself was stored"
    p = _cli(tmp_path, secrets, state, "list")
    assert p.returncode == 0 and "ci" in p.stdout and "services=openai" in p.stdout, p.stdout
    assert tok not in p.stdout + p.stderr

    d = daemon(config_text(secrets), state_dir=state)
    assert _connect_status(d) == 407
    r = d.curl("https://api.openai.com/echo", userinfo=f"agent:{tok}").ok()
    assert r.status == 200, r.describe()
    assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]
    r = d.curl("https://api.github.com/repos/a/b", userinfo=f"agent:{tok}").ok()
    assert_curl_proxy_error(r, 403, mentions="token ci may not use service github")
    assert _connect_status(d, tok + "x") == 407

    p = _cli(tmp_path, secrets, state, "revoke", "ci")
    assert p.returncode == 0, p.stderr
    d.signal(signal.SIGHUP)
    _wait_log(d, "configuration reloaded")
    assert _connect_status(d, tok) == 407
    assert tok not in d.log_text()


def test_token_expiry(daemon, upstream, secrets, tmp_path):
    state = tmp_path / "state"
    p = _cli(tmp_path, secrets, state, "create", "--name", "short", "--ttl", "2s")
    assert p.returncode == 0, p.stderr
    tok = p.stdout.strip()
    d = daemon(config_text(secrets), state_dir=state)
    assert d.curl("https://api.openai.com/echo", userinfo=f"agent:{tok}").ok().status == 200
    assert _connect_status(d, tok) == 200
    time.sleep(2.2)
    assert _connect_status(d, tok) == 407


def test_token_cli_errors(secrets, tmp_path):
    state = tmp_path / "state"
    p = _cli(tmp_path, secrets, state, "create", "--name", "x", "--services", "nosuch")
    assert p.returncode == 1 and "no service named nosuch" in p.stderr, p.stderr
    p = _cli(tmp_path, secrets, state, "create", "--name", "bad name")
    assert p.returncode == 1 and "token name must be" in p.stderr, p.stderr
    p = _cli(tmp_path, secrets, state, "create", "--name", "x", "--ttl", "soon")
    assert p.returncode == 2 and "--ttl" in p.stderr, p.stderr
    assert _cli(tmp_path, secrets, state, "create", "--name", "x").returncode == 0
    p = _cli(tmp_path, secrets, state, "create", "--name", "x")
    assert p.returncode == 1 and "exists" in p.stderr, p.stderr
    p = _cli(tmp_path, secrets, state, "revoke", "nosuch")
    assert p.returncode == 1 and "no token named nosuch" in p.stderr, p.stderr
    # a store with wider permissions is refused, by the CLI and the daemon
    (state / "tokens").chmod(0o644)
    p = _cli(tmp_path, secrets, state, "list")
    assert p.returncode == 1 and "permissions" in p.stderr, p.stderr
