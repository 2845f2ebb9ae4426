"""`auth_alt`: a second header a service's credential may travel in. The
credential goes in whichever of the two headers the agent sent (the main one
when it sent both or neither); every agent copy of either header is removed,
so no placeholder reaches the origin, and nothing else is added."""
import pytest

from avtest.checks import run_cli
from avtest.daemon import base_env, config_text

ANTHROPIC_LIKE = ('[service "anth"]\nhost = upstream.test\nauth = header x-api-key "{secret}"\n'
                  "auth_alt = bearer\nsecret = env:PLAIN_API_KEY\n")


def _creds(rec):
    return ([v for k, v in rec.headers if k.lower() == "x-api-key"],
            [v for k, v in rec.headers if k.lower() == "authorization"])


@pytest.mark.parametrize("sent,want", [
    (["x-api-key: dummy-key"], "x-api-key"),
    (["Authorization: Bearer dummy-key"], "authorization"),
    (["X-Api-Key: dummy-1", "authorization: Bearer dummy-2"], "x-api-key"),
    ([], "x-api-key"),
    (["AUTHORIZATION: Basic ZHVtbXk6ZHVtbXk=", "Authorization: Bearer dummy-3"],
     "authorization"),
])
def test_credential_goes_where_the_agent_put_it(daemon, upstream, secrets, sent, want):
    d = daemon(config_text(secrets, services=False, extra=ANTHROPIC_LIKE))
    args = []
    for h in sent:
        args += ["-H", h]
    d.curl(*args, "https://upstream.test/echo").ok()
    rec = upstream.only_request()
    keys, auths = _creds(rec)
    if want == "x-api-key":
        assert (keys, auths) == ([secrets.plain_key], [])
    else:
        assert (keys, auths) == ([], [f"Bearer {secrets.plain_key}"])
    assert not any("dummy" in v for _, v in rec.headers)


def test_alt_over_http2_agent(daemon, upstream, secrets):
    d = daemon(config_text(secrets, services=False, extra=ANTHROPIC_LIKE))
    d.curl("--http2", "-H", "authorization: Bearer dummy-key", "https://upstream.test/echo").ok()
    keys, auths = _creds(upstream.only_request())
    assert (keys, auths) == ([], [f"Bearer {secrets.plain_key}"])


def test_embedded_default_anthropic_takes_either_header(daemon, upstream, secrets, test_ca,
                                                        tmp_path):
    """The embedded default's anthropic service: Claude Code sends x-api-key,
    the Anthropic SDK >= 1.0 sends Authorization: Bearer."""
    d = daemon(config=False, env={"ANTHROPIC_API_KEY": secrets.plain_key},
               resolve=[f"api.anthropic.com:443:127.0.0.1:{upstream.port}"])
    for h in ("x-api-key: agentvault-placeholder-anthropic",
              "Authorization: Bearer agentvault-placeholder-anthropic"):
        d.curl("-H", h, "https://api.anthropic.com/echo").ok()
    reqs = upstream.wait_requests(2)
    assert len(reqs) == 2, [(r.method, r.target) for r in reqs]
    assert _creds(reqs[0]) == ([secrets.plain_key], [])
    assert _creds(reqs[1]) == ([], [f"Bearer {secrets.plain_key}"])
    assert not any("placeholder" in v for r in reqs for _, v in r.headers)


@pytest.mark.parametrize("extra,msg", [
    ('[service "a"]\nhost = a.test\nauth = bearer\nauth_alt = bearer\nsecret = env:X\n',
     "auth_alt: the same header as auth"),
    ('[service "a"]\nhost = a.test\nauth = header X-Key {secret}\n'
     'auth_alt = header x-key "k {secret}"\nsecret = env:X\n', "auth_alt: the same header as auth"),
    ('[service "a"]\nhost = a.test\nauth = query key\nauth_alt = bearer\nsecret = env:X\n',
     "auth_alt needs an auth sent in a header"),
    ('[service "a"]\nhost = a.test\nauth = bearer\nauth_alt = query key\nsecret = env:X\n',
     "auth_alt needs an auth sent in a header"),
    ('[service "a"]\nhost = a.test\nauth_alt = bogus\nauth = bearer\nsecret = env:X\n',
     "unknown auth kind"),
])
def test_bad_auth_alt_is_refused_by_check(tmp_path, extra, msg):
    f = tmp_path / "bad.conf"
    f.write_text("[proxy]\nunmatched = deny\n" + extra)
    p = run_cli(["check", "-c", f], env=base_env(tmp_path))
    assert p.returncode == 1, f"rc={p.returncode} stderr={p.stderr!r}"
    line = 1 + extra.split("\n").index(next(x for x in extra.split("\n")
                                             if x.startswith("auth_alt"))) + 2
    assert msg in p.stderr and f":{line}:" in p.stderr, p.stderr


def test_request_trailers_drop_copies_of_both_credential_fields(daemon, upstream, secrets):
    """The agent used the auth_alt header (Authorization) in the head and put
    the main one (x-api-key) in the chunked request's trailer section: neither
    copy reaches the origin, only the injected credential does."""
    from avtest import client
    d = daemon(config_text(secrets, services=False, extra=ANTHROPIC_LIKE))
    conn, resp = client.connect_tunnel(d.port, "upstream.test:443")
    assert resp.status == 200
    conn = conn.start_tls(d.ca_pem, "upstream.test")
    conn.send(b"POST /echo HTTP/1.1\r\nHost: upstream.test\r\nAuthorization: Bearer dummy-key\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\n0\r\nX-Api-Key: dummy-trailer\r\nX-Req-Sum: 42\r\n\r\n")
    r = conn.read_response(method="POST")
    client.RECEIVED.append(r.raw_head + r.body)
    assert r.status == 200, r
    conn.close()
    rec = upstream.only_request()
    assert rec.trailers == [("X-Req-Sum", "42")]
    assert _creds(rec) == ([], [f"Bearer {secrets.plain_key}"])
