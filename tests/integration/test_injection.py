"""Credential injection: which requests get which credential, and that the
agent's own copies of the injected header never reach the upstream."""
import pytest

from avtest.checks import auth_values, no_proxy_headers
from avtest.daemon import config_text, plain_service


def test_openai_bearer_injected(daemon, upstream, secrets, proxy_scheme):
    d = daemon()
    r = d.curl("-H", "Authorization: Bearer dummy", "https://api.openai.com/echo",
               scheme=proxy_scheme).ok()
    assert r.status == 200, r.describe()
    rec = upstream.only_request()
    assert (rec.method, rec.target) == ("GET", "/echo")
    assert auth_values(rec) == [f"Bearer {secrets.openai_key}"]
    assert rec.header("Host") == "api.openai.com"
    assert no_proxy_headers(rec) == []
    # what the upstream answered is relayed, with the injected secret it
    # echoed scrubbed out (the agent never sees it, not even echoed back)
    want = [[n, "Bearer [REDACTED]" if n.lower() == "authorization" else v] for n, v in rec.headers]
    assert r.json_body()["headers"] == want


def test_injected_without_agent_header(daemon, upstream, secrets):
    d = daemon()
    r = d.curl("https://api.openai.com/echo-auth").ok()
    assert r.status == 200
    assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]
    assert r.body == b"Bearer [REDACTED]\n", "the echoed secret reached the agent"  # scrubbed


def test_every_agent_copy_replaced(daemon, upstream, secrets):
    d = daemon()
    d.curl("-H", "authorization: Bearer dummy-1", "-H", "AUTHORIZATION: Basic ZHVtbXk=",
           "-H", "Authorization: Bearer dummy-3", "https://api.openai.com/echo").ok()
    rec = upstream.only_request()
    assert auth_values(rec) == [f"Bearer {secrets.openai_key}"]
    assert not any("dummy" in v for _, v in rec.headers)


@pytest.mark.parametrize("method,path", [
    ("GET", "/repos/acme/widgets"),
    ("GET", "/repos/acme/widgets/issues?page=2"),
    ("POST", "/repos/acme/widgets/issues"),
])
def test_github_token_for_matching_method_and_path(daemon, upstream, secrets, method, path):
    d = daemon()
    args = ["-X", method, "-H", "Authorization: Bearer agent-own"]
    if method == "POST":
        args += ["--data-binary", '{"title":"x"}', "-H", "Content-Type: application/json"]
    r = d.curl(*args, f"https://api.github.com{path}").ok()
    assert r.status == 404  # the test origin has no such page; what matters is what arrived
    rec = upstream.only_request()
    assert (rec.method, rec.target) == (method, path)
    assert auth_values(rec) == [f"token {secrets.github_token}"]
    if method == "POST":
        assert rec.body == b'{"title":"x"}'


@pytest.mark.parametrize("method,path", [
    ("PUT", "/repos/acme/widgets"),
    ("GET", "/user"),
    ("GET", "/repos"),
    ("DELETE", "/repos/acme/widgets"),
])
def test_github_unmatched_request_passes_through(daemon, upstream, secrets, method, path):
    d = daemon()
    r = d.curl("-X", method, "-H", "Authorization: Bearer agent-own",
               f"https://api.github.com{path}").ok()
    assert r.status == 404
    rec = upstream.only_request()
    assert (rec.method, rec.target) == (method, path)
    assert auth_values(rec) == ["Bearer agent-own"]
    assert secrets.github_token not in str(rec.headers)


def test_absolute_form_http_injection(daemon, plain_upstream, secrets, proxy_scheme):
    port = plain_upstream.port
    d = daemon(config_text(secrets, extra=plain_service(port)),
               extra_resolve=[f"plain.test:{port}:127.0.0.1"])
    r = d.curl("-H", "Authorization: Bearer dummy", f"http://plain.test:{port}/echo?x=1",
               scheme=proxy_scheme).ok()
    assert r.status == 200, r.describe()
    rec = plain_upstream.only_request()
    assert rec.target == "/echo?x=1", "absolute-form must be forwarded in origin-form"
    assert rec.header("Host") == f"plain.test:{port}"
    assert auth_values(rec) == [f"Bearer {secrets.plain_key}"]
    assert no_proxy_headers(rec) == []


def test_absolute_form_http_without_service_is_forwarded(daemon, plain_upstream, secrets):
    port = plain_upstream.port
    d = daemon(extra_resolve=[f"plain.test:{port}:127.0.0.1"])
    r = d.curl("-H", "Authorization: Bearer agent-own", f"http://plain.test:{port}/echo").ok()
    assert r.status == 200, r.describe()
    rec = plain_upstream.only_request()
    assert rec.target == "/echo"
    assert auth_values(rec) == ["Bearer agent-own"]


def test_cleartext_inside_connect_is_relayed_and_injected(daemon, plain_upstream, secrets):
    port = plain_upstream.port
    d = daemon(config_text(secrets, extra=plain_service(port)),
               extra_resolve=[f"plain.test:{port}:127.0.0.1"])
    r = d.curl("--proxytunnel", "-H", "Authorization: Bearer dummy",
               f"http://plain.test:{port}/echo").ok()
    assert r.status == 200, r.describe()
    assert r.transfer.connect_status == 200
    rec = plain_upstream.only_request()
    assert rec.target == "/echo"
    assert auth_values(rec) == [f"Bearer {secrets.plain_key}"]


def test_service_on_https_port_only(daemon, plain_upstream, secrets):
    """A bare `host = api.openai.com` service means https:443 only: plain http to
    that host on another port gets no credential."""
    port = plain_upstream.port
    d = daemon(extra_resolve=[f"api.openai.com:{port}:127.0.0.1"])
    r = d.curl("-H", "Authorization: Bearer agent-own", f"http://api.openai.com:{port}/echo").ok()
    assert r.status == 200, r.describe()
    rec = plain_upstream.only_request()
    assert auth_values(rec) == ["Bearer agent-own"]
    assert secrets.openai_key not in str(rec.headers)
