"""HTTP/1.1 message framing through the MITM tunnel: chunked both ways, SSE
streaming, bodyless responses, Expect: 100-continue, redirects, statuses."""
import hashlib
import os

import pytest

from avtest import client
from avtest import upstream as up
from avtest.checks import ERROR_HEADER, auth_values
from avtest.daemon import config_text


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


# ---- trailers (issue 13) ---------------------------------------------------------

def _tunnel(d, host="api.openai.com"):
    conn, resp = client.connect_tunnel(d.port, f"{host}:443")
    assert resp.status == 200
    return conn.start_tls(d.ca_pem, host)


def _received(r):
    client.RECEIVED.append(r.raw_head + r.body + repr(r.trailers).encode())


def _only_cut_bodies(upstream):
    """A refused request was cut off in the middle of its body: the origin saw
    an EOF there, nothing malformed. Clear that for the fixture's check."""
    import time
    time.sleep(0.2)
    with upstream.lock:
        errs = list(upstream.protocol_errors)
        upstream.protocol_errors.clear()
    assert all("EOF inside" in e for e in errs), errs


def test_chunked_trailers_both_ways_http1(daemon, upstream, secrets):
    """HTTP/1.1 agent and origin: the request's trailer section reaches the
    origin (minus fields not allowed in trailers), the response's reaches the
    agent (scrubbed, minus Set-Cookie), and TE: trailers goes on with
    Connection: TE."""
    d = daemon()
    conn = _tunnel(d)
    conn.send(b"POST /trailers HTTP/1.1\r\nHost: api.openai.com\r\nTE: trailers\r\n"
              b"Connection: TE\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\n0\r\nX-Req-Sum: 42\r\nAuthorization: Bearer agent-copy\r\n"
              b"Content-Length: 5\r\n\r\n")
    r = conn.read_response(method="POST")
    _received(r)
    assert r.status == 200, r
    assert r.header("Transfer-Encoding") == "chunked"
    assert r.body == up.TRAILERS_BODY
    tr = {k.lower(): v for k, v in r.trailers}
    assert [(k.lower(), v) for k, v in up.TRAILERS_SENT] == [(k.lower(), v) for k, v in r.trailers
                                                           if k.lower() in ("grpc-status",
                                                                            "x-checksum")]
    assert tr["x-echo-secret"] == "k=[REDACTED]"
    assert "set-cookie" not in tr
    rec = upstream.only_request()
    assert rec.chunked and rec.body == b"hello"
    assert rec.trailers == [("X-Req-Sum", "42")]
    assert rec.header("TE") == "trailers"
    assert "te" in rec.header("Connection").lower()
    assert auth_values(rec) == [f"Bearer {secrets.openai_key}"]
    # the connection is still usable
    conn.send(b"GET /echo HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
    r2 = conn.read_response()
    _received(r2)
    assert r2.status == 200
    conn.close()


def test_trailers_dropped_without_chunked_framing(daemon, upstream):
    """An HTTP/1.0 agent gets a close-delimited body: trailers cannot follow
    it, so they are dropped (and logged), the body is intact."""
    d = daemon()
    conn = _tunnel(d)
    conn.send(b"GET /trailers HTTP/1.0\r\nHost: api.openai.com\r\n\r\n")
    r = conn.read_response()
    _received(r)
    assert r.status == 200
    assert r.body == up.TRAILERS_BODY
    assert r.header("Transfer-Encoding") is None
    d.wait_log(lambda line: "trailer field(s) not forwarded" in line)
    conn.close()


def test_malformed_upstream_trailers_fail_the_exchange(daemon, upstream):
    d = daemon()
    conn = _tunnel(d)
    conn.send(b"GET /trailers?bad=1 HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
    head = conn.read_head()
    client.RECEIVED.append(head)
    assert head.startswith(b"HTTP/1.1 200")
    # the body started, so the agent's connection is cut before the last chunk
    data = conn.read_to_eof()
    client.RECEIVED.append(data)
    assert not data.endswith(b"0\r\n\r\n")
    d.wait_log(lambda line: "malformed trailers" in line)


@pytest.mark.parametrize("trailer,status", [
    (b"X-Bad : 1", 400), (b" folded", 400), (b"X-Ctl: a\x01b", 400),
    (b"\r\n".join(b"X-T%d: v" % i for i in range(101)), 431),       # more than 100 fields
    (b"X-Big: " + b"v" * (64 * 1024), 431),                           # more than 64 KiB
])
def test_malformed_request_trailers_refused(daemon, upstream, trailer, status):
    """Request trailers get the head's checks: malformed is 400, over the
    head limits 431; nothing of them reaches the origin."""
    d = daemon()
    conn = _tunnel(d)
    conn.send(b"POST /echo HTTP/1.1\r\nHost: api.openai.com\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\n0\r\n" + trailer + b"\r\n\r\n")
    data = conn.read_to_eof()
    client.RECEIVED.append(data)
    assert data.startswith(b"HTTP/1.1 %d" % status), data[:200]
    assert upstream.snapshot() == []  # the origin never got a complete request
    _only_cut_bodies(upstream)


def test_request_trailer_with_placeholder_refused(daemon, upstream, secrets):
    ph = "__PLAIN_KEY__"
    svc = ('[service "ph"]\nhost = api.openai.com\nauth = header X-Unused "{secret}"\n'
           f"secret = env:PLAIN_API_KEY\nplaceholder = {ph}\nplaceholder_in = header\n")
    d = daemon(config_text(secrets, services=False, extra=svc))
    conn = _tunnel(d)
    conn.send(b"POST /echo HTTP/1.1\r\nHost: api.openai.com\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\n0\r\nX-Key: " + ph.encode() + b"\r\n\r\n")
    data = conn.read_to_eof()
    client.RECEIVED.append(data)
    assert secrets.plain_key.encode() not in data
    for rec in upstream.snapshot():
        assert ph not in repr(rec.trailers) and secrets.plain_key not in repr(rec.trailers)
    d.wait_log(lambda line: "found in a request trailer" in line)
    _only_cut_bodies(upstream)
