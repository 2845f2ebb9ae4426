"""Self-test of the harness: the origin servers, certificates, curl wrapper,
raw-socket helpers, daemon plumbing (against a fake daemon) and the
secret-leak scanner. Needs no agentvault binary."""
import base64
import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
from cryptography import x509

from avtest import client, upstream as up
from avtest import daemon as avd

HERE = Path(__file__).resolve().parent


def direct(curl, test_ca, srv, path, *args, host="api.openai.com", urls=None, **kw):
    """curl straight at an upstream (no proxy), resolving host to 127.0.0.1."""
    extra = ["--resolve", f"{host}:{srv.port}:127.0.0.1", "--cacert", str(test_ca.ca_pem)]
    paths = path if isinstance(path, list) else [path]
    targets = [f"{srv.scheme}://{host}:{srv.port}{p}" for p in paths]
    return curl(*extra, *args, *targets, urls=len(targets), **kw)


def test_certificates(test_ca):
    ca = x509.load_pem_x509_certificate(test_ca.ca_pem.read_bytes())
    leaf = x509.load_pem_x509_certificate(test_ca.server_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"api.openai.com", "api.github.com", "upstream.test"} <= set(
        san.get_values_for_type(x509.DNSName))
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert leaf.issuer == ca.subject
    bad = x509.load_pem_x509_certificate(test_ca.bad_server_cert.read_bytes())
    assert bad.issuer != ca.subject


def test_echo_records_request(curl, test_ca, upstream):
    r = direct(curl, test_ca, upstream, "/echo?q=1", "-H", "X-Mixed-Case: v1",
               "-H", "authorization: Bearer dummy").ok()
    assert r.status == 200
    assert r.header("Content-Type") == "application/json"
    assert int(r.header("Content-Length")) == len(r.body)
    body = r.json_body()
    assert body["method"] == "GET" and body["path"] == "/echo?q=1"
    assert body["body_length"] == 0
    assert body["body_sha256"] == hashlib.sha256(b"").hexdigest()
    rec = upstream.only_request()
    assert rec.target == "/echo?q=1" and rec.path == "/echo"
    names = [k for k, _ in rec.headers]
    assert "X-Mixed-Case" in names and "authorization" in names  # raw case kept
    assert rec.header("Host") == f"api.openai.com:{upstream.port}"
    assert body["headers"] == [list(h) for h in rec.headers]


def test_keepalive_connection_ids(curl, test_ca, upstream):
    r = direct(curl, test_ca, upstream, ["/echo", "/echo?2"]).ok()
    assert [t.status for t in r.transfers] == [200, 200]
    assert [t.num_connects for t in r.transfers] == [1, 0]
    reqs = upstream.wait_requests(2)
    assert len({q.conn_id for q in reqs}) == 1


def test_separate_connections_get_separate_ids(curl, test_ca, upstream):
    direct(curl, test_ca, upstream, "/echo").ok()
    direct(curl, test_ca, upstream, "/echo").ok()
    a, b = upstream.wait_requests(2)
    assert a.conn_id != b.conn_id


def test_chunked_response(curl, test_ca, upstream):
    r = direct(curl, test_ca, upstream, "/chunked").ok()
    assert r.status == 200 and r.header("Transfer-Encoding") == "chunked"
    assert r.body == up.CHUNKED_BODY


def test_chunked_upload_and_expect(curl, test_ca, upstream, tmp_path):
    data = os.urandom(1 << 20)
    r = direct(curl, test_ca, upstream, "/echo", "-T", "-", "-H",
               "Transfer-Encoding: chunked", input=data).ok()
    body = r.json_body()
    assert body["method"] == "PUT" and body["chunked"] is True
    assert body["body_sha256"] == hashlib.sha256(data).hexdigest()
    big = tmp_path / "big"
    big.write_bytes(os.urandom(2 << 20))
    r = direct(curl, test_ca, upstream, "/echo", "--data-binary", f"@{big}",
               "--expect100-timeout", "10", "--max-time", "8").ok()
    assert "Expect: 100-continue" in r.stderr
    assert r.json_body()["body_sha256"] == hashlib.sha256(big.read_bytes()).hexdigest()


def test_sse_holds_second_event(client_home, test_ca, upstream):
    s = client.StreamingCurl(["--resolve", f"api.openai.com:{upstream.port}:127.0.0.1",
                              "--cacert", test_ca.ca_pem,
                              f"https://api.openai.com:{upstream.port}/sse"], home=client_home)
    try:
        s.wait_line(b"data: first", timeout=5)
        assert upstream.sse_first_sent.is_set() and not upstream.sse_finished.is_set()
        upstream.release_sse()
        s.wait_line(b"data: second", timeout=5)
        assert s.finish() == 0
        assert not upstream.sse_timed_out
    finally:
        s.kill()


@pytest.mark.parametrize("code", [204, 304])
def test_bodyless_status_keepalive(curl, test_ca, upstream, code):
    r = direct(curl, test_ca, upstream, [f"/status/{code}", "/echo"], "--max-time", "5").ok()
    assert [t.status for t in r.transfers] == [code, 200]
    assert r.transfers[0].body == b""
    assert [t.num_connects for t in r.transfers] == [1, 0]


def test_head_status_redirect_echo_auth(curl, test_ca, upstream):
    r = direct(curl, test_ca, upstream, "/echo", "-I", "--max-time", "5").ok()
    # with -I curl writes the headers as the output: nothing else may follow
    assert r.status == 200 and r.body.endswith(b"\r\n\r\n") and b"{" not in r.body
    assert int(r.header("Content-Length")) > 0
    r = direct(curl, test_ca, upstream, "/status/418").ok()
    assert (r.status, r.body) == (418, b"status 418\n")
    r = direct(curl, test_ca, upstream, "/redirect").ok()
    assert r.status == 302 and r.header("Location") == up.REDIRECT_LOCATION
    r = direct(curl, test_ca, upstream, "/echo-auth", "-H", "Authorization: Bearer abc").ok()
    assert r.body == b"Bearer abc\n"
    r = direct(curl, test_ca, upstream, "/echo-auth").ok()
    assert r.body == b"(none)\n"


def test_plain_upstream(curl, plain_upstream):
    r = curl("--resolve", f"plain.test:{plain_upstream.port}:127.0.0.1",
             f"http://plain.test:{plain_upstream.port}/echo").ok()
    assert r.status == 200
    assert plain_upstream.only_request().header("Host") == f"plain.test:{plain_upstream.port}"


def test_bad_cert_upstream_rejected_without_request_bytes(curl, test_ca, bad_cert_upstream):
    r = direct(curl, test_ca, bad_cert_upstream, "/echo")
    assert r.returncode == 60, r.describe()  # peer certificate cannot be authenticated
    assert bad_cert_upstream.snapshot() == []
    assert not bad_cert_upstream.http_bytes_received
    assert bad_cert_upstream.tls_handshake_failures


def test_bad_cert_upstream_records_bytes_when_verification_skipped(curl, test_ca,
                                                                   bad_cert_upstream):
    r = direct(curl, test_ca, bad_cert_upstream, "/echo", "-k").ok()
    assert r.status == 200 and bad_cert_upstream.http_bytes_received


def test_upstream_flags_malformed_requests(upstream, test_ca):
    c = client.RawConn.connect(upstream.port)
    c.start_tls(test_ca.ca_pem, "upstream.test")
    c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n")
    r = c.read_response()
    assert r.status == 400 and c.is_closed()
    assert len(upstream.protocol_errors) == 1
    upstream.protocol_errors.clear()  # so the fixture teardown passes


def test_raw_response_parsing(upstream, test_ca):
    c = client.RawConn.connect(upstream.port).start_tls(test_ca.ca_pem, "api.openai.com")
    c.send(b"GET /chunked HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
    r = c.read_response()
    assert r.status == 200 and r.body == up.CHUNKED_BODY
    c.send(b"HEAD /echo HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
    assert c.read_response(method="HEAD").body == b""
    c.send(b"GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nConnection: close\r\n\r\n")
    assert json.loads(c.read_response().body)["conn_id"] == upstream.snapshot()[0].conn_id
    assert c.is_closed()


def test_base64_fragments_catch_embedded_secret():
    tok = "avtok-0123456789abcdef01234567"
    frags = avd.base64_fragments(tok, prefixes=["agent:"])
    for prefix in (b"agent:", b"x:", b"", b"someone-else:", b"ab"):
        text = "Proxy-Authorization: Basic " + base64.b64encode(prefix + tok.encode()).decode()
        assert avd.find_leaks(text, frags), prefix
    assert not avd.find_leaks(base64.b64encode(b"agent:other-token-value").decode(), frags)


def test_daemon_fixture_plumbing(daemon, secrets):
    """Runs the real fixture code against a fake daemon."""
    d = daemon(argv0=[sys.executable, str(HERE / "avtest" / "fake_daemon.py")])
    assert d.port and d.port != 0
    assert any("listening on" in line for line in d.stderr_lines)
    d.wait_log(lambda line: "some log line" in line, timeout=2)
    assert "-c" in d.argv and "--state-dir" in d.argv and "--upstream-cacert" in d.argv
    assert d.env["OPENAI_API_KEY"] == secrets.openai_key
    conf = (d.workdir / "agentvault.conf").read_text()
    assert f"file:{secrets.github_token_file}" in conf
    assert secrets.github_token_file.read_text().strip() == secrets.github_token
    assert d.stop() == 0
    d.assert_no_secrets()


def test_missing_binary_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTVAULT_BIN", str(tmp_path / "nope"))
    with pytest.raises(pytest.fail.Exception, match="agentvault binary not found"):
        avd.require_binary()
