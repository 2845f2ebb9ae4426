"""gRPC through the proxy and through a gateway (issue 13, item 1).

Client and server are Debian's python3-grpcio, with generic handlers and
bytes (de)serializers, so no generated code is needed. The origin is a
grpcio server with TLS (a certificate from the test CA) that answers only
when the real key arrived in `authorization` metadata, exactly once, and no
placeholder did; it needs `te: trailers` (else "Missing :te header") and its
status travels in trailers (`grpc-status`, `grpc-message`), so every call
below also checks that the proxy keeps `te: trailers` toward an HTTP/2 origin
and relays response trailers.

Modes:
  proxy    grpc.secure_channel to api.openai.com:443 with the daemon as
           grpc.http_proxy (CONNECT, then MITM TLS with ALPN h2; the daemon's
           CA given as root_certificates); h2 to the agent and to the origin.
  gateway  grpc.insecure_channel to a [gateway] (h2c with prior knowledge);
           the gateway reaches the origin over TLS with h2.
Plus an HTTP/1.1 agent talking to the same gRPC origin (chunked request
with trailers, `TE: trailers`): trailers from an h2 origin reach an
HTTP/1.1 agent in the chunked trailer section.
"""
import struct
import threading
from concurrent import futures

import grpc
import pytest

from avtest import client
from avtest.daemon import config_text
from avtest.gateway import gateway_section, gw_config, gw_port, received

SVC = "avtest.Echo"
PLACEHOLDER = "Bearer placeholder-from-the-agent"
OPENAI = "api.openai.com"


class GrpcOrigin:
    """A grpcio server over TLS on 127.0.0.1; records each call's metadata."""

    def __init__(self, cert, key, real_key):
        self.real = f"Bearer {real_key}"
        self.lock = threading.Lock()
        self.calls = []      # [(method, [(key, value)])]
        self.refused = []    # methods answered UNAUTHENTICATED
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
            "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
            "FailAfterData": grpc.unary_stream_rpc_method_handler(self.fail_after_data),
            "Reflect": grpc.unary_unary_rpc_method_handler(self.reflect),
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SVC, handlers),))
        creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)

    def start(self):
        self.server.start()
        return self

    def stop(self):
        self.server.stop(0).wait(5)

    def _check(self, method, ctx):
        md = [(k, v) for k, v in ctx.invocation_metadata()]
        with self.lock:
            self.calls.append((method, md))
        auth = [v for k, v in md if k == "authorization"]
        if auth != [self.real]:
            with self.lock:
                self.refused.append(method)
            ctx.abort(grpc.StatusCode.UNAUTHENTICATED, "the real key did not arrive")

    def unary(self, req, ctx):
        self._check("Unary", ctx)
        return b"unary:" + req + b"!"

    def server_stream(self, req, ctx):
        self._check("ServerStream", ctx)
        for i in range(5):
            yield b"%s-%d!" % (req, i)

    def client_stream(self, it, ctx):
        self._check("ClientStream", ctx)
        return b"+".join(it) + b"!"

    def bidi(self, it, ctx):
        self._check("Bidi", ctx)
        for m in it:
            yield b"echo:" + m + b"!"

    def fail(self, req, ctx):
        self._check("Fail", ctx)
        ctx.set_trailing_metadata((("x-detail", "why-" + req.decode()),))
        ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, "deliberate failure: " + req.decode())

    def fail_after_data(self, req, ctx):
        self._check("FailAfterData", ctx)
        yield b"partial!"
        ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "ran out after one message")

    def reflect(self, req, ctx):
        """Echoes the credential it received in a trailer (must be scrubbed)."""
        self._check("Reflect", ctx)
        auth = dict(ctx.invocation_metadata()).get("authorization", "")
        ctx.set_trailing_metadata((("x-echo-secret", "k=" + auth.split(" ", 1)[-1]),))
        return b"reflected!"


@pytest.fixture
def grpc_origin(test_ca, secrets):
    srv = GrpcOrigin(test_ca.server_cert, test_ca.server_key, secrets.openai_key).start()
    yield srv
    srv.stop()


def _stub(ch, kind, name):
    path = f"/{SVC}/{name}"
    return getattr(ch, kind)(path, request_serializer=None, response_deserializer=None)


def proxy_channel(d):
    creds = grpc.ssl_channel_credentials(root_certificates=d.ca_pem.read_bytes())
    return grpc.secure_channel(f"{OPENAI}:443", creds,
                               options=[("grpc.http_proxy", f"http://127.0.0.1:{d.port}")])


def gateway_channel(port):
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)])


MD = (("authorization", PLACEHOLDER),)


def run_calls(ch):
    """Unary, server-streaming, client-streaming, bidirectional, and error
    statuses: before any message (trailers-only) and after one."""
    timeout = 20
    out = {}
    out["unary"] = _stub(ch, "unary_unary", "Unary")(b"ping", metadata=MD, timeout=timeout)
    out["server_stream"] = list(_stub(ch, "unary_stream", "ServerStream")(b"s", metadata=MD,
                                                                          timeout=timeout))
    out["client_stream"] = _stub(ch, "stream_unary", "ClientStream")(
        iter([b"a", b"b", b"c"]), metadata=MD, timeout=timeout)

    # Bidirectional, in lock-step: each request waits for the previous
    # answer, so nothing is held back on the way in either direction.
    gate = threading.Semaphore(0)

    def requests():
        for m in (b"one", b"two", b"three"):
            yield m
            if not gate.acquire(timeout=timeout):
                return

    answers = []
    for a in _stub(ch, "stream_stream", "Bidi")(requests(), metadata=MD, timeout=timeout):
        answers.append(a)
        gate.release()
    out["bidi"] = answers

    with pytest.raises(grpc.RpcError) as ei:
        _stub(ch, "unary_unary", "Fail")(b"nope", metadata=MD, timeout=timeout)
    e = ei.value
    out["fail"] = (e.code(), e.details(), dict(e.trailing_metadata() or ()))

    call = _stub(ch, "unary_stream", "FailAfterData")(b"x", metadata=MD, timeout=timeout)
    got = []
    with pytest.raises(grpc.RpcError) as ei:
        for m in call:
            got.append(m)
    out["fail_after_data"] = (got, ei.value.code(), ei.value.details())

    resp, call = _stub(ch, "unary_unary", "Reflect").with_call(b"r", metadata=MD, timeout=timeout)
    out["reflect"] = (resp, dict(call.trailing_metadata() or ()))
    received(repr(out))
    return out


def check_calls(out, origin, secrets):
    assert out["unary"] == b"unary:ping!"
    assert out["server_stream"] == [b"s-%d!" % i for i in range(5)]
    assert out["client_stream"] == b"a+b+c!"
    assert out["bidi"] == [b"echo:one!", b"echo:two!", b"echo:three!"]
    code, details, tmd = out["fail"]
    assert code == grpc.StatusCode.FAILED_PRECONDITION, out["fail"]
    assert details == "deliberate failure: nope"
    assert tmd.get("x-detail") == "why-nope"
    got, code, details = out["fail_after_data"]
    assert got == [b"partial!"]
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, out["fail_after_data"]
    assert details == "ran out after one message"
    resp, tmd = out["reflect"]
    assert resp == b"reflected!"
    # The secret the origin echoed in a trailer was scrubbed.
    assert tmd.get("x-echo-secret") == "k=[REDACTED]", tmd
    # Every call reached the origin with the real key, once, and no placeholder.
    assert origin.refused == []
    names = [m for m, _ in origin.calls]
    assert sorted(names) == sorted(["Unary", "ServerStream", "ClientStream", "Bidi", "Fail",
                                    "FailAfterData", "Reflect"]), names
    for _, md in origin.calls:
        assert [v for k, v in md if k == "authorization"] == [f"Bearer {secrets.openai_key}"]
        assert not any("placeholder" in str(v) for _, v in md), md


def test_grpc_through_proxy(daemon, grpc_origin, secrets):
    d = daemon(config_text(secrets), resolve=[f"{OPENAI}:443:127.0.0.1:{grpc_origin.port}"])
    with proxy_channel(d) as ch:
        out = run_calls(ch)
    check_calls(out, grpc_origin, secrets)
    # The Reflect exchange has its log line (written when the stream closes,
    # which may be just after the client has read the trailers).
    d.wait_log(lambda line: "/avtest.Echo/Reflect" in line)


def test_grpc_through_gateway_h2c(daemon, grpc_origin, secrets):
    d = daemon(gw_config(secrets, gateway_section("openai", upstream=f"https://{OPENAI}")),
               resolve=[f"{OPENAI}:443:127.0.0.1:{grpc_origin.port}"])
    with gateway_channel(gw_port(d)) as ch:
        out = run_calls(ch)
    check_calls(out, grpc_origin, secrets)


def _grpc_frame(msg):
    return b"\0" + struct.pack(">I", len(msg)) + msg


def test_http1_agent_gets_trailers_from_h2_grpc_origin(daemon, grpc_origin, secrets):
    """An HTTP/1.1 agent (TE: trailers, chunked request) calls the gRPC
    origin through the proxy: the origin speaks h2, and the agent gets
    grpc-status in the chunked trailer section."""
    d = daemon(config_text(secrets), resolve=[f"{OPENAI}:443:127.0.0.1:{grpc_origin.port}"])
    conn, resp = client.connect_tunnel(d.port, f"{OPENAI}:443")
    assert resp.status == 200
    conn.start_tls(d.ca_pem, OPENAI)
    body = _grpc_frame(b"h1")
    conn.send((f"POST /{SVC}/Unary HTTP/1.1\r\nHost: {OPENAI}\r\n"
               "Content-Type: application/grpc\r\nTE: trailers\r\nConnection: TE\r\n"
               f"Authorization: {PLACEHOLDER}\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
              + b"%x\r\n%s\r\n0\r\nx-client-trailer: yes\r\n\r\n" % (len(body), body))
    r = conn.read_response(method="POST")
    received(r.raw_head, r.body, repr(r.trailers))
    assert r.status == 200, r
    assert r.header("Transfer-Encoding") == "chunked"
    assert r.body == _grpc_frame(b"unary:h1!")
    tr = dict((k.lower(), v) for k, v in r.trailers)
    assert tr.get("grpc-status") == "0", r.trailers

    # and an error status with a message, trailers-only from the origin
    conn.send((f"POST /{SVC}/Fail HTTP/1.1\r\nHost: {OPENAI}\r\n"
               "Content-Type: application/grpc\r\nTE: trailers\r\nConnection: TE\r\n"
               f"Content-Length: {len(_grpc_frame(b'h1'))}\r\n\r\n").encode() + _grpc_frame(b"h1"))
    r = conn.read_response(method="POST")
    received(r.raw_head, r.body, repr(r.trailers))
    assert r.status == 200, r
    fields = dict((k.lower(), v) for k, v in list(r.headers) + list(r.trailers or []))
    assert fields.get("grpc-status") == str(grpc.StatusCode.FAILED_PRECONDITION.value[0]), r
    assert fields.get("grpc-message") == "deliberate failure: h1"
    conn.close()
    assert grpc_origin.refused == []
