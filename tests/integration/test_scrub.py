"""Response scrubbing (issue 5): whatever the origin echoes of the injected
secret (raw, base64 in any alignment, percent-encoded, hex in either case,
JSON-escaped; in a
header; split across chunks; gzip-compressed) is replaced before the agent
sees it, over HTTP/1.1 and HTTP/2, and each redaction is counted."""
import base64
import gzip
import json
import re
import urllib.parse
import urllib.request

import pytest

from avtest.checks import auth_values
from avtest.daemon import config_text


def _forms(secret):
    raw = secret.encode()
    forms = {secret, base64.b64encode(raw).decode(), urllib.parse.quote(secret, safe=""),
             "".join("%%%02X" % b for b in raw), json.dumps(secret)[1:-1],
             raw.hex(), raw.hex().upper()}
    # the inner, alignment-independent part of base64 of the secret at any offset
    for pre in (b"", b"x", b"xy"):
        enc = base64.b64encode(pre + raw).decode().rstrip("=")
        forms.add(enc[len(pre) * 4 // 3 + 1:-2])
    return {f for f in forms if len(f) >= 8}


@pytest.mark.parametrize("http", ["--http1.1", "--http2"])
@pytest.mark.parametrize("gz", [False, True], ids=["identity", "gzip"])
def test_echoed_secret_never_reaches_agent(daemon, upstream, secrets, tmp_path, http, gz):
    audit = tmp_path / "audit.jsonl"
    d = daemon(config_text(secrets, proxy_extra=f"audit = {audit}"))
    url = "https://api.openai.com/reflect" + ("?gzip=1" if gz else "")
    r = d.curl(http, "--compressed", "-H", "Accept-Encoding: br, gzip", url).ok()
    assert r.status == 200, r.describe()
    assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]
    seen = r.body.decode("latin-1") + repr(r.headers) + r.stderr
    for form in _forms(secrets.openai_key):
        assert form not in seen, f"{form!r} reached the agent"
    body = r.body.decode()
    assert body.startswith("begin\n") and body.endswith("end\n"), body
    assert body.count("[REDACTED]") == 11, body
    assert r.header("X-Echo-Secret") == "k=[REDACTED]"
    # the origin was asked only for encodings the proxy can scrub
    assert upstream.only_request().header("Accept-Encoding") == "gzip"
    rec = json.loads(audit.read_text().splitlines()[-1])
    assert rec["redactions"] == 12, rec
    with urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics", timeout=10) as m:
        text = m.read().decode()
    assert re.search(r"^agentvault_redacted_total 12$", text, re.M), text


def test_unmatched_requests_are_not_scrubbed(daemon, upstream, secrets):
    """Only exchanges that injected a secret are scrubbed (and only of it)."""
    d = daemon()
    r = d.curl("-H", "Authorization: Bearer agent-own-value-123", "https://upstream.test/reflect").ok()
    assert r.status == 200
    assert "agent-own-value-123" in r.body.decode()
