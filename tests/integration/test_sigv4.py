"""auth = aws-sigv4: the agent signs with a dummy key pair, the proxy
re-signs with the real one (README "AWS (SigV4)").

Clients: Debian's boto3 1.26 / botocore 1.29 and AWS CLI 2.9, plus
hand-made requests (botocore's signer + requests) for what those clients do
not send (the botocore >= 1.36 streaming trailer, a hex payload hash, a
presigned URL). The origin (avtest/aws_origin.py) verifies every signature
with botocore and the real secret, so a request that reaches it with the
agent's dummy signature, a wrong scope, a wrong body hash or a missing
session token fails there."""
import base64
import hashlib
import http.client
import json
import os
import secrets as _secrets
import ssl
import subprocess
import time
import urllib.parse
import zlib
from dataclasses import dataclass

import boto3
import botocore.config
import botocore.exceptions
import pytest
import requests
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from avtest import daemon as avd
from avtest.aws_origin import (HOSTS, AwsOrigin, check_signature, chunk_signatures, leaf_for,
                               signed_chunked_body)
from avtest.h2_upstream import H2Upstream
from avtest.gateway import gateway_section, gw_port, received

REAL_AKID = "AKIAREAL" + _secrets.token_hex(6).upper()
REAL_SECRET = "realSecret/" + _secrets.token_hex(15)
REAL_TOKEN = "FwoGZXIvYXdzE" + _secrets.token_hex(20)
DUMMY_AKID = "AKIA_DUMMY-agent.key"  # any visible ASCII: it is never checked
DUMMY_SECRET = "dummy-secret-of-the-agent"
AWS_CLI = "/usr/bin/aws"


@dataclass
class AwsSecrets(avd.Secrets):
    """The suite's secrets plus the AWS key pair and session token: the leak
    scans (daemon output, audit log, every response) cover them too."""
    aws_secret: str = REAL_SECRET
    aws_token: str = REAL_TOKEN

    def env(self):
        e = super().env()
        e.update({"AWS_REAL_AKID": REAL_AKID, "AWS_REAL_SECRET": self.aws_secret,
                  "AWS_REAL_TOKEN": self.aws_token})
        return e

    def values(self):
        return super().values() + [self.aws_secret, self.aws_token]


@pytest.fixture
def secrets(tmp_path):
    d = tmp_path / "secrets"
    d.mkdir()
    return AwsSecrets(**vars(avd.Secrets.make(d)))


@pytest.fixture(scope="module")
def aws_leaf(test_ca, tmp_path_factory):
    return leaf_for(test_ca, tmp_path_factory.mktemp("aws-origin"))


@pytest.fixture(scope="module")
def origin(aws_leaf):
    o = AwsOrigin(aws_leaf.cert_path, aws_leaf.key_path, REAL_AKID, REAL_SECRET,
                  {"dynamodb.aws.test": REAL_TOKEN}).start()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def h2_origin(aws_leaf):
    """An HTTP/2-only origin (ALPN h2): the proxy's HTTP/2 link serializes
    the head (:authority, content-length, no Expect). It records requests;
    the tests verify their signatures with check_signature."""
    o = H2Upstream(aws_leaf.cert_path, aws_leaf.key_path, "aws-h2").start()
    yield o
    o.stop()
    assert o.protocol_errors == []


CONFIG = """[proxy]
unmatched = deny

[service "s3"]
host = s3.aws.test
auth = aws-sigv4 us-east-1 s3
access_key_id = env:AWS_REAL_AKID
secret = env:AWS_REAL_SECRET

[service "s3-buckets"]
host = *.s3.aws.test
auth = aws-sigv4 us-east-1 s3
access_key_id = env:AWS_REAL_AKID
secret = env:AWS_REAL_SECRET

[service "bedrock"]
host = bedrock-runtime.aws.test
auth = aws-sigv4 * bedrock
access_key_id = env:AWS_REAL_AKID
secret = env:AWS_REAL_SECRET
aws_body_max = 64 KiB

[service "bedrock-h2"]
host = bedrock-h2.aws.test
auth = aws-sigv4
access_key_id = env:AWS_REAL_AKID
secret = env:AWS_REAL_SECRET

[service "dynamodb"]
host = dynamodb.aws.test
auth = aws-sigv4
access_key_id = env:AWS_REAL_AKID
secret = env:AWS_REAL_SECRET
session_token = env:AWS_REAL_TOKEN
"""


@pytest.fixture
def aws_daemon(daemon, origin, h2_origin):
    origin.clear()

    def start(extra="", config=CONFIG):
        return daemon(config + extra, resolve=[f"{h}:443:127.0.0.1:{origin.port}" for h in HOSTS
                                               if h != "bedrock-h2.aws.test"] +
                      [f"vbkt.s3.aws.test:443:127.0.0.1:{origin.port}"] +
                      [f"bedrock-h2.aws.test:443:127.0.0.1:{h2_origin.port}"])
    return start


def client(d, service, region="us-east-1", endpoint=None, token=None, proxy=True, addressing="path"):
    cfg = botocore.config.Config(
        proxies={"https": d.proxy_url("http")} if proxy else None,
        s3={"addressing_style": addressing}, retries={"max_attempts": 1}, signature_version="s3v4"
        if service == "s3" else None)
    host = {"s3": "s3.aws.test", "dynamodb": "dynamodb.aws.test"}[service]
    return boto3.session.Session().client(
        service, region_name=region, endpoint_url=endpoint or f"https://{host}",
        aws_access_key_id=DUMMY_AKID, aws_secret_access_key=DUMMY_SECRET, aws_session_token=token,
        config=cfg, verify=str(d.ca_pem))


def hand_signed(method, url, body=b"", headers=(), service="bedrock", region="us-east-1", s3=False):
    """A request signed by botocore with the DUMMY key, as an agent's SDK would."""
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    (S3SigV4Auth if s3 else SigV4Auth)(Credentials(DUMMY_AKID, DUMMY_SECRET), service, region).add_auth(req)
    for k, v in dict(headers).items():  # as given (S3SigV4Auth rewrites X-Amz-Content-SHA256)
        del req.headers[k]
        req.headers[k] = v
    return req


def send_chunked(d, req, pieces):
    """|req| with a body sent in chunks (Transfer-Encoding: chunked) through
    the proxy's CONNECT tunnel (requests skips the tunnel for chunked
    bodies)."""
    u = urllib.parse.urlsplit(req.url)
    ctx = ssl.create_default_context(cafile=str(d.ca_pem))
    conn = http.client.HTTPSConnection("127.0.0.1", d.port, context=ctx, timeout=20)
    conn.set_tunnel(u.hostname, 443)
    target = u.path + ("?" + u.query if u.query else "")
    hdrs = {k: v for k, v in req.headers.items() if k.lower() != "content-length"}
    conn.request(req.method, target, body=iter(pieces), headers=hdrs, encode_chunked=True)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    received(body, "\n".join(f"{k}: {v}" for k, v in r.getheaders()))
    return r.status, body.decode("utf-8", "replace")


def send(d, req, data=None):
    r = requests.request(req.method, req.url, headers=dict(req.headers.items()),
                         data=req.body if data is None else data,
                         proxies={"https": d.proxy_url("http")}, verify=str(d.ca_pem), timeout=20)
    received(r.content, "\n".join(f"{k}: {v}" for k, v in r.headers.items()))
    return r


def assert_all_resigned(origin, n=None):
    """Every request the origin saw carried the real key id and no dummy
    signature, and verified."""
    seen = list(origin.seen)
    assert seen, "the origin saw nothing"
    if n is not None:
        assert len(seen) == n, seen
    for rec in seen:
        assert all(DUMMY_AKID not in a for a in rec["auth"]), rec
        assert rec.get("akid") == REAL_AKID, rec


def audit(d):
    return [json.loads(line) for line in (d.workdir / "audit.jsonl").read_text().splitlines() if line]


# ---- S3 with boto3 (UNSIGNED-PAYLOAD over HTTPS) -----------------------------

def test_s3_put_get_list_boto3(aws_daemon, origin):
    d = aws_daemon()
    s3 = client(d, "s3")
    body = os.urandom(3000)
    s3.put_object(Bucket="bkt", Key="dir/a b.bin", Body=body)
    got = s3.get_object(Bucket="bkt", Key="dir/a b.bin")["Body"].read()
    assert got == body
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="bkt", Prefix="dir/")["Contents"]]
    assert "dir/a b.bin" in keys
    assert_all_resigned(origin, 3)
    assert origin.seen[0]["sha256"] == "UNSIGNED-PAYLOAD"  # botocore 1.29's S3 PUT over HTTPS
    # the proxy's clock and the real key; the agent's date is not kept
    assert all(r["verified"] for r in origin.seen)
    recs = [r for r in audit(d) if r.get("service") == "s3"]
    assert len(recs) == 3 and all(r["status"] == 200 for r in recs), recs
    assert all(r.get("auth") == "aws-sigv4" for r in recs), recs
    assert all(r["injected"] == ["env:AWS_REAL_SECRET", "env:AWS_REAL_AKID"]
               for r in recs), recs


def test_s3_virtual_hosted_bucket(aws_daemon, origin):
    """A bucket in the host name (bkt.s3...): a wildcard service."""
    d = aws_daemon()
    s3 = client(d, "s3", addressing="virtual")
    s3.put_object(Bucket="vbkt", Key="k v", Body=b"virtual")
    assert s3.get_object(Bucket="vbkt", Key="k v")["Body"].read() == b"virtual"
    assert origin.objects["/vbkt/k v"] == b"virtual"
    assert_all_resigned(origin, 2)
    assert {r["host"] for r in origin.seen} == {"vbkt.s3.aws.test"}
    assert {r["service"] for r in audit(d) if r["status"] == 200} == {"s3-buckets"}


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_s3_large_upload_and_dummy_signature_refused_directly(aws_daemon, origin):
    d = aws_daemon()
    s3 = client(d, "s3")
    body = os.urandom(6 << 20)
    s3.put_object(Bucket="bkt", Key="big", Body=body)
    assert origin.objects["/bkt/big"] == body
    assert_all_resigned(origin, 1)
    # the same client without the proxy: the origin refuses the dummy signature
    origin.clear()
    direct = boto3.session.Session().client(
        "s3", region_name="us-east-1", endpoint_url=f"https://127.0.0.1:{origin.port}",
        aws_access_key_id=DUMMY_AKID, aws_secret_access_key=DUMMY_SECRET,
        config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        verify=False)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        direct.get_object(Bucket="bkt", Key="big")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert origin.refusals == [("InvalidAccessKeyId", "unknown access key id")]


def test_s3_hex_payload_hash_and_mismatch(aws_daemon, origin):
    d = aws_daemon()
    body = b"hello, signed body"
    h = hashlib.sha256(body).hexdigest()
    req = hand_signed("PUT", "https://s3.aws.test/bkt/hex", body, {"X-Amz-Content-SHA256": h}, "s3", s3=True)
    r = send(d, req)
    assert r.status_code == 200, r.text
    assert origin.objects["/bkt/hex"] == body
    # the hash of another body: the proxy signs the hash as sent, the origin
    # checks the body against it and refuses
    req = hand_signed("PUT", "https://s3.aws.test/bkt/hex2", body,
                      {"X-Amz-Content-SHA256": hashlib.sha256(b"other").hexdigest()}, "s3", s3=True)
    r = send(d, req)
    assert r.status_code == 400 and "XAmzContentSHA256Mismatch" in r.text, r.text
    assert "/bkt/hex2" not in origin.objects
    assert_all_resigned(origin, 2)


def test_s3_streaming_unsigned_payload_trailer(aws_daemon, origin):
    """What botocore >= 1.36 sends by default for put_object over HTTPS:
    aws-chunked with a CRC32 trailer, the head re-signed, the body streamed
    as sent."""
    d = aws_daemon()
    data = os.urandom(200_000)
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    wire += b"0\r\nx-amz-checksum-crc32:" + crc.encode() + b"\r\n\r\n"
    hdrs = {"Content-Encoding": "aws-chunked", "X-Amz-Content-SHA256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
            "X-Amz-Trailer": "x-amz-checksum-crc32", "X-Amz-Decoded-Content-Length": str(len(data)),
            "X-Amz-Sdk-Checksum-Algorithm": "CRC32"}
    req = hand_signed("PUT", "https://s3.aws.test/bkt/streamed", b"", hdrs, "s3", s3=True)
    pieces = [wire[i:i + 10000] for i in range(0, len(wire), 10000)]
    status, text = send_chunked(d, req, pieces)
    assert status == 200, text
    assert origin.objects["/bkt/streamed"] == data
    assert_all_resigned(origin, 1)
    assert "x-amz-decoded-content-length" in origin.seen[0]["signed"].split(";")


def agent_signed_chunks(url, chunks, service="s3", region="us-east-1", length=True):
    """A STREAMING-AWS4-HMAC-SHA256-PAYLOAD upload as an SDK makes it with
    the DUMMY key: head signature, then each chunk's chained from it."""
    data_len = sum(len(c) for c in chunks)
    hdrs = {"X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "Content-Encoding": "aws-chunked",
            "X-Amz-Decoded-Content-Length": str(data_len)}
    req = hand_signed("PUT", url, b"", hdrs, service, region, s3=service == "s3")
    seed = req.headers["Authorization"].rsplit("Signature=", 1)[1]
    sigs = chunk_signatures(DUMMY_SECRET, req.headers["X-Amz-Date"], region, service, seed, chunks)
    return req, signed_chunked_body(chunks, sigs)


def test_s3_signed_chunks_resigned(aws_daemon, origin):
    """STREAMING-AWS4-HMAC-SHA256-PAYLOAD: the body is collected (at most
    aws_body_max), each chunk signature recomputed from the new head
    signature, the origin checks the chain with the real key."""
    d = aws_daemon()
    data = os.urandom(150_000)
    chunks = [data[:65536], data[65536:131072], data[131072:], b""]
    req, wire = agent_signed_chunks("https://s3.aws.test/bkt/signed-chunks", chunks)
    r = send(d, req, data=wire)  # with a Content-Length
    assert r.status_code == 200, r.text
    assert origin.objects["/bkt/signed-chunks"] == data
    # and sent chunked by the agent (no Content-Length)
    req, wire = agent_signed_chunks("https://s3.aws.test/bkt/signed-chunks-2", chunks)
    status, text = send_chunked(d, req, [wire[i:i + 7000] for i in range(0, len(wire), 7000)])
    assert status == 200, text
    assert origin.objects["/bkt/signed-chunks-2"] == data
    assert_all_resigned(origin, 2)
    assert all(rec["sha256"] == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" for rec in origin.seen)
    # a malformed aws-chunked body: refused by the proxy, nothing sent
    req, wire = agent_signed_chunks("https://s3.aws.test/bkt/bad", [b"abc", b""])
    r = send(d, req, data=wire.replace(b"3;chunk", b"4;chunk"))
    assert r.status_code == 400 and "signed aws-chunked" in r.text, r.text
    # over aws_body_max (64 KiB for bedrock): 413, with or without a length
    req, wire = agent_signed_chunks("https://bedrock-runtime.aws.test/model/m/invoke",
                                    [b"x" * 70000, b""], service="bedrock")
    r = send(d, req, data=wire)
    assert r.status_code == 413 and "aws_body_max" in r.text, r.text
    status, text = send_chunked(d, req, [wire[:30000], wire[30000:]])
    assert status == 413 and "aws_body_max" in text, text
    assert len(origin.seen) == 2


def test_s3_signed_trailer_presigned_and_scope_refused(aws_daemon, origin):
    d = aws_daemon()
    # signed aws-chunked uploads with a signed trailer: a clear refusal
    req = hand_signed("PUT", "https://s3.aws.test/bkt/x", b"", {
        "X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER", "Content-Encoding": "aws-chunked",
        "X-Amz-Decoded-Content-Length": "1"}, "s3", s3=True)
    r = send(d, req, data=b"1;chunk-signature=" + b"0" * 64 + b"\r\nx\r\n")
    assert r.status_code == 403 and "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER" in r.text, r.text
    # a presigned URL (query authentication), even next to an Authorization
    url = client(d, "s3").generate_presigned_url("get_object", Params={"Bucket": "bkt", "Key": "k"})
    r = send(d, AWSRequest(method="GET", url=url))
    assert r.status_code == 403 and "presigned" in r.text, r.text
    # a region the service does not allow
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client(d, "s3", region="eu-west-1").get_object(Bucket="bkt", Key="k")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "allows region us-east-1, not eu-west-1" in str(e.value.response), e.value.response
    # a signing name it does not allow (an agent signing as "sqs" to the s3 host)
    r = send(d, hand_signed("GET", "https://s3.aws.test/bkt/k", service="sqs"))
    assert r.status_code == 403 and "allows signing name s3, not sqs" in r.text, r.text
    # no signature at all, and another scheme
    r = send(d, AWSRequest(method="GET", url="https://s3.aws.test/bkt/k"))
    assert r.status_code == 403 and "no Authorization" in r.text, r.text
    r = send(d, AWSRequest(method="GET", url="https://s3.aws.test/bkt/k", headers={"Authorization": "Bearer x"}))
    assert r.status_code == 403 and "not AWS4-HMAC-SHA256" in r.text, r.text
    r = send(d, AWSRequest(method="GET", url="https://s3.aws.test/bkt/k", headers={
        "Authorization": "AWS4-ECDSA-P256-SHA256 Credential=A/20250101/s3/aws4_request, SignedHeaders=host, "
                         "Signature=00"}))
    assert r.status_code == 403 and "SigV4A" in r.text, r.text
    assert origin.seen == [], "a refused request reached the origin"


# ---- JSON services: the body is hashed by the proxy ---------------------------

def test_bedrock_invoke_body_hashed(aws_daemon, origin):
    d = aws_daemon()
    body = json.dumps({"prompt": "hi", "max_tokens": 5}).encode()
    req = hand_signed("POST", "https://bedrock-runtime.aws.test/model/anthropic.claude-v2/invoke", body,
                      {"Content-Type": "application/json", "Accept": "application/json"}, "bedrock", "us-west-2")
    assert "X-Amz-Content-SHA256" not in req.headers
    r = send(d, req)
    assert r.status_code == 200, r.text
    assert r.json()["received"] == len(body) and r.json()["sha256"] == hashlib.sha256(body).hexdigest()
    assert_all_resigned(origin, 1)
    assert origin.seen[0]["region"] == "us-west-2" and origin.seen[0]["service"] == "bedrock"
    # a body changed after the agent signed it is signed as it is sent
    r = send(d, req, data=body.replace(b"hi", b"yo"))
    assert r.status_code == 200, r.text
    assert r.json()["sha256"] == hashlib.sha256(body.replace(b"hi", b"yo")).hexdigest()
    # chunked (no Content-Length): collected, hashed, sent with a length
    status, text = send_chunked(d, req, [body[:7], body[7:]])
    assert status == 200 and json.loads(text)["received"] == len(body), text
    assert_all_resigned(origin, 3)


def test_key_id_from_a_command(aws_daemon, origin):
    """A command: source answers later: the exchange waits for it between
    the secret key and the session token, then signs (bodies collected
    meanwhile)."""
    bedrock = "auth = aws-sigv4 * bedrock\naccess_key_id = env:AWS_REAL_AKID\n"
    assert bedrock in CONFIG
    d = aws_daemon(config=CONFIG.replace(bedrock, bedrock.replace(
        "env:AWS_REAL_AKID", f"command:/bin/sh -c 'sleep 0.3; echo {REAL_AKID}'")))
    body = b'{"prompt":"wait"}'
    req = hand_signed("POST", "https://bedrock-runtime.aws.test/model/m/invoke", body,
                      {"Content-Type": "application/json"}, "bedrock")
    t0 = time.monotonic()
    r = send(d, req)
    assert r.status_code == 200 and r.json()["received"] == len(body), r.text
    assert time.monotonic() - t0 >= 0.25, "the command's answer was not waited for"
    assert_all_resigned(origin, 1)


def test_bedrock_body_over_aws_body_max(aws_daemon, origin):
    d = aws_daemon()
    big = b"{" + b" " * (70 * 1024) + b"}"
    req = hand_signed("POST", "https://bedrock-runtime.aws.test/model/m/invoke", big,
                      {"Content-Type": "application/json"}, "bedrock")
    r = send(d, req)
    assert r.status_code == 413 and "aws_body_max" in r.text, r.text
    status, text = send_chunked(d, req, [big[:40000], big[40000:]])  # found while collecting
    assert status == 413 and "aws_body_max" in text, text
    assert origin.seen == []


def test_dynamodb_boto3_session_token_injected(aws_daemon, origin):
    """A real SDK's JSON protocol (no x-amz-content-sha256): the proxy
    hashes the body, replaces the agent's dummy session token with the
    real one and signs it."""
    d = aws_daemon()
    ddb = client(d, "dynamodb", region="eu-central-1", token="dummy-session-token")
    assert ddb.list_tables()["TableNames"] == ["t1"]
    assert_all_resigned(origin, 1)
    assert origin.seen[0]["token"] == [REAL_TOKEN]
    assert "x-amz-security-token" in origin.seen[0]["signed"].split(";")
    # the session token is scrubbed from responses like the secret
    req = hand_signed("POST", "https://dynamodb.aws.test/", b"{}", {
        "X-Amz-Target": "DynamoDB_20120810.EchoToken", "Content-Type": "application/x-amz-json-1.0"},
        "dynamodb", "eu-central-1")
    r = send(d, req)
    assert r.status_code == 200 and r.json()["token"] == "[REDACTED]", r.text
    # the s3 service has no session token: the agent's dummy one is dropped
    origin.clear()
    client(d, "s3", token="dummy-session-token").list_objects_v2(Bucket="bkt")
    assert origin.seen[0]["token"] == [] and origin.seen[0]["verified"]


# ---- HTTP/2: the upstream link and an HTTP/2 agent (curl --aws-sigv4) -------

def h2_verified(h2_origin, n):
    reqs = h2_origin.wait_requests(n)
    for r in reqs:
        assert all(DUMMY_AKID not in a for a in r.header_values("authorization")), r
        err = check_signature(r.method, r.target, r.authority, r.header_values, r.body, REAL_AKID, REAL_SECRET)
        assert err is None, (err, r.headers)
    return reqs


def test_http2_upstream(aws_daemon, h2_origin):
    d = aws_daemon()
    before = len(h2_origin.snapshot())
    body = json.dumps({"inputText": "hello"}).encode()
    req = hand_signed("POST", "https://bedrock-h2.aws.test/echo?x=1&a=b%20c", body,
                      {"Content-Type": "application/json"}, "bedrock")
    r = send(d, req)
    assert r.status_code == 200 and r.json()["body_sha256"] == hashlib.sha256(body).hexdigest(), r.text
    # an S3-style upload with Expect: 100-continue (answered by the proxy,
    # never sent on HTTP/2, never signed) and UNSIGNED-PAYLOAD
    up = b"x" * 100_000
    req = hand_signed("PUT", "https://bedrock-h2.aws.test/echo", up,
                      {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD", "Expect": "100-continue"}, "s3", s3=True)
    r = send(d, req)
    assert r.status_code == 200 and r.json()["body_length"] == len(up), r.text
    reqs = h2_verified(h2_origin, before + 2)[before:]
    assert reqs[0].authority == "bedrock-h2.aws.test" and reqs[0].header("content-length") == str(len(body))
    assert reqs[1].header("expect") is None


def test_http2_agent_curl_aws_sigv4(aws_daemon, origin, h2_origin):
    """curl's own SigV4 (--aws-sigv4) over HTTP/2 to the proxy, to both
    origins."""
    d = aws_daemon()
    before = len(h2_origin.snapshot())
    sig = ["--aws-sigv4", "aws:amz:eu-west-1:bedrock", "--user", f"{DUMMY_AKID}:{DUMMY_SECRET}"]
    res = d.curl("--http2", *sig, "-H", "Content-Type: application/json", "--data-binary", '{"q":1}',
                 "https://bedrock-h2.aws.test/echo").ok()
    t = res.transfers[0]
    assert t.status == 200 and t.info["http_version"] == "2", t.info
    assert json.loads(t.body)["body_length"] == 7
    h2_verified(h2_origin, before + 1)
    res = d.curl("--http2", *sig, "--data-binary", '{"q":2}', "https://bedrock-runtime.aws.test/model/m/invoke")
    assert res.ok().transfers[0].status == 200, res.transfers[0].body
    assert_all_resigned(origin, 1)


def test_streamed_response_not_buffered(aws_daemon, h2_origin):
    """A body collected and hashed on the way up; the response (an event
    stream, like InvokeModelWithResponseStream) still streams down."""
    d = aws_daemon()
    before = len(h2_origin.snapshot())
    s = d.streaming_curl("--aws-sigv4", "aws:amz:us-east-1:bedrock", "--user", f"{DUMMY_AKID}:{DUMMY_SECRET}",
                         "-H", "Content-Type: application/json", "--data-binary", '{"stream":true}',
                         "https://bedrock-h2.aws.test/sse")
    try:
        s.wait_line(b"data: event-1", 5)
        first = time.monotonic()
        assert s.finish() == 0, s.stderr
        assert time.monotonic() - first > 0.5, "the first event came with the last: the response was buffered"
    finally:
        s.kill()
    received(b"".join(s.seen))
    h2_verified(h2_origin, before + 1)


# ---- the AWS CLI and a gateway -------------------------------------------------

def test_aws_cli_s3_cp_and_ls(aws_daemon, origin, tmp_path):
    d = aws_daemon()
    cfg = tmp_path / "aws-config"
    cfg.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": DUMMY_AKID,
           "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET, "AWS_CONFIG_FILE": str(cfg),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true",
           "HTTPS_PROXY": d.proxy_url("http"), "AWS_CA_BUNDLE": str(d.ca_pem), "AWS_PAGER": ""}
    src = tmp_path / "upload.txt"
    src.write_bytes(b"from the aws cli\n" * 1000)
    base = [AWS_CLI, "--endpoint-url", "https://s3.aws.test"]
    p = subprocess.run(base + ["s3", "cp", str(src), "s3://clibkt/up.txt"], env=env, capture_output=True,
                       timeout=60)
    received(p.stdout, p.stderr)
    assert p.returncode == 0, p.stderr.decode()
    assert origin.objects["/clibkt/up.txt"] == src.read_bytes()
    p = subprocess.run(base + ["s3", "ls", "s3://clibkt/"], env=env, capture_output=True, timeout=60)
    received(p.stdout, p.stderr)
    assert p.returncode == 0 and b"up.txt" in p.stdout, p.stderr.decode()
    assert_all_resigned(origin)


def test_aws_cli_through_run_never_gets_the_users_real_keys(aws_daemon, origin, tmp_path):
    """The user's shell holds the real AWS keys (as the daemon's own
    environment did); `agentvault run -- aws ...` gives the CLI placeholders
    instead (run warns, naming the variables), the CLI signs with them, and
    the proxy re-signs with the real key."""
    d = aws_daemon()
    cfg = tmp_path / "aws-config"
    cfg.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": REAL_AKID,
           "AWS_SECRET_ACCESS_KEY": REAL_SECRET, "AWS_SESSION_TOKEN": REAL_TOKEN,
           "AWS_CONFIG_FILE": str(cfg), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_PAGER": ""}
    src = tmp_path / "upload.txt"
    src.write_bytes(b"through agentvault run\n" * 100)
    dump = tmp_path / "child-env"
    script = f'env -0 > {dump} && exec {AWS_CLI} --endpoint-url https://s3.aws.test s3 cp "$1" s3://runbkt/up.txt'
    p = subprocess.run([str(avd.binary_path()), "run", "--proxy", d.proxy_url("http"), "--",
                        "/bin/sh", "-c", script, "sh", str(src)], env=env, capture_output=True, timeout=60)
    received(p.stdout, p.stderr)
    assert p.returncode == 0, p.stderr.decode()
    child = dict(item.split(b"=", 1) for item in dump.read_bytes().split(b"\0") if item)
    for var, real in (("AWS_ACCESS_KEY_ID", REAL_AKID), ("AWS_SECRET_ACCESS_KEY", REAL_SECRET),
                      ("AWS_SESSION_TOKEN", REAL_TOKEN)):
        assert child[var.encode()] == b"agentvault-placeholder-s3", var
        assert real.encode() not in dump.read_bytes()
        assert f"{var} is set in your environment".encode() in p.stderr
    assert origin.objects["/runbkt/up.txt"] == src.read_bytes()
    assert_all_resigned(origin)


def test_gateway_s3_and_bedrock(aws_daemon, origin):
    """Base-URL mode: the agent signs for 127.0.0.1:PORT, the proxy re-signs
    for the origin's host as sent."""
    d = aws_daemon(gateway_section("s3gw", "https://s3.aws.test") +
                   gateway_section("bedrockgw", "https://bedrock-runtime.aws.test"))
    s3 = client(d, "s3", endpoint=f"http://127.0.0.1:{gw_port(d, 's3gw')}", proxy=False)
    s3.put_object(Bucket="gw", Key="k", Body=b"via the gateway")
    assert s3.get_object(Bucket="gw", Key="k")["Body"].read() == b"via the gateway"
    req = hand_signed("POST", f"http://127.0.0.1:{gw_port(d, 'bedrockgw')}/model/m/invoke", b'{"a":1}',
                      {"Content-Type": "application/json"}, "bedrock")
    r = requests.post(req.url, headers=dict(req.headers.items()), data=req.body, timeout=20)
    received(r.content)
    assert r.status_code == 200 and r.json()["received"] == 7, r.text
    assert_all_resigned(origin, 3)
    assert {rec["host"] for rec in origin.seen} == {"s3.aws.test", "bedrock-runtime.aws.test"}


# ---- configuration --------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ('[service "a"]\nhost = a.test\nauth = aws-sigv4\nsecret = env:S\n',
     'c.conf:1: service "a": auth = aws-sigv4 needs access_key_id'),
    ('[service "a"]\nhost = a.test\nauth = aws-sigv4 US-EAST-1\nsecret = env:S\naccess_key_id = env:K\n',
     'c.conf:3: auth aws-sigv4: region "US-EAST-1" must be lower-case'),
    ('[service "a"]\nhost = a.test\nauth = aws-sigv4 us-east-1 s3 extra\nsecret = env:S\n',
     "c.conf:3: auth aws-sigv4 takes at most a region and a service"),
    ('[service "a"]\nhost = a.test\nauth = bearer\nsecret = env:S\naccess_key_id = env:K\n',
     'c.conf:1: service "a": access_key_id, session_token and aws_body_max need auth = aws-sigv4'),
    ('[service "a"]\nhost = a.test\nauth = aws-sigv4\nsecret = env:S\naccess_key_id = env:K\n'
     'aws_body_max = 100 GiB\n', "c.conf:6: aws_body_max must be a size from 1 KiB to 64 MiB"),
    ('[service "a"]\nhost = a.test\nauth = aws-sigv4\nsecret = env:S\naccess_key_id = nope:K\n',
     "c.conf:5: access_key_id"),
    ('[service "a"]\nhost = a.test\nauth = aws-sigv4\nsecret = env:S\naccess_key_id = env:K\n'
     'session_token = bad\n', "c.conf:6: session_token"),
    ('[service "a"]\nhost = a.test\nauth = bearer\nauth_alt = aws-sigv4\nsecret = env:S\n',
     "c.conf:4: auth_alt cannot be aws-sigv4"),
    ('[service "a"]\nhost = a.test\nauth = aws-sigv4\nsecret = env:S\naccess_key_id = env:K\n'
     'placeholder = PH_AWS\n', 'c.conf:1: service "a": placeholder is not used with auth = aws-sigv4'),
])
def test_check_reports_aws_keys(tmp_path, text, message):
    conf = tmp_path / "c.conf"
    conf.write_text(text)
    p = subprocess.run([str(avd.require_binary()), "check", "-c", str(conf)], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "S": "x", "K": "y"}, timeout=30)
    assert p.returncode != 0
    assert message in p.stderr, p.stderr
