"""Secrets from Python: secret = callback:NAME, answered by secrets= / secret_fn=."""
import logging
import threading
import time

import httpx

import agentvault
from _http1 import Reader, request
from conftest import GITHUB, OPENAI, assert_no_secret, openai_service


def get(base, path="/echo-auth", **kw):
    with httpx.Client(base_url=base, trust_env=False, timeout=15) as c:
        return c.get(path, **kw)


def test_secret_fn_runs_on_the_loop_thread_and_is_cached(make_vault, upstream, keys):
    calls = []

    def fn(name):
        calls.append((name, threading.get_ident()))
        return keys[name].encode()          # bytes are fine too

    v = make_vault(secret_fn=fn)
    base = v.gateway_url(OPENAI)
    for _ in range(3):
        r = get(base)
        assert r.status_code == 200
        assert_no_secret(r.content, keys)
    assert [c[0] for c in calls] == ["openai"]            # cached (secret_ttl)
    assert calls[0][1] != threading.get_ident()           # not the caller's thread
    reqs = upstream.wait_requests(3)
    assert all(r.header_values("authorization") == [f"Bearer {keys['openai']}"] for r in reqs)


def test_secrets_mapping_then_fn(make_vault, upstream, keys):
    asked = []

    def fn(name):
        asked.append(name)
        return keys[name]

    v = make_vault(secrets={"openai": keys["openai"]}, secret_fn=fn)
    assert get(v.gateway_url(OPENAI)).status_code == 200
    assert get(v.gateway_url(GITHUB)).status_code == 200
    assert asked == ["github"]
    auth = sorted(r.header("authorization") for r in upstream.wait_requests(2))
    assert auth == sorted([f"Bearer {keys['openai']}", f"token {keys['github']}"])


def test_raising_callback_fails_the_request_not_the_process(make_vault, upstream, keys, caplog):
    marker = "do-not-show-this-" + keys["github"][-8:]

    def fn(name):
        if name == "github":
            raise RuntimeError(f"vault locked {marker}")
        return keys[name]

    caplog.set_level(logging.ERROR, logger="agentvault")
    v = make_vault(secret_fn=fn)
    r = get(v.gateway_url(GITHUB))
    assert 500 <= r.status_code < 600 and r.status_code == 502
    err = r.headers.get("x-agentvault-error", "")
    assert "RuntimeError" in err and "callback:github" in err, err
    # the agent sees the exception's type, never its text (or a secret)
    assert marker not in r.text and marker not in err
    assert_no_secret(r.content, keys)
    # reported to the host
    assert v.secret_errors == [("github", f"RuntimeError: vault locked {marker}")]
    logged = [rec for rec in caplog.records if rec.name == "agentvault"
              and "github" in rec.getMessage()]
    assert logged and logged[0].exc_info and logged[0].exc_info[0] is RuntimeError
    # nothing was sent upstream for it; the vault keeps working
    assert upstream.snapshot() == []
    r2 = get(v.gateway_url(OPENAI))
    assert r2.status_code == 200
    assert upstream.only_request().header_values("authorization") == [
        f"Bearer {keys['openai']}"]
    v.close()
    assert v.closed


def test_raising_callback_on_a_stream(make_vault, upstream):
    def fn(name):
        raise KeyError(name)

    v = make_vault(secret_fn=fn)
    with v.open_stream(OPENAI, timeout=15) as s:
        s.sendall(request("GET", "/echo", "api.openai.com"))
        r = Reader(s).response()
    assert r.status == 502 and "KeyError" in r.header("x-agentvault-error")
    assert upstream.snapshot() == []


def test_missing_and_empty_secrets_fail_closed(make_vault, upstream, keys):
    v = make_vault(secrets={"openai": ""}, secret_fn=lambda name: None)
    r = get(v.gateway_url(OPENAI))
    assert r.status_code == 502 and "empty" in r.headers["x-agentvault-error"]
    r = get(v.gateway_url(GITHUB))
    assert r.status_code == 502 and "no secret named github" in r.headers["x-agentvault-error"]
    assert upstream.snapshot() == []
    assert v.secret_errors == []


def test_wrong_type_is_reported(make_vault, upstream, keys):
    v = make_vault(secret_fn=lambda name: 12345)
    r = get(v.gateway_url(OPENAI))
    assert r.status_code == 502 and "TypeError" in r.headers["x-agentvault-error"]
    assert v.secret_errors and v.secret_errors[0][0] == "openai"
    assert upstream.snapshot() == []


def test_no_callback_installed(test_ca, upstream, state_dir):
    v = agentvault.Vault(state_dir=state_dir, services=[openai_service()],
                         resolve=[f"api.openai.com:443:127.0.0.1:{upstream.port}"],
                         upstream_cacert=test_ca.ca_pem)
    with v:
        r = get(v.gateway_url(OPENAI))
        assert r.status_code == 502
        assert "no secret callback" in r.headers["x-agentvault-error"]
    assert upstream.snapshot() == []


def test_close_from_inside_the_callback(make_vault, upstream, keys):
    """A callback that closes its own vault (on the loop thread) neither
    deadlocks nor crashes: the context is stopped from another thread."""
    holder = {}

    def fn(name):
        holder["v"].close()
        return keys[name]

    v = make_vault(secret_fn=fn)
    holder["v"] = v
    base = v.gateway_url(OPENAI)
    try:
        get(base)
    except httpx.HTTPError:
        pass
    assert v.closed
    assert v.secret_errors == []


def test_concurrent_callers_share_one_answer(make_vault, upstream, keys):
    """Python threads hammer two services while the callback (slow, on the
    loop thread) needs the GIL: no deadlock, one call per name."""
    asked = []

    def fn(name):
        asked.append(name)
        time.sleep(0.2)
        return keys[name]

    v = make_vault(secret_fn=fn)
    results = []

    def one(base):
        results.append(get(base).status_code)

    threads = [threading.Thread(target=one, args=(v.gateway_url(o),))
               for o in (OPENAI, GITHUB) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [200] * 8
    assert sorted(asked) == ["github", "openai"]


def test_unusable_answers_never_reach_the_wire(make_vault, upstream, keys):
    """A secret with CR/LF (header injection) or over 64 KiB fails the
    request closed; nothing is sent upstream."""
    answers = {"openai": "sk-abc\r\nX-Evil: 1", "github": b"g" * (64 * 1024 + 1)}
    v = make_vault(secrets=answers)
    r = get(v.gateway_url(OPENAI))
    assert r.status_code == 502 and "X-Evil" not in r.text
    r = get(v.gateway_url(GITHUB))
    assert r.status_code == 502 and "64 KiB" in r.headers["x-agentvault-error"]
    assert upstream.snapshot() == []
