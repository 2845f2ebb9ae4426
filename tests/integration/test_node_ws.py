"""A Node WebSocket client (`ws` + `https-proxy-agent`, tests/node/ws_client.mjs)
through agentvault to the fake Responses server (avtest/fake_openai.py).

Needs `node` and tests/node/node_modules (scripts/setup-node.sh); a missing
one fails.
"""
import json
import shutil
from pathlib import Path

import pytest

from avtest import daemon as avd
from avtest.fake_openai import FakeOpenAI, openai_service_config, run_bounded, ws_accept

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "tests" / "node"
WS_CLIENT = NODE_DIR / "ws_client.mjs"
PLACEHOLDER = "sk-placeholder-test"
URL = "wss://api.openai.com/v1/responses"


@pytest.fixture
def node():
    exe = shutil.which("node", path="/usr/bin:/bin:/usr/local/bin")
    if not exe:
        pytest.fail("node is not installed (Debian package nodejs)", pytrace=False)
    for mod in ("ws", "https-proxy-agent"):
        if not (NODE_DIR / "node_modules" / mod / "package.json").is_file():
            pytest.fail(f"tests/node/node_modules/{mod} is missing: run scripts/setup-node.sh",
                        pytrace=False)
    return exe


@pytest.fixture
def fake(test_ca):
    f = FakeOpenAI(test_ca.server_cert, test_ca.server_key, reply_text="node-ok").start()
    yield f
    f.stop()
    assert f.errors == [], f"fake OpenAI server saw protocol errors:\n{f.describe()}"


def run_client(node, tmp_path, *args, timeout=30):
    home = tmp_path / "node-home"
    home.mkdir(exist_ok=True)
    env = avd.base_env(home)
    return run_bounded([node, WS_CLIENT, *args, "--timeout-ms", "20000"], env=env,
                       cwd=NODE_DIR, timeout=timeout)


def events(r):
    return [json.loads(line[6:]) for line in r.stdout.splitlines() if line.startswith("EVENT ")]


def test_selftest_ws_accept_rfc6455_example():
    """The fake server's Sec-WebSocket-Accept matches the example of RFC 6455 1.3."""
    assert ws_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_selftest_ws_client_direct(node, fake, test_ca, tmp_path):
    """Harness self-test: ws_client.mjs straight to the fake server's TLS side."""
    r = run_client(node, tmp_path, "--url", f"wss://localhost:{fake.port}/v1/responses",
                   "--ca", test_ca.ca_pem, "--bearer", PLACEHOLDER)
    ctx = f"{r.describe()}\n{fake.describe()}"
    assert r.returncode == 0 and "DONE response.completed" in r.stdout, ctx
    assert "OPEN HTTP/1.1 101 Switching Protocols" in r.stdout, ctx
    assert [e["type"] for e in events(r)][-1] == "response.completed", ctx
    (req,) = fake.snapshot()
    assert req.transport == "ws" and req.tls and req.closed_cleanly, ctx
    assert req.header_values("authorization") == [f"Bearer {PLACEHOLDER}"], ctx
    assert fake.count("ws_turns") == 1, ctx


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_ws_client_through_vault(daemon, node, fake, secrets, tmp_path, scheme):
    """`ws` over HttpsProxyAgent (TLS to the proxy for https://) to
    wss://api.openai.com: the relayed upgrade carries the real key, the frames
    pass both ways, and the client gets response.completed."""
    d = daemon(config=openai_service_config(),
               resolve=[f"api.openai.com:443:127.0.0.1:{fake.port}"])
    r = run_client(node, tmp_path, "--url", URL, "--proxy", d.proxy_url(scheme),
                   "--ca", d.ca_pem, "--bearer", PLACEHOLDER)
    reqs = fake.snapshot()
    auth = [["<real key>" if v == f"Bearer {secrets.openai_key}" else
             "<placeholder>" if v == f"Bearer {PLACEHOLDER}" else "<other>"
             for v in x.header_values("authorization")] for x in reqs]
    ctx = f"{r.describe()}\n{fake.describe()}\nauthorization: {auth}"
    assert r.returncode == 0 and "DONE response.completed" in r.stdout, ctx
    assert [e["type"] for e in events(r)][-1] == "response.completed", ctx
    assert any(e.get("delta") == "node-ok" for e in events(r)), ctx
    assert [x.transport for x in reqs] == ["ws"], ctx
    assert auth == [["<real key>"]], ctx
    assert reqs[0].tls, ctx
    assert fake.count("ws_turns") == 1, ctx
    assert reqs[0].json_messages()[0]["type"] == "response.create", ctx
    assert not fake.saw(PLACEHOLDER), f"the placeholder reached the server\n{ctx}"
    # The client closed with a Close frame; the relay must have passed it on.
    assert fake.wait_for(lambda f: f.snapshot()[0].closed_cleanly, timeout=5), ctx
    leaks = avd.find_leaks(r.stdout + r.stderr, avd.forbidden_strings(secrets))
    assert not leaks, "secret material in the Node client's output"


def test_ws_client_websocket_off_gets_426(daemon, node, fake, tmp_path):
    """With `websocket = off` the proxy itself answers the upgrade with 426."""
    d = daemon(config=openai_service_config(websocket_off=True),
               resolve=[f"api.openai.com:443:127.0.0.1:{fake.port}"])
    r = run_client(node, tmp_path, "--url", URL, "--proxy", d.proxy_url("http"),
                   "--ca", d.ca_pem, "--bearer", PLACEHOLDER)
    ctx = f"{r.describe()}\n{fake.describe()}"
    assert r.returncode == 1 and "ERROR unexpected response 426" in r.stdout, ctx
    assert fake.snapshot() == [], f"the upgrade reached the server\n{ctx}"
