"""curl: HTTP/1.1 and HTTP/2 through `agentvault run`, an https:// proxy URL
(TLS to the proxy, set by hand: run gives http:// URLs), and a gateway
(HTTP/1.1 and h2c with prior knowledge)."""
import json

import pytest

import compat

DUMMY = ["-H", "Authorization: Bearer sk-compat-dummy"]


def _ok(r, proto):
    r.check()
    echo = json.loads(r.stdout)
    assert echo["ok"] is True and echo["body_length"] == 11
    return echo


@pytest.mark.parametrize("flag,name", [("--http1.1", "curl h1"), ("--http2", "curl h2")])
def test_curl_through_run(stack, flag, name):
    o = stack.add_origin("curl")
    stack.start()
    with stack.case(name, "proxy", o):
        r = stack.run_proxied([compat.which("curl"), "-sS", "--fail", flag, *DUMMY,
                               "--data-binary", "hello-curl!", f"{o.server.url}/v1/x"])
        _ok(r, flag)
        o.server.assert_all_keyed(1)
    agent, _ = stack.protos_since(0, o)
    assert agent == ("h2" if flag == "--http2" else "h1")


@pytest.mark.parametrize("flag,name", [("--http1.1", "curl h1, https:// proxy URL"),
                                       ("--http2", "curl h2, https:// proxy URL")])
def test_curl_https_proxy_url(stack, flag, name):
    o = stack.add_origin("curl")
    d = stack.start()
    ca = str(d.ca_pem)
    with stack.case(name, "proxy", o, note="proxy env by hand"):
        r = stack.run_client([compat.which("curl"), "-sS", "--fail", flag, *DUMMY,
                              "-x", f"https://127.0.0.1:{d.port}", "--proxy-cacert", ca,
                              "--cacert", ca, "--data-binary", "hello-curl!",
                              f"{o.server.url}/v1/x"])
        _ok(r, flag)
        o.server.assert_all_keyed(1)


@pytest.mark.parametrize("flag,name", [("--http1.1", "curl h1"),
                                       ("--http2-prior-knowledge", "curl h2")])
def test_curl_through_gateway(stack, flag, name):
    o = stack.add_origin("curl")
    stack.start()
    with stack.case(name, "gateway", o):
        r = stack.run_client([compat.which("curl"), "-sS", "--fail", flag, *DUMMY,
                              "--data-binary", "hello-curl!",
                              f"{stack.gateway_url('curl')}/v1/x"])
        _ok(r, flag)
        o.server.assert_all_keyed(1)
    agent, _ = stack.protos_since(0, o)
    assert agent == ("h1" if flag == "--http1.1" else "h2")
