"""What the local fake token endpoints share (oauth_server, jwt_server):
a leaf for their host names from the test CA, a JSON-answering HTTP/1.1
handler base, and a threaded TLS server on 127.0.0.1 with start/stop."""
import http.server
import json
import threading

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from . import certs
from .upstream import server_tls_context


def issue_leaf(test_ca, hosts, directory, name):
    ca = certs.CertPair(x509.load_pem_x509_certificate(test_ca.ca_pem.read_bytes()),
                        serialization.load_pem_private_key(test_ca.ca_key.read_bytes(), None),
                        test_ca.ca_pem, test_ca.ca_key)
    return certs.issue(ca, hosts, [], directory, name)


class Handler(http.server.BaseHTTPRequestHandler):
    """Subclasses define _dispatch(); self.server.owner is the endpoint."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _send(self, status, body, ctype="application/json"):
        if not isinstance(body, bytes):
            body = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self._dispatch()

    def do_GET(self):
        self._dispatch()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


class Endpoint:
    """Base of a fake endpoint: TLS with |cert|/|key|, handler class
    |handler|, a lock for its records."""
    handler = None

    def __init__(self, cert, key):
        self.lock = threading.Lock()
        self.ctx = server_tls_context(cert, key)

    def start(self):
        self.srv = _Server(("127.0.0.1", 0), self.handler)
        self.srv.owner = self
        self.srv.socket = self.ctx.wrap_socket(self.srv.socket, server_side=True)
        self.port = self.srv.server_address[1]
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()
