"""secret = gcp:service_account and secret = github_app: the proxy signs a
JWT with the configured key (RS256 or ES256) and exchanges it for a token
(docs/CONFIG.md "Google service accounts and GitHub Apps").

The token endpoints and the APIs are one fake TLS server
(avtest/jwt_server.py) reached through --resolve. The endpoints verify each
JWT's signature with the public key and its claims (GitHub's clock rules
included) and count mints; the APIs accept only a current token and echo
it, which the proxy must scrub. Clients: curl (through the proxy and a
gateway), Python requests in threads.
"""
import json
import os
import re
import subprocess
import time

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from avtest import daemon as avd
from avtest.checks import run_concurrently
from avtest.gateway import gateway_section, gw_port, received
from avtest.jwt_server import GCP_AUD, GH_VERSION, JwtServer, leaf_for

EMAIL = "agent@proj.iam.gserviceaccount.test"
APP_ID = 424242
INSTALLATION = 987654321
VERTEX = "https://vertex.gcp.test/v1/projects/p/locations/us-central1/publishers/google/models/gemini:generateContent"
REPOS = "https://repos.github.test/repos/o/r/contents/README.md"


def pem(key, fmt):
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


@pytest.fixture(scope="module")
def keys():
    """Generated once per module (RSA generation is slow under ASan)."""
    return {"rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "rsa2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ec": ec.generate_private_key(ec.SECP256R1())}


@pytest.fixture(scope="module")
def leaf(test_ca, tmp_path_factory):
    return leaf_for(test_ca, tmp_path_factory.mktemp("jwt-origin"))


@pytest.fixture(scope="module")
def server(leaf):
    s = JwtServer(leaf.cert_path, leaf.key_path).start()
    yield s
    s.stop()


def write_secret(path, text):
    path.write_text(text)
    path.chmod(0o600)
    return path


def sa_json(key, kid="k1", token_uri=GCP_AUD, fmt=serialization.PrivateFormat.PKCS8, **extra):
    d = {"type": "service_account", "project_id": "proj", "private_key_id": kid,
         "private_key": pem(key, fmt), "client_email": EMAIL, "client_id": "1234567890",
         "auth_uri": "https://accounts.gcp.test/o/oauth2/auth"}
    if token_uri:
        d["token_uri"] = token_uri
    d.update(extra)
    return json.dumps(d, indent=2)


@pytest.fixture
def jwt_daemon(daemon, server, keys, tmp_path):
    server.reset()
    server.gcp_email = EMAIL
    server.gcp_keys = {"k1": keys["rsa"].public_key(), "kec": keys["ec"].public_key()}
    server.app_id = APP_ID
    server.installation = INSTALLATION
    server.gh_keys = {"app": keys["rsa"].public_key()}
    started = []
    kdir = tmp_path / "keys"
    kdir.mkdir()
    sa = write_secret(kdir / "sa.json", sa_json(keys["rsa"]))
    app_pem = write_secret(kdir / "app.pem", pem(keys["rsa"], serialization.PrivateFormat.TraditionalOpenSSL))

    def start(svc, proxy_extra="", extra="", env=None):
        cfg = f"[proxy]\nunmatched = deny\n{proxy_extra}\n" + svc + extra
        d = daemon(cfg, resolve=[f"{h}:443:127.0.0.1:{server.port}" for h in
                                 ("oauth2.gcp.test", "alt.gcp.test", "vertex.gcp.test", "api.github.test",
                                  "repos.github.test")], env=env)
        started.append(d)
        return d
    start.sa = sa
    start.app_pem = app_pem
    start.kdir = kdir
    yield start
    # keys, JWTs and minted tokens are secrets: never in the output or the audit
    key_lines = [ln for k in keys.values() for ln in pem(k, serialization.PrivateFormat.PKCS8).splitlines()[1:-1]]
    for d in started:
        text = d.log_text()
        audit_path = d.workdir / "audit.jsonl"
        if audit_path.exists():
            text += audit_path.read_text()
        leaked = [t[:12] for t in server.secrets() + key_lines if t in text]
        assert not leaked, f"a key, JWT or minted token reached the log or the audit: {leaked}"


def gcp_service(keyref, args="", token_url=None, name="vertex"):
    return (f'[service "{name}"]\nhost = vertex.gcp.test\nauth = bearer\n'
            f"secret = gcp:service_account {keyref} {args}\n" + (f"token_url = {token_url}\n" if token_url else ""))


def gh_service(keyref, args="", token_url=f"https://api.github.test/app/installations/{INSTALLATION}/access_tokens",
               app=APP_ID):
    return (f'[service "gh"]\nhost = repos.github.test\nauth = bearer\n'
            f"secret = github_app:{app} {keyref} installation={INSTALLATION} {args}\ntoken_url = {token_url}\n")


def audit(d, svc):
    return [r for r in (json.loads(line) for line in (d.workdir / "audit.jsonl").read_text().splitlines() if line)
            if r["service"] == svc]


def metric(d, name, svc):
    text = d.curl(f"http://127.0.0.1:{d.port}/metrics", proxy=False).text
    m = re.search(rf'^{name}{{service="{svc}"}} (\d+)$', text, re.M)
    return int(m.group(1)) if m else 0


def get(d, url):
    r = requests.get(url, proxies={"https": d.proxy_url("http")}, verify=str(d.ca_pem), timeout=30)
    received(r.content, "\n".join(f"{k}: {v}" for k, v in r.headers.items()))
    return r


# ---- Google service accounts --------------------------------------------------

def test_gcp_access_token_on_the_proxy_path(jwt_daemon, server):
    d = jwt_daemon(gcp_service(f"file:{jwt_daemon.sa}",
                               "scope=https://www.googleapis.com/auth/cloud-platform,openid"))
    r = d.curl("-X", "POST", "--data", "{}", VERTEX)
    assert r.status == 200, r.describe()
    body = json.loads(r.text)
    assert body["ok"] and server.current not in r.text  # the echoed token is scrubbed
    assert server.mints == 1
    header, claims = server.verified[0]
    assert header == {"alg": "RS256", "typ": "JWT", "kid": "k1"}
    assert claims["iss"] == EMAIL and claims["aud"] == GCP_AUD
    assert claims["scope"] == "https://www.googleapis.com/auth/cloud-platform openid"
    assert claims["exp"] - claims["iat"] == 3600 and abs(claims["iat"] - time.time()) < 30
    assert "target_audience" not in claims and "sub" not in claims
    assert d.curl(VERTEX).status == 200  # cached
    assert server.mints == 1
    recs = audit(d, "vertex")
    assert [x["mint"] for x in recs] == ["minted", "cached"], recs
    assert all(x["injected"] == ["gcp:service_account", f"file:{jwt_daemon.sa}"] and x["auth"] == "bearer"
               for x in recs), recs
    assert metric(d, "agentvault_token_mints_total", "vertex") == 1
    assert metric(d, "agentvault_token_mint_failures_total", "vertex") == 0


def test_gcp_through_a_gateway_with_token_url(jwt_daemon, server):
    """token_url moves the request (alt.gcp.test); aud stays the key's
    token_uri. The default scope is cloud-platform."""
    d = jwt_daemon(gcp_service(f"file:{jwt_daemon.sa}", token_url="https://alt.gcp.test/token"),
                   extra=gateway_section("vertex", upstream="https://vertex.gcp.test"))
    port = gw_port(d, "vertex")
    r = d.curl(f"http://127.0.0.1:{port}/v1/models", proxy=False)
    assert r.status == 200, r.describe()
    assert json.loads(r.text)["path"] == "/v1/models"
    assert [q["host"] for q in server.requests if q["path"] == "/token"] == ["alt.gcp.test"]
    assert server.verified[0][1]["aud"] == GCP_AUD
    assert server.verified[0][1]["scope"] == "https://www.googleapis.com/auth/cloud-platform"


def test_gcp_id_token_cached_until_its_exp(jwt_daemon, server):
    """target_audience: an ID token, no expires_in: used until its own exp
    claim, then minted again."""
    server.id_ttl = 4
    d = jwt_daemon(gcp_service(f"file:{jwt_daemon.sa}", "target_audience=https://run.gcp.test"))
    assert d.curl(VERTEX).status == 200
    claims = server.verified[0][1]
    assert claims["target_audience"] == "https://run.gcp.test" and "scope" not in claims
    assert d.curl(VERTEX).status == 200
    assert server.mints == 1
    time.sleep(4.2)  # past the ID token's exp (4 s): a new one, and no 401 reached the agent
    r = d.curl(VERTEX)
    assert r.status == 200, r.describe()
    assert server.mints == 2
    assert [ok for _, ok in server.api_calls] == [True] * len(server.api_calls)


def test_gcp_ec_key_es256(jwt_daemon, server, keys):
    """An ECDSA P-256 key (SEC1 "EC PRIVATE KEY" inside the JSON): ES256
    with a raw 64-byte r||s, verified by the endpoint."""
    sa = write_secret(jwt_daemon.kdir / "sa-ec.json",
                      sa_json(keys["ec"], kid="kec", fmt=serialization.PrivateFormat.TraditionalOpenSSL))
    assert "BEGIN EC PRIVATE KEY" in sa.read_text()
    d = jwt_daemon(gcp_service(f"file:{sa}"))
    r = d.curl(VERTEX)
    assert r.status == 200, r.describe()
    assert server.verified[0][0] == {"alg": "ES256", "typ": "JWT", "kid": "kec"}


def test_gcp_refreshed_before_expiry(jwt_daemon, server):
    """Tokens of 3 s: the next one is minted before the current one
    expires, so no request ever gets a 401."""
    server.expires_in = 3
    d = jwt_daemon(gcp_service(f"file:{jwt_daemon.sa}"))
    statuses = []
    with requests.Session() as s:
        end = time.monotonic() + 6.5
        while time.monotonic() < end:
            r = s.get(VERTEX, proxies={"https": d.proxy_url("http")}, verify=str(d.ca_pem), timeout=20)
            received(r.content)
            statuses.append(r.status_code)
            time.sleep(0.1)
    assert set(statuses) == {200}, statuses
    assert server.mints >= 3, server.mints
    assert [ok for _, ok in server.api_calls] == [True] * len(server.api_calls)


def test_gcp_concurrent_requests_mint_once(jwt_daemon, server):
    """100 requests at once with no token yet: one JWT, one mint."""
    server.mint_delay = 0.5
    d = jwt_daemon(gcp_service(f"file:{jwt_daemon.sa}"))
    results = run_concurrently(lambda: get(d, VERTEX).status_code, 100)
    assert results == [200] * 100, results
    assert server.mints == 1 and len(server.jwts) == 1
    assert metric(d, "agentvault_token_mints_total", "vertex") == 1


def test_gcp_revoked_key_gives_502(jwt_daemon, server):
    server.revoked_kids.add("k1")
    d = jwt_daemon(gcp_service(f"file:{jwt_daemon.sa}"))
    r = d.curl(VERTEX)
    assert r.status == 502, r.describe()
    reason = "credential for service vertex unavailable: the token endpoint answered 400 (invalid_grant)"
    assert r.header("X-Agentvault-Error") == reason
    assert metric(d, "agentvault_token_mint_failures_total", "vertex") == 1
    assert metric(d, "agentvault_token_mints_total", "vertex") == 0
    recs = audit(d, "vertex")
    assert len(recs) == 1 and recs[0]["status"] == 502 and recs[0]["error"] == reason, recs
    assert server.api_calls == []  # nothing reached the API without a credential


def test_gcp_key_from_vault_or_command_checked_at_first_use(jwt_daemon, server, tmp_path):
    """A key read only at first use (command:) that is not a key: 502 with a
    reason, and no request to the token endpoint."""
    bad = write_secret(tmp_path / "bad.json", json.dumps({
        "type": "service_account", "client_email": EMAIL,
        "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}))
    script = tmp_path / "key.sh"
    script.write_text(f"#!/bin/sh\ncat {bad}\n")
    script.chmod(0o700)
    d = jwt_daemon(gcp_service(f"command:{script}"))
    r = d.curl(VERTEX)
    assert r.status == 502, r.describe()
    err = r.header("X-Agentvault-Error")
    assert err.startswith("credential for service vertex unavailable: the service-account key's private_key is "
                          "not usable: the key is not a PEM private key"), err
    assert not [q for q in server.requests if q["path"] == "/token"]
    assert metric(d, "agentvault_token_mint_failures_total", "vertex") == 1


# ---- GitHub Apps ---------------------------------------------------------------

def test_github_app_installation_token(jwt_daemon, server):
    d = jwt_daemon(gh_service(f"file:{jwt_daemon.app_pem}",
                              "repositories=r,other-repo permissions=contents:read,issues:write"))
    r = d.curl(REPOS)
    assert r.status == 200, r.describe()
    assert server.current.startswith(f"ghs_{APP_ID}_") and len(server.current) > 100  # not 40 characters
    assert server.current not in r.text
    assert json.loads(r.text)["you_sent"] != server.current
    req = [q for q in server.requests if q["host"] == "api.github.test"][0]
    assert req["headers"]["accept"] == "application/vnd.github+json"
    assert req["headers"]["x-github-api-version"] == GH_VERSION
    assert req["headers"]["content-type"] == "application/json"
    assert server.gh_bodies == [{"repositories": ["r", "other-repo"],
                                 "permissions": {"contents": "read", "issues": "write"}}]
    header, claims = server.verified[0]
    assert header == {"alg": "RS256", "typ": "JWT"}
    now = time.time()
    assert claims["iss"] == str(APP_ID)
    assert now - 90 < claims["iat"] <= now - 50  # backdated a minute
    assert claims["exp"] - claims["iat"] == 600
    assert d.curl(REPOS).status == 200
    assert server.mints == 1
    recs = audit(d, "gh")
    assert [x["mint"] for x in recs] == ["minted", "cached"]
    assert recs[0]["injected"] == [f"github_app:{APP_ID}", f"file:{jwt_daemon.app_pem}"]


def test_github_through_a_gateway_and_a_revoked_token(jwt_daemon, server):
    """Through a gateway; an installation token the API stops taking (401) is
    dropped, and the bodiless request is replayed once with a new one."""
    d = jwt_daemon(gh_service(f"file:{jwt_daemon.app_pem}"),
                   extra=gateway_section("gh", upstream="https://repos.github.test"))
    port = gw_port(d, "gh")
    r = d.curl(f"http://127.0.0.1:{port}/repos/o/r", proxy=False)
    assert r.status == 200, r.describe()
    first = server.current
    server.revoked_tokens.add(first)
    r = d.curl(f"http://127.0.0.1:{port}/repos/o/r/pulls", proxy=False)
    assert r.status == 200, r.describe()
    assert json.loads(r.text)["path"] == "/repos/o/r/pulls"
    assert server.mints == 2 and server.current != first
    assert [ok for _, ok in server.api_calls] == [True, False, True]


def test_github_concurrent_requests_mint_once(jwt_daemon, server):
    """100 requests at once with no token yet: one App JWT, one mint."""
    server.mint_delay = 0.5
    d = jwt_daemon(gh_service(f"file:{jwt_daemon.app_pem}"))
    results = run_concurrently(lambda: get(d, REPOS).status_code, 100)
    assert results == [200] * 100, results
    assert server.mints == 1
    assert len(server.jwts) == 1
    assert server.gh_bodies == [{}]
    recs = audit(d, "gh")
    assert len(recs) == 100
    assert metric(d, "agentvault_token_mints_total", "gh") == 1


def test_github_expiry_mints_again(jwt_daemon, server):
    """A token of 2 s (expires_at): once it is past, the next request gets a
    new one, never the expired one."""
    server.expires_in = 2
    d = jwt_daemon(gh_service(f"file:{jwt_daemon.app_pem}"))
    assert d.curl(REPOS).status == 200
    first = server.current
    time.sleep(2.5)
    r = d.curl(REPOS)
    assert r.status == 200, r.describe()
    assert server.mints == 2 and server.current != first
    assert [x["mint"] for x in audit(d, "gh")] == ["minted", "minted"]
    assert all(ok for _, ok in server.api_calls)


@pytest.mark.parametrize("offset,ok", [(-45, True), (-90, False), (45, True)])
def test_github_clock_skew(jwt_daemon, server, offset, ok):
    """GitHub refuses an iat in its future and exp - iat over 10 minutes: the
    App JWT's iat is a minute back, so a GitHub clock 45 s behind or ahead
    still mints; 90 s behind is refused (502, counted)."""
    server.clock_offset = offset
    d = jwt_daemon(gh_service(f"file:{jwt_daemon.app_pem}"))
    r = d.curl(REPOS)
    if ok:
        assert r.status == 200, r.describe()
        return
    assert r.status == 502
    assert r.header("X-Agentvault-Error") == "credential for service gh unavailable: the token endpoint answered 401"
    assert metric(d, "agentvault_token_mint_failures_total", "gh") == 1


def test_github_revoked_key_then_a_new_key(jwt_daemon, server, keys):
    """The App's key is revoked: 502 with a clear reason and one failure
    counted; after the failure's moment, a new key (rotated in the file and
    reloaded with SIGHUP) mints."""
    server.revoked_kids.add("app")
    d = jwt_daemon(gh_service(f"file:{jwt_daemon.app_pem}"))
    r = d.curl(REPOS)
    assert r.status == 502
    assert r.header("X-Agentvault-Error") == "credential for service gh unavailable: the token endpoint answered 401"
    assert metric(d, "agentvault_token_mint_failures_total", "gh") == 1
    rec = audit(d, "gh")[0]
    assert rec["status"] == 502 and rec["injected"] == [] and "answered 401" in rec["error"], rec
    # the operator installs a new key
    server.gh_keys["new"] = keys["rsa2"].public_key()
    write_secret(jwt_daemon.app_pem, pem(keys["rsa2"], serialization.PrivateFormat.PKCS8))
    time.sleep(2.2)  # the failure is the answer for 2 s; file: secrets are cached by the resolver
    os.kill(d.proc.pid, 1)
    d.wait_log(lambda line: "configuration reloaded" in line, 10)
    deadline = time.monotonic() + 10
    while True:
        r = d.curl(REPOS)
        if r.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert r.status == 200, r.describe()
    assert metric(d, "agentvault_token_mints_total", "gh") == 1


# ---- configuration errors ------------------------------------------------------

def check(tmp_path, text, env=None):
    conf = tmp_path / "c.conf"
    conf.write_text(text)
    return subprocess.run([str(avd.require_binary()), "check", "-c", str(conf)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **(env or {})}, timeout=60)


@pytest.fixture(scope="module")
def key_files(tmp_path_factory, keys):
    d = tmp_path_factory.mktemp("check-keys")
    ed = ed25519.Ed25519PrivateKey.generate()
    return {
        "sa": write_secret(d / "sa.json", sa_json(keys["rsa"])),
        "pem": write_secret(d / "app.pem", pem(keys["rsa"], serialization.PrivateFormat.TraditionalOpenSSL)),
        "ed": write_secret(d / "ed.pem", pem(ed, serialization.PrivateFormat.PKCS8)),
        "garbage": write_secret(d / "garbage.pem", "-----BEGIN RSA PRIVATE KEY-----\nnot base64\n"
                                "-----END RSA PRIVATE KEY-----\n"),
        "sa_ed": write_secret(d / "sa-ed.json", sa_json(ed)),
        "sa_user": write_secret(d / "user.json", json.dumps({"type": "authorized_user", "client_id": "x"})),
        "sa_dup": write_secret(d / "dup.json", '{"type":"service_account","type":"service_account"}'),
    }


HEAD = '[service "x"]\nhost = x.test\nauth = bearer\n'


@pytest.mark.parametrize("secret,message", [
    ("github_app:app file:{pem} installation=5", 'c.conf:4: secret: github_app:APP_ID needs the App\'s numeric ID '
     'or its client ID (Iv...), not "app"'),
    ("github_app:12ab file:{pem} installation=5", 'not "12ab"'),
    ("github_app:42 file:{pem}", "c.conf:4: secret: github_app: needs installation=ID"),
    ("github_app:42 file:{pem} installation=x1", "c.conf:4: secret: installation= takes the installation's "
     "numeric ID"),
    ("github_app:42 file:{pem} installation=5 scope=a", 'c.conf:4: secret: unknown argument "scope" for '
     "github_app:APP_ID (known: installation=, repositories=, permissions=)"),
    ("github_app:42 file:{pem} installation=5 permissions=contents", "c.conf:4: secret: permissions= takes "
     "NAME:LEVEL items"),
    ("github_app:42 file:{pem} installation=5 permissions=contents:own", 'not "contents:own"'),
    ("github_app:42 file:{pem} installation=5 repositories=a b", 'unknown argument "b"'),
    ("github_app:42 file:{pem} installation=5 installation=6", "c.conf:4: secret: installation= is given twice"),
    ("github_app:42 installation=5", "c.conf:4: secret: github_app:APP_ID needs the key's reference next"),
    ("github_app:42 plain installation=5", "c.conf:4: secret: the key must be env:NAME"),
    ("github_app:42 file:{ed} installation=5", "c.conf:4: secret: file:{ed}: the key is neither RSA nor ECDSA "
     "P-256"),
    ("github_app:42 file:{garbage} installation=5", "c.conf:4: secret: file:{garbage}: the key is not a PEM "
     "private key"),
    ("github_app:42 file:{sa} installation=5", "secret: file:{sa}: the key is not a PEM private key"),
    ("gcp:service_account file:{sa} audience=x", 'unknown argument "audience" for gcp:service_account (known: '
     "scope=, target_audience=)"),
    ("gcp:service_account file:{sa} scope=a target_audience=https://b", "scope= and target_audience= exclude "
     "each other"),
    ("gcp:service_account file:{sa} scope=", "c.conf:4: secret: scope needs =VALUE"),
    ("gcp:user file:{sa}", 'c.conf:4: secret: unknown kind "gcp:user"'),
    ("gcp:service_account file:{pem}", "c.conf:4: secret: file:{pem}: the service-account key is not usable: "
     "not a well-formed JSON object"),
    ("gcp:service_account file:{sa_user}", "\"type\" is not \"service_account\""),
    ("gcp:service_account file:{sa_dup}", "\"type\" appears twice"),
    ("gcp:service_account file:{sa_ed}", "private_key is not usable: the key is neither RSA nor ECDSA P-256"),
])
def test_check_reports_jwt_secrets(tmp_path, key_files, secret, message):
    fmt = {k: str(v) for k, v in key_files.items()}
    p = check(tmp_path, HEAD + "secret = " + secret.format(**fmt) + "\n")
    assert p.returncode != 0, p.stdout
    assert message.format(**fmt) in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_check_oauth_keys_not_with_jwt_kinds(tmp_path, key_files):
    p = check(tmp_path, HEAD + f"secret = gcp:service_account file:{key_files['sa']}\nclient_id = c\n")
    assert p.returncode != 0
    assert 'c.conf:1: service "x": client_id, client_secret, scope, audience, client_auth and refresh_token are ' \
           "oauth2: keys" in p.stderr, p.stderr


def test_check_accepts_good_keys_and_defers_unreadable_ones(tmp_path, key_files):
    text = (HEAD + f"secret = gcp:service_account file:{key_files['sa']} scope=a,b\n"
            + '[service "y"]\nhost = y.test\nauth = bearer\n'
            + f"secret = github_app:Iv23liAbC.d file:{key_files['pem']} installation=7 repositories=a,b.c "
              "permissions=contents:read,pull_requests:write\n"
            + '[service "z"]\nhost = z.test\nauth = bearer\nsecret = github_app:42 env:NOT_SET installation=1\n'
            + '[service "v"]\nhost = v.test\nauth = bearer\nsecret = gcp:service_account vault:sa\n')
    p = check(tmp_path, text)
    assert p.returncode == 0, p.stderr
    assert "OK (4 service(s))" in p.stdout
    # env: set at check time and not a key: reported
    p = check(tmp_path, text, env={"NOT_SET": "not a key"})
    assert p.returncode != 0 and "c.conf:12: secret: env:NOT_SET: the key is not a PEM private key" in p.stderr, \
        p.stderr
