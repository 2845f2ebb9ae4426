"""httpx against Vault.gateway_url(): plain HTTP in, injected HTTPS out."""
import json
import threading

import httpx

from conftest import GITHUB, OPENAI, assert_no_secret


def client(base):
    return httpx.Client(base_url=base, trust_env=False, timeout=15)


def test_gateway_injects_and_scrubs(make_vault, upstream, keys):
    v = make_vault()
    with client(v.gateway_url(OPENAI)) as c:
        r = c.get("/echo?x=1", headers={"Authorization": "Bearer agent-dummy"})
        assert r.status_code == 200
        assert_no_secret(r.content, keys)
        assert "[REDACTED]" in r.text      # the echoed secret was scrubbed
        r2 = c.post("/echo", json={"prompt": "hi"})
        assert r2.status_code == 200 and json.loads(r2.text)["body_length"] > 0
    reqs = upstream.wait_requests(2)
    assert len(reqs) == 2
    first, second = reqs
    assert first.method == "GET" and first.target == "/echo?x=1"
    assert first.header_values("authorization") == [f"Bearer {keys['openai']}"]
    assert first.header("host") == "api.openai.com"
    assert second.method == "POST" and second.body == b'{"prompt": "hi"}'
    assert second.header_values("authorization") == [f"Bearer {keys['openai']}"]
    assert upstream.tls_handshakes_ok >= 1 and not upstream.cleartext_bytes_seen


def test_two_origins_two_credentials(make_vault, upstream, keys):
    v = make_vault()
    with client(v.gateway_url(OPENAI)) as a, client(v.gateway_url(GITHUB)) as b:
        assert a.get("/echo-auth").status_code == 200
        rb = b.get("/echo-auth", headers={"Authorization": "token dummy"})
        assert rb.status_code == 200
        assert_no_secret(rb.content, keys)
    by_host = {r.header("host"): r for r in upstream.wait_requests(2)}
    assert by_host["api.openai.com"].header_values("authorization") == [
        f"Bearer {keys['openai']}"]
    assert by_host["api.github.com"].header_values("authorization") == [
        f"token {keys['github']}"]


def test_path_and_method_scoping(make_vault, upstream, keys):
    """A request outside the service's path gets no credential (unmatched =
    passthrough by default); with unmatched = deny it gets 403."""
    svc = {"name": "openai", "host": "api.openai.com", "auth": "bearer",
           "secret": "callback:openai", "path": "/v1/*", "methods": ["GET"]}
    v = make_vault(services=[svc])
    with client(v.gateway_url(OPENAI)) as c:
        assert c.get("/echo").status_code == 200
    assert upstream.only_request().header_values("authorization") == []
    v2 = make_vault(services=[svc], proxy={"unmatched": "deny"})
    with client(v2.gateway_url(OPENAI)) as c:
        r = c.get("/echo")
        assert r.status_code == 403 and r.headers.get("x-agentvault-error")


def test_streaming_sse_arrives_before_the_end(make_vault, upstream, keys):
    v = make_vault()
    with client(v.gateway_url(OPENAI)) as c:
        with c.stream("GET", "/sse") as r:
            assert r.status_code == 200
            it = r.iter_raw()
            got = b""
            while b"first" not in got:
                got += next(it)
            assert not upstream.sse_finished.is_set()   # streamed, not buffered
            upstream.release_sse()
            for part in it:
                got += part
    assert b"data: first" in got and b"data: second" in got


def test_chunked_body_and_concurrency(make_vault, upstream, keys):
    v = make_vault()
    base = v.gateway_url(OPENAI)
    errors = []

    def worker(i):
        try:
            with client(base) as c:
                for _ in range(5):
                    r = c.get("/chunked")
                    assert r.status_code == 200 and r.content.startswith(b"alpha\n")
                    r = c.put(f"/echo?w={i}", content=b"z" * (100_000 + i))
                    assert r.status_code == 200 and json.loads(r.text)["body_length"] == 100_000 + i
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    reqs = upstream.wait_requests(40)
    assert len(reqs) == 40
    assert all(r.header_values("authorization") == [f"Bearer {keys['openai']}"] for r in reqs)


def test_http2_prior_knowledge(make_vault, upstream, keys):
    v = make_vault()
    with httpx.Client(base_url=v.gateway_url(OPENAI), http1=False, http2=True,
                      trust_env=False, timeout=15) as c:
        r = c.get("/echo-auth")
        assert r.status_code == 200 and r.http_version == "HTTP/2"
        assert_no_secret(r.content, keys)
    assert upstream.only_request().header_values("authorization") == [
        f"Bearer {keys['openai']}"]
