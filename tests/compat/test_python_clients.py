"""Python HTTP clients (Debian's python3-requests, -httpx, -aiohttp, and
urllib) in proxy mode (`agentvault run`) and gateway mode (base URL)."""
import json

import pytest

import compat

PY = "/usr/bin/python3"
CLIENT = str(compat.HERE / "clients" / "pyclient.py")

HTTP_CLIENTS = ["requests", "urllib", "httpx", "httpx-h2", "aiohttp"]
NAMES = {"requests": "Python requests", "urllib": "Python urllib", "httpx": "Python httpx h1",
         "httpx-h2": "Python httpx h2", "aiohttp": "Python aiohttp"}


def _run(stack, mode, url, proxied):
    argv = [PY, CLIENT, mode, url]
    r = stack.run_proxied(argv) if proxied else stack.run_client(argv)
    r.check()
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ok"] is True
    return out


@pytest.mark.parametrize("mode", HTTP_CLIENTS)
def test_http_client_through_run(stack, mode):
    o = stack.add_origin("py")
    stack.start()
    with stack.case(NAMES[mode], "proxy", o):
        out = _run(stack, mode, f"{o.server.url}/v1/responses", True)
        if mode == "httpx-h2":
            assert out["http_version"] == "HTTP/2"
        o.server.assert_all_keyed(1)


@pytest.mark.parametrize("mode", HTTP_CLIENTS)
def test_http_client_through_gateway(stack, mode):
    o = stack.add_origin("py")
    stack.start()
    with stack.case(NAMES[mode], "gateway", o):
        out = _run(stack, mode, f"{stack.gateway_url('py')}/v1/responses", False)
        if mode == "httpx-h2":
            assert out["http_version"] == "HTTP/2"
        o.server.assert_all_keyed(1)


@pytest.mark.parametrize("where", ["proxy", "gateway"])
def test_aiohttp_websocket(stack, where):
    """aiohttp finds the proxy for wss:// in WSS_PROXY/wss_proxy (run sets
    them); through a gateway it connects to ws:// and the gateway speaks
    wss:// to the origin."""
    o = stack.add_origin("pyws")
    stack.start()
    with stack.case("Python aiohttp WebSocket", where, o) as info:
        if where == "proxy":
            _run(stack, "aiohttp-ws", f"wss://{o.host}/v1/realtime", True)
        else:
            _run(stack, "aiohttp-ws", f"ws://127.0.0.1:{stack.gateway_url('pyws').rsplit(':', 1)[1]}"
                 "/v1/realtime", False)
        o.server.assert_all_keyed(1)
        assert [r.websocket for r in o.server.snapshot()] == [True]
        assert len(o.server.ws_messages) == 3
        info["note"] = "WebSocket"


def test_websockets_library_through_gateway(stack):
    """Python `websockets` (Debian's 10.x) has no proxy support: a gateway
    is the way (ws:// to the gateway, wss:// with the key to the origin)."""
    o = stack.add_origin("pyws")
    stack.start()
    with stack.case("Python websockets 10.x", "gateway", o, note="WebSocket; no proxy support"):
        gw = stack.gateway_url("pyws").replace("http://", "ws://")
        _run(stack, "websockets", f"{gw}/v1/realtime", False)
        o.server.assert_all_keyed(1)
        assert len(o.server.ws_messages) == 2


def test_websockets_library_ignores_the_proxy(stack):
    """The limit the README states: under `agentvault run` websockets 10.x
    connects directly (here: the fake host does not resolve) and the proxy
    sees nothing."""
    o = stack.add_origin("pyws")
    stack.start()
    r = stack.run_proxied([PY, CLIENT, "websockets", f"wss://{o.host}/v1/realtime"])
    assert r.returncode != 0, r.stdout
    assert o.server.snapshot() == []
    assert not any(f"host={o.host}" in line for line in stack.daemon.log_text().splitlines())
