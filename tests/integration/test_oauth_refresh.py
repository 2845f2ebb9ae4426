"""secret = oauth2:refresh_token: the proxy mints access tokens with a
refresh token kept in the vault, and writes a rotated refresh token back to
the vault before it uses the new access token (docs/CONFIG.md "Minted OAuth
2.0 tokens").

The fake token endpoint (avtest/oauth_server.py) implements the refresh
grant with rotation (the refresh token used stops being valid) and without;
the API behind it takes only current access tokens. The daemon serves with
`[proxy] vault = ...`; the vault is written by the real `agentvault secret`
CLI. That the vault holds the rotated token is shown by a restarted daemon
minting with it (the endpoint refuses the old one).
"""
import fcntl
import json
import os
import subprocess
import threading
import time

import pytest
import requests

from avtest import daemon as avd
from avtest.checks import run_concurrently
from avtest.gateway import received
from avtest.oauth_server import LEAK_DESCRIPTION, OAuthServer, leaf_for

PW = "refresh-vault-pw-0123"
CLIENT_ID = "refresh client"
CLIENT_SECRET = "rcs-" + os.urandom(8).hex()
API = "https://api.oauth.test/v1/things"
RT0 = "rt-initial-" + os.urandom(8).hex()


@pytest.fixture(scope="module")
def server(test_ca, tmp_path_factory):
    leaf = leaf_for(test_ca, tmp_path_factory.mktemp("oauth-refresh-origin"))
    s = OAuthServer(leaf.cert_path, leaf.key_path, CLIENT_ID, CLIENT_SECRET).start()
    yield s
    s.stop()


def cli(tmp_path, *args, value=None):
    env = avd.base_env(tmp_path)
    env["AGENTVAULT_PASSWORD"] = PW
    env["AGENTVAULT_NEW_PASSWORD"] = PW
    p = subprocess.run([str(avd.require_binary()), "secret", *args], input=(value or "").encode(),
                       capture_output=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.decode()


def service(extra="", secret_line="client_secret = env:OAUTH_CLIENT_SECRET\n"):
    return f"""[service "api"]
host = api.oauth.test
auth = bearer
secret = oauth2:refresh_token
token_url = https://auth.oauth.test/oauth/token
client_id = {CLIENT_ID}
{secret_line}refresh_token = vault:api-refresh
{extra}
"""


@pytest.fixture
def vault(tmp_path, server):
    server.reset()
    server.refresh_valid = {RT0}
    v = tmp_path / "v.avv"
    cli(tmp_path, "set", "api-refresh", "--vault", str(v), value=RT0)
    cli(tmp_path, "set", "keep", "--vault", str(v), value="kept-value")
    return v


@pytest.fixture
def refresh_daemon(daemon, server, vault):
    started = []

    def start(svc=None):
        cfg = f"[proxy]\nunmatched = deny\nvault = {vault}\n\n" + (svc or service())
        d = daemon(cfg, env={"AGENTVAULT_PASSWORD": PW, "OAUTH_CLIENT_SECRET": CLIENT_SECRET},
                   resolve=[f"{h}:443:127.0.0.1:{server.port}" for h in ("auth.oauth.test", "api.oauth.test")])
        started.append(d)
        return d
    yield start
    # access and refresh tokens are secrets: never in the output or audit log
    toks = server.tokens() + [RT0, CLIENT_SECRET]
    for d in started:
        text = d.log_text()
        audit_path = d.workdir / "audit.jsonl"
        if audit_path.exists():
            text += audit_path.read_text()
        assert not [t for t in toks if t in text], "a token reached the log or the audit"


def get(d, url=API):
    r = requests.get(url, proxies={"https": d.proxy_url("http")}, verify=str(d.ca_pem), timeout=30)
    received(r.content, "\n".join(f"{k}: {v}" for k, v in r.headers.items()))
    return r


def audit(d):
    return [json.loads(line) for line in (d.workdir / "audit.jsonl").read_text().splitlines() if line]


def names(tmp_path, vault):
    return cli(tmp_path, "list", "--vault", str(vault))


def test_rotation_written_back_and_kept_across_restart(refresh_daemon, server, vault, tmp_path):
    d = refresh_daemon()
    r = d.curl(API)
    assert r.status == 200, r.describe()
    assert server.current not in r.text  # the echoed token is scrubbed
    req = server.requests[0]
    assert req["form"] == {"grant_type": ["refresh_token"], "refresh_token": [RT0]}
    assert req["headers"]["authorization"].startswith("Basic ")
    assert server.refresh_used == [RT0] and len(server.refresh_issued) == 1
    rt1 = server.refresh_issued[0]
    assert "the refresh token was rotated; saved as vault:api-refresh" in d.log_text()
    # the CLI writes another entry between two mints
    cli(tmp_path, "set", "between", "--vault", str(vault), value="between-value")
    # the API stops taking the token: the proxy mints again, with the
    # rotated refresh token, and replays the GET
    server.revoked.add(server.current)
    assert get(d).status_code == 200
    assert server.refresh_used == [RT0, rt1] and len(server.refresh_issued) == 2
    rt2 = server.refresh_issued[1]
    assert server.refresh_valid == {rt2}
    listing = names(tmp_path, vault)
    for n in ("api-refresh", "keep", "between"):
        assert n in listing, listing
    recs = [x for x in audit(d) if x["service"] == "api"]
    assert [x["mint"] for x in recs] == ["minted", "minted"]
    assert all(x["injected"] == ["oauth2:refresh_token"] for x in recs)
    d.stop()
    # a new daemon mints with what the vault now holds (RT0 and rt1 are dead)
    d2 = refresh_daemon()
    assert d2.curl(API).status == 200
    assert server.refresh_used == [RT0, rt1, rt2]
    # the CLI's entry survived the daemon's writes
    assert "between" in names(tmp_path, vault)


def test_no_rotation_leaves_the_vault_alone(refresh_daemon, server, vault):
    server.rotate = False
    server.echo_refresh = True  # the same refresh token back: not a rotation
    before = vault.read_bytes()
    d = refresh_daemon()
    assert d.curl(API).status == 200
    server.revoked.add(server.current)
    assert get(d).status_code == 200
    assert server.refresh_used == [RT0, RT0]
    assert vault.read_bytes() == before
    assert "rotated" not in d.log_text()


def test_concurrent_requests_mint_once(refresh_daemon, server):
    server.mint_delay = 0.5
    d = refresh_daemon()
    results = run_concurrently(lambda: get(d).status_code, 40)
    assert results == [200] * 40, results
    assert server.mints == 1 and server.refresh_used == [RT0]


def test_invalid_grant_gives_502(refresh_daemon, server):
    server.refresh_valid = {"rt-something-else"}
    d = refresh_daemon()
    r = d.curl(API)
    assert r.status == 502, r.describe()
    assert "credential for service api unavailable: the token endpoint answered 400 (invalid_grant)" in r.text
    assert LEAK_DESCRIPTION not in r.text and LEAK_DESCRIPTION not in d.log_text()
    assert len(r.text.strip().splitlines()) == 1
    assert server.mints == 0


def hold_lock(vault, seconds):
    """Holds the vault's writers' lock (as `agentvault secret` does) for
    |seconds| in a thread; returns the thread."""
    fd = os.open(str(vault) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)

    def release():
        time.sleep(seconds)
        os.close(fd)
    t = threading.Thread(target=release)
    t.start()
    return t


def test_lock_held_briefly_waits_without_blocking(refresh_daemon, server, vault):
    """Another writer holds the lock for 1.5 s: the write-back waits for it
    (tried again from a timer) and the request is then served; meanwhile
    the daemon answers other requests at once (a loop sleeping on the lock
    would answer /metrics only after more than a second)."""
    d = refresh_daemon()
    t = hold_lock(vault, 1.5)
    result = {}

    def one():
        t0 = time.monotonic()
        result["status"] = get(d).status_code
        result["took"] = time.monotonic() - t0
    th = threading.Thread(target=one)
    th.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    m = d.curl(f"http://127.0.0.1:{d.port}/metrics", proxy=False)
    took = time.monotonic() - t0
    th.join(30)
    t.join()
    assert m.status == 200 and took < 0.7, took  # the loop was not blocked
    assert result["status"] == 200 and result["took"] >= 1.0, result
    assert server.refresh_issued and RT0 not in server.refresh_valid
    d.stop()
    d2 = refresh_daemon()
    assert d2.curl(API).status == 200
    assert server.refresh_used == [RT0, server.refresh_issued[0]]


def test_write_back_failure_gives_502_and_is_logged(refresh_daemon, server, vault):
    """The lock stays held past the 2 s bound: the new access token is not
    used (502), the error names the vault file; the old refresh token was
    invalidated by the server, so the next mint is refused: documented."""
    d = refresh_daemon()
    t = hold_lock(vault, 3.0)
    before = vault.read_bytes()
    r = d.curl(API)
    t.join()
    assert r.status == 502, r.describe()
    assert ("credential for service api unavailable: the token endpoint rotated the refresh token and saving it "
            "to the vault failed") in r.text
    assert len(r.text.strip().splitlines()) == 1
    log = d.log_text()
    assert f"writing it back to vault {vault} failed" in log and "another writer holds the vault" in log, log
    assert vault.read_bytes() == before
    assert server.api_calls == []  # the new access token was never sent
    time.sleep(2.2)  # the failure is the answer for 2 s; then a new try
    r = d.curl(API)
    assert r.status == 502 and "(invalid_grant)" in r.text
    assert server.refresh_used == [RT0, RT0]


def test_public_client(refresh_daemon, server):
    server.allow_public = True
    d = refresh_daemon(service(secret_line=""))
    assert d.curl(API).status == 200
    req = server.requests[0]
    assert "authorization" not in req["headers"]
    assert req["form"] == {"grant_type": ["refresh_token"], "refresh_token": [RT0], "client_id": [CLIENT_ID]}


def test_refresh_token_missing_from_vault(refresh_daemon, server):
    d = refresh_daemon(service().replace("vault:api-refresh", "vault:nope"))
    r = d.curl(API)
    assert r.status == 502
    assert "refresh token unavailable: no such secret in the vault" in r.text
    assert server.requests == []


def check_fails(tmp_path, text, message):
    conf = tmp_path / "c.conf"
    conf.write_text(text)
    p = subprocess.run([str(avd.require_binary()), "check", "-c", str(conf)], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "S": "x"}, timeout=30)
    assert p.returncode != 0
    assert message in p.stderr, p.stderr


BASE = '[service "x"]\nhost = x.test\nauth = bearer\nsecret = oauth2:refresh_token\n'


@pytest.mark.parametrize("text,message", [
    (BASE + "token_url = https://a.test/t\nclient_id = c\nrefresh_token = env:S\n",
     "c.conf:7: refresh_token must be vault:NAME"),
    (BASE + "token_url = https://a.test/t\nclient_id = c\nrefresh_token = file:/x\n",
     "c.conf:7: refresh_token must be vault:NAME"),
    (BASE + "token_url = https://a.test/t\nclient_id = c\nrefresh_token = vault:bad name\n",
     "c.conf:7: refresh_token must be vault:NAME (NAME: 1-64 of"),
    (BASE + "token_url = https://a.test/t\nclient_id = c\n",
     'c.conf:1: service "x": secret = oauth2:refresh_token needs refresh_token = vault:NAME'),
    (BASE + "client_id = c\nrefresh_token = vault:r\n", "needs token_url"),
    (BASE + "token_url = https://a.test/t\nrefresh_token = vault:r\n", "needs client_id"),
    (BASE + "token_url = https://a.test/t\nclient_id = c\nrefresh_token = vault:r\nclient_auth = post\n",
     'c.conf:1: service "x": client_auth needs client_secret'),
    ('[service "x"]\nhost = x.test\nauth = bearer\nsecret = oauth2:client_credentials\n'
     "token_url = https://a.test/t\nclient_id = c\nclient_secret = env:S\nrefresh_token = vault:r\n",
     'c.conf:1: service "x": refresh_token needs secret = oauth2:refresh_token'),
    ('[service "x"]\nhost = x.test\nauth = bearer\nsecret = env:S\nrefresh_token = vault:r\n',
     "need secret = oauth2:client_credentials or oauth2:refresh_token"),
    (BASE.replace("refresh_token\n", "refresh\n"), 'unknown OAuth 2.0 grant "refresh"'),
])
def test_check_reports_refresh_keys(tmp_path, text, message):
    check_fails(tmp_path, text, message)
