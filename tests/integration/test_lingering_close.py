"""Error responses reach the client even while it is still sending (issue 12
item 7): the proxy finishes the response, shuts down its write side, reads
and discards what the client still sends (bounded in time and bytes), then
closes. Closing at once with unread bytes sends a TCP reset, and a client
still writing (curl uploading, a 100 KiB header) sees "connection reset"
instead of the answer."""
import socket
import time

from avtest import client
from avtest.checks import assert_curl_proxy_error, tls_tunnel
from avtest.daemon import config_text

RUNS = 20


def test_header_block_too_large_through_tunnel_431_every_time(daemon, upstream, tmp_path):
    d = daemon()
    hdr = tmp_path / "big-header"
    hdr.write_text("X-Big: " + "v" * (100 * 1024) + "\n")
    for i in range(RUNS):
        r = d.curl("-H", f"@{hdr}", f"https://upstream.test/echo?run={i}")
        assert r.returncode == 0, f"run {i}: {r.describe()}"
        assert_curl_proxy_error(r, 431)


def test_body_refused_while_uploading_403_every_time(daemon, upstream, secrets, tmp_path):
    d = daemon(config_text(secrets, unmatched="deny"))
    body = tmp_path / "body"
    body.write_bytes(b"x" * (8 << 20))
    for i in range(RUNS):
        r = d.curl("-X", "POST", "--data-binary", f"@{body}", "-H", "Expect:",
                   f"https://upstream.test/denied?run={i}")
        assert r.returncode == 0, f"run {i}: {r.describe()}"
        assert_curl_proxy_error(r, 403)
    assert upstream.snapshot() == []


def test_client_keeps_sending_after_the_error_reads_it(daemon, upstream):
    """Deterministic form: after the 431 arrived, the client goes on sending
    (as a slow uploader would); the proxy keeps discarding instead of
    resetting, then the client reads the whole response and an orderly end."""
    d = daemon()
    c = tls_tunnel(d, "upstream.test")
    c.send(b"GET /echo HTTP/1.1\r\nHost: upstream.test\r\nX-Big: " + b"v" * (80 * 1024))
    c.sock.settimeout(10)
    first = c.sock.recv(1)  # the answer has started: the proxy gave up reading heads
    assert first == b"H"
    for _ in range(8):
        c.send(b"v" * 8192)
        time.sleep(0.02)
    c.buf = first + c.buf
    resp = c.read_response()
    assert resp.status == 431, resp.raw_head
    assert resp.body.startswith(b"request header block too large")
    assert c.is_closed(), "no orderly end after the 431"
    c.close()


PH_SERVICE = """[service "ph"]
host = upstream.test
auth = bearer
secret = env:PLAIN_API_KEY
placeholder = __PLAIN_KEY__
placeholder_in = body
"""


def test_body_over_the_limit_413_every_time(daemon, upstream, secrets, tmp_path):
    """A JSON body checked for the placeholder is capped (8 MiB): the 413
    comes while curl is still uploading, and reaches it every time."""
    d = daemon(config_text(secrets, services=False, extra=PH_SERVICE))
    body = tmp_path / "body.json"
    body.write_bytes(b'{"k":"' + b"x" * (10 << 20) + b'"}')
    for i in range(RUNS):
        r = d.curl("-X", "POST", "--data-binary", f"@{body}", "-H", "Expect:",
                   "-H", "Content-Type: application/json", f"https://upstream.test/echo?run={i}")
        assert r.returncode == 0, f"run {i}: {r.describe()[-600:]}"
        assert_curl_proxy_error(r, 413)
    assert upstream.snapshot() == []
