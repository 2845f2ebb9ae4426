"""websockets (10.4, legacy asyncio client) through the gateway to a wss origin."""
import asyncio

import websockets

from conftest import assert_no_secret


def ws_vault(make_vault, ws_upstream, **kw):
    # api.github.com is pinned to the WebSocket origin.
    return make_vault(resolve=[f"api.github.com:443:127.0.0.1:{ws_upstream.port}"], **kw)


def test_websocket_through_gateway(make_vault, ws_upstream, keys):
    v = ws_vault(make_vault, ws_upstream)
    base = v.gateway_url("https://api.github.com")
    url = base.replace("http://", "ws://") + "/echo?x=1"

    async def talk():
        async with websockets.connect(url, extra_headers={"Authorization": "token dummy"},
                                      subprotocols=["chat.v1"], open_timeout=15,
                                      max_size=None) as ws:
            assert ws.subprotocol == "chat.v1"
            assert ws.response_headers.get("X-Upstream-Ws") == "yes"
            await ws.send("hello \u2713")
            assert await asyncio.wait_for(ws.recv(), 10) == "hello \u2713"
            blob = bytes(range(256)) * 1000
            await ws.send(blob)
            assert await asyncio.wait_for(ws.recv(), 10) == blob
            pong = await ws.ping(b"p1")
            await asyncio.wait_for(pong, 10)
            await ws.close(1000, "bye")
            return ws.close_code

    assert asyncio.run(talk()) == 1000
    conn = ws_upstream.wait_conn(0)
    assert conn.path == "/echo" and conn.target == "/echo?x=1"
    assert conn.header_values("authorization") == [f"token {keys['github']}"]
    ws_upstream.wait(lambda: conn.ended, 10, "the upstream connection to end")
    assert conn.close_code == 1000 and conn.close_reason == "bye"
    assert [m for m in conn.messages if m[0] == "text"] == [("text", "hello \u2713")]


def test_websocket_over_open_stream(make_vault, ws_upstream, keys):
    """The stream socket carries the upgrade too (websockets on sock=)."""
    v = ws_vault(make_vault, ws_upstream)
    s = v.open_stream("https://api.github.com")

    async def talk():
        async with websockets.connect("ws://api.github.com/greet", sock=s,
                                      open_timeout=15) as ws:
            first = await asyncio.wait_for(ws.recv(), 10)
            second = await asyncio.wait_for(ws.recv(), 10)
            await ws.send("ping?")
            echoed = await asyncio.wait_for(ws.recv(), 10)
            return first, second, echoed

    first, second, echoed = asyncio.run(talk())
    assert first.startswith("hello ") and isinstance(second, bytes) and echoed == "ping?"
    conn = ws_upstream.wait_conn(0)
    assert conn.header_values("authorization") == [f"token {keys['github']}"]
    assert conn.header("host") == "api.github.com"


def test_websocket_non_101_is_relayed(make_vault, ws_upstream, keys):
    v = ws_vault(make_vault, ws_upstream)
    url = v.gateway_url("https://api.github.com").replace("http://", "ws://") + "/status-401"

    async def talk():
        try:
            async with websockets.connect(url, open_timeout=15):
                return None
        except websockets.InvalidStatusCode as e:
            return e.status_code

    assert asyncio.run(talk()) == 401
    assert ws_upstream.wait_conn(0).header_values("authorization") == [
        f"token {keys['github']}"]


def test_websocket_off_is_426(make_vault, ws_upstream, keys):
    from conftest import github_service, openai_service
    v = ws_vault(make_vault, ws_upstream,
                 services=[openai_service(), github_service(websocket=False)])
    url = v.gateway_url("https://api.github.com").replace("http://", "ws://") + "/echo"

    async def talk():
        try:
            async with websockets.connect(url, open_timeout=15):
                return None
        except websockets.InvalidStatusCode as e:
            assert_no_secret(str(e.headers), keys)
            return e.status_code

    assert asyncio.run(talk()) == 426
    assert ws_upstream.conns() == []
