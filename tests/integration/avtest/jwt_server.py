"""Fake Google and GitHub token endpoints and the APIs they protect, for
test_gcp_github.py: one TLS server on 127.0.0.1 answering every name below.

oauth2.gcp.test, alt.gcp.test  POST /token: RFC 7523 JWT-bearer grant.
        Verifies the assertion's signature (RS256 or ES256, raw r||s) with
        the public key registered for its "kid" and the claims: iss, aud
        (`gcp_aud`), iat within 60 s of now, exp - iat <= 3600, and either
        scope or target_audience. Answers {access_token, expires_in} or,
        for target_audience, {id_token} (a JWT of its own whose exp is
        `id_ttl` ahead). A revoked key gets 400 invalid_grant.
api.github.test  POST /app/installations/ID/access_tokens: verifies the App
        JWT (RS256, the App's registered keys), rejects iat in the future,
        exp - iat > 600 or exp in the past by the server's clock (now +
        `clock_offset`), checks iss, Accept and X-GitHub-Api-Version, and
        answers 201 {token: "ghs_..." (not 40 characters), expires_at}.
        A revoked key gets 401 with a message.
vertex.gcp.test, repos.github.test  any path: 200 echoing the bearer token
        (the proxy must scrub it) when it is current, 401 otherwise.

Every verified JWT and issued token is recorded (tests check none of them
reaches a log or the audit).
"""
import base64
import datetime
import json
import secrets as _secrets
import time
import urllib.parse

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from .fake_endpoint import Endpoint, Handler, issue_leaf

HOSTS = ["oauth2.gcp.test", "alt.gcp.test", "vertex.gcp.test", "api.github.test", "repos.github.test"]
GCP_AUD = "https://oauth2.gcp.test/token"
GH_VERSION = "2022-11-28"


def leaf_for(test_ca, directory):
    return issue_leaf(test_ca, HOSTS, directory, "jwt-origin")


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def verify_jwt(token, keys):
    """(header, claims) of a compact JWS whose signature verifies with one of
    `keys` (public keys), else raises ValueError."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    header = json.loads(b64url_decode(parts[0]))
    claims = json.loads(b64url_decode(parts[1]))
    sig = b64url_decode(parts[2])
    signed = (parts[0] + "." + parts[1]).encode()
    if header.get("typ") != "JWT":
        raise ValueError("typ")
    for k in keys:
        try:
            if header.get("alg") == "RS256" and isinstance(k, rsa.RSAPublicKey):
                k.verify(sig, signed, padding.PKCS1v15(), hashes.SHA256())
                return header, claims
            if header.get("alg") == "ES256" and isinstance(k, ec.EllipticCurvePublicKey):
                if len(sig) != 64:
                    raise ValueError("ES256 signature is not 64 bytes (DER?)")
                der = utils.encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
                k.verify(der, signed, ec.ECDSA(hashes.SHA256()))
                return header, claims
        except InvalidSignature:
            continue
    raise ValueError("bad signature")


class _Handler(Handler):
    def _dispatch(self):
        o = self.server.owner
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        host = (self.headers.get("Host") or "").split(":")[0]
        with o.lock:
            o.requests.append({"host": host, "path": self.path, "method": self.command, "body": body,
                               "headers": {k.lower(): v for k, v in self.headers.items()}})
        if host in ("oauth2.gcp.test", "alt.gcp.test"):
            self._gcp(o, host, body)
        elif host == "api.github.test":
            self._github(o, body)
        else:
            self._api(o)

    def _mint_ok(self, o, kind, ttl):
        tok = (kind + _secrets.token_hex(16)) if kind != "ghs_" else \
            "ghs_" + str(o.app_id) + "_" + b64url(_secrets.token_bytes(90))  # a stateless-style token
        with o.lock:
            o.issued[tok] = time.monotonic() + ttl
            o.current = tok
            o.mints += 1
        time.sleep(o.mint_delay)
        return tok

    def _gcp(self, o, host, body):
        if self.command != "POST" or self.path != "/token":
            return self._send(404, {"error": "not_found"})
        if self.headers.get("Content-Type") != "application/x-www-form-urlencoded":
            return self._send(400, {"error": "invalid_request"})
        form = urllib.parse.parse_qs(body.decode(), keep_blank_values=True)
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"] or \
                len(form.get("assertion", [])) != 1 or set(form) != {"grant_type", "assertion"}:
            return self._send(400, {"error": "unsupported_grant_type"})
        jwt = form["assertion"][0]
        with o.lock:
            o.jwts.append(jwt)
        try:
            header, claims = verify_jwt(jwt, [k for kid, k in o.gcp_keys.items()
                                              if kid == json.loads(b64url_decode(jwt.split(".")[0])).get("kid")])
        except (ValueError, KeyError, IndexError):
            return self._send(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
        with o.lock:
            o.verified.append((header, claims))
            revoked = header.get("kid") in o.revoked_kids
        now = time.time()
        if revoked:
            return self._send(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
        if claims.get("iss") != o.gcp_email or claims.get("aud") != o.gcp_aud or \
                abs(claims.get("iat", 0) - now) > 60 or not 0 < claims.get("exp", 0) - claims["iat"] <= 3600:
            return self._send(400, {"error": "invalid_grant", "error_description": "bad claims"})
        if "target_audience" in claims:
            if "scope" in claims:
                return self._send(400, {"error": "invalid_request"})
            exp = int(now) + o.id_ttl
            idt_claims = {"aud": claims["target_audience"], "iss": "https://accounts.gcp.test", "exp": exp,
                          "iat": int(now), "sub": "1234"}
            idt = b64url(b'{"alg":"RS256","typ":"JWT"}') + "." + b64url(json.dumps(idt_claims).encode()) + \
                "." + b64url(_secrets.token_bytes(64))
            with o.lock:
                o.issued[idt] = time.monotonic() + o.id_ttl
                o.current = idt
                o.mints += 1
            time.sleep(o.mint_delay)
            return self._send(200, {"id_token": idt})
        if not claims.get("scope"):
            return self._send(400, {"error": "invalid_scope"})
        tok = self._mint_ok(o, "ya29.", o.expires_in)
        return self._send(200, {"access_token": tok, "expires_in": o.expires_in, "token_type": "Bearer"})

    def _github(self, o, body):
        want = f"/app/installations/{o.installation}/access_tokens"
        if self.command != "POST" or self.path != want:
            return self._send(404, {"message": "Not Found"})
        if self.headers.get("Accept") != "application/vnd.github+json" or \
                self.headers.get("X-GitHub-Api-Version") != GH_VERSION:
            return self._send(400, {"message": "bad Accept or API version"})
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("Bearer "):
            return self._send(401, {"message": "A JSON web token could not be decoded"})
        jwt = auth[7:]
        with o.lock:
            o.jwts.append(jwt)
        try:
            header, claims = verify_jwt(jwt, list(o.gh_keys.values()))
        except (ValueError, KeyError, IndexError):
            return self._send(401, {"message": "A JSON web token could not be decoded"})
        now = time.time() + o.clock_offset
        iat, exp = claims.get("iat"), claims.get("exp")
        with o.lock:
            o.verified.append((header, claims))
            revoked = any(verify_ok(jwt, k) for name, k in o.gh_keys.items() if name in o.revoked_kids)
        if revoked:
            return self._send(401, {"message": "A JSON web token could not be decoded"})
        if not isinstance(iat, int) or not isinstance(exp, int) or iat > now:
            return self._send(401, {"message": "'Issued at' claim ('iat') must be an Integer representing a "
                                               "time in the past."})
        if exp - iat > 600 or exp <= now:
            return self._send(401, {"message": "'Expiration time' claim ('exp') is too far in the future"})
        if str(claims.get("iss")) != str(o.app_id):
            return self._send(401, {"message": "bad iss"})
        try:
            req = json.loads(body or b"{}")
        except ValueError:
            return self._send(400, {"message": "Problems parsing JSON"})
        with o.lock:
            o.gh_bodies.append(req)
        tok = self._mint_ok(o, "ghs_", o.expires_in)
        at = datetime.datetime.fromtimestamp(int(time.time()) + o.expires_in, datetime.timezone.utc)
        return self._send(201, {"token": tok, "expires_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                "permissions": req.get("permissions", {"contents": "read"}),
                                "repository_selection": "selected" if "repositories" in req else "all"})

    def _api(self, o):
        auth = self.headers.get("Authorization") or ""
        tok = auth[7:] if auth.startswith("Bearer ") else ""
        with o.lock:
            exp = o.issued.get(tok)
            ok = exp is not None and time.monotonic() < exp and tok not in o.revoked_tokens
            o.api_calls.append((tok, ok))
        if not ok:
            return self._send(401, {"error": "invalid_token"})
        self._send(200, {"ok": True, "path": self.path, "you_sent": tok})


def verify_ok(jwt, key):
    try:
        verify_jwt(jwt, [key])
        return True
    except ValueError:
        return False



class JwtServer(Endpoint):
    handler = _Handler

    def __init__(self, cert, key):
        super().__init__(cert, key)
        self.reset()

    def reset(self):
        self.gcp_keys = {}     # kid -> public key
        self.gh_keys = {}      # name -> public key
        self.revoked_kids = set()
        self.gcp_email = None
        self.gcp_aud = GCP_AUD
        self.app_id = None
        self.installation = None
        self.clock_offset = 0
        self.expires_in = 3600
        self.id_ttl = 3600
        self.mint_delay = 0.0
        self.requests = []
        self.jwts = []
        self.verified = []
        self.gh_bodies = []
        self.issued = {}
        self.revoked_tokens = set()
        self.current = None
        self.mints = 0
        self.api_calls = []

    def secrets(self):
        """Every JWT received and token issued: none may reach a log."""
        with self.lock:
            return [t for t in self.jwts + list(self.issued) if t]
