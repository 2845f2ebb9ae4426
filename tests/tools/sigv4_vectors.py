#!/usr/bin/python3
"""Generate the SigV4 vectors of tests/unit/test_sigv4.c with Debian's botocore.

Each case is signed at a fixed timestamp with botocore's SigV4Auth (or
S3SigV4Auth for s3) and printed as the C initializer the unit test holds:
method, target, fields, payload hash, region, service, expected
canonical request and signature. Run: /usr/bin/python3 tests/tools/sigv4_vectors.py
"""
import hashlib

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

AKID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
DATE = "20150830T123600Z"

CASES = [
    # name, method, host, target, fields (after host), body, region, service
    ("get-vanilla", "GET", "example.amazonaws.com", "/", [], b"", "us-east-1", "service"),
    ("path-double-encoded", "GET", "example.amazonaws.com", "/a%20b/c%2Fd/./e/../f", [], b"",
     "us-east-1", "service"),
    ("path-s3-as-sent", "GET", "bucket.s3.example", "/a%20b/c%2Fd/./e",
     [("X-Amz-Content-SHA256", "UNSIGNED-PAYLOAD")], b"", "eu-west-1", "s3"),
    ("query-sorted", "GET", "example.amazonaws.com", "/?b=2&a=1&a=0&c=x%20y&d=", [], b"",
     "us-east-1", "service"),
    ("header-folding", "GET", "example.amazonaws.com", "/",
     [("My-Header1", "  a   b   c  "), ("X-Amz-Meta-Foo", "one"), ("X-Amz-Meta-Foo", "two")], b"",
     "us-east-1", "service"),
    ("bedrock-post-json", "POST", "bedrock-runtime.us-east-1.amazonaws.com", "/model/x/invoke",
     [("Content-Type", "application/json")], b'{"prompt":"hi"}', "us-east-1", "bedrock"),
    ("s3-put-session-token", "PUT", "s3.example.test", "/bucket/key.txt",
     [("X-Amz-Content-SHA256", hashlib.sha256(b"hello").hexdigest()), ("X-Amz-Security-Token", "TOKEN/abc+=")],
     b"hello", "us-west-2", "s3"),
]


def sign(method, host, target, fields, body, region, service):
    req = AWSRequest(method=method, url="https://" + host + target, data=body)
    req.headers["Host"] = host
    req.headers["X-Amz-Date"] = DATE
    for k, v in fields:
        req.headers.add_header(k, v)
    req.context["timestamp"] = DATE
    cls = S3SigV4Auth if service == "s3" else SigV4Auth
    auth = cls(Credentials(AKID, SECRET), service, region)
    cr = auth.canonical_request(req)
    sts = auth.string_to_sign(req, cr)
    return cr, auth.signature(sts, req)


def c_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


for name, method, host, target, fields, body, region, service in CASES:
    cr, sig = sign(method, host, target, fields, body, region, service)
    payload = cr.rsplit("\n", 1)[1]
    flds = [("Host", host), ("X-Amz-Date", DATE)] + fields
    print("    {%s, %s, %s, %s, %s, %s, {%s}, %d," % (
        c_str(name), c_str(method), c_str(target), c_str(payload), c_str(region), c_str(service),
        ", ".join("{%s, %s}" % (c_str(k), c_str(v)) for k, v in flds), len(flds)))
    print("     %s,\n     %s}," % (c_str(cr), c_str(sig)))
