"""The listener: both proxy schemes on one port, /healthz, /ca.pem, keep-alive,
request forms the proxy refuses, and pass-through of unmatched hosts."""
import socket
import ssl

from cryptography import x509

from avtest import client
from avtest.checks import assert_curl_proxy_error, assert_raw_proxy_error, run_cli
from avtest.daemon import base_env


def test_healthz_origin_form(daemon, client_home):
    d = daemon()
    r = client.run_curl([f"http://127.0.0.1:{d.port}/healthz"], home=client_home).ok()
    assert (r.status, r.body) == (200, b"ok\n")


def test_ca_pem_endpoint_serves_state_root(daemon, client_home):
    d = daemon()
    r = client.run_curl([f"http://127.0.0.1:{d.port}/ca.pem"], home=client_home).ok()
    assert r.status == 200
    assert r.body == d.ca_pem.read_bytes()
    cert = x509.load_pem_x509_certificate(r.body)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


def test_ca_pem_command_creates_root_the_daemon_then_uses(daemon, tmp_path, secrets,
                                                         client_home):
    state = tmp_path / "fresh-state"
    p = run_cli(["ca", "pem", "--state-dir", state],
                env=base_env(tmp_path))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == (state / "ca.pem").read_text().strip()
    x509.load_pem_x509_certificate(p.stdout.encode())
    d = daemon(state_dir=state)
    r = client.run_curl([f"http://127.0.0.1:{d.port}/ca.pem"], home=client_home).ok()
    assert r.body.decode().strip() == p.stdout.strip()


def test_proxy_tls_certificate_names(daemon):
    """The TLS listener's certificate chains to <state>/ca.pem and names both
    127.0.0.1 and localhost."""
    d = daemon()
    for name in ("127.0.0.1", "localhost"):
        ctx = ssl.create_default_context(cafile=str(d.ca_pem))
        with socket.create_connection(("127.0.0.1", d.port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as s:
                assert s.version() in ("TLSv1.2", "TLSv1.3")


def test_healthz_on_tls_listener(daemon, client_home):
    d = daemon()
    r = client.run_curl(["--cacert", d.ca_pem, f"https://127.0.0.1:{d.port}/healthz"],
                        home=client_home).ok()
    assert (r.status, r.body) == (200, b"ok\n")


def test_keepalive_reuses_client_and_upstream_connections(daemon, upstream, proxy_scheme):
    d = daemon()
    r = d.curl("https://api.openai.com/echo", "https://api.openai.com/echo?n=2",
               scheme=proxy_scheme, urls=2).ok()
    assert [t.status for t in r.transfers] == [200, 200], r.describe()
    assert r.transfers[1].num_connects == 0, r.describe()
    assert "Re-using existing connection" in r.stderr
    reqs = upstream.wait_requests(2)
    assert [q.target for q in reqs] == ["/echo", "/echo?n=2"]
    assert reqs[0].conn_id == reqs[1].conn_id, "the proxy opened a new upstream connection"
    assert upstream.connections_accepted == 1


def test_origin_form_other_path_is_400(daemon, upstream, client_home):
    d = daemon()
    r = client.run_curl([f"http://127.0.0.1:{d.port}/v1/models"], home=client_home).ok()
    assert_curl_proxy_error(r, 400)
    assert upstream.snapshot() == []


def test_absolute_form_https_is_400_mentioning_connect(daemon, upstream):
    d = daemon()
    c = client.RawConn.connect(d.port)
    try:
        c.send(b"GET https://api.openai.com/echo HTTP/1.1\r\nHost: api.openai.com\r\n"
               b"Authorization: Bearer dummy\r\n\r\n")
        resp = c.read_response()
    finally:
        c.close()
    assert_raw_proxy_error(resp, 400)
    assert b"CONNECT" in resp.body, resp.body
    assert upstream.snapshot() == [] and upstream.connections_accepted == 0


def test_unmatched_host_is_passed_through_unchanged(daemon, upstream, proxy_scheme, secrets):
    d = daemon()
    r = d.curl("-H", "Authorization: Bearer agent-own", "-H", "X-Custom: kept",
               "https://upstream.test/echo?a=1", scheme=proxy_scheme).ok()
    assert r.status == 200
    rec = upstream.only_request()
    assert rec.target == "/echo?a=1"
    assert rec.header_values("Authorization") == ["Bearer agent-own"]
    assert rec.header("X-Custom") == "kept"
    assert rec.header("Host") == "upstream.test"
    assert secrets.openai_key not in str(rec.headers)
