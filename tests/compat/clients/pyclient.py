"""Python HTTP clients of the compat suite, one per subcommand:

    pyclient.py requests|urllib|httpx|httpx-h2|aiohttp URL
    pyclient.py aiohttp-ws|websockets URL
    pyclient.py grpc HOST:PORT tls|insecure

Each POSTs a small JSON body with a dummy key (the real one is the proxy's
business), checks that the fake origin's echo saw the same body, and prints
one JSON line {"ok": true, "http_version": ...}. Proxy and CA come from the
environment only (as `agentvault run` sets it); nothing here names them.
Exit status 0 only on success.
"""
import asyncio
import hashlib
import json
import sys

DUMMY = {"Authorization": "Bearer sk-compat-dummy"}
BODY = json.dumps({"model": "compat", "input": "hello from the compat suite"}).encode()


def check_echo(status, text, version):
    if status != 200:
        raise SystemExit(f"status {status}: {text[:300]}")
    echo = json.loads(text)
    if echo.get("body_sha256") != hashlib.sha256(BODY).hexdigest():
        raise SystemExit(f"the origin saw another body: {echo.get('body_length')} bytes")
    print(json.dumps({"ok": True, "http_version": version, "origin_proto": echo.get("proto")}))


def run_requests(url):
    import requests
    r = requests.post(url, data=BODY, headers={**DUMMY, "Content-Type": "application/json"},
                      timeout=30)
    check_echo(r.status_code, r.text, "HTTP/1.1")


def run_urllib(url):
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url, data=BODY, method="POST",
                                 headers={**DUMMY, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            check_echo(r.status, r.read().decode(), "HTTP/1.1")
    except urllib.error.HTTPError as e:
        check_echo(e.code, e.read().decode(), "HTTP/1.1")


def run_httpx(url, h2):
    import httpx
    kw = {"http2": h2}
    if h2 and url.startswith("http://"):
        kw["http1"] = False  # h2c with prior knowledge (a gateway)
    with httpx.Client(timeout=30, **kw) as c:
        r = c.post(url, content=BODY, headers={**DUMMY, "Content-Type": "application/json"})
    if h2 and r.http_version != "HTTP/2":
        raise SystemExit(f"asked for HTTP/2, got {r.http_version}")
    check_echo(r.status_code, r.text, r.http_version)


async def run_aiohttp(url):
    import aiohttp
    async with aiohttp.ClientSession(trust_env=True) as s:
        async with s.post(url, data=BODY, headers={**DUMMY, "Content-Type": "application/json"},
                          timeout=aiohttp.ClientTimeout(total=30)) as r:
            check_echo(r.status, await r.text(), f"HTTP/{r.version.major}.{r.version.minor}")


async def run_aiohttp_ws(url):
    import aiohttp
    async with aiohttp.ClientSession(trust_env=True) as s:
        async with s.ws_connect(url, headers=DUMMY, timeout=30) as ws:
            msgs = ["hello over the vault", "x" * 70000]
            for m in msgs:
                await ws.send_str(m)
                got = await ws.receive(timeout=30)
                if got.type != aiohttp.WSMsgType.TEXT or got.data != m:
                    raise SystemExit(f"echo mismatch: {got.type} {str(got.data)[:80]!r}")
            await ws.send_bytes(b"\x00\x01binary")
            got = await ws.receive(timeout=30)
            if got.type != aiohttp.WSMsgType.BINARY or got.data != b"\x00\x01binary":
                raise SystemExit(f"binary echo mismatch: {got.type}")
            await ws.close()
    print(json.dumps({"ok": True, "http_version": "HTTP/1.1+ws"}))


async def run_websockets(url):
    """The `websockets` library (10.x: no proxy support of its own)."""
    import websockets
    async with websockets.connect(url, extra_headers=DUMMY, open_timeout=20) as ws:
        for m in ("hello over the vault", "y" * 70000):
            await ws.send(m)
            got = await asyncio.wait_for(ws.recv(), 30)
            if got != m:
                raise SystemExit(f"echo mismatch: {str(got)[:80]!r}")
    print(json.dumps({"ok": True, "http_version": "HTTP/1.1+ws"}))


def main():
    mode, url = sys.argv[1], sys.argv[2]
    if mode == "requests":
        run_requests(url)
    elif mode == "urllib":
        run_urllib(url)
    elif mode in ("httpx", "httpx-h2"):
        run_httpx(url, mode == "httpx-h2")
    elif mode == "aiohttp":
        asyncio.run(run_aiohttp(url))
    elif mode == "aiohttp-ws":
        asyncio.run(run_aiohttp_ws(url))
    elif mode == "websockets":
        asyncio.run(run_websockets(url))
    elif mode == "grpc":
        run_grpc(url, sys.argv[3])
    else:
        raise SystemExit(f"unknown mode {mode}")


def run_grpc(target, secure):
    """One unary call to /compat.Echo/Say (raw bytes, no generated code)."""
    import grpc
    if secure == "tls":
        # the roots: GRPC_DEFAULT_SSL_ROOTS_FILE_PATH; the proxy: https_proxy
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials())
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        say = channel.unary_unary("/compat.Echo/Say")
        reply, call = say.with_call(b"ping", metadata=[("authorization", "Bearer sk-compat-dummy")],
                                    timeout=30)
        if reply != b"pong:ping":
            raise SystemExit(f"unexpected reply {reply[:80]!r}")
        trailers = dict(call.trailing_metadata() or ())
        if trailers.get("compat-trailer") != "kept":
            raise SystemExit(f"trailing metadata lost: {trailers}")
    print(json.dumps({"ok": True, "http_version": "HTTP/2"}))


if __name__ == "__main__":
    main()
