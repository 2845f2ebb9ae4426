"""Proxy tokens with scopes (issue 5): a token may use only its services
(403 with a reason otherwise), has its own unmatched policy, and a token
bucket rate limit (429 with Retry-After, logged)."""
from avtest.checks import assert_curl_proxy_error, auth_values, run_cli
from avtest.daemon import base_env, config_text

def _daemon(daemon, secrets, token_keys, other=""):
    cfg = config_text(secrets, tokens=False,
                      extra='[token "agent1"]\nsecret = env:AGENT1_TOKEN\n' + token_keys + "\n" + other)
    return daemon(cfg)


def test_token_limited_to_its_services(daemon, upstream, secrets):
    d = _daemon(daemon, secrets, "services = openai\n")
    who = f"agent:{secrets.agent_token}"
    r = d.curl("https://api.openai.com/echo", userinfo=who).ok()
    assert r.status == 200, r.describe()
    assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]
    r = d.curl("https://api.github.com/repos/acme/x", userinfo=who).ok()
    assert_curl_proxy_error(r, 403, mentions="token agent1 may not use service github")
    assert len(upstream.snapshot()) == 1, "an out-of-scope request reached the upstream"
    # unmatched hosts follow the proxy policy (passthrough here)
    r = d.curl("https://upstream.test/echo", userinfo=who).ok()
    assert r.status == 200, r.describe()
    assert auth_values(upstream.snapshot()[-1]) == []


def test_token_unmatched_deny(daemon, upstream, secrets):
    d = _daemon(daemon, secrets, "unmatched = deny\n")
    who = f"agent:{secrets.agent_token}"
    assert d.curl("https://api.openai.com/echo", userinfo=who).ok().status == 200
    r = d.curl("https://upstream.test/echo", userinfo=who).ok()
    assert_curl_proxy_error(r, 403, mentions="token agent1 has unmatched = deny")


def test_token_rate_limit_429(daemon, upstream, secrets):
    d = _daemon(daemon, secrets, "rate = 1/min\nburst = 2\n")
    who = f"agent:{secrets.agent_token}"
    assert d.curl("https://api.openai.com/echo", userinfo=who).ok().status == 200
    assert d.curl("--http2", "https://api.openai.com/echo", userinfo=who).ok().status == 200
    r = d.curl("https://api.openai.com/echo", userinfo=who).ok()
    assert_curl_proxy_error(r, 429, mentions="rate limit of token agent1 exceeded")
    ra = r.header("Retry-After")
    assert ra is not None and 1 <= int(ra) <= 60, r.describe()
    r2 = d.curl("--http2", "https://api.openai.com/echo", userinfo=who).ok()
    assert r2.status == 429 and r2.header("retry-after"), r2.describe()
    assert len(upstream.snapshot()) == 2
    assert len([l for l in d.log_text().splitlines() if "status=429" in l and "token=agent1" in l]) == 2


def test_token_config_errors(tmp_path, secrets):
    cases = {
        'services = nosuch\n': "names unknown service \"nosuch\"",
        'rate = fast\n': "rate must be N/s, N/min or N/h",
        'burst = 3\n': "burst needs a rate",
        'unmatched = maybe\n': "unmatched must be",
        'colour = blue\n': "unknown key \"colour\" in [token]",
    }
    for keys, want in cases.items():
        f = tmp_path / "t.conf"
        f.write_text(config_text(secrets, extra='[token "t"]\nsecret = env:AGENT1_TOKEN\n' + keys))
        env = base_env(tmp_path)
        env.update(secrets.env())
        p = run_cli(["check", "-c", f], env=env)
        assert p.returncode == 1 and want in p.stderr, (keys, p.stderr)
