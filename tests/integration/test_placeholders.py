"""Placeholders in request surfaces (issue 5): a service's placeholder is
replaced by the secret in the surfaces it declares (header values, path,
query; percent-encoded in the target) and a placeholder in any other
surface is refused before anything is sent."""
import pytest

from avtest.checks import assert_curl_proxy_error
from avtest.daemon import config_text

PH = "__PLAIN_KEY__"


def _svc(surfaces, auth="header X-Unused \"{secret}\""):
    return (f'[service "ph"]\nhost = api.openai.com\nauth = {auth}\nsecret = env:PLAIN_API_KEY\n'
            f"placeholder = {PH}\nplaceholder_in = {surfaces}\n")


def test_header_path_query_replaced(daemon, upstream, secrets):
    d = daemon(config_text(secrets, services=False, extra=_svc("header, path, query")))
    for http in ("--http1.1", "--http2"):
        r = d.curl(http, "-H", f"X-Api-Key: {PH}", "-H", f"X-Other: a-{PH}-b",
                   f"https://api.openai.com/v1/{PH}/items?key={PH}&x=1").ok()
        assert r.status == 404, r.describe()  # the test origin has no such page
        assert secrets.plain_key not in r.body.decode() + repr(r.headers)
    assert len(upstream.snapshot()) == 2
    for rec in upstream.snapshot():
        key = secrets.plain_key
        assert rec.header("X-Api-Key") == key
        assert rec.header("X-Other") == f"a-{key}-b"
        assert rec.target == f"/v1/{key}/items?key={key}&x=1"
        assert PH not in repr(rec.headers) + rec.target


def test_secret_percent_encoded_in_target(daemon, upstream, secrets, tmp_path):
    f = tmp_path / "odd"
    f.write_text("a b/c?d&e\n")
    svc = (f'[service "ph"]\nhost = api.openai.com\nauth = header X-Unused "{{secret}}"\n'
           f"secret = file:{f}\nplaceholder = {PH}\nplaceholder_in = path, query\n")
    d = daemon(config_text(secrets, services=False, extra=svc))
    assert d.curl(f"https://api.openai.com/p/{PH}?k={PH}").ok().status == 404
    assert upstream.only_request().target == "/p/a%20b%2Fc%3Fd%26e?k=a%20b%2Fc%3Fd%26e"


@pytest.mark.parametrize("where,args,url", [
    ("header", ["-H", f"X-Api-Key: {PH}"], "https://api.openai.com/x"),
    ("path", [], f"https://api.openai.com/x/{PH}"),
    ("query", [], f"https://api.openai.com/x?k={PH}"),
])
def test_undeclared_surface_refused(daemon, upstream, secrets, where, args, url):
    d = daemon(config_text(secrets, services=False, extra=_svc("websocket")))
    r = d.curl(*args, url).ok()
    assert_curl_proxy_error(r, 403, mentions=f"placeholder_in does not include {where}")
    assert upstream.snapshot() == [], "a request with an undeclared placeholder went upstream"
    assert secrets.plain_key not in r.body.decode() + repr(r.headers)


def test_placeholder_in_header_needs_header_safe_secret(daemon, upstream, secrets, tmp_path):
    f = tmp_path / "bad"
    f.write_bytes(b"line1\rline2\n")
    svc = (f'[service "ph"]\nhost = api.openai.com\nauth = query k\nsecret = file:{f}\n'
           f"placeholder = {PH}\nplaceholder_in = header\n")
    d = daemon(config_text(secrets, services=False, extra=svc))
    r = d.curl("-H", f"X-Api-Key: {PH}", "https://api.openai.com/x").ok()
    assert_curl_proxy_error(r, 502, mentions="not allowed in a header")
    assert upstream.snapshot() == []
