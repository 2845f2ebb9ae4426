"""The harness itself: an origin answers only with the real key, over h1 and h2."""
import ssl
import urllib.error
import urllib.request

import compat


def test_curl_h1_and_h2_through_run(stack):
    o = stack.add_origin("echo")
    stack.start()
    curl = compat.which("curl")
    for flag in ("--http1.1", "--http2"):
        r = stack.run_proxied([curl, "-sS", "--fail", flag, "-H", "Authorization: Bearer "
                               "sk-compat-dummy", f"{o.server.url}/v1/x"]).check()
        assert '"ok": true' in r.stdout
    o.server.assert_all_keyed(2)
    # the daemon speaks h2 to an origin offering it, whatever the agent spoke
    assert o.server.protos() == ["h2"]


def test_h1_only_origin(stack):
    o = stack.add_origin("echo1", alpn=("http/1.1",))
    stack.start()
    with stack.case("curl h2, HTTP/1.1-only origin", "proxy", o):
        stack.run_proxied([compat.which("curl"), "-sS", "--fail", "--http2",
                           f"{o.server.url}/"]).check()
    o.server.assert_all_keyed(1)
    assert o.server.protos() == ["h1"]


def test_origin_refuses_a_request_without_the_key(stack):
    o = stack.add_origin("nokey", service=False, gateway=False)
    ctx = ssl.create_default_context(cafile=str(stack.ca_pem))
    # Directly (no proxy): the origin answers 401 and records the problem.
    req = urllib.request.Request(f"https://127.0.0.1:{o.server.port}/x",
                                 headers={"Authorization": "Bearer sk-compat-dummy"})
    try:
        urllib.request.urlopen(req, context=ctx, timeout=10)
        status = 200
    except urllib.error.HTTPError as e:
        status = e.code
    assert status == 401
    bad = o.server.bad_requests()
    assert len(bad) == 1 and "no accepted credential header" in bad[0].problem
