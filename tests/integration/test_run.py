"""`agentvault run -- CMD`: the environment it gives CMD, real clients (curl,
git, Python httpx and urllib) working through it with no flags, exit codes,
signal forwarding, errors, and the proxy token.

A daemon (the `daemon` fixture) serves /ca.pem and /agent-env; a small
FakeProxy below stands in for it where a test needs a misbehaving proxy or
has to see the requests run sends.
"""
import base64
import json
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from avtest import daemon as avd
from avtest.checks import auth_values

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUNDLE_VARS = ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO",
               "PIP_CERT", "AWS_CA_BUNDLE", "NPM_CONFIG_CAFILE", "DENO_CERT",
               "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"]
ROOT_VARS = ["NODE_EXTRA_CA_CERTS", "CODEX_CA_CERTIFICATE"]
PROXY_VARS = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
              "WSS_PROXY", "wss_proxy", "WS_PROXY", "ws_proxy"]
# What the daemon's /agent-env lists for avd.config_text(secrets).
PLACEHOLDERS = {"OPENAI_API_KEY": "agentvault-placeholder-openai",
                "CODEX_API_KEY": "agentvault-placeholder-openai",
                "GITHUB_TOKEN": "agentvault-placeholder-github",
                "GH_TOKEN": "agentvault-placeholder-github"}
PEM_RE = re.compile(r"-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----\n?", re.S)
# The child writes what it sees into $OUT.
DUMP_SCRIPT = ('d=$(dirname "$SSL_CERT_FILE"); '
               'stat -c "%a %n" "$d" "$d/ca.pem" "$d/bundle.pem" > "$OUT/modes"; '
               'cp "$SSL_CERT_FILE" "$OUT/bundle.pem"; cp "$NODE_EXTRA_CA_CERTS" "$OUT/ca.pem"; '
               'env -0 > "$OUT/env"')
RUN_TIMEOUT = 30.0


# ---- helpers -----------------------------------------------------------------

def run_env(tmp_path, **extra):
    """A minimal environment for run: PATH, HOME, TMPDIR (a fresh directory,
    so that leftovers of the private directory can be seen), no proxy
    variables from the caller."""
    home = tmp_path / "run-home"
    home.mkdir(exist_ok=True)
    tmp = tmp_path / "run-tmp"
    tmp.mkdir(exist_ok=True)
    env = avd.base_env(home)
    env["TMPDIR"] = str(tmp)
    env["LANG"] = "C"
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def av_run(args, env, *, timeout=RUN_TIMEOUT, input=None):
    """`agentvault run ARGS...`; returns CompletedProcess (bytes)."""
    cmd = [str(avd.require_binary()), "run"] + [str(a) for a in args]
    try:
        return subprocess.run(cmd, env=env, capture_output=True, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{cmd} did not finish within {timeout}s; "
                             f"stderr={(e.stderr or b'')[-2000:]!r}")


def describe(p):
    return (f"rc={p.returncode}\nstdout={p.stdout[-3000:]!r}\n"
            f"stderr={p.stderr.decode('utf-8', 'replace')[-3000:]}")


def proxy_url(d):
    return f"http://127.0.0.1:{d.port}"


def leftovers(env):
    """Private directories run left behind in TMPDIR (and XDG_RUNTIME_DIR)."""
    out = []
    for var in ("TMPDIR", "XDG_RUNTIME_DIR"):
        if env.get(var) and Path(env[var]).is_dir():
            out += [p for p in Path(env[var]).iterdir() if p.name.startswith("agentvault-run-")]
    return out


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def dump_run(args, env, out):
    """run ARGS -- sh -c DUMP_SCRIPT; returns (process, env dict of the child)."""
    out.mkdir()
    env = dict(env, OUT=str(out))
    p = av_run(list(args) + ["--", "/bin/sh", "-c", DUMP_SCRIPT], env)
    assert p.returncode == 0, describe(p)
    raw = (out / "env").read_bytes()
    child = dict(item.split(b"=", 1) for item in raw.split(b"\0") if item)
    return p, {k.decode(): v.decode() for k, v in child.items()}, env


def assert_no_token(text, token):
    leaks = avd.find_leaks(text, [token] + avd.base64_fragments(
        token, prefixes=[u + ":" for u in avd.BASIC_USERS]))
    assert not leaks, f"the token (or a base64 form of it) is in run's output: {text!r}"


class FakeProxy:
    """A one-request-per-connection HTTP/1.1 server standing in for
    `agentvault serve`: routes maps a path to (status, body bytes), to the
    raw bytes to send, or to a list of raw pieces sent one by one with a
    pause between them (so that the client reads them separately); "hang"
    keeps the connection open without answering. Records the request heads
    it received."""

    def __init__(self, routes):
        self.routes = routes
        self.heads = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stop_ev = threading.Event()
        self.held = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        self.sock.settimeout(0.1)
        while not self.stop_ev.is_set():
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(10)
        buf = b""
        try:
            while b"\r\n\r\n" not in buf:
                data = c.recv(65536)
                if not data:
                    return
                buf += data
            head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            self.heads.append(head)
            path = head.split(" ")[1]
            route = self.routes.get(path, (404, b"not found\n"))
            if route == "hang":
                self.held.append(c)
                return
            if isinstance(route, bytes):
                c.sendall(route)
            elif isinstance(route, list):
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for piece in route:
                    c.sendall(piece)
                    time.sleep(0.02)
            else:
                status, body = route
                c.sendall(f"HTTP/1.1 {status} Whatever\r\nContent-Type: text/plain\r\n"
                          f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                          .encode() + body)
        finally:
            if c not in self.held:
                c.close()

    def header(self, path, name):
        vals = []
        for h in self.heads:
            lines = h.split("\r\n")
            if lines[0].split(" ")[1] != path:
                continue
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == name.lower():
                    vals.append(v.strip())
        return vals

    def close(self):
        self.stop_ev.set()
        self.thread.join(2)
        self.sock.close()
        for c in self.held:
            c.close()


@pytest.fixture
def fake_proxy(test_ca):
    made = []

    def make(ca=None, agent_env=(200, b"")):
        routes = {"/ca.pem": ca if ca is not None else (200, test_ca.ca_pem.read_bytes())}
        if agent_env is not None:
            routes["/agent-env"] = agent_env
        p = FakeProxy(routes)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


# ---- the environment ---------------------------------------------------------

@pytest.mark.parametrize("where", ["tmpdir", "xdg", "xdg-unusable"])
def test_env_of_the_child(daemon, tmp_path, where):
    d = daemon()
    url = proxy_url(d)
    extra = {"KEEP_ME": "a b=c", "XDG_RUNTIME_DIR": None}
    if where == "xdg":
        xdg = tmp_path / "xdg"
        xdg.mkdir(mode=0o700)
        extra["XDG_RUNTIME_DIR"] = str(xdg)
    elif where == "xdg-unusable":
        extra["XDG_RUNTIME_DIR"] = str(tmp_path / "no-such-dir")
    env = run_env(tmp_path, **extra)
    p, child, env = dump_run(["--proxy", url], env, tmp_path / "out")

    priv = Path(child["SSL_CERT_FILE"]).parent
    base = Path(env["XDG_RUNTIME_DIR"] if where == "xdg" else env["TMPDIR"])
    assert priv.parent == base, f"private directory {priv} is not in {base}"
    assert re.fullmatch(r"agentvault-run-[A-Za-z0-9]{6}", priv.name), priv.name

    expected = {k: url for k in PROXY_VARS}
    expected.update({k: str(priv / "bundle.pem") for k in BUNDLE_VARS})
    expected.update({k: str(priv / "ca.pem") for k in ROOT_VARS})
    expected.update({"NO_PROXY": "localhost,127.0.0.1,::1", "no_proxy": "localhost,127.0.0.1,::1",
                     "NODE_USE_ENV_PROXY": "1", "AGENTVAULT_PROXY": url})
    expected.update(PLACEHOLDERS)
    for k, v in expected.items():
        assert child.get(k) == v, f"{k}={child.get(k)!r}, expected {v!r}"
    # Everything else is inherited unchanged, and nothing else is added.
    for k, v in env.items():
        if k not in expected:
            assert child.get(k) == v, f"{k} changed: {child.get(k)!r} != {v!r}"
    added_by_sh = {"PWD"}
    assert set(child) - added_by_sh == set(env) | set(expected), \
        f"unexpected variables: {sorted(set(child) - set(env) - set(expected))}"

    out = tmp_path / "out"
    modes = dict(line.split(" ", 1)[::-1] for line in (out / "modes").read_text().splitlines())
    assert modes == {str(priv): "700", str(priv / "ca.pem"): "600",
                     str(priv / "bundle.pem"): "600"}, modes
    root = d.ca_pem.read_text()
    assert (out / "ca.pem").read_text() == root
    bundle = (out / "bundle.pem").read_text()
    system = SYSTEM_BUNDLE.read_text()
    first = PEM_RE.search(system).group(0)
    assert first in bundle, "the bundle lacks the system roots"
    assert root in bundle, "the bundle lacks the agentvault root"
    assert len(PEM_RE.findall(bundle)) == len(PEM_RE.findall(system)) + 1
    assert bundle.endswith(root)
    assert not priv.exists(), f"{priv} was not removed after the run"
    assert not leftovers(env)
    assert p.stderr == b"", describe(p)


def test_no_proxy_union(daemon, tmp_path):
    d = daemon()
    env = run_env(tmp_path, NO_PROXY="example.internal,localhost",
                  no_proxy="Example.Internal, foo.test,,.corp.test")
    _, child, _ = dump_run(["--proxy", proxy_url(d), "--no-proxy", "a.test,b.test,foo.test"],
                           env, tmp_path / "out")
    want = "example.internal,localhost,foo.test,.corp.test,127.0.0.1,::1,a.test,b.test"
    assert child["NO_PROXY"] == want
    assert child["no_proxy"] == want


def test_no_proxy_simple(daemon, tmp_path):
    d = daemon()
    env = run_env(tmp_path, NO_PROXY="example.internal", no_proxy="foo.test")
    _, child, _ = dump_run(["--proxy", proxy_url(d), "--no-proxy", "a.test,b.test"], env,
                           tmp_path / "out")
    want = "example.internal,foo.test,localhost,127.0.0.1,::1,a.test,b.test"
    assert (child["NO_PROXY"], child["no_proxy"]) == (want, want)


def test_user_keys_are_replaced_with_a_warning(daemon, tmp_path):
    """A key variable already set (most likely the real key, in the user's
    shell) is replaced by the placeholder: CMD must not hold a real key.
    run warns, naming the variable and never its value."""
    d = daemon()
    env = run_env(tmp_path, OPENAI_API_KEY="sk-users-own-real-key", GITHUB_TOKEN="",
                  GH_TOKEN=PLACEHOLDERS["GH_TOKEN"])
    p, child, _ = dump_run(["--proxy", proxy_url(d)], env, tmp_path / "out")
    assert child["OPENAI_API_KEY"] == PLACEHOLDERS["OPENAI_API_KEY"]
    assert child["CODEX_API_KEY"] == PLACEHOLDERS["CODEX_API_KEY"]
    assert child["GITHUB_TOKEN"] == PLACEHOLDERS["GITHUB_TOKEN"]  # empty counts as unset
    assert child["GH_TOKEN"] == PLACEHOLDERS["GH_TOKEN"]
    assert "sk-users-own-real-key" not in child.values()
    err = p.stderr.decode()
    assert "sk-users-own" not in err
    # One warning: OPENAI_API_KEY (GITHUB_TOKEN was empty, GH_TOKEN already the placeholder).
    warns = [line for line in err.splitlines() if "warning:" in line]
    assert len(warns) == 1 and "OPENAI_API_KEY is set in your environment" in warns[0] \
        and "--keep-env OPENAI_API_KEY" in warns[0], err


def test_keep_env_keeps_the_users_value(daemon, tmp_path):
    d = daemon()
    env = run_env(tmp_path, OPENAI_API_KEY="sk-users-own", GITHUB_TOKEN="ghp-users-own")
    p, child, _ = dump_run(["--proxy", proxy_url(d), "--keep-env", "OPENAI_API_KEY,NOT_LISTED_BY_THE_PROXY"],
                           env, tmp_path / "out")
    assert child["OPENAI_API_KEY"] == "sk-users-own"
    assert child["GITHUB_TOKEN"] == PLACEHOLDERS["GITHUB_TOKEN"]
    err = p.stderr.decode()
    assert "OPENAI_API_KEY" not in err and "GITHUB_TOKEN is set in your environment" in err, err


def test_inherited_proxy_and_ca_variables_are_replaced(daemon, tmp_path):
    """grpcio reads only GRPC_DEFAULT_SSL_ROOTS_FILE_PATH (not SSL_CERT_FILE),
    aiohttp reads WSS_PROXY/WS_PROXY for ws(s):// URLs: run sets them all,
    replacing inherited values, like the other proxy and CA variables."""
    d = daemon()
    env = run_env(tmp_path, GRPC_DEFAULT_SSL_ROOTS_FILE_PATH="/etc/elsewhere.pem",
                  WSS_PROXY="http://127.0.0.9:1", ws_proxy="http://127.0.0.9:2",
                  SSL_CERT_FILE="/etc/elsewhere.pem")
    _, child, _ = dump_run(["--proxy", proxy_url(d)], env, tmp_path / "out")
    bundle = child["SSL_CERT_FILE"]
    assert bundle.endswith("/bundle.pem")
    assert child["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] == bundle
    for k in ("WSS_PROXY", "wss_proxy", "WS_PROXY", "ws_proxy"):
        assert child[k] == proxy_url(d), k


def test_proxy_host_is_normalized(fake_proxy, tmp_path):
    """An upper-case host name is lower-cased (as av_url does for every
    destination) in what the child gets."""
    fp = fake_proxy()
    url = f"http://LOCALHOST:{fp.port}/"
    p, child, _ = dump_run(["--proxy", url], run_env(tmp_path), tmp_path / "out")
    assert child["AGENTVAULT_PROXY"] == f"http://localhost:{fp.port}"
    assert child["HTTPS_PROXY"] == f"http://localhost:{fp.port}"
    assert "localhost" in child["NO_PROXY"].split(",")
    assert fp.header("/ca.pem", "Host") == [f"localhost:{fp.port}"]


def test_proxy_host_with_underscore(fake_proxy, tmp_path):
    """Container networks name services with '_' (http://agent_vault:14322):
    the proxy URL may, though a destination may not. The name resolves
    through a private mount namespace's /etc/hosts (loopback only)."""
    fp = fake_proxy()
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 agent_vault\n")
    out = tmp_path / "out"
    out.mkdir()
    env = dict(run_env(tmp_path), OUT=str(out))
    script = ('mount --bind "$1" /etc/hosts && shift && exec "$@"')
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(hosts),
           str(avd.require_binary()), "run", "--proxy", f"http://Agent_Vault:{fp.port}",
           "--", "/bin/sh", "-c", DUMP_SCRIPT]
    p = subprocess.run(cmd, env=env, capture_output=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, describe(p)
    child = dict(item.split(b"=", 1) for item in (out / "env").read_bytes().split(b"\0") if item)
    assert child[b"HTTPS_PROXY"] == f"http://agent_vault:{fp.port}".encode()
    assert fp.header("/ca.pem", "Host") == [f"agent_vault:{fp.port}"]


def test_proxy_from_environment(daemon, tmp_path):
    d = daemon()
    env = run_env(tmp_path, AGENTVAULT_PROXY=proxy_url(d) + "/")
    _, child, _ = dump_run([], env, tmp_path / "out")
    assert child["HTTPS_PROXY"] == proxy_url(d)
    assert child["AGENTVAULT_PROXY"] == proxy_url(d)


def test_agent_env_parsing(fake_proxy, tmp_path):
    body = (b"GOOD_ONE=placeholder-1\r\n"
            b"# a comment\n"
            b"\n"
            b"lower=x\n"
            b"SPACED=has space\n"
            b"1BAD=x\n"
            b"NOEQUALS\n"
            b"EMPTY=\n"
            b"LD_PRELOAD=/tmp/evil.so\n"
            b"HTTPS_PROXY=http://evil.test:1\n"
            b"SSL_CERT_FILE=/tmp/evil.pem\n"
            b"USER_SET=from-proxy\n"
            b"GOOD_TWO=p-2_x.y\n"
            b"GOOD_ONE=second-wins-not\n"
            b"LAST=no-newline")
    fp = fake_proxy(agent_env=(200, body))
    env = run_env(tmp_path, USER_SET="mine")
    p, child, _ = dump_run(["--proxy", fp.url], env, tmp_path / "out")
    assert child["GOOD_ONE"] == "placeholder-1"
    assert child["GOOD_TWO"] == "p-2_x.y"
    assert child["LAST"] == "no-newline"
    assert child["USER_SET"] == "from-proxy"
    for k in ("lower", "SPACED", "1BAD", "NOEQUALS", "EMPTY", "LD_PRELOAD"):
        assert k not in child, k
    assert child["HTTPS_PROXY"] == fp.url
    assert child["SSL_CERT_FILE"].endswith("/bundle.pem")
    err = p.stderr.decode()
    # lower, SPACED, 1BAD, NOEQUALS, EMPTY + 3 refused + USER_SET replaced
    assert err.count("warning") == 9, err
    assert "USER_SET is set in your environment" in err and "mine" not in err
    assert "evil" not in err and "GOOD_ONE is set" not in err


@pytest.mark.parametrize("status,warns", [(404, False), (400, True), (500, True),
                                          (b"garbage\r\n\r\n", True)])
def test_agent_env_not_available(fake_proxy, tmp_path, status, warns):
    fp = fake_proxy(agent_env=status if isinstance(status, bytes) else (status, b"nope\n"))
    env = run_env(tmp_path)
    p, child, _ = dump_run(["--proxy", fp.url], env, tmp_path / "out")
    assert "OPENAI_API_KEY" not in child
    assert child["HTTPS_PROXY"] == fp.url
    assert (b"warning" in p.stderr) == warns, describe(p)


# ---- real clients through run ------------------------------------------------

def test_curl_through_run(daemon, upstream, secrets, tmp_path):
    d = daemon()
    p = av_run(["--proxy", proxy_url(d), "--", "curl", "-q", "-sS", "https://api.openai.com/echo"],
               run_env(tmp_path))
    assert p.returncode == 0, describe(p)
    doc = json.loads(p.stdout)
    assert doc["path"] == "/echo"
    assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]
    assert not leftovers(run_env(tmp_path))


def test_curl_without_run_fails(daemon, upstream, tmp_path):
    """Control: the same curl without run does not reach the upstream."""
    daemon()
    env = run_env(tmp_path)
    p = subprocess.run(["curl", "-q", "-sS", "--max-time", "5", "https://api.openai.com/echo"],
                       env=env, capture_output=True, timeout=20)
    assert p.returncode != 0
    assert upstream.snapshot() == []


def test_python_httpx_through_run(daemon, upstream, secrets, tmp_path):
    d = daemon()
    code = ("import httpx, json; r = httpx.get('https://api.openai.com/echo', timeout=10); "
            "r.raise_for_status(); print(json.dumps(r.json()))")
    p = av_run(["--proxy", proxy_url(d), "--", "/usr/bin/python3", "-c", code], run_env(tmp_path))
    assert p.returncode == 0, describe(p)
    assert json.loads(p.stdout)["path"] == "/echo"
    assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]


def test_python_urllib_through_run(daemon, upstream, secrets, tmp_path):
    d = daemon()
    code = ("import urllib.request; "
            "print(urllib.request.urlopen('https://api.openai.com/echo', timeout=10).read().decode())")
    p = av_run(["--proxy", proxy_url(d), "--", "/usr/bin/python3", "-c", code], run_env(tmp_path))
    assert p.returncode == 0, describe(p)
    assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]


def test_git_through_run(daemon, upstream, secrets, tmp_path):
    """git reaches the origin through the proxy and trusts the MITM root (the
    origin is no git server, so git itself then fails on the answer)."""
    d = daemon()
    p = av_run(["--proxy", proxy_url(d), "--", "git", "ls-remote", "https://api.openai.com/x.git"],
               run_env(tmp_path, GIT_TERMINAL_PROMPT="0"))
    err = p.stderr.decode("utf-8", "replace")
    assert "certificate" not in err.lower() and "ssl" not in err.lower(), err
    req = upstream.only_request()
    assert req.path == "/x.git/info/refs"
    assert auth_values(req) == [f"Bearer {secrets.openai_key}"]


NODE_JS = ("require('https').get(process.argv[1], r => { let b = ''; "
           "r.on('data', d => b += d); r.on('end', () => console.log(r.statusCode, b.trim())); })"
           ".on('error', e => { console.error(e.message); process.exit(1); })")


def test_node_trusts_the_root_through_run(daemon, tmp_path):
    """NODE_EXTRA_CA_CERTS: Node verifies a certificate minted by the proxy's
    root (the proxy's own TLS listener); without run the same call fails."""
    d = daemon()
    url = f"https://127.0.0.1:{d.port}/healthz"
    env = run_env(tmp_path)
    p = av_run(["--proxy", proxy_url(d), "--", "node", "-e", NODE_JS, url], env)
    assert (p.returncode, p.stdout) == (0, b"200 ok\n"), describe(p)
    bare = subprocess.run(["node", "-e", NODE_JS, url], env=env, capture_output=True, timeout=20)
    assert bare.returncode == 1 and b"certificate" in bare.stderr, bare


# ---- exit status and signals ---------------------------------------------------

def test_exit_status_is_passed_through(daemon, tmp_path):
    d = daemon()
    p = av_run(["--proxy", proxy_url(d), "--", "sh", "-c", "exit 7"], run_env(tmp_path))
    assert p.returncode == 7, describe(p)
    p = av_run(["--proxy", proxy_url(d), "--", "true"], run_env(tmp_path))
    assert p.returncode == 0, describe(p)


def test_stdio_is_inherited(daemon, tmp_path):
    d = daemon()
    p = av_run(["--proxy", proxy_url(d), "--", "cat"], run_env(tmp_path), input=b"hello\n" * 1000)
    assert (p.returncode, p.stdout) == (0, b"hello\n" * 1000), describe(p)


@pytest.mark.parametrize("sig,code", [("TERM", 143), ("KILL", 137), ("INT", 130)])
def test_child_killed_by_signal(daemon, tmp_path, sig, code):
    d = daemon()
    p = av_run(["--proxy", proxy_url(d), "--", "sh", "-c", f"kill -{sig} $$"], run_env(tmp_path))
    assert p.returncode == code, describe(p)
    assert not leftovers(run_env(tmp_path))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                                 signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH])
def test_signals_are_forwarded(daemon, tmp_path, sig):
    d = daemon()
    name = signal.Signals(sig).name[3:]
    script = f'trap "exit 5" {name}; echo ready; while :; do sleep 0.05; done'
    env = run_env(tmp_path)
    cmd = [str(avd.require_binary()), "run", "--proxy", proxy_url(d), "--", "sh", "-c", script]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline()
        assert line == b"ready\n", f"{line!r} {proc.stderr.read()!r}"
        proc.send_signal(sig)
        rc = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert rc == 5, f"rc={rc} stderr={proc.stderr.read()!r}"
    assert not leftovers(env)


def test_sigterm_to_run_ends_a_default_child(daemon, tmp_path):
    """A child that does not handle SIGTERM dies of it; run exits 143 and
    still removes its directory."""
    d = daemon()
    env = run_env(tmp_path)
    cmd = [str(avd.require_binary()), "run", "--proxy", proxy_url(d), "--", "sh", "-c",
           'echo ready; exec sleep 30']
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(0.2)  # let sh exec sleep
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert rc == 143, rc
    assert not leftovers(env)


# ---- errors --------------------------------------------------------------------

def test_command_not_found(daemon, tmp_path):
    d = daemon()
    env = run_env(tmp_path)
    p = av_run(["--proxy", proxy_url(d), "--", "agentvault-no-such-command", "x"], env)
    assert p.returncode == 127, describe(p)
    assert p.stderr.decode() == "agentvault: agentvault-no-such-command: command not found\n"
    assert not leftovers(env)


def test_command_not_executable(daemon, tmp_path):
    d = daemon()
    f = tmp_path / "not-exec.sh"
    f.write_text("#!/bin/sh\necho hi\n")
    f.chmod(0o644)
    env = run_env(tmp_path)
    p = av_run(["--proxy", proxy_url(d), "--", f], env)
    assert p.returncode == 126, describe(p)
    err = p.stderr.decode()
    assert err.startswith(f"agentvault: {f}: ") and "ermission denied" in err, err
    assert err.count("\n") == 1
    assert not leftovers(env)


def test_missing_path_is_127(daemon, tmp_path):
    d = daemon()
    p = av_run(["--proxy", proxy_url(d), "--", tmp_path / "nope"], run_env(tmp_path))
    assert p.returncode == 127, describe(p)


@pytest.mark.parametrize("via", ["flag", "env"])
def test_proxy_unreachable(tmp_path, via):
    port = closed_port()
    marker = tmp_path / "ran"
    env = run_env(tmp_path)
    args = ["--", "sh", "-c", f"touch {marker}"]
    if via == "flag":
        args = ["--proxy", f"http://127.0.0.1:{port}"] + args
    else:
        env["AGENTVAULT_PROXY"] = f"http://127.0.0.1:{port}"
    p = av_run(args, env)
    assert p.returncode == 1, describe(p)
    assert p.stderr.decode() == (f"agentvault: cannot reach the proxy at 127.0.0.1:{port}: "
                                 "Connection refused; start one with: agentvault serve\n")
    assert not marker.exists()
    assert not leftovers(env)


def test_default_proxy_unreachable(tmp_path):
    """Without --proxy or AGENTVAULT_PROXY, run tries 127.0.0.1:14322 and says so.
    The port is held (bound, not listening) so that connecting is refused."""
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 14322))
    except OSError:
        holder.close()
        holder = None  # a real proxy may be running there: only check the exit status
    try:
        p = av_run(["--", "true"], run_env(tmp_path))
    finally:
        if holder:
            holder.close()
    if holder is None:
        assert p.returncode in (0, 1), describe(p)
        return
    assert p.returncode == 1, describe(p)
    err = p.stderr.decode()
    assert err.startswith("agentvault: cannot reach the proxy at 127.0.0.1:14322: Connection refused; "
                          "start one with: agentvault serve"), err
    assert "default" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("args", [
    ["--proxy", "https://127.0.0.1:14322", "--", "true"],
    ["--proxy", "socks5://127.0.0.1:1080", "--", "true"],
    ["--proxy", "http://127.0.0.1", "--", "true"],
    ["--proxy", "http://127.0.0.1:99999", "--", "true"],
    ["--proxy", "http://127.0.0.1:14322/path", "--", "true"],
    ["--proxy", "http://agent:secret@127.0.0.1:14322", "--", "true"],
    # The host is av_url's: LDH names, canonical IPv4, bracketed IPv6.
    ["--proxy", "http://127.1:14322", "--", "true"],
    ["--proxy", "http://_:14322", "--", "true"],
    ["--proxy", "http://[vault_1]:14322", "--", "true"],
    ["--proxy", "http://a..b:14322", "--", "true"],
    ["--proxy", "http://[::1:14322", "--", "true"],
    ["--proxy", "http://[127.0.0.1]:14322", "--", "true"],
    ["--proxy", "http://:14322", "--", "true"],
    ["true"],
    ["--"],
    [],
    ["--bogus", "--", "true"],
    ["--proxy"],
    ["--no-proxy", "a b", "--", "true"],
    ["--keep-env", "--", "true"],
    ["--keep-env", "openai_api_key", "--", "true"],
    ["--keep-env", "A,,B", "--", "true"],
    ["--keep-env=", "--", "true"],
])
def test_usage_errors(tmp_path, args):
    marker = tmp_path / "ran"
    if args and args[-1] == "true":
        args = args[:-1] + ["sh", "-c", f"touch {marker}"]
    p = av_run(args, run_env(tmp_path))
    assert p.returncode == 2, describe(p)
    err = p.stderr.decode()
    assert err.startswith("agentvault: ") and err.count("\n") == 1, err
    assert "secret" not in err
    assert not marker.exists()


def test_help(tmp_path):
    p = av_run(["--help"], run_env(tmp_path))
    assert p.returncode == 0 and b"agentvault run" in p.stdout, describe(p)


def test_not_a_proxy(plain_upstream, tmp_path):
    """Something else on the port: /ca.pem answers 404."""
    env = run_env(tmp_path)
    p = av_run(["--proxy", f"http://127.0.0.1:{plain_upstream.port}", "--", "true"], env)
    assert p.returncode == 1, describe(p)
    assert p.stderr.decode() == (f"agentvault: CA fetch from http://127.0.0.1:{plain_upstream.port}"
                                 "/ca.pem failed: the proxy answered 404 Not Found\n")
    assert not leftovers(env)


def assert_ca_fetch_fails(fp, tmp_path, reason):
    """run stops before the command with one line naming |reason| and
    leaves no private directory behind."""
    env = run_env(tmp_path)
    p = av_run(["--proxy", fp.url, "--", "true"], env)
    assert p.returncode == 1, describe(p)
    err = p.stderr.decode()
    assert err.startswith(f"agentvault: CA fetch from {fp.url}/ca.pem failed: "), err
    assert reason in err and err.count("\n") == 1, err
    assert not leftovers(env)


@pytest.mark.parametrize("ca,reason", [
    ((200, b"hello, not a certificate\n"), "the response is not a PEM certificate"),
    ((500, b"oops\n"), "the proxy answered 500 Whatever"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n", "larger than"),
    (b"garbage\r\n\r\n", "not an HTTP/1.x response"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", "closed before the end of the body"),
])
def test_bad_ca_answers(fake_proxy, tmp_path, ca, reason):
    assert_ca_fetch_fails(fake_proxy(ca=ca), tmp_path, reason)


def ca_response(pem, head=b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"):
    return head + b"Content-Length: %d\r\n\r\n" % len(pem) + pem


def test_response_split_across_reads(fake_proxy, test_ca, tmp_path):
    """The head arrives in pieces (one byte at a time for /agent-env, cut
    inside the status line, a field and the blank line for /ca.pem), the
    body in pieces too: run reassembles both."""
    pem = test_ca.ca_pem.read_bytes()
    raw = ca_response(pem)
    cut = raw.index(b"\r\n\r\n")
    ca = [raw[:6], raw[6:20], raw[20:cut + 1], raw[cut + 1:cut + 3], raw[cut + 3:cut + 40],
          raw[cut + 40:]]
    env_raw = b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\nSPLIT_KEY=ph-1\n"
    fp = fake_proxy(ca=ca, agent_env=[env_raw[i:i + 1] for i in range(len(env_raw))])
    p, child, _ = dump_run(["--proxy", fp.url], run_env(tmp_path), tmp_path / "out")
    assert child["SPLIT_KEY"] == "ph-1"
    assert (tmp_path / "out" / "ca.pem").read_bytes() == pem
    assert p.stderr == b"", describe(p)


def test_body_until_close_and_chunked(fake_proxy, test_ca, tmp_path):
    """An HTTP/1.0 answer without Content-Length ends at close; a chunked
    /agent-env is decoded."""
    pem = test_ca.ca_pem.read_bytes()
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"6\r\nCHUNK_\r\n9\r\nKEY=ph-2\n\r\n0\r\n\r\n")
    fp = fake_proxy(ca=b"HTTP/1.0 200 OK\r\n\r\n" + pem, agent_env=chunked)
    p, child, _ = dump_run(["--proxy", fp.url], run_env(tmp_path), tmp_path / "out")
    assert child["CHUNK_KEY"] == "ph-2"
    assert (tmp_path / "out" / "ca.pem").read_bytes() == pem
    assert p.stderr == b"", describe(p)


@pytest.mark.parametrize("raw,reason", [
    (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 17000 + b"\r\n\r\n", "response head larger than 16384 bytes"),
    (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 17000, "response head larger than 16384 bytes"),
    (b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", "not an HTTP/1.x response"),
    (b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n", "not an HTTP/1.x response"),
    (b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n", "not an HTTP/1.x response"),
    (b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", "not an HTTP/1.x response"),
    (b"ICY 200 OK\r\n\r\n", "not an HTTP/1.x response"),
    (b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", "malformed"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\n", "connection closed in the response head"),
    (b"", "connection closed without a response"),
])
def test_bad_response_heads(fake_proxy, tmp_path, raw, reason):
    """A bad or oversized head for /ca.pem stops run with one line naming
    the problem; for /agent-env run warns and starts without placeholders."""
    assert_ca_fetch_fails(fake_proxy(ca=raw), tmp_path, reason)
    fp = fake_proxy(agent_env=raw)
    p, child, _ = dump_run(["--proxy", fp.url], run_env(tmp_path), tmp_path / "out")
    err = p.stderr.decode()
    assert err.startswith(f"agentvault: warning: {fp.url}/agent-env failed: "), err
    assert reason in err and err.count("\n") == 1, err
    assert child["HTTPS_PROXY"] == fp.url


def test_proxy_that_never_answers_times_out(fake_proxy, tmp_path):
    fp = fake_proxy(ca="hang")
    t0 = time.monotonic()
    p = av_run(["--proxy", fp.url, "--", "true"], run_env(tmp_path))
    elapsed = time.monotonic() - t0
    assert p.returncode == 1, describe(p)
    assert b"timed out" in p.stderr, describe(p)
    assert 4.0 <= elapsed < 9.0, elapsed


# ---- the proxy token ------------------------------------------------------------

@pytest.mark.parametrize("via", ["flag", "env"])
def test_token(daemon, upstream, secrets, tmp_path, via):
    d = daemon(avd.config_text(secrets, tokens=True))
    env = run_env(tmp_path)
    args = ["--proxy", proxy_url(d)]
    if via == "flag":
        args += ["--token", secrets.agent_token]
    else:
        env["AGENTVAULT_TOKEN"] = secrets.agent_token
    p = av_run(args + ["--", "curl", "-q", "-sS", "https://api.openai.com/echo"], env)
    assert p.returncode == 0, describe(p)
    assert auth_values(upstream.only_request()) == [f"Bearer {secrets.openai_key}"]
    assert_no_token(p.stderr.decode("utf-8", "replace"), secrets.agent_token)


def test_token_is_needed(daemon, upstream, secrets, tmp_path):
    """Control: without the token the same curl is refused with 407."""
    d = daemon(avd.config_text(secrets, tokens=True))
    p = av_run(["--proxy", proxy_url(d), "--", "curl", "-q", "-sS", "https://api.openai.com/echo"],
               run_env(tmp_path))
    assert p.returncode != 0, describe(p)
    assert upstream.snapshot() == []


def test_token_in_env_and_requests(fake_proxy, tmp_path):
    token = "t0k/en:with@reserved%chars+="
    fp = fake_proxy(agent_env=(200, b"FOO_KEY=ph\n"))
    env = run_env(tmp_path, AGENTVAULT_TOKEN=token)
    p, child, _ = dump_run(["--proxy", fp.url], env, tmp_path / "out")
    enc = "t0k%2Fen%3Awith%40reserved%25chars%2B%3D"
    for k in PROXY_VARS:
        assert child[k] == f"http://agent:{enc}@127.0.0.1:{fp.port}", child[k]
    assert child["AGENTVAULT_PROXY"] == fp.url
    basic = "Basic " + base64.b64encode(f"agent:{token}".encode()).decode()
    assert fp.header("/ca.pem", "Proxy-Authorization") == [basic]
    assert fp.header("/agent-env", "Proxy-Authorization") == [basic]
    assert_no_token(p.stderr.decode(), token)


def test_token_never_in_errors(fake_proxy, tmp_path):
    token = "avtok-" + "9" * 24
    fp = fake_proxy(ca=(407, b"proxy authentication required\n"))
    p = av_run(["--proxy", fp.url, "--token", token, "--", "true"], run_env(tmp_path))
    assert p.returncode == 1, describe(p)
    assert b"407" in p.stderr
    assert_no_token(p.stderr.decode(), token)
    port = closed_port()
    p = av_run(["--proxy", f"http://127.0.0.1:{port}", "--", "true"],
               run_env(tmp_path, AGENTVAULT_TOKEN=token))
    assert p.returncode == 1, describe(p)
    assert_no_token(p.stderr.decode(), token)


def test_token_with_control_characters_is_refused(tmp_path):
    p = av_run(["--proxy", "http://127.0.0.1:1", "--token", "abc\r\nX-Evil: 1", "--", "true"],
               run_env(tmp_path))
    assert p.returncode == 2, describe(p)
    assert b"abc" not in p.stderr
