"""HTTP/1.1 message framing through the MITM tunnel: chunked both ways, SSE
streaming, bodyless responses, Expect: 100-continue, redirects, statuses."""
import hashlib
import os

import pytest

from avtest import upstream as up
from avtest.checks import ERROR_HEADER, auth_values


def test_chunked_response_relayed(daemon, upstream):
    d = daemon()
    r = d.curl("https://api.openai.com/chunked").ok()
    assert r.status == 200
    assert r.body == up.CHUNKED_BODY


def test_chunked_upload_1mb(daemon, upstream, secrets):
    d = daemon()
    data = os.urandom(1 << 20)
    r = d.curl("-T", "-", "-H", "Transfer-Encoding: chunked", "https://api.openai.com/echo",
               input=data).ok()
    assert r.status == 200, r.describe()
    body = r.json_body()
    assert body["method"] == "PUT"
    assert body["body_length"] == len(data)
    assert body["body_sha256"] == hashlib.sha256(data).hexdigest()
    assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]


def test_sse_first_event_arrives_before_upstream_finishes(daemon, upstream):
    d = daemon()
    s = d.streaming_curl("https://api.openai.com/sse")
    try:
        # the upstream holds the second event until released (10 s at most)
        s.wait_line(b"data: first", timeout=6)
        assert not upstream.sse_finished.is_set()
        upstream.release_sse()
        s.wait_line(b"data: second", timeout=6)
        assert s.finish() == 0, s.stderr
    finally:
        upstream.release_sse()
        s.kill()
    assert not upstream.sse_timed_out


def test_redirect_passed_through_not_followed(daemon, upstream):
    d = daemon()
    r = d.curl("https://api.openai.com/redirect").ok()
    assert r.status == 302
    assert r.header("Location") == up.REDIRECT_LOCATION
    assert r.body == b"redirecting\n"
    assert [q.path for q in upstream.wait_requests(1)] == ["/redirect"]
    assert r.header(ERROR_HEADER) is None


def test_head_completes(daemon, upstream):
    d = daemon()
    r = d.curl("-I", "--max-time", "5", "https://api.openai.com/echo").ok()
    assert r.status == 200
    assert int(r.header("Content-Length")) > 0
    # with -I the output is the headers only: no body bytes may follow
    assert r.body.endswith(b"\r\n\r\n") and b'"method"' not in r.body
    assert upstream.only_request().method == "HEAD"


@pytest.mark.parametrize("code", [204, 304])
def test_bodyless_status_then_reuse(daemon, upstream, code):
    d = daemon()
    r = d.curl("--max-time", "5", f"https://api.openai.com/status/{code}",
               "https://api.openai.com/echo", urls=2).ok()
    assert [t.status for t in r.transfers] == [code, 200], r.describe()
    assert r.transfers[0].body == b""
    assert r.transfers[1].body.startswith(b'{"method": "GET"')
    assert r.transfers[1].num_connects == 0, r.describe()


@pytest.mark.parametrize("code", [404, 418, 500, 503])
def test_upstream_status_relayed(daemon, upstream, code):
    d = daemon()
    r = d.curl(f"https://api.openai.com/status/{code}").ok()
    assert (r.status, r.body) == (code, f"status {code}\n".encode())
    assert r.header(ERROR_HEADER) is None


def test_expect_100_continue_2mb(daemon, upstream, tmp_path):
    d = daemon()
    data = os.urandom(2 << 20)
    f = tmp_path / "body.bin"
    f.write_bytes(data)
    # a proxy that neither relays nor answers the 100 would stall curl for 10 s
    r = d.curl("--data-binary", f"@{f}", "--expect100-timeout", "10", "--max-time", "8",
               "https://api.openai.com/echo").ok()
    assert "Expect: 100-continue" in r.stderr  # curl did ask
    assert r.status == 200, r.describe()
    body = r.json_body()
    assert body["method"] == "POST"
    assert body["body_length"] == len(data)
    assert body["body_sha256"] == hashlib.sha256(data).hexdigest()
