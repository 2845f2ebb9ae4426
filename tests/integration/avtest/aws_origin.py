"""A fake AWS origin for the SigV4 tests: path-style S3 on s3.aws.test and
JSON services (Bedrock-style POST /model/ID/invoke, DynamoDB-style
X-Amz-Target) on the other host names, over TLS on 127.0.0.1.

Every request is verified the way AWS does it, with botocore and the REAL
key: the origin rebuilds an AWSRequest from the method, the target as
received and only the fields the Authorization names, recomputes the
signature (SigV4Auth, or S3SigV4Auth for s3) with the received X-Amz-Date
and answers 403 SignatureDoesNotMatch on a difference. It also checks the
payload: a hex x-amz-content-sha256 must match the body (400
XAmzContentSHA256Mismatch otherwise), an aws-chunked
STREAMING-UNSIGNED-PAYLOAD-TRAILER body is decoded and its length and CRC32
trailer checked. What it saw is kept in `.seen` for the tests."""
import base64
import datetime
import hashlib
import hmac
import http.server
import json
import re
import threading
import urllib.parse
import zlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from . import certs
from .upstream import server_tls_context

AUTH_RE = re.compile(r"AWS4-HMAC-SHA256 Credential=([!-+\-.0-~]+)/(\d{8})/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request, "
                     r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$")
HOSTS = ["s3.aws.test", "bedrock-runtime.aws.test", "dynamodb.aws.test", "bedrock-h2.aws.test"]


def leaf_for(test_ca, directory):
    """A leaf for HOSTS signed by the suite's test CA."""
    ca = certs.CertPair(x509.load_pem_x509_certificate(test_ca.ca_pem.read_bytes()),
                        serialization.load_pem_private_key(test_ca.ca_key.read_bytes(), None),
                        test_ca.ca_pem, test_ca.ca_key)
    return certs.issue(ca, HOSTS + ["*.s3.aws.test"], [], directory, "aws-origin")


def check_signature(method, target, host, get_all, body, akid, secret):
    """None when the request (its fields given by get_all(name) -> [values])
    is signed with |akid| / |secret| as AWS checks it, else (status, code,
    message); |info| collects the scope."""
    auth = get_all("authorization")
    if len(auth) != 1:
        return 403, "MissingAuthenticationToken", "one Authorization expected"
    m = AUTH_RE.match(auth[0])
    if not m:
        return 403, "IncompleteSignature", "malformed Authorization"
    got_akid, date, region, service, signed, sig = m.groups()
    if got_akid != akid:
        return 403, "InvalidAccessKeyId", "unknown access key id"
    amz_date = (get_all("x-amz-date") or [""])[0]
    if amz_date[:8] != date:
        return 403, "SignatureDoesNotMatch", "scope date differs from X-Amz-Date"
    req = AWSRequest(method=method, url="https://" + host + target, data=body)
    for name in signed.split(";"):
        for v in get_all(name):
            req.headers.add_header(name, v)
    req.context["timestamp"] = amz_date
    signer = (S3SigV4Auth if service == "s3" else SigV4Auth)(Credentials(akid, secret), service, region)
    cr = signer.canonical_request(req)
    if signer.signature(signer.string_to_sign(req, cr), req) != sig:
        return 403, "SignatureDoesNotMatch", "the signature does not match"
    return None


def _hmac(key, msg):
    return hmac.new(key, msg.encode() if isinstance(msg, str) else msg, hashlib.sha256).digest()


def chunk_signatures(secret, amz_date, region, service, seed, chunks):
    """The chunk-signature of each of |chunks| (the last one empty) of a
    STREAMING-AWS4-HMAC-SHA256-PAYLOAD body, chained from |seed| (the S3
    documentation's algorithm, written out independently of the proxy)."""
    k = _hmac(("AWS4" + secret).encode(), amz_date[:8])
    for part in (region, service, "aws4_request"):
        k = _hmac(k, part)
    out, prev = [], seed
    for c in chunks:
        sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, f"{amz_date[:8]}/{region}/{service}/aws4_request",
                         prev, hashlib.sha256(b"").hexdigest(), hashlib.sha256(c).hexdigest()])
        prev = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        out.append(prev)
    return out


def signed_chunked_body(chunks, sigs):
    return b"".join(b"%x;chunk-signature=%s\r\n%s\r\n" % (len(c), s.encode(), c) for c, s in zip(chunks, sigs))


def decode_signed_chunks(body):
    """([data of each chunk], [its signature]); ValueError when malformed."""
    pos, chunks, sigs = 0, [], []
    while True:
        eol = body.index(b"\r\n", pos)
        size_s, _, ext = body[pos:eol].partition(b";")
        if not ext.startswith(b"chunk-signature="):
            raise ValueError("no chunk-signature")
        size = int(size_s, 16)
        pos = eol + 2
        chunks.append(body[pos:pos + size])
        sigs.append(ext[len(b"chunk-signature="):].decode())
        if body[pos + size:pos + size + 2] != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
        pos += size + 2
        if size == 0:
            if pos != len(body):
                raise ValueError("bytes after the last chunk")
            return chunks, sigs


def decode_aws_chunked(body):
    """(data, trailers) of an aws-chunked body; ValueError when malformed."""
    data, pos, trailers = b"", 0, {}
    while True:
        eol = body.index(b"\r\n", pos)
        size = int(body[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            break
        data += body[pos:pos + size]
        if body[pos + size:pos + size + 2] != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
        pos += size + 2
    while True:
        eol = body.index(b"\r\n", pos)
        line = body[pos:eol]
        pos = eol + 2
        if not line:
            break
        k, _, v = line.decode().partition(":")
        trailers[k.strip().lower()] = v.strip()
    if pos != len(body):
        raise ValueError("bytes after the trailer section")
    return data, trailers


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length", "0"))
        return self.rfile.read(n) if n else b""

    def _send(self, status, body=b"", ctype="application/xml", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status, code, msg):
        o = self.server.owner
        if self._is_s3():
            body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>"
                    f"<Message>{msg}</Message></Error>").encode()
            self._send(status, body)
        else:
            self._send(status, json.dumps({"__type": code, "message": msg}).encode(),
                       "application/x-amz-json-1.0")
        with o.lock:
            o.refusals.append((code, msg))

    def _verify(self, body):
        """None when the request is signed with the real key, else (status,
        code, message)."""
        o = self.server.owner
        auth = self.headers.get_all("Authorization") or []
        rec = {"method": self.command, "target": self.path, "host": self.host, "auth": list(auth),
               "token": self.headers.get_all("X-Amz-Security-Token") or [],
               "sha256": self.headers.get("X-Amz-Content-SHA256"), "amz_date": self.headers.get("X-Amz-Date"),
               "body_len": len(body), "verified": False}
        with o.lock:
            o.seen.append(rec)
        m = AUTH_RE.match(auth[0]) if len(auth) == 1 else None
        if m:
            rec.update(akid=m.group(1), region=m.group(3), service=m.group(4), signed=m.group(5))
        want_token = o.tokens.get(self.host)
        got_token = rec["token"]
        if want_token is not None and (got_token != [want_token] or not m or
                                       "x-amz-security-token" not in m.group(5).split(";")):
            return 403, "InvalidToken", "the security token is missing, wrong or unsigned"
        if want_token is None and got_token:
            return 403, "InvalidToken", "a security token was sent to a service without one"
        err = check_signature(self.command, self.path, self.host,
                              lambda n: self.headers.get_all(n) or [], body, o.akid, o.secret)
        if err:
            return err
        sha = rec["sha256"]
        if sha and re.fullmatch(r"[0-9a-f]{64}", sha) and hashlib.sha256(body).hexdigest() != sha:
            return 400, "XAmzContentSHA256Mismatch", "the body does not match x-amz-content-sha256"
        if sha == "STREAMING-UNSIGNED-PAYLOAD-TRAILER":
            try:
                data, trailers = decode_aws_chunked(body)
            except (ValueError, IndexError):
                return 400, "IncompleteBody", "malformed aws-chunked body"
            if self.headers.get("Content-Encoding", "") != "aws-chunked":
                return 400, "InvalidRequest", "aws-chunked without Content-Encoding: aws-chunked"
            if str(len(data)) != self.headers.get("X-Amz-Decoded-Content-Length"):
                return 400, "IncompleteBody", "decoded length differs"
            crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
            if trailers.get("x-amz-checksum-crc32") != crc:
                return 400, "BadDigest", "CRC32 trailer mismatch"
            rec["decoded"] = data
        if sha == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD":
            try:
                chunks, sigs = decode_signed_chunks(body)
            except (ValueError, IndexError):
                return 400, "IncompleteBody", "malformed signed aws-chunked body"
            seed = AUTH_RE.match(rec["auth"][0]).group(6)
            if sigs != chunk_signatures(o.secret, rec["amz_date"], rec["region"], rec["service"], seed, chunks):
                return 403, "SignatureDoesNotMatch", "a chunk signature does not match"
            data = b"".join(chunks)
            if str(len(data)) != self.headers.get("X-Amz-Decoded-Content-Length"):
                return 400, "IncompleteBody", "decoded length differs"
            rec["decoded"] = data
        rec["verified"] = True
        return None

    def _handle(self):
        self.host = self.headers.get("Host", "")
        body = self._body()
        err = self._verify(body)
        if err:
            self._error(*err)
            return
        o = self.server.owner
        if self._is_s3():
            self._s3(body, o)
        else:
            self._json(body, o)

    def _is_s3(self):
        return self.host == "s3.aws.test" or self.host.endswith(".s3.aws.test")

    def _s3(self, body, o):
        path, _, query = self.path.partition("?")
        path = urllib.parse.unquote(path)
        if self.host.endswith(".s3.aws.test"):  # virtual-hosted: the bucket is in the host
            path = "/" + self.host[:-len(".s3.aws.test")] + path
        if self.command == "PUT":
            data = o.seen[-1].get("decoded", body)
            with o.lock:
                o.objects[path] = data
            self._send(200, b"", extra=[("ETag", '"%s"' % hashlib.md5(data).hexdigest())])
        elif self.command in ("GET", "HEAD") and "list-type=2" in query:
            bucket = path.rstrip("/")
            with o.lock:
                keys = sorted((p[len(bucket) + 1:], len(v)) for p, v in o.objects.items()
                              if p.startswith(bucket + "/"))
            now = datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%S.000Z")
            items = "".join(f"<Contents><Key>{k}</Key><LastModified>{now}</LastModified><ETag>\"x\"</ETag>"
                            f"<Size>{n}</Size><StorageClass>STANDARD</StorageClass></Contents>" for k, n in keys)
            xml = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult "
                   "xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                   f"<Name>{bucket.strip('/')}</Name><Prefix></Prefix><KeyCount>{len(keys)}</KeyCount>"
                   f"<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{items}</ListBucketResult>")
            self._send(200, xml.encode())
        elif self.command in ("GET", "HEAD"):
            with o.lock:
                data = o.objects.get(path)
            if data is None:
                self._error(404, "NoSuchKey", "no such key")
            else:
                self._send(200, data, "application/octet-stream",
                           [("ETag", '"%s"' % hashlib.md5(data).hexdigest())])
        else:
            self._send(204 if self.command == "DELETE" else 200)

    def _json(self, body, o):
        target = self.headers.get("X-Amz-Target", "")
        if target.endswith(".ListTables"):
            out = {"TableNames": ["t1"]}
        elif target.endswith(".EchoToken"):  # a reflected credential, for the scrubber
            out = {"token": self.headers.get("X-Amz-Security-Token")}
        else:
            out = {"model": self.path, "received": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        self._send(200, json.dumps(out).encode(), "application/json")

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle


class AwsOrigin:
    """The fake origin (start/stop); .port, .seen, .refusals, .objects."""

    def __init__(self, cert, key, akid, secret, tokens):
        self.akid, self.secret, self.tokens = akid, secret, dict(tokens)
        self.lock = threading.Lock()
        self.seen, self.refusals, self.objects = [], [], {}
        self._ctx = server_tls_context(cert, key)

    def start(self):
        self._srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._srv.daemon_threads = True
        self._srv.owner = self
        self._srv.socket = self._ctx.wrap_socket(self._srv.socket, server_side=True)
        self.port = self._srv.server_address[1]
        self._t = threading.Thread(target=self._srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._t.start()
        return self

    def stop(self):
        self._srv.shutdown()
        self._srv.server_close()
        self._t.join(5)

    def clear(self):
        with self.lock:
            self.seen.clear()
            self.refusals.clear()
