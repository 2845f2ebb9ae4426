"""mitmproxy addon for the agentvault benchmark (tested with Debian's mitmproxy 8.1.1).

Does what agentvault's [service "bench"] does: for bench.test and *.bench.test,
replace any Authorization header with "Bearer $BENCH_KEY".  It also routes
those hosts to the local origin (like agentvault's `resolve` lines) by
rewriting the upstream address in server_connect, keeping SNI and Host, and
streams text/event-stream responses (mitmproxy buffers bodies otherwise).

Environment: BENCH_KEY (secret), BENCH_ORIGIN ("127.0.0.1:PORT", the origin for
bench.test and *.bench.test), BENCH_STREAM_ORIGIN (the SSE/WebSocket origin for
stream.bench.test), BENCH_H2_ORIGIN (the HTTP/2-only origin for h2.bench.test).
"""
import os

from mitmproxy import http

KEY = os.environ.get("BENCH_KEY", "benchkey")


def _addr(var, default):
    h, p = os.environ.get(var, default).rsplit(":", 1)
    return (h, int(p))


ORIGIN = _addr("BENCH_ORIGIN", "127.0.0.1:8443")
STREAM_ORIGIN = _addr("BENCH_STREAM_ORIGIN", "127.0.0.1:8444")
H2_ORIGIN = _addr("BENCH_H2_ORIGIN", "127.0.0.1:8445")
SPECIAL = {"stream.bench.test": STREAM_ORIGIN, "h2.bench.test": H2_ORIGIN}


def _ours(host):
    return host == "bench.test" or host.endswith(".bench.test")


def server_connect(data):
    srv = data.server
    host = srv.address[0] if srv.address else ""
    if _ours(host):
        if not srv.sni:
            srv.sni = host
        srv.address = SPECIAL.get(host, ORIGIN)


def request(flow: http.HTTPFlow):
    if _ours(flow.request.pretty_host):
        flow.request.headers["Authorization"] = "Bearer " + KEY


def responseheaders(flow: http.HTTPFlow):
    if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
        flow.response.stream = True
