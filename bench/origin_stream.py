#!/usr/bin/env python3
"""Streaming origin for the agentvault benchmark: SSE and WebSocket echo over TLS.

  GET /sse?interval=MS   text/event-stream, chunked; one event every MS ms,
                         each "data: <CLOCK_REALTIME ns>\\n\\n" (stamped just
                         before the write)
  GET /ws                WebSocket (RFC 6455) echo of text/binary messages
                         (permessage-deflate when the client offers it)
  anything else          200 "ok"

Every request must carry "Authorization: Bearer <BENCH_KEY>" (401 otherwise),
so a run also proves that the proxy injected the credential.

usage: origin_stream.py --port P --cert CERT --key KEY [--key-value SECRET]
"""
import argparse
import asyncio
import base64
import hashlib
import ssl
import struct
import time
import zlib

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def read_head(reader):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    hdrs = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    return method, target, hdrs


async def sse(writer, interval):
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
    await writer.drain()
    while True:
        await asyncio.sleep(interval)
        ev = b"data: %d\n\n" % time.clock_gettime_ns(time.CLOCK_REALTIME)
        writer.write(b"%x\r\n%s\r\n" % (len(ev), ev))
        await writer.drain()


async def ws(reader, writer, hdrs):
    key = hdrs.get("sec-websocket-key", "").encode()
    acc = base64.b64encode(hashlib.sha1(key + GUID).digest())
    # permessage-deflate when offered: echoes compressed (context takeover),
    # compressed client messages (RSV1) inflated
    pmd = "permessage-deflate" in hdrs.get("sec-websocket-extensions", "")
    comp = zlib.compressobj(wbits=-15) if pmd else None
    decomp = zlib.decompressobj(wbits=-15) if pmd else None
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n" +
                 (b"Sec-WebSocket-Extensions: permessage-deflate\r\n" if pmd else b"") +
                 b"\r\n")
    await writer.drain()
    while True:
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await reader.readexactly(8))[0]
        mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
        data = bytearray(await reader.readexactly(n))
        for i in range(n):
            data[i] ^= mask[i & 3]
        op = b0 & 0x0F
        rsv1 = 0
        if b0 & 0x40:
            data = bytearray(decomp.decompress(bytes(data) + b"\x00\x00\xff\xff"))
        if comp is not None and op in (1, 2):
            data = bytearray((comp.compress(bytes(data)) + comp.flush(zlib.Z_SYNC_FLUSH))[:-4])
            rsv1 = 0x40
        n = len(data)
        if op == 8:
            writer.write(b"\x88\x00")
            await writer.drain()
            return
        if op == 9:
            op = 10
        if n < 126:
            hdr = bytes([0x80 | rsv1 | op, n])
        elif n < 65536:
            hdr = bytes([0x80 | rsv1 | op, 126]) + struct.pack("!H", n)
        else:
            hdr = bytes([0x80 | rsv1 | op, 127]) + struct.pack("!Q", n)
        writer.write(hdr + bytes(data))
        await writer.drain()


def make_handler(secret):
    want = "Bearer " + secret

    async def handle(reader, writer):
        try:
            while True:
                req = await read_head(reader)
                if req is None:
                    return
                method, target, hdrs = req
                if hdrs.get("authorization") != want:
                    writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
                    await writer.drain()
                    continue
                path, _, query = target.partition("?")
                if path == "/sse":
                    ms = 10.0
                    for kv in query.split("&"):
                        if kv.startswith("interval="):
                            ms = float(kv[9:])
                    await sse(writer, ms / 1000.0)
                    return
                if path == "/ws":
                    await ws(reader, writer, hdrs)
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, ValueError):
            pass
        finally:
            writer.close()

    return handle


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--key-value", default="benchkey")
    a = ap.parse_args()
    sc = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sc.load_cert_chain(a.cert, a.key)
    sc.set_alpn_protocols(["http/1.1"])
    srv = await asyncio.start_server(make_handler(a.key_value), "127.0.0.1", a.port,
                                     ssl=sc, backlog=1024)
    async with srv:
        await srv.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
