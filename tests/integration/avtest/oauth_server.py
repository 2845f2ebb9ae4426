"""A fake OAuth 2.0 token endpoint and the API it protects, for
test_oauth.py: one TLS server on 127.0.0.1 answering both names.

auth.oauth.test  POST /token: checks grant_type=client_credentials and the
                 client's authentication (basic: RFC 6749 2.3.1, id and
                 secret form-urlencoded before base64; post: in the body),
                 records every mint and issues "at-<random>" tokens valid
                 for `expires_in` seconds. grant_type=refresh_token (RFC
                 6749 6) takes a refresh token of `refresh_valid` (else 400
                 invalid_grant); with `rotate` the one used stops being
                 valid and a new "rt-<random>" is returned, without it the
                 same one is echoed (`echo_refresh`) or none; a public
                 client (client_id in the body, no secret) is accepted when
                 `allow_public`. `mode` makes it answer an error
                 (400 invalid_client with a description that must not
                 leak), bad JSON, or slowly.
api.oauth.test   any path: 200 with a JSON body that echoes the bearer
                 token (the proxy must scrub it) when the token is current,
                 401 otherwise.
"""
import base64
import json
import secrets as _secrets
import time
import urllib.parse


from .fake_endpoint import Endpoint, Handler, issue_leaf

HOSTS = ["auth.oauth.test", "api.oauth.test", "api-h2.oauth.test"]  # the last: test_oauth's HTTP/2 origin
LEAK_DESCRIPTION = "endpoint-body-must-not-leak-" + _secrets.token_hex(6)


def leaf_for(test_ca, directory):
    return issue_leaf(test_ca, HOSTS, directory, "oauth-origin")


class _Handler(Handler):
    def _dispatch(self):
        o = self.server.owner
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        host = (self.headers.get("Host") or "").split(":")[0]
        if host == "auth.oauth.test":
            self._token(o, body)
        else:
            self._api(o, len(body))

    def _token(self, o, body):
        with o.lock:
            o.requests.append({"path": self.path, "method": self.command,
                               "headers": {k.lower(): v for k, v in self.headers.items()},
                               "form": urllib.parse.parse_qs(body.decode(), keep_blank_values=True)})
            mode = o.mode
        if mode == "slow":
            time.sleep(o.slow_seconds)
        if self.command != "POST" or self.path != "/oauth/token":
            return self._send(404, '{"error":"not_found"}')
        if self.headers.get("Content-Type") != "application/x-www-form-urlencoded":
            return self._send(400, '{"error":"invalid_request"}')
        form = urllib.parse.parse_qs(body.decode(), keep_blank_values=True)
        grant = form.get("grant_type")
        if grant not in (["client_credentials"], ["refresh_token"]):
            return self._send(400, '{"error":"unsupported_grant_type"}')
        cid, csec = None, None
        auth = self.headers.get("Authorization")
        if auth and auth.startswith("Basic "):
            raw = base64.b64decode(auth[6:]).decode()
            i, _, s = raw.partition(":")
            cid, csec = urllib.parse.unquote_plus(i), urllib.parse.unquote_plus(s)
            if "client_secret" in form:
                return self._send(400, '{"error":"invalid_request"}')
        elif not auth:
            cid = (form.get("client_id") or [None])[0]
            csec = (form.get("client_secret") or [None])[0]
        public_ok = grant == ["refresh_token"] and o.allow_public and not auth and csec is None
        if ((cid, csec) != (o.client_id, o.client_secret) and not (public_ok and cid == o.client_id)) or \
                mode == "invalid_client":
            return self._send(400 if mode != "invalid_client" else 401,
                              json.dumps({"error": "invalid_client", "error_description": LEAK_DESCRIPTION}))
        if mode == "badjson":
            return self._send(200, '{"access_token": "at-' + LEAK_DESCRIPTION + '", "expires_in": ')
        new_rt = None
        if grant == ["refresh_token"]:
            used = (form.get("refresh_token") or [None])[0]
            with o.lock:
                o.refresh_used.append(used)
                if used not in o.refresh_valid:
                    return self._send(400, json.dumps({"error": "invalid_grant",
                                                       "error_description": LEAK_DESCRIPTION}))
                if o.rotate:
                    o.refresh_valid.discard(used)
                    new_rt = "rt-" + _secrets.token_hex(16)
                    o.refresh_valid.add(new_rt)
                    o.refresh_issued.append(new_rt)
                elif o.echo_refresh:
                    new_rt = used
        tok = "at-" + _secrets.token_hex(16)
        with o.lock:
            o.issued[tok] = time.monotonic() + o.expires_in
            o.current = tok
            o.mints += 1
            exp = str(o.expires_in) if o.expires_in_as_string else o.expires_in
        time.sleep(o.mint_delay)
        answer = {"access_token": tok, "token_type": "Bearer", "expires_in": exp,
                  "scope": " ".join(form.get("scope", []))}
        if new_rt:
            answer["refresh_token"] = new_rt
        return self._send(200, json.dumps(answer))

    def _api(self, o, n=0):
        auth = self.headers.get("Authorization") or ""
        tok = auth[7:] if auth.startswith("Bearer ") else ""
        with o.lock:
            exp = o.issued.get(tok)
            ok = exp is not None and time.monotonic() < exp and tok not in o.revoked and not o.api_reject_all
            o.api_calls.append((tok, ok))
        if not ok:
            return self._send(401, '{"error":"invalid_token"}')
        self._send(200, json.dumps({"ok": True, "path": self.path, "you_sent": tok, "method": self.command,
                                    "body_len": n}))



class OAuthServer(Endpoint):
    handler = _Handler

    def __init__(self, cert, key, client_id, client_secret):
        self.client_id = client_id
        self.client_secret = client_secret
        super().__init__(cert, key)
        self.reset()

    def reset(self):
        self.mode = "ok"
        self.slow_seconds = 0
        self.mint_delay = 0.0
        self.expires_in = 3600
        self.expires_in_as_string = False
        self.requests = []
        self.issued = {}
        self.revoked = set()
        self.current = None
        self.mints = 0
        self.api_calls = []
        self.api_reject_all = False
        self.refresh_valid = set()
        self.refresh_used = []
        self.refresh_issued = []
        self.rotate = True
        self.echo_refresh = False
        self.allow_public = False

    def tokens(self):
        with self.lock:
            return [t for t in list(self.issued) + list(self.refresh_valid) + self.refresh_used + self.refresh_issued
                    if t]
