"""grpcio (Debian's python3-grpcio) unary call against a grpcio server that
checks the key in its metadata (`authorization: Bearer KEY`), through
`agentvault run` (grpcio reads https_proxy and, for its roots, only
GRPC_DEFAULT_SSL_ROOTS_FILE_PATH) and through a gateway (h2c). gRPC needs
`te: trailers` forwarded and the response trailers (grpc-status, and here
a custom trailing metadata entry) relayed."""
import threading
from concurrent import futures

import pytest

import compat

PY = "/usr/bin/python3"
CLIENT = str(compat.HERE / "clients" / "pyclient.py")


class GrpcOrigin:
    """A grpcio server on 127.0.0.1 with TLS (the compat leaf): one method,
    /compat.Echo/Say, answering b"pong:" + request when the metadata has the
    real key and no dummy; UNAUTHENTICATED otherwise. Records every call."""

    def __init__(self, leaf_pem, leaf_key, key):
        import grpc
        self.key = key
        self.calls = []          # (metadata dict, problem)
        self.lock = threading.Lock()
        self.check = compat.KeyCheck(key, [("authorization", f"Bearer {key}")])

        def say(request, context):
            md = list(context.invocation_metadata())
            req = compat.Request("h2", "POST", "/compat.Echo/Say", md, b"")
            problem = self.check.problem(req)
            with self.lock:
                self.calls.append((md, problem))
            if problem:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid key")
            context.set_trailing_metadata([("compat-trailer", "kept")])
            return b"pong:" + request

        handler = grpc.method_handlers_generic_handler(
            "compat.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)})
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((handler,))
        creds = grpc.ssl_server_credentials([(leaf_key.read_bytes(), leaf_pem.read_bytes())])
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.server.start()

    def stop(self):
        self.server.stop(0)

    def assert_all_keyed(self, at_least=1):
        with self.lock:
            calls = list(self.calls)
        assert len(calls) >= at_least, f"grpc origin: {len(calls)} call(s)"
        bad = [p for _, p in calls if p]
        assert not bad, f"grpc origin: calls without the real key: {bad}"


@pytest.mark.parametrize("where", ["proxy", "gateway"])
def test_grpc_unary(stack, where):
    key = stack.new_key("grpc")
    srv = GrpcOrigin(stack.leaf_pem, stack.leaf_key, key)
    o = stack.add_external_origin("grpc", srv, key)
    stack.start()
    with stack.case("Python grpcio (unary)", where, o):
        if where == "proxy":
            r = stack.run_proxied([PY, CLIENT, "grpc", f"{o.host}:443", "tls"])
        else:
            gw = stack.gateway_url("grpc").split("//", 1)[1]
            r = stack.run_client([PY, CLIENT, "grpc", gw, "insecure"])
        r.check()
        srv.assert_all_keyed(1)
