"""The example programs (examples/): small hosts of the public API.

  minimal_proxy  a forward proxy (av_ctx_run, SIGINT/SIGTERM -> av_ctx_shutdown):
                 curl goes through it with CONNECT + MITM under its CA, and the
                 origin (the `upstream` fixture) must receive the real key.
  responses_ws   one OpenAI Responses turn over a WebSocket on av_open_stream,
                 framed by wslay, against the fake Responses server
                 (avtest/fake_openai.py): the upgrade must carry the real key,
                 and the streamed text must be printed.

The binaries are found next to the daemon: <build>/examples/NAME, where the
daemon is <build>/daemon/agentvault ($AGENTVAULT_BIN). A missing one fails.
"""
import json
import os
import queue
import re
import secrets as _secrets
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from avtest import daemon as avd
from avtest.fake_openai import FakeOpenAI, run_bounded

LISTEN_RE = re.compile(r"^minimal_proxy: listening on 127\.0\.0\.1:(\d+) \(CA: (.+)\)$")
PLACEHOLDER = "agentvault-placeholder-openai"   # what responses_ws sends
RUN_TIMEOUT = 60.0


def example(name):
    """Path of an example binary; fails (never skips) when it is missing."""
    path = avd.binary_path().resolve().parents[1] / "examples" / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"example {name} not built at {path} (meson -Dexamples=true, ninja)",
                    pytrace=False)
    return path


def leaks(text, secrets):
    return avd.find_leaks(text, avd.forbidden_strings(secrets))


def one_line_error(r, prog, code, *needles):
    """r exited |code| with one line on stderr, naming prog, and nothing on stdout."""
    ctx = r.describe()
    assert r.returncode == code and not r.timed_out, ctx
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prog + ": "), ctx
    for n in needles:
        assert n in lines[0], ctx
    assert r.stdout == "", ctx


# ---- minimal_proxy -------------------------------------------------------------

class Proxy:
    """A running minimal_proxy: .port, .ca_pem, .stop(sig) -> exit code."""

    def __init__(self, argv, env):
        self.argv = [str(a) for a in argv]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, start_new_session=True)
        self.out, self.err = [], []
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.out, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.err, False),
                         daemon=True).start()
        self.port, self.ca_pem = self._wait_listening()

    def _pump(self, stream, sink, announce):
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            sink.append(line)
            if announce:
                self.lines.put(line)
        stream.close()

    def _wait_listening(self):
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            m = LISTEN_RE.match(line)
            if m:
                return int(m.group(1)), Path(m.group(2))
        self.kill()
        pytest.fail(f"minimal_proxy did not report its port\n{self.dump()}", pytrace=False)

    def output(self):
        return "\n".join(self.out + self.err)

    def dump(self):
        return (f"command: {' '.join(self.argv)} (exit {self.proc.poll()})\n"
                f"--- stdout ---\n" + "\n".join(self.out) + "\n--- stderr ---\n" + "\n".join(self.err))

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


@pytest.fixture
def run_proxy(tmp_path, secrets):
    started = []

    def start(*args, env=None):
        home = tmp_path / "proxy-home"
        home.mkdir(exist_ok=True)
        full = avd.base_env(home)
        full.update(env if env is not None else secrets.env())
        p = Proxy([example("minimal_proxy"), *args], full)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.kill()


def proxy_config(tmp_path, test_ca, upstream, extra=""):
    conf = tmp_path / "minimal_proxy.conf"
    conf.write_text("[proxy]\n"
                    "listen = 127.0.0.1:0\n"
                    f"state_dir = {tmp_path / 'proxy-state'}\n"
                    f"resolve = api.openai.com:443:127.0.0.1:{upstream.port}\n"
                    f"upstream_cacert = {test_ca.ca_pem}\n\n"
                    '[service "openai"]\n'
                    "host = api.openai.com\n"
                    "auth = bearer\n"
                    "secret = env:OPENAI_API_KEY\n" + extra)
    return conf


def test_minimal_proxy_injects_through_connect_mitm(run_proxy, curl, upstream, test_ca, secrets,
                                                    tmp_path):
    """curl -x through minimal_proxy: CONNECT, MITM with the proxy's CA, the
    real key at the origin instead of the agent's dummy; SIGTERM -> exit 0."""
    p = run_proxy("-c", proxy_config(tmp_path, test_ca, upstream))
    assert p.ca_pem == tmp_path / "proxy-state" / "ca.pem" and p.ca_pem.is_file(), p.dump()
    r = curl("-x", f"http://127.0.0.1:{p.port}", "--cacert", p.ca_pem,
             "-H", "Authorization: Bearer dummy-key", "https://api.openai.com/status/200?n=1")
    assert r.returncode == 0 and r.status == 200, f"{r.describe()}\n{p.dump()}"
    assert r.text == "status 200\n"
    req = upstream.only_request()
    assert req.method == "GET" and req.target == "/status/200?n=1"
    assert req.header_values("authorization") == ["Bearer " + secrets.openai_key]
    assert req.header("host") == "api.openai.com"
    # The MITM certificate chains to the proxy's root only: without --cacert
    # curl refuses it (nothing reaches the origin).
    r = curl("-x", f"http://127.0.0.1:{p.port}", "https://api.openai.com/status/200")
    assert r.returncode == 60, r.describe()
    assert len(upstream.snapshot()) == 1
    assert p.stop(signal.SIGTERM) == 0, p.dump()
    assert "exchange" in p.output() and "status=200" in p.output(), p.dump()
    assert leaks(p.output(), secrets) == [], "secret material in minimal_proxy's output"


def test_minimal_proxy_builtin_default(run_proxy, curl, tmp_path):
    """Without -c: the built-in configuration (av_config_add_section), here on
    an ephemeral port and a state directory of the test; SIGINT -> exit 0."""
    state = tmp_path / "default-state"
    p = run_proxy("-l", "127.0.0.1:0", "-s", state, env={})
    assert p.ca_pem == state / "ca.pem" and p.ca_pem.is_file(), p.dump()
    r = curl(f"http://127.0.0.1:{p.port}/healthz")
    assert r.returncode == 0 and r.status == 200, r.describe()
    r = curl(f"http://127.0.0.1:{p.port}/ca.pem")
    assert r.status == 200 and r.body == p.ca_pem.read_bytes(), r.describe()
    assert p.stop(signal.SIGINT) == 0, p.dump()


def test_minimal_proxy_without_key_gives_502(run_proxy, curl, upstream, test_ca, tmp_path):
    """The service's secret is missing: the request fails closed (502) and
    nothing reaches the origin."""
    p = run_proxy("-c", proxy_config(tmp_path, test_ca, upstream), env={})
    r = curl("-x", f"http://127.0.0.1:{p.port}", "--cacert", p.ca_pem,
             "https://api.openai.com/status/200")
    assert r.status == 502, f"{r.describe()}\n{p.dump()}"
    assert "OPENAI_API_KEY" in r.text
    assert upstream.snapshot() == []
    assert p.stop() == 0, p.dump()


@pytest.mark.parametrize("args,code,needles", [
    (["-x"], 2, ["unknown argument -x", "usage: minimal_proxy"]),
    (["-c"], 2, ["missing value after -c", "usage:"]),
    (["-l", ""], 2, ["missing value after -l"]),
    (["extra"], 2, ["unknown argument extra"]),
    (["-c", "/nonexistent/agentvault.conf"], 1, ["/nonexistent/agentvault.conf"]),
    (["-l", "not-an-address"], 1, ["not-an-address"]),
])
def test_minimal_proxy_usage_errors(tmp_path, args, code, needles):
    r = run_bounded([example("minimal_proxy"), *args], env=avd.base_env(tmp_path), cwd=tmp_path,
                    timeout=20)
    one_line_error(r, "minimal_proxy", code, *needles)


def test_minimal_proxy_config_error_names_the_line(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("[proxy]\nlisten = 127.0.0.1:0\ncolour = blue\n")
    r = run_bounded([example("minimal_proxy"), "-c", conf], env=avd.base_env(tmp_path),
                    cwd=tmp_path, timeout=20)
    one_line_error(r, "minimal_proxy", 1, "bad.conf:3", "colour")
    conf.write_text(f"[proxy]\nstate_dir = {tmp_path / 's'}\n")
    r = run_bounded([example("minimal_proxy"), "-c", conf], env=avd.base_env(tmp_path),
                    cwd=tmp_path, timeout=20)
    one_line_error(r, "minimal_proxy", 1, "no listen address")


# ---- responses_ws --------------------------------------------------------------

@pytest.fixture
def fake_factory(test_ca):
    made = []

    def make(**kw):
        f = FakeOpenAI(test_ca.server_cert, test_ca.server_key, **kw).start()
        made.append(f)
        return f

    yield make
    for f in made:
        f.stop()
    for f in made:
        assert f.errors == [], f"fake OpenAI server saw protocol errors:\n{f.describe()}"


def run_ws(tmp_path, *args, env=None, timeout=RUN_TIMEOUT):
    home = tmp_path / "ws-home"
    home.mkdir(exist_ok=True)
    full = avd.base_env(home)
    full.update(env or {})
    return run_bounded([example("responses_ws"), *args], env=full, cwd=tmp_path, timeout=timeout)


def ws_args(tmp_path, test_ca, fake):
    return ["--resolve", f"api.openai.com:443:127.0.0.1:{fake.port}", "--cacert", test_ca.ca_pem,
            "-s", tmp_path / "ws-state"]


def test_responses_ws_streams_a_turn(fake_factory, test_ca, secrets, tmp_path):
    """One response.create over the WebSocket: the upgrade reached the origin
    over TLS with the real key (never the placeholder), the deltas are
    printed (JSON escapes, non-ASCII and a surrogate pair decoded), exit 0
    on response.completed, and the socket is closed with a Close frame."""
    word = "vault" + _secrets.token_hex(4)
    reply = f'{word} "quoted" \\ tab\there é ✓ 🎉'
    fake = fake_factory(reply_text=reply)
    prompt = 'Reply exactly: "' + word + '"\nplease'
    r = run_ws(tmp_path, *ws_args(tmp_path, test_ca, fake), "-m", "gpt-test", prompt,
               env=secrets.env())
    ctx = f"{r.describe()}\n{fake.describe()}"
    assert r.returncode == 0 and not r.timed_out, ctx
    assert r.stdout == reply + "\n", ctx
    assert fake.count("ws_handshakes") == 1 and fake.count("ws_turns") == 1, ctx
    (req,) = fake.by_transport("ws")
    assert req.tls and req.method == "GET" and req.path == "/v1/responses", ctx
    assert req.header_values("authorization") == ["Bearer " + secrets.openai_key], ctx
    assert not fake.saw(PLACEHOLDER), "the placeholder reached the origin"
    assert req.closed_cleanly, ctx
    (msg,) = req.json_messages()
    assert msg["type"] == "response.create" and msg["model"] == "gpt-test", msg
    assert msg["input"][0]["content"][0] == {"type": "input_text", "text": prompt}, msg
    assert leaks(r.stdout + r.stderr, secrets) == [], "secret material in responses_ws's output"


def test_responses_ws_config_file(fake_factory, test_ca, secrets, tmp_path):
    """-c FILE: the service, the pin and the CA come from a configuration
    file (a listen address in it is ignored: streams only)."""
    fake = fake_factory(reply_text="from-a-file")
    conf = tmp_path / "ws.conf"
    conf.write_text("[proxy]\n"
                    "listen = 127.0.0.1:0\n"
                    f"state_dir = {tmp_path / 'conf-state'}\n"
                    f"resolve = api.openai.com:443:127.0.0.1:{fake.port}\n"
                    f"upstream_cacert = {test_ca.ca_pem}\n\n"
                    '[service "openai"]\nhost = api.openai.com\nauth = bearer\n'
                    "secret = env:OPENAI_API_KEY\n")
    r = run_ws(tmp_path, "-c", conf, "hi", env=secrets.env())
    ctx = f"{r.describe()}\n{fake.describe()}"
    assert r.returncode == 0 and r.stdout == "from-a-file\n", ctx
    assert fake.authorizations() == [("ws", ["Bearer " + secrets.openai_key])], ctx
    assert (tmp_path / "conf-state" / "ca.pem").is_file()


def test_responses_ws_refused_upgrade(fake_factory, test_ca, secrets, tmp_path):
    """The origin answers the upgrade 426: exit 1 with the status line."""
    fake = fake_factory(ws_status=426)
    r = run_ws(tmp_path, *ws_args(tmp_path, test_ca, fake), "hi", env=secrets.env())
    one_line_error(r, "responses_ws", 1, "upgrade refused", "426")
    assert fake.authorizations() == [("ws-refused", ["Bearer " + secrets.openai_key])]


def test_responses_ws_without_key_fails_closed(fake_factory, test_ca, tmp_path):
    """No OPENAI_API_KEY: the library answers 502 itself; nothing is sent."""
    fake = fake_factory()
    r = run_ws(tmp_path, *ws_args(tmp_path, test_ca, fake), "hi", env={})
    one_line_error(r, "responses_ws", 1, "upgrade refused: HTTP/1.1 502",
                   "environment variable OPENAI_API_KEY is not set")
    assert fake.snapshot() == [] and fake.connections_accepted == 0, fake.describe()


def test_responses_ws_untrusted_origin(fake_factory, test_ca, secrets, tmp_path):
    """Without --cacert the fake server's certificate does not verify: 502
    before anything (the key least of all) is sent."""
    fake = fake_factory()
    r = run_ws(tmp_path, "--resolve", f"api.openai.com:443:127.0.0.1:{fake.port}",
               "-s", tmp_path / "st", "hi", env=secrets.env())
    one_line_error(r, "responses_ws", 1, "upgrade refused: HTTP/1.1 502", "certificate")
    assert fake.snapshot() == [] and not fake.saw(secrets.openai_key), fake.describe()
    fake.errors.clear()  # the fake logs the failed handshake: expected here


@pytest.mark.parametrize("args,code,needles", [
    (["--bogus"], 2, ["unknown option --bogus", "usage: responses_ws"]),
    (["one", "two"], 2, ["more than one prompt: two"]),
    (["--resolve"], 2, ["missing value after --resolve"]),
    (["-m", ""], 2, ["missing value after -m"]),
    (["-c", "/nonexistent/ws.conf"], 1, ["/nonexistent/ws.conf"]),
    (["--resolve", "nonsense", "-s", "st"], 1, ["nonsense"]),
])
def test_responses_ws_usage_errors(tmp_path, args, code, needles):
    r = run_ws(tmp_path, *args, timeout=20)
    one_line_error(r, "responses_ws", code, *needles)
