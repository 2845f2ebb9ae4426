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


@pytest.mark.parametrize("http", ["--http1.1", "--http2"])
def test_body_json_and_form_replaced(daemon, upstream, secrets, tmp_path, http):
    f = tmp_path / "k"
    f.write_text('sk-"quoted"\\key\n')
    svc = (f'[service "ph"]\nhost = api.openai.com\nauth = header X-Unused "{{secret}}"\n'
           f"secret = file:{f}\nplaceholder = {PH}\nplaceholder_in = body\n")
    d = daemon(config_text(secrets, services=False, extra=svc))
    big = "x" * 200000
    doc = '{"key": "' + PH + '", "again": "pre-' + PH + '", "pad": "' + big + '"}'
    docf = tmp_path / "doc.json"
    docf.write_text(doc)
    r = d.curl(http, "-H", "Content-Type: application/json", "--data-binary", f"@{docf}",
               "https://api.openai.com/echo").ok()
    assert r.status == 200, r.describe()
    r = d.curl(http, "-H", "Content-Type: application/x-www-form-urlencoded", "--data-binary",
               f"a=1&key={PH}&b=2", "https://api.openai.com/echo").ok()
    assert r.status == 200, r.describe()
    # other content types are passed through untouched
    r = d.curl(http, "-H", "Content-Type: text/plain", "--data-binary", f"see {PH}",
               "https://api.openai.com/echo").ok()
    assert r.status == 200, r.describe()
    j, form, plain = upstream.snapshot()
    sent = j.body.decode()
    assert sent == doc.replace(PH, 'sk-\\"quoted\\"\\\\key'), sent[:200]
    assert int(j.header("Content-Length")) == len(j.body)
    import json as _json
    assert _json.loads(sent)["key"] == 'sk-"quoted"\\key'
    assert form.body == b"a=1&key=sk-%22quoted%22%5Ckey&b=2"
    assert int(form.header("Content-Length")) == len(form.body)
    assert plain.body == f"see {PH}".encode()


def test_body_placeholder_undeclared_refused(daemon, upstream, secrets):
    d = daemon(config_text(secrets, services=False, extra=_svc("header")))
    for http in ("--http1.1", "--http2"):
        r = d.curl(http, "-H", "Content-Type: application/json", "--data-binary", '{"k": "' + PH + '"}',
                   "https://api.openai.com/echo").ok()
        assert_curl_proxy_error(r, 403, mentions="placeholder_in does not include body")
    assert upstream.snapshot() == [], "a body with an undeclared placeholder went upstream"
