"""Vault.open_stream(): raw HTTP/1.1 over a socket the library serves."""
import json
import socket
import threading

from _http1 import Reader, request
from conftest import OPENAI, assert_no_secret


def test_raw_request_and_keep_alive(make_vault, upstream, keys):
    v = make_vault()
    s = v.open_stream(OPENAI, timeout=15)
    assert isinstance(s, socket.socket) and s.family == socket.AF_UNIX
    rd = Reader(s)
    with s:
        s.sendall(request("GET", "/echo", "api.openai.com",
                          [("Authorization", "Bearer dummy"), ("X-Req", "one")]))
        r1 = rd.response()
        assert r1.status == 200
        assert_no_secret(r1.raw, keys)
        # second request on the same stream (keep-alive)
        s.sendall(request("POST", "/echo", "api.openai.com", [("X-Req", "two")], b"hello"))
        r2 = rd.response()
        assert r2.status == 200
        assert json.loads(r2.body)["body_length"] == 5
        # a chunked response, then Connection: close ends the stream
        s.sendall(request("GET", "/chunked", "api.openai.com", [("Connection", "close")]))
        r3 = rd.response()
        assert r3.status == 200 and r3.body.startswith(b"alpha\n") and r3.body.endswith(b"delta\n")
        assert rd.at_eof()
    reqs = upstream.wait_requests(3)
    assert [r.header("x-req") for r in reqs[:2]] == ["one", "two"]
    for r in reqs:
        assert r.header_values("authorization") == [f"Bearer {keys['openai']}"]
    assert reqs[1].body == b"hello"


def test_error_status_from_the_library(make_vault, upstream):
    """The library's own errors arrive on the stream as HTTP responses."""
    v = make_vault()
    with v.open_stream(OPENAI, timeout=15) as s:
        s.sendall(b"TRACE /echo HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
        r = Reader(s).response()
        assert r.status == 405 and r.header("x-agentvault-error")
    assert upstream.snapshot() == []


def test_many_streams_in_parallel(make_vault, upstream, keys):
    v = make_vault()
    errors = []

    def one(i):
        try:
            with v.open_stream(OPENAI, timeout=20) as s:
                rd = Reader(s)
                for j in range(3):
                    s.sendall(request("GET", f"/echo?i={i}&j={j}", "api.openai.com"))
                    assert rd.response().status == 200
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(upstream.wait_requests(24)) == 24


def test_stream_survives_vault_for_the_caller(make_vault, upstream):
    """The descriptor is the caller's: closing the vault ends the exchange,
    the socket object stays usable for close()."""
    v = make_vault()
    s = v.open_stream(OPENAI, timeout=10)
    v.close(0)
    try:
        s.sendall(request("GET", "/echo", "api.openai.com"))
        data = s.recv(100)
    except OSError:
        data = b""
    assert data == b""
    s.close()
