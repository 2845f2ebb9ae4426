"""Serving from the vault and reloading (issue 5): `secret = vault:NAME`
resolves through the encrypted store the daemon opens at start (password
from AGENTVAULT_PASSWORD or --password-file); SIGHUP reloads config and
secrets without dropping connections, keeps the old config when the new one
is invalid, and reopens the audit log for rotation."""
import concurrent.futures
import signal
import subprocess
import threading
import time

from avtest.checks import assert_curl_proxy_error, auth_values, run_cli
from avtest.daemon import base_env, config_text, require_binary

PW = "serve-master-pw-0123"
V1 = "sk-vault-first-000111222"
V2 = "sk-vault-second-333444555"


def _secret_set(vault, name, value, tmp_path):
    env = base_env(tmp_path)
    env["AGENTVAULT_PASSWORD"] = PW
    env["AGENTVAULT_NEW_PASSWORD"] = PW
    p = subprocess.run([str(require_binary()), "secret", "set", name, "--vault", str(vault)],
                       input=value.encode(), capture_output=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr


def _svc(name="openai"):
    return f'[service "openai"]\nhost = api.openai.com\nauth = bearer\nsecret = vault:{name}\n'


def _cfg(secrets, vault, name="openai", extra_proxy=""):
    return config_text(secrets, services=False, proxy_extra=f"vault = {vault}\n{extra_proxy}",
                       extra=_svc(name))


def _wait_log(d, text, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in d.log_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the daemon log:\n{d.log_dump()}")


def test_vault_secret_injected(daemon, upstream, secrets, tmp_path):
    vault = tmp_path / "v.avv"
    _secret_set(vault, "openai", V1, tmp_path)
    d = daemon(_cfg(secrets, vault), env={"AGENTVAULT_PASSWORD": PW})
    for http in ("--http1.1", "--http2"):
        assert d.curl(http, "https://api.openai.com/echo").ok().status == 200
    for rec in upstream.snapshot():
        assert auth_values(rec) == [f"Bearer {V1}"]
    assert PW not in d.log_text() and V1 not in d.log_text()


def test_vault_missing_secret_fails_closed(daemon, upstream, secrets, tmp_path):
    vault = tmp_path / "v.avv"
    _secret_set(vault, "other", V1, tmp_path)
    d = daemon(_cfg(secrets, vault), env={"AGENTVAULT_PASSWORD": PW})
    r = d.curl("https://api.openai.com/echo").ok()
    assert_curl_proxy_error(r, 502, mentions="no secret named openai in the vault")
    assert upstream.snapshot() == []


def test_vault_wrong_password_refuses_to_start(secrets, tmp_path):
    vault = tmp_path / "v.avv"
    _secret_set(vault, "openai", V1, tmp_path)
    conf = tmp_path / "a.conf"
    conf.write_text(_cfg(secrets, vault))
    env = base_env(tmp_path)
    env["AGENTVAULT_PASSWORD"] = "not-the-password"
    p = run_cli(["serve", "-c", conf, "--listen", "127.0.0.1:0", "--state-dir", tmp_path / "st"], env=env)
    assert p.returncode == 1, p.stderr
    assert str(vault) in p.stderr and "password" in p.stderr.lower(), p.stderr


def test_vault_password_file(daemon, upstream, secrets, tmp_path):
    vault = tmp_path / "v.avv"
    _secret_set(vault, "openai", V1, tmp_path)
    pwf = tmp_path / "pw"
    pwf.write_text(PW + "\n")
    d = daemon(_cfg(secrets, vault), args=["--password-file", str(pwf)])
    assert d.curl("https://api.openai.com/echo").ok().status == 200
    assert auth_values(upstream.only_request()) == [f"Bearer {V1}"]


def test_sighup_reloads_config_and_secrets_under_load(daemon, upstream, secrets, tmp_path):
    vault = tmp_path / "v.avv"
    _secret_set(vault, "openai", V1, tmp_path)
    d = daemon(_cfg(secrets, vault), env={"AGENTVAULT_PASSWORD": PW})
    conf = d.workdir / "agentvault.conf"
    stop = threading.Event()
    failures, statuses = [], []

    def loop():
        while not stop.is_set():
            r = d.curl("https://api.openai.com/echo")
            statuses.append(r.status)
            if r.status != 200:
                failures.append(r.describe())

    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        futs = [ex.submit(loop) for _ in range(2)]
        time.sleep(0.5)
        _secret_set(vault, "openai2", V2, tmp_path)
        conf.write_text(_cfg(secrets, vault, name="openai2"))
        d.signal(signal.SIGHUP)
        _wait_log(d, "configuration reloaded")
        time.sleep(0.5)
        stop.set()
        for f in futs:
            f.result(60)
    assert not failures, failures[:3]
    assert len(statuses) >= 4
    # requests after the reload carry the new secret
    assert d.curl("https://api.openai.com/echo").ok().status == 200
    assert auth_values(upstream.snapshot()[-1]) == [f"Bearer {V2}"]
    seen = {tuple(auth_values(r)) for r in upstream.snapshot()}
    assert (f"Bearer {V1}",) in seen


def test_sighup_invalid_config_keeps_the_old_one(daemon, upstream, secrets, tmp_path):
    d = daemon()
    conf = d.workdir / "agentvault.conf"
    conf.write_text("[proxy]\nunmatched = maybe\n")
    d.signal(signal.SIGHUP)
    _wait_log(d, "reload failed")
    assert "unmatched must be" in d.log_text()
    assert d.curl("https://api.openai.com/echo").ok().status == 200
    assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]


def test_sighup_reopens_audit_log(daemon, upstream, secrets, tmp_path):
    audit = tmp_path / "audit.jsonl"
    d = daemon(config_text(secrets, proxy_extra=f"audit = {audit}"))
    assert d.curl("https://api.openai.com/echo").ok().status == 200
    rotated = tmp_path / "audit.jsonl.1"
    audit.rename(rotated)
    d.signal(signal.SIGHUP)
    _wait_log(d, "configuration reloaded")
    assert d.curl("https://api.openai.com/echo").ok().status == 200
    assert len(rotated.read_text().splitlines()) == 1
    assert len(audit.read_text().splitlines()) == 1


def _serve(conf, tmp_path, env_pw=PW):
    env = base_env(tmp_path)
    env["AGENTVAULT_PASSWORD"] = env_pw
    return run_cli(["serve", "-c", conf, "--listen", "127.0.0.1:0", "--state-dir", tmp_path / "st"], env=env)


def test_serve_refuses_vault_others_can_read(secrets, tmp_path):
    vault = tmp_path / "v.avv"
    _secret_set(vault, "openai", V1, tmp_path)
    vault.chmod(0o640)
    conf = tmp_path / "a.conf"
    conf.write_text(_cfg(secrets, vault))
    p = _serve(conf, tmp_path)
    assert p.returncode == 1, p.stderr
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and f"chmod 600 {vault}" in err, err


def test_serve_refuses_symlinked_vault(secrets, tmp_path):
    vault = tmp_path / "v.avv"
    _secret_set(vault, "openai", V1, tmp_path)
    link = tmp_path / "link.avv"
    link.symlink_to(vault)
    conf = tmp_path / "a.conf"
    conf.write_text(_cfg(secrets, link))
    p = _serve(conf, tmp_path)
    assert p.returncode == 1, p.stderr
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and str(link) in err and "symbolic link" in err, err


def test_sighup_refuses_loosened_vault_and_keeps_serving(daemon, upstream, secrets, tmp_path):
    vault = tmp_path / "v.avv"
    _secret_set(vault, "openai", V1, tmp_path)
    d = daemon(_cfg(secrets, vault), env={"AGENTVAULT_PASSWORD": PW})
    vault.chmod(0o644)
    d.signal(signal.SIGHUP)
    _wait_log(d, f"chmod 600 {vault}")
    assert "reload failed" in d.log_text()
    assert d.curl("https://api.openai.com/echo").ok().status == 200
    assert auth_values(upstream.only_request()) == [f"Bearer {V1}"]
    vault.chmod(0o600)  # teardown: the daemon exits 0


def test_check_refuses_what_serve_refuses(secrets, tmp_path):
    vault = tmp_path / "v.avv"
    _secret_set(vault, "openai", V1, tmp_path)
    conf = tmp_path / "a.conf"
    conf.write_text(_cfg(secrets, vault))
    env = base_env(tmp_path)  # no password: check never decrypts
    p = run_cli(["check", "-c", conf], env=env)
    assert p.returncode == 0, p.stderr
    vault.chmod(0o604)
    p = run_cli(["check", "-c", conf], env=env)
    err = p.stderr.strip()
    assert p.returncode == 1 and len(err.splitlines()) == 1 and f"chmod 600 {vault}" in err, err
    link = tmp_path / "link.avv"
    link.symlink_to(vault)
    vault.chmod(0o600)
    conf.write_text(_cfg(secrets, link))
    p = run_cli(["check", "-c", conf], env=env)
    assert p.returncode == 1 and "symbolic link" in p.stderr, p.stderr
