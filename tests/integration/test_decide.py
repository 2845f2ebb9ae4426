"""Decisions (issue 18): a service with `decide = ask` holds each request
it matches until a person answers through the CLI (`agentvault pending`,
`approve`, `deny`, over the control socket in the state directory); with
`decide = command:` a program answers with one JSON line. Held requests
wait before the credential is placed and before any upstream byte; a
denial, a timeout and a failed program answer 403 with the reason; the
audit record says who decided and how long it took; nothing of the secret
or of the query values reaches the program, the CLI, the notification or
the log."""
import concurrent.futures
import json
import os
import random
import socket
import stat
import subprocess
import time

import pytest

from avtest import client
from avtest import h2_client as h2c
from avtest.checks import assert_curl_proxy_error, assert_raw_proxy_error, auth_values, run_cli, \
    tls_tunnel, wait_until
from avtest.daemon import base_env, config_text
from avtest.h2_client import H2Client

QVAL = "qv-" + "7f3a9c1e5b"          # a query value: must never be shown


def _script(tmp_path, name, body):
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return p


def _openai(decide, timeout=None, extra=""):
    s = f'[service "openai"]\nhost = api.openai.com\nauth = bearer\nsecret = env:OPENAI_API_KEY\ndecide = {decide}\n'
    if timeout:
        s += f"decide_timeout = {timeout}\n"
    return s + extra


def _github():
    return ('[service "github"]\nhost = api.github.com\nauth = bearer\n'
            'secret = env:PLAIN_API_KEY\n')


def _cli(d, *args, tmp_path=None):
    return run_cli([*args, "--state-dir", d.state_dir], env=base_env(d.home))


def _pending(d):
    """The held requests as the CLI lists them: [(id, age, token, method, host, path, service)]."""
    p = _cli(d, "pending")
    assert p.returncode == 0, p.stderr
    rows = []
    for line in p.stdout.splitlines():
        f = line.split()
        if f and f[0].isdigit():
            rows.append(f)
    return rows, p.stdout


def _wait_held(d, n=1, timeout=5.0):
    rows = []

    def enough():
        rows[:] = _pending(d)[0]
        return len(rows) >= n
    assert wait_until(enough, timeout), f"{len(rows)} request(s) held, expected {n}\n{d.log_dump()}"
    return rows


def _audit(d):
    p = d.workdir / "audit.jsonl"
    return [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []


def _bg(fn):
    ex = concurrent.futures.ThreadPoolExecutor(1)
    fut = ex.submit(fn)
    ex.shutdown(wait=False)
    return fut


def test_ask_approve_then_credential_sent(daemon, upstream, secrets):
    d = daemon(config_text(secrets, services=False, extra=_openai("ask")))
    fut = _bg(lambda: d.curl(f"https://api.openai.com/echo?purpose=fine&token={QVAL}").ok())
    rows = _wait_held(d)
    time.sleep(0.2)
    assert upstream.snapshot() == [], "a held request reached the origin"
    assert not fut.done()
    listing = _pending(d)[1]
    for s in secrets.values() + [QVAL, "purpose"]:
        assert s not in listing, "the CLI showed a secret or the query"
    (rid, age, tok, method, host, path, svc) = rows[0][:7]
    assert (tok, method, host, path, svc) == ("-", "GET", "api.openai.com", "/echo", "openai")
    p = _cli(d, "approve", rid)
    assert p.returncode == 0, p.stderr
    r = fut.result(10)
    assert r.status == 200, r.describe()
    assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]
    assert _pending(d)[0] == []
    rec = [a for a in _audit(d) if a["path"] == "/echo"]
    assert len(rec) == 1, rec
    assert rec[0]["decision"] == "allow" and rec[0]["decided_by"] == "person", rec[0]
    assert rec[0]["decide_id"] == rid and rec[0]["decide_ms"] > 0
    assert QVAL not in d.log_text() + (d.workdir / "audit.jsonl").read_text()


def test_ask_deny_with_reason(daemon, upstream, secrets):
    d = daemon(config_text(secrets, services=False, extra=_openai("ask")))
    fut = _bg(lambda: d.curl("-X", "DELETE", "https://api.openai.com/v1/files/f1").ok())
    rid = _wait_held(d)[0][0]
    p = _cli(d, "deny", rid, "--reason", "not on a Friday")
    assert p.returncode == 0, p.stderr
    r = fut.result(10)
    assert_curl_proxy_error(r, 403, mentions="not on a Friday")
    assert "person" in r.header("X-Agentvault-Error")
    assert upstream.snapshot() == []
    rec = [a for a in _audit(d) if a["path"] == "/v1/files/f1"]
    assert len(rec) == 1 and rec[0]["decision"] == "deny" and rec[0]["decided_by"] == "person", rec
    assert rec[0]["status"] == 403
    # the id is gone: answering again fails
    p = _cli(d, "approve", rid)
    assert p.returncode == 1 and "no request" in p.stderr, p.stderr


def test_ask_timeout_denies(daemon, upstream, secrets):
    d = daemon(config_text(secrets, services=False, extra=_openai("ask", timeout="0.6")))
    t0 = time.monotonic()
    r = d.curl("https://api.openai.com/v1/models").ok()
    assert 0.5 < time.monotonic() - t0 < 5
    assert_curl_proxy_error(r, 403, mentions="no decision within")
    assert upstream.snapshot() == []
    rec = _audit(d)[-1]
    assert rec["decision"] == "deny" and rec["decided_by"] == "timeout", rec
    assert wait_until(lambda: _pending(d)[0] == [], 3)


def test_remember_path_scope(daemon, upstream, secrets):
    d = daemon(config_text(secrets, services=False, extra=_openai("ask")))
    fut = _bg(lambda: d.curl("-X", "POST", "-d", "{}", "https://api.openai.com/echo").ok())
    rid = _wait_held(d)[0][0]
    p = _cli(d, "approve", rid, "--remember", "10m", "--scope", "path")
    assert p.returncode == 0, p.stderr
    assert fut.result(10).status == 200
    # the same method and path: no question asked
    r = d.curl("-X", "POST", "-d", "{}", "https://api.openai.com/echo").ok()
    assert r.status == 200, r.describe()
    assert _audit(d)[-1]["decided_by"] == "rule"
    # another path (or method) is held again
    fut2 = _bg(lambda: d.curl("https://api.openai.com/echo").ok())
    rows = _wait_held(d)
    assert rows[0][3:6] == ["GET", "api.openai.com", "/echo"]
    fut3 = _bg(lambda: d.curl("-X", "POST", "-d", "{}", "https://api.openai.com/elsewhere").ok())
    rows = _wait_held(d, 2)
    assert sorted(r[5] for r in rows) == ["/echo", "/elsewhere"]
    _cli(d, "deny", [r for r in rows if r[5] == "/elsewhere"][0][0])
    assert fut3.result(10).status == 403
    _cli(d, "deny", rows[0][0])
    assert fut2.result(10).status == 403
    assert len(upstream.snapshot()) == 2


def test_remember_service_scope(daemon, upstream, secrets):
    d = daemon(config_text(secrets, services=False, extra=_openai("ask")))
    fut = _bg(lambda: d.curl("https://api.openai.com/echo").ok())
    rid = _wait_held(d)[0][0]
    assert _cli(d, "approve", rid, "--remember", "60", "--scope", "service").returncode == 0
    assert fut.result(10).status == 200
    for path, status in (("/echo", 200), ("/other", 404)):
        r = d.curl("-X", "PUT", "-d", "x", f"https://api.openai.com{path}").ok()
        assert r.status == status, r.describe()  # the origin's answer
    assert len(upstream.snapshot()) == 3
    assert [a["decided_by"] for a in _audit(d)] == ["person", "rule", "rule"]


def test_agent_disconnect_cancels(daemon, upstream, secrets):
    d = daemon(config_text(secrets, services=False, extra=_openai("ask", timeout="30")))
    fut = _bg(lambda: d.curl("--max-time", "1", "https://api.openai.com/v1/gone"))
    _wait_held(d)
    fut.result(10)
    assert wait_until(lambda: any(a.get("decision") == "cancelled" for a in _audit(d)), 5), d.log_dump()
    rec = [a for a in _audit(d) if a["path"] == "/v1/gone"]
    assert len(rec) == 1 and rec[0]["decided_by"] == "agent" and rec[0]["end"] == "client_abort", rec
    assert wait_until(lambda: _pending(d)[0] == [], 3)
    assert "cancelled" in d.log_text()
    assert upstream.snapshot() == []


def test_h2_streams_decided_in_random_order(daemon, upstream, secrets):
    """20 held streams on one HTTP/2 connection, answered in random order:
    answered streams complete while the others are still held."""
    d = daemon(config_text(secrets, services=False, extra=_openai("ask") + "\n" + _github()))
    c = H2Client(h2c.open_tls_daemon(d, "api.openai.com"))
    sids = [c.request("GET", f"/v1/s{i}?k={QVAL}") for i in range(20)]
    rows = []

    def all_held():
        c.poll(0.05)
        rows[:] = _pending(d)[0]
        return len(rows) == 20
    assert wait_until(all_held, 10), f"{len(rows)} held\n{d.log_dump()}"
    by_path = {r[5]: r[0] for r in rows}
    order = list(range(20))
    random.shuffle(order)
    for n, i in enumerate(order):
        verb = "approve" if i % 2 == 0 else "deny"
        p = _cli(d, verb, by_path[f"/v1/s{i}"])
        assert p.returncode == 0, p.stderr
        if n == 5:
            # the connection still serves: nothing else on it waits
            c.wait(lambda: c.streams[sids[i]].done, 10, "an answered stream")
            assert any(not c.streams[s].done for s in sids), "every stream ended already"
    for i, sid in enumerate(sids):
        c.wait(lambda: c.streams[sid].done, 10, f"stream {i}")
        st = c.streams[sid]
        assert st.status == (404 if i % 2 == 0 else 403), (i, st.describe())  # 404: the origin's
    c.close()
    assert len(upstream.snapshot()) == 10
    assert QVAL not in d.log_text()


def test_ws_upgrade_held_before_101(daemon, upstream, secrets, test_ca):
    """A held WebSocket upgrade waits before its 101 (nothing upstream), and
    gets the origin's validated 101 once approved; a denied one gets 403."""
    from avtest.ws_upstream import WsUpstream
    ws = WsUpstream(test_ca.server_cert, test_ca.server_key, "ws-tls").start()
    try:
        d = daemon(config_text(secrets, services=False, extra=_openai("ask")),
                   resolve=[f"api.openai.com:443:127.0.0.1:{ws.port}"])
        conn = tls_tunnel(d)
        conn.send(b"GET /echo HTTP/1.1\r\nHost: api.openai.com\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n")
        rows = _wait_held(d)
        time.sleep(0.3)
        assert ws._conns == [], "the upgrade reached the origin while held"
        assert _cli(d, "approve", rows[0][0]).returncode == 0
        head = conn.read_head()
        assert head.startswith(b"HTTP/1.1 101"), head
        assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head  # the agent's key, accepted
        c = ws.wait_conn(0)
        assert c.target == "/echo"
        conn.sock.close()
        assert wait_until(lambda: any(a.get("decision") == "allow" for a in _audit(d)), 5)
    finally:
        ws.stop()
    _ws_denied(d, upstream)


def _ws_denied(d, upstream):
    conn = tls_tunnel(d)
    conn.send(b"GET /v1/realtime HTTP/1.1\r\nHost: api.openai.com\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")
    rows = _wait_held(d)
    assert rows[0][5] == "/v1/realtime"
    assert _cli(d, "deny", rows[0][0], "--reason", "no realtime").returncode == 0
    resp = conn.read_response()
    assert_raw_proxy_error(resp, 403, mentions="no realtime")
    rec = _audit(d)[-1]
    assert rec["decision"] == "deny" and rec["path"] == "/v1/realtime"


FILTER = r'''
in="$(cat)"
printf '%s\n' "$in" >> "{log}"
case "$in" in
  *'"method":"DELETE"'*'"path":"/prod/'*) echo '{{"allow":false,"reason":"DELETE on production"}}' ;;
  *) echo '{{"allow":true}}' ;;
esac
'''


def test_command_filter_denies_delete_on_production(daemon, upstream, secrets, tmp_path):
    log = tmp_path / "filter.log"
    prog = _script(tmp_path, "filter", FILTER.format(log=log))
    d = daemon(config_text(secrets, services=False, tokens=True,
                           extra=_openai(f"command:{prog}")),
               )
    user = f"agent1:{secrets.agent_token}"
    r = d.curl("-X", "DELETE", f"https://api.openai.com/prod/db?confirm={QVAL}", userinfo=user).ok()
    assert_curl_proxy_error(r, 403, mentions="DELETE on production")
    assert "program" in r.header("X-Agentvault-Error")
    r = d.curl("-X", "DELETE", "https://api.openai.com/staging/db", userinfo=user).ok()
    assert r.status == 404, r.describe()  # the origin's answer
    r = d.curl(f"https://api.openai.com/prod/db?x={QVAL}", userinfo=user).ok()
    assert r.status == 404, r.describe()
    assert len(upstream.snapshot()) == 2
    seen = [json.loads(l) for l in log.read_text().splitlines()]
    assert len(seen) == 3
    assert seen[0]["method"] == "DELETE" and seen[0]["path"] == "/prod/db"
    assert seen[0]["query"] == ["confirm"] and seen[0]["token"] == "agent1"
    assert seen[0]["service"] == "openai" and seen[0]["scheme"] == "https" and seen[0]["port"] == 443
    assert seen[0]["protocol"] == "h1" and seen[0]["peer"] == "127.0.0.1"
    text = log.read_text()
    for s in secrets.values() + [QVAL]:
        assert s not in text, "the decision program saw a secret or a query value"
    recs = _audit(d)
    assert [a["decided_by"] for a in recs] == ["program"] * 3
    assert [a["decision"] for a in recs] == ["deny", "allow", "allow"]


@pytest.mark.parametrize("body,mentions", [
    ("kill -SEGV $$\n", "signal"),
    ("cat >/dev/null; echo '{\"allow\":true}'; exit 3\n", "status 3"),
    ("cat >/dev/null; echo 'yes please'\n", "malformed"),
    ("cat >/dev/null; printf '{\"allow\":true}\\n{\"allow\":true}\\n'\n", "malformed"),
    ("cat >/dev/null; echo '{\"allow\":true,\"remember\":9}'\n", "malformed"),
    ("sleep 30\n", "in time"),
])
def test_command_filter_failures_deny(daemon, upstream, secrets, tmp_path, body, mentions):
    prog = _script(tmp_path, "bad", body)
    d = daemon(config_text(secrets, services=False, proxy_extra="command_timeout = 0.5",
                           extra=_openai(f"command:{prog}")))
    t0 = time.monotonic()
    r = d.curl("https://api.openai.com/v1/x").ok()
    assert time.monotonic() - t0 < 5
    assert_curl_proxy_error(r, 403, mentions=mentions)
    assert upstream.snapshot() == []
    assert _audit(d)[-1]["decided_by"] == "program"


def test_notify_gets_the_request_without_secrets(daemon, upstream, secrets, tmp_path):
    out = tmp_path / "notified"
    prog = _script(tmp_path, "notify", f'cat >> "{out}"; echo >> "{out}"\n')
    d = daemon(config_text(secrets, services=False, proxy_extra=f"decide_notify = command:{prog}",
                           extra=_openai("ask")))
    fut = _bg(lambda: d.curl("-H", f"X-Custom: {QVAL}", f"https://api.openai.com/echo?a={QVAL}&b").ok())
    rid = _wait_held(d)[0][0]
    assert wait_until(lambda: out.exists() and out.read_text().strip(), 3)
    doc = json.loads(out.read_text().splitlines()[0])
    assert doc["id"] == rid and doc["path"] == "/echo" and doc["query"] == ["a", "b"]
    assert "x-custom" in [h.lower() for h in doc["headers"]]
    for s in secrets.values() + [QVAL]:
        assert s not in out.read_text()
    _cli(d, "approve", rid)
    assert fut.result(10).status == 200


def test_through_a_gateway(daemon, upstream, secrets):
    extra = _openai("ask") + '\n[gateway "oa"]\nlisten = 127.0.0.1:0\nupstream = https://api.openai.com\n'
    d = daemon(config_text(secrets, services=False, extra=extra))
    m = [l for l in d.log_text().splitlines() if "gateway oa on http://" in l]
    assert m, d.log_dump()
    base = m[0].split(" on ")[1].split(" ")[0]
    fut = _bg(lambda: client.run_curl(["-sS", f"{base}/echo"], home=d.home, urls_count=1).ok())
    rows = _wait_held(d)
    assert rows[0][5] == "/echo"
    assert _cli(d, "approve", rows[0][0]).returncode == 0
    assert fut.result(10).status == 200
    assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]
    assert _audit(d)[-1]["gateway"] == "oa"


def test_pending_watch_follows_new_requests(daemon, upstream, secrets):
    """pending --watch follows new requests as they are held."""
    d = daemon(config_text(secrets, services=False, extra=_openai("ask")))
    w = subprocess.Popen([str(run_cli.__globals__["require_binary"]()), "pending", "--watch",
                          "--state-dir", str(d.state_dir)], stdout=subprocess.PIPE, text=True,
                         env=base_env(d.home))
    try:
        fut = _bg(lambda: d.curl("https://api.openai.com/v1/watched").ok())
        line = ""
        t_end = time.monotonic() + 5
        while "/v1/watched" not in line and time.monotonic() < t_end:
            line = w.stdout.readline()
        assert "/v1/watched" in line, line
        rid = line.split()[0]
        _cli(d, "approve", rid)
        assert fut.result(10).status == 404  # the origin's answer
    finally:
        w.kill()
        w.wait()


def test_control_socket_is_private(daemon, upstream, secrets, tmp_path):
    # a state directory another user could reach but for its own mode (the
    # test's tmp_path is inside a 0700 directory)
    import shutil
    import tempfile
    from pathlib import Path
    top = Path(tempfile.mkdtemp(prefix="av-decide-"))
    os.chmod(top, 0o755)
    try:
        _control_socket_is_private(daemon, secrets, top / "state")
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _control_socket_is_private(daemon, secrets, state):
    d = daemon(config_text(secrets, services=False, extra=_openai("ask")), state_dir=state)
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    sock = d.state_dir / "control.sock"
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    fut = _bg(lambda: d.curl("https://api.openai.com/echo"))
    rid = _wait_held(d)[0][0]

    def as_nobody(*args):
        return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                               str(run_cli.__globals__["require_binary"]()), *args,
                               "--state-dir", str(d.state_dir)],
                              capture_output=True, text=True, env=base_env(d.home), timeout=10)
    # another user cannot connect, even with the directory open to it
    os.chmod(d.state_dir, 0o755)
    try:
        p = as_nobody("approve", rid)
        assert p.returncode != 0 and "cannot reach the daemon" in p.stderr, (p.returncode, p.stdout, p.stderr)
        # and if the socket's mode were opened, the peer check refuses it
        os.chmod(sock, 0o666)
        p = as_nobody("approve", rid)
        assert p.returncode != 0 and "permission denied" in p.stderr, (p.returncode, p.stdout, p.stderr)
        p = as_nobody("pending")
        assert p.returncode != 0 and rid not in p.stdout, (p.returncode, p.stdout, p.stderr)
    finally:
        os.chmod(sock, 0o600)
        os.chmod(d.state_dir, 0o700)
    assert _pending(d)[0][0][0] == rid, "the request was answered by another user"
    assert _cli(d, "deny", rid).returncode == 0
    assert fut.result(10).status == 403
    assert "control" not in subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
    assert d.stop() == 0


def test_ask_refused_when_socket_owned_by_a_live_daemon(daemon, secrets, tmp_path):
    d = daemon(config_text(secrets, services=False, extra=_openai("ask")))
    p = subprocess.run([str(run_cli.__globals__["require_binary"]()), "serve", "--listen", "127.0.0.1:0",
                        "--state-dir", str(d.state_dir)], capture_output=True, text=True,
                       env=base_env(d.home), timeout=10)
    assert p.returncode == 1 and "control socket" in p.stderr and "in use" in p.stderr, p.stderr


def test_bad_decide_config(tmp_path):
    for text, want in [
        ('decide = maybe\n', "decide must be ask or command:/absolute/path"),
        ('decide = command:relative\n', "decide must be ask or command:/absolute/path"),
        ('decide_timeout = 5\n', "decide_timeout and decide_body need decide"),
        ('decide_body = 1k\n', "decide_timeout and decide_body need decide"),
        ('decide = ask\ndecide_body = 65k\n', "decide_body must be a size from 1 byte to 64k"),
        ('decide = ask\ndecide_body = 0\n', "decide_body must be a size from 1 byte to 64k"),
        ('decide = ask\ndecide_timeout = -1\n', "decide_timeout must be a number of seconds"),
    ]:
        f = tmp_path / "bad.conf"
        f.write_text('[service "x"]\nhost = a.example\nauth = bearer\nsecret = env:X\n' + text)
        p = run_cli(["check", "-c", f], env=base_env(tmp_path))
        assert p.returncode == 1 and want in p.stderr, (text, p.stderr)
    f = tmp_path / "bad.conf"
    f.write_text('[proxy]\ndecide_notify = /bin/true\n')
    p = run_cli(["check", "-c", f], env=base_env(tmp_path))
    assert p.returncode == 1 and "decide_notify must be command:" in p.stderr, p.stderr


def test_embedder_dialog_example(upstream, test_ca, secrets, tmp_path, curl):
    """examples/decide_dialog.c: the library's decide callback queues the
    request, the host's UI thread asks its user (here: stdin) and answers
    from that thread."""
    from avtest import daemon as avd
    prog = avd.binary_path().resolve().parents[1] / "examples" / "decide_dialog"
    assert prog.is_file(), f"example not built at {prog}"
    conf = tmp_path / "dialog.conf"
    conf.write_text("[proxy]\nlisten = 127.0.0.1:0\n"
                    f"state_dir = {tmp_path / 'dialog-state'}\n"
                    f"resolve = api.openai.com:443:127.0.0.1:{upstream.port}\n"
                    f"upstream_cacert = {test_ca.ca_pem}\n\n" + _openai("ask", timeout="20"))
    env = avd.base_env(tmp_path)
    env.update(secrets.env())
    p = subprocess.Popen([str(prog), "-c", str(conf)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        port = int(p.stdout.readline().strip().rsplit(":", 1)[1])
        ca = tmp_path / "dialog-state" / "ca.pem"
        proxy = ["-x", f"http://127.0.0.1:{port}", "--cacert", str(ca)]
        fut = _bg(lambda: curl(*proxy, f"https://api.openai.com/echo?q={QVAL}"))
        line = p.stdout.readline().split()
        assert line[:5] == ["ask", "1", "GET", "api.openai.com", "/echo"], line
        p.stdin.write("allow 1\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "allowed 1"
        r = fut.result(15)
        assert r.status == 200, r.describe()
        assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]
        fut = _bg(lambda: curl(*proxy, "-X", "DELETE", "https://api.openai.com/echo"))
        line = p.stdout.readline().split()
        assert line[:3] == ["ask", "2", "DELETE"], line
        p.stdin.write("deny 2 not while I am away\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "denied 2"
        assert_curl_proxy_error(fut.result(15), 403, mentions="not while I am away")
        p.stdin.close()
        assert p.wait(10) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert QVAL not in p.stderr.read()


def test_held_longer_than_idle_timeout(daemon, upstream, secrets):
    """A request held for a decision keeps its connection open past
    idle_timeout (HTTP/1.1 and HTTP/2); decide_timeout bounds it instead."""
    d = daemon(config_text(secrets, services=False, proxy_extra="idle_timeout = 0.4",
                           extra=_openai("ask", timeout="5")))
    fut = _bg(lambda: d.curl("https://api.openai.com/echo").ok())
    c = H2Client(h2c.open_tls_daemon(d, "api.openai.com"))
    sid = c.request("GET", "/echo?h2")
    rows = []

    def both():
        c.poll(0.05)
        rows[:] = _pending(d)[0]
        return len(rows) == 2
    assert wait_until(both, 5), d.log_dump()
    t_end = time.monotonic() + 1.2  # three idle timeouts
    while time.monotonic() < t_end:
        c.poll(0.05)
    for r in rows:
        assert _cli(d, "approve", r[0]).returncode == 0
    assert fut.result(10).status == 200
    c.wait(lambda: c.streams[sid].done, 10, "the held stream")
    assert c.streams[sid].status == 200, c.streams[sid].describe()
    c.close()


def test_decision_programs_are_bounded(daemon, upstream, secrets, tmp_path):
    """At most 32 decision programs run at once: a burst of 34 held streams
    gets 32 programs and two 503s, never 34 processes."""
    prog = _script(tmp_path, "slow", "cat >/dev/null; sleep 1; echo '{\"allow\":true}'\n")
    d = daemon(config_text(secrets, services=False, extra=_openai(f"command:{prog}")))
    c = H2Client(h2c.open_tls_daemon(d, "api.openai.com"))
    sids = [c.request("GET", f"/echo?i={i}") for i in range(34)]
    for sid in sids:
        c.wait(lambda: c.streams[sid].done, 15, f"stream {sid}")
    statuses = sorted(c.streams[s].status for s in sids)
    assert statuses == [200] * 32 + [503] * 2, statuses
    busy = [s for s in sids if c.streams[s].status == 503]
    assert "too many decisions" in c.streams[busy[0]].header("x-agentvault-error")
    c.close()
    m = client.run_curl(["-sS", f"http://127.0.0.1:{d.port}/metrics"], home=d.home, urls_count=1)
    assert 'agentvault_limit_hits_total{limit="decide_programs"} 2' in m.text, m.text[-800:]


BODY_FILTER = r'''
in="$(cat)"
printf '%s\n' "$in" >> "{log}"
b64="$(printf '%s' "$in" | sed -n 's/.*"body":"\([^"]*\)".*/\1/p')"
printf '%s' "$b64" | base64 -d > "{seen}"
if grep -q 'refs/heads/main' "{seen}"; then
  echo '{{"allow":false,"reason":"push to main needs a person"}}'
else
  echo '{{"allow":true}}'
fi
'''


def _body_filter(tmp_path, limit="1k", extra=""):
    log, seen = tmp_path / "filter.log", tmp_path / "seen.bin"
    prog = _script(tmp_path, "bodyfilter", BODY_FILTER.format(log=log, seen=seen))
    return _openai(f"command:{prog}", extra=f"decide_body = {limit}\n" + extra), log, seen


@pytest.mark.parametrize("http", ["--http1.1", "--http2"])
def test_decide_body_first_bytes(daemon, upstream, secrets, tmp_path, http):
    """decide_body: the program sees the body's first bytes (here: a git
    push's ref update commands) and decides on them; an allowed request's
    whole body then reaches the origin unchanged, the first bytes included."""
    svc, log, seen = _body_filter(tmp_path)
    d = daemon(config_text(secrets, services=False, extra=svc))
    push_main = b"0077" + b"0" * 40 + b" " + b"1" * 40 + b" refs/heads/main\0report-status\n0000PACK" + os.urandom(4000)
    f = tmp_path / "push.bin"
    f.write_bytes(push_main)
    r = d.curl(http, "-X", "POST", "--data-binary", f"@{f}", "https://api.openai.com/echo").ok()
    assert_curl_proxy_error(r, 403, mentions="push to main needs a person")
    assert seen.read_bytes() == push_main[:1024]
    doc = json.loads(log.read_text().splitlines()[-1])
    assert doc["body_complete"] is False
    assert upstream.snapshot() == []
    push_dev = push_main.replace(b"refs/heads/main", b"refs/heads/dev!")
    f.write_bytes(push_dev)
    for framing in ([], ["-H", "Transfer-Encoding: chunked"]):
        if framing and http == "--http2":
            continue
        r = d.curl(http, "-X", "POST", *framing, "--data-binary", f"@{f}", "https://api.openai.com/echo").ok()
        assert r.status == 200, r.describe()
        echo = r.json_body()
        assert echo["body_length"] == len(push_dev)
        assert echo["body_sha256"] == __import__("hashlib").sha256(push_dev).hexdigest()
    # a body shorter than the bound is seen whole
    r = d.curl(http, "-X", "POST", "--data-binary", "short", "https://api.openai.com/echo").ok()
    assert r.status == 200 and r.json_body()["body_length"] == 5
    doc = json.loads(log.read_text().splitlines()[-1])
    assert doc["body_complete"] is True and seen.read_bytes() == b"short"
    # a bodiless request is decided without waiting for a body
    assert d.curl(http, "https://api.openai.com/echo").ok().status == 200


def test_decide_body_with_placeholder_and_big_bound(daemon, upstream, secrets, tmp_path):
    """64k of body in the JSON (a pipe larger than the default); a JSON body
    with the placeholder: the decision sees the placeholder, the origin the
    secret."""
    svc, log, seen = _body_filter(tmp_path, limit="64k",
                                  extra="placeholder = __OPENAI_KEY__\nplaceholder_in = body\n")
    d = daemon(config_text(secrets, services=False, extra=svc))
    body = json.dumps({"key": "__OPENAI_KEY__", "pad": "x" * 70000}).encode()
    f = tmp_path / "b.json"
    f.write_bytes(body)
    r = d.curl("-X", "POST", "-H", "Content-Type: application/json", "--data-binary", f"@{f}",
               "https://api.openai.com/echo").ok()
    assert r.status == 200, r.describe()
    assert seen.read_bytes() == body[:65536]
    sent = body.replace(b"__OPENAI_KEY__", secrets.openai_key.encode())
    assert r.json_body()["body_sha256"] == __import__("hashlib").sha256(sent).hexdigest()
    assert secrets.openai_key not in log.read_text()


def test_h2_stream_reset_cancels(daemon, upstream, secrets, tmp_path):
    """An HTTP/2 stream reset while held (and one reset while its body is
    being collected for decide_body) cancels it; the connection's other
    streams go on."""
    d = daemon(config_text(secrets, services=False, extra=_openai("ask", extra="decide_body = 1k\n")))
    c = H2Client(h2c.open_tls_daemon(d, "api.openai.com"))
    held = c.request("GET", "/echo?held")
    collecting = c.request("POST", "/echo?collecting", body=b"x" * 100, end_stream=False)
    other = c.request("GET", "/echo?other")

    def two():
        c.poll(0.05)
        return len(_pending(d)[0]) == 2
    assert wait_until(two, 5), d.log_dump()
    c.reset_stream(held)
    c.reset_stream(collecting)
    c.flush()
    assert wait_until(lambda: (c.poll(0.05), len([a for a in _audit(d) if a.get("decision") == "cancelled"]))[1] == 1,
                      5), d.log_dump()
    rid = _pending(d)[0][0][0]
    assert _cli(d, "approve", rid).returncode == 0
    c.wait(lambda: c.streams[other].done, 10, "the other stream")
    assert c.streams[other].status == 200
    recs = _audit(d)
    assert wait_until(lambda: len(_audit(d)) == 3, 5), _audit(d)
    recs = _audit(d)
    ends = sorted((a.get("decision", "-"), a["end"]) for a in recs)
    assert ends == [("-", "client_abort"), ("allow", "complete"), ("cancelled", "client_abort")], ends
    assert upstream.snapshot()[0].target == "/echo?other" and len(upstream.snapshot()) == 1
    c.close()
