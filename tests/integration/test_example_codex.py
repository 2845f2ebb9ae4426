"""examples/codex: `agentvault-codex`, the Codex launcher that embeds libagentvault.

The launcher starts a context on its own thread, opens a gateway for
https://api.openai.com on an ephemeral loopback port and runs
`codex -c openai_base_url="http://127.0.0.1:PORT/v1" ARGS...` with a
placeholder key and no proxy variables. Here api.openai.com is resolved (in the
launcher, `--resolve`) to the fake Responses server of avtest/fake_openai.py,
whose certificate comes from the test CA (`--upstream-cacert`).

With the real Codex CLI (both installs, see test_codex.py):
  - the turn goes over the WebSocket, whose upgrade carries the real key;
  - with `websocket = off` (-c FILE) the gateway answers 426 and Codex uses SSE;
  - the real key is nowhere in Codex's output or home.
With a stand-in Codex (a shell script): Codex's argv and environment, exit
statuses, signal forwarding, and the launcher's own errors.
"""
import os
import secrets as secrets_mod
import signal
import subprocess
import time
from pathlib import Path

import pytest

from avtest import daemon as avd
from avtest.fake_openai import files_containing, openai_service_config, run_bounded
# Fixtures and helpers of the Codex suite (the fixtures are used by name).
from test_codex import (CODEX_TIMEOUT, PLACEHOLDER, WS_CONNECT_FAILED,  # noqa: F401
                        _assert_no_leaks, _assert_printed, _codex_flags, _prompt, codex,
                        codex_home, fake_factory, word)

# What the launcher gives Codex instead of a key (examples/codex/launcher.c).
LAUNCHER_PLACEHOLDER = "sk-agentvault-placeholder"
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
              "all_proxy", "NO_PROXY", "no_proxy", "Https_Proxy")


def launcher_path():
    """<build>/examples/codex/agentvault-codex, next to the daemon; fails if missing."""
    p = avd.binary_path().parents[1] / "examples" / "codex" / "agentvault-codex"
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.fail(f"agentvault-codex not found or not executable at {p} (build the examples "
                    f"with meson/ninja, next to $AGENTVAULT_BIN)", pytrace=False)
    return p


def _vault_args(test_ca, fake_port, state_dir):
    return ["--resolve", f"api.openai.com:443:127.0.0.1:{fake_port}",
            "--upstream-cacert", str(test_ca.ca_pem), "--state-dir", str(state_dir)]


def _run_launcher(codex, codex_home, secrets, test_ca, fake, tmp_path, word, extra=(),
                  via_path=False):
    """via_path: find `codex` on PATH (the default) rather than with --codex."""
    env, _home, work = codex_home
    env = dict(env)
    if via_path:
        env["PATH"] = f"{Path(codex).parent}:{env['PATH']}"
    else:
        extra = ["--codex", str(codex), *extra]
    env["OPENAI_API_KEY"] = secrets.openai_key
    # Proxy variables (to a closed port) must not reach Codex: it talks to the
    # gateway directly.
    env.update({v: "http://127.0.0.1:9" for v in PROXY_VARS if not v.lower().startswith("no_")})
    env.update({"NO_PROXY": "example.invalid", "no_proxy": "example.invalid"})
    argv = [launcher_path(), *_vault_args(test_ca, fake.port, tmp_path / "state"), *extra,
            "--", *_codex_flags(codex), _prompt(word)]
    return run_bounded(argv, env=env, cwd=work, timeout=CODEX_TIMEOUT)


def _kinds(fake, secrets):
    """(transport, method, path, Authorization values with the key masked)."""
    def kind(v):
        if v == f"Bearer {secrets.openai_key}":
            return "Bearer <real key>"
        return "<other value>"
    return [(r.transport, r.method, r.path, [kind(v) for v in r.header_values("authorization")])
            for r in fake.snapshot()]


def _assert_real_key_only(fake, secrets, ctx):
    kinds = _kinds(fake, secrets)
    assert kinds, f"the fake server saw no request\n{ctx}"
    bad = [k for k in kinds if k[3] != ["Bearer <real key>"]]
    assert not bad, f"requests without exactly `Authorization: Bearer <real key>`: {bad}\n{ctx}"
    for p in (LAUNCHER_PLACEHOLDER, PLACEHOLDER):
        assert not fake.saw(p), f"the placeholder {p!r} reached the server\n{ctx}"
    assert all(x.tls for x in fake.snapshot()), f"a request reached the server without TLS\n{ctx}"
    hosts = {x.header("host") for x in fake.snapshot()}
    assert hosts == {"api.openai.com"}, f"Host headers seen upstream: {hosts}\n{ctx}"


def _assert_state_clean(tmp_path, secrets):
    hits = sorted({p for p, _ in files_containing(tmp_path / "state",
                                                  avd.forbidden_strings(secrets))})
    assert not hits, f"secret material in the state directory: {hits}"


# ---- the real Codex ------------------------------------------------------------

def test_codex_websocket_through_launcher(codex, fake_factory, codex_home, secrets, test_ca,
                                          tmp_path, word):
    """`agentvault-codex -- exec ...`: the turn goes over one WebSocket to the
    gateway, relayed over TLS with the real key on the upgrade; no SSE."""
    fake = fake_factory(reply_text=word)
    r = _run_launcher(codex, codex_home, secrets, test_ca, fake, tmp_path, word, via_path=True)
    ctx = f"{r.describe()}\n{fake.describe()}\nauth: {_kinds(fake, secrets)}"
    _assert_printed(r, word)
    assert not WS_CONNECT_FAILED.search(r.stderr), f"codex could not open the WebSocket\n{ctx}"
    assert fake.by_transport("sse") == [], f"codex fell back to SSE\n{ctx}"
    assert fake.by_transport("ws-refused") == [], ctx
    assert fake.count("ws_turns") == 1, f"the turn did not arrive over WebSocket\n{ctx}"
    upgrades = fake.by_transport("ws")
    assert upgrades, ctx
    for up in upgrades:
        assert up.header_values("authorization") == [f"Bearer {secrets.openai_key}"], \
            f"the WebSocket upgrade did not carry exactly the real key\n{ctx}"
        assert (up.header("upgrade") or "").lower() == "websocket", ctx
    _assert_real_key_only(fake, secrets, ctx)
    _assert_no_leaks(r, codex_home[1], secrets)
    _assert_state_clean(tmp_path, secrets)


def test_codex_websocket_off_falls_back_to_sse(codex, fake_factory, codex_home, secrets,
                                               test_ca, tmp_path, word):
    """-c FILE with `websocket = off`: the gateway answers the upgrade 426 itself,
    Codex switches to SSE at once, and the POST carries the real key."""
    fake = fake_factory(reply_text=word)
    conf = tmp_path / "agentvault.conf"
    conf.write_text(openai_service_config(websocket_off=True))
    r = _run_launcher(codex, codex_home, secrets, test_ca, fake, tmp_path, word,
                      extra=["-c", str(conf)])
    ctx = f"{r.describe()}\n{fake.describe()}\nauth: {_kinds(fake, secrets)}"
    _assert_printed(r, word)
    assert fake.by_transport("ws") == [] and fake.by_transport("ws-refused") == [], \
        f"a WebSocket upgrade reached the server despite websocket = off\n{ctx}"
    assert fake.count("sse_turns") == 1, f"the turn did not arrive over SSE\n{ctx}"
    assert r.elapsed < 20, f"codex took {r.elapsed:.1f}s: it did not fall back at once\n{ctx}"
    _assert_real_key_only(fake, secrets, ctx)
    _assert_no_leaks(r, codex_home[1], secrets)
    _assert_state_clean(tmp_path, secrets)


# ---- a stand-in Codex: argv, environment, exit statuses, signals ----------------

def _stand_in(tmp_path, body, name="codex"):
    """An executable shell script standing in for Codex."""
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    p = d / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return p


DUMP = ('printf "%s\\0" "$@" > "$DUMP_DIR/argv"\n'
        'env -0 > "$DUMP_DIR/env"\n')


def _launcher_env(tmp_path, secrets, **extra):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = avd.base_env(home)
    env["OPENAI_API_KEY"] = secrets.openai_key
    env.update(extra)
    return env


def _one_error_line(r, *needles):
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("agentvault-codex: "), \
        f"expected one `agentvault-codex: ...` line on stderr\n{r.describe()}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in the error line\n{r.describe()}"
    assert r.stdout == "", r.describe()


@pytest.mark.parametrize("with_config", [False, True], ids=["builtin", "config"])
def test_codex_argv_and_environment(tmp_path, secrets, test_ca, with_config):
    """Codex gets the gateway's base URL (before and after the subcommand), the
    user's arguments unchanged, placeholders instead of keys, and no proxy
    variables; its exit status is the launcher's."""
    dump = tmp_path / "dump"
    dump.mkdir()
    script = _stand_in(tmp_path, DUMP + "exit 7\n")
    other = "other-" + secrets_mod.token_hex(12)
    env = _launcher_env(tmp_path, secrets, DUMP_DIR=str(dump), CODEX_API_KEY=secrets.agent_token,
                        OPENAI_BASE_URL="https://elsewhere.invalid/v1", OTHER_TEST_KEY=other,
                        KEEP_ME="kept", **{v: "http://127.0.0.1:9" for v in PROXY_VARS})
    extra = []
    if with_config:
        conf = tmp_path / "agentvault.conf"
        conf.write_text(openai_service_config() + '\n[service "other"]\nhost = other.example.com\n'
                        "auth = bearer\nsecret = env:OTHER_TEST_KEY\n")
        extra = ["-c", str(conf)]
    argv = [launcher_path(), "--codex", script, "--state-dir", tmp_path / "state", *extra,
            "--", "-m", "gpt-test", "exec", "--json", "say \"hi\" $HOME", ""]
    r = run_bounded(argv, env=env, cwd=tmp_path, timeout=30)
    assert r.returncode == 7, f"the child's exit status was not propagated\n{r.describe()}"
    assert r.stdout == "" and r.stderr == "", f"the launcher printed something\n{r.describe()}"
    args = (dump / "argv").read_bytes().split(b"\0")[:-1]
    args = [a.decode() for a in args]
    assert len(args) == 10 and args[0] == "-c", args
    base = args[1]
    assert base.startswith('openai_base_url="http://127.0.0.1:') and base.endswith('/v1"'), args
    port = int(base[len('openai_base_url="http://127.0.0.1:'):-len('/v1"')])
    assert 0 < port < 65536, args
    assert args[2:] == ["-m", "gpt-test", "exec", "-c", base, "--json", 'say "hi" $HOME', ""], args
    envs = dict(e.decode().split("=", 1) for e in (dump / "env").read_bytes().split(b"\0") if e)
    assert envs.get("OPENAI_API_KEY") == LAUNCHER_PLACEHOLDER, envs.get("OPENAI_API_KEY")
    assert envs.get("CODEX_API_KEY") == LAUNCHER_PLACEHOLDER, "CODEX_API_KEY was not replaced"
    assert envs.get("KEEP_ME") == "kept" and envs.get("HOME") == env["HOME"], sorted(envs)
    present = [v for v in envs if v.lower() in {p.lower() for p in PROXY_VARS}]
    assert not present, f"proxy variables reached codex: {present}"
    assert "OPENAI_BASE_URL" not in envs, "OPENAI_BASE_URL reached codex"
    raw = (dump / "env").read_text(errors="replace") + "\0".join(args)
    forbidden = avd.forbidden_strings(secrets)
    if with_config:
        assert "OTHER_TEST_KEY" not in envs, "a variable the vault reads reached codex"
        forbidden.append(other)
    else:
        assert envs.get("OTHER_TEST_KEY") == other, "a variable the vault does not read was dropped"
    leaks = avd.find_leaks(raw, forbidden)
    assert not leaks, f"secret material in codex's environment or arguments ({len(leaks)})"


def test_codex_argv_without_subcommand(tmp_path, secrets):
    """No model subcommand (interactive Codex): the base URL goes first only."""
    dump = tmp_path / "dump"
    dump.mkdir()
    script = _stand_in(tmp_path, DUMP + "exit 0\n")
    env = _launcher_env(tmp_path, secrets, DUMP_DIR=str(dump))
    r = run_bounded([launcher_path(), "--codex", script, "--state-dir", tmp_path / "state",
                     "a prompt", "--flag"], env=env, cwd=tmp_path, timeout=30)
    assert r.returncode == 0, r.describe()
    args = [a.decode() for a in (dump / "argv").read_bytes().split(b"\0")[:-1]]
    assert len(args) == 4 and args[0] == "-c" and args[2:] == ["a prompt", "--flag"], args


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_child_gives_128_plus_n(tmp_path, secrets, sig):
    script = _stand_in(tmp_path, f"kill -{int(sig)} $$\nsleep 5\n")
    env = _launcher_env(tmp_path, secrets)
    r = run_bounded([launcher_path(), "--codex", script, "--state-dir", tmp_path / "state"],
                    env=env, cwd=tmp_path, timeout=30)
    assert r.returncode == 128 + int(sig), r.describe()


def test_signals_are_forwarded(tmp_path, secrets):
    """SIGTERM and SIGUSR1 sent to the launcher reach Codex; the launcher waits
    for it and exits with its status."""
    ready = tmp_path / "ready"
    got = tmp_path / "got"
    script = _stand_in(tmp_path, f"trap 'echo usr1 >> {got}' USR1\n"
                                 f"trap 'echo term >> {got}; exit 42' TERM\n"
                                 f"echo $$ > {ready}\n"
                                 "i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\n"
                                 "exit 3\n")
    env = _launcher_env(tmp_path, secrets)
    p = subprocess.Popen([str(launcher_path()), "--codex", str(script), "--state-dir",
                          str(tmp_path / "state")], env=env, cwd=tmp_path,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while not (ready.exists() and ready.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the stand-in codex did not start"
        p.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not (got.exists() and "usr1" in got.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got.exists() and "usr1" in got.read_text(), "SIGUSR1 was not forwarded"
        assert p.poll() is None, "the launcher died of SIGUSR1"
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=15)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    assert p.returncode == 42, f"exit {p.returncode}\n{err.decode(errors='replace')}"
    assert got.read_text().split() == ["usr1", "term"]


def test_vault_secret_through_the_gateway(fake_factory, tmp_path, secrets, test_ca):
    """-c FILE with `secret = vault:NAME`: the master password comes from
    AGENTVAULT_PASSWORD, which Codex does not get; a request Codex sends to the
    base URL reaches api.openai.com with the vault's secret."""
    fake = fake_factory(reply_text="ok")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    password = "pw-" + secrets_mod.token_hex(8)
    env = _launcher_env(tmp_path, secrets, AGENTVAULT_PASSWORD=password,
                        AGENTVAULT_NEW_PASSWORD=password)
    made = subprocess.run([str(avd.require_binary()), "secret", "set", "openai_key", "--vault",
                           str(state / "vault.avv")], input=secrets.openai_key.encode(),
                          env=env, capture_output=True, timeout=60)
    assert made.returncode == 0, made.stderr.decode(errors="replace")
    del env["OPENAI_API_KEY"], env["AGENTVAULT_NEW_PASSWORD"]
    conf = tmp_path / "agentvault.conf"
    conf.write_text('[service "openai"]\nhost = api.openai.com\nauth = bearer\n'
                    "secret = vault:openai_key\n")
    dump = tmp_path / "dump"
    dump.mkdir()
    env["DUMP_DIR"] = str(dump)
    script = _stand_in(tmp_path, DUMP + 'u=${2#openai_base_url=\\"}; u=${u%\\"}\n'
                       'exec curl -sS -o "$DUMP_DIR/body" -w "%{http_code}" -X POST '
                       '-H "Authorization: Bearer $OPENAI_API_KEY" '
                       "-H 'Content-Type: application/json' "
                       '-d \'{"model":"gpt-test","input":"hi","stream":true}\' "$u/responses"\n')
    r = run_bounded([launcher_path(), "--codex", script, "-c", conf,
                     *_vault_args(test_ca, fake.port, state)], env=env, cwd=tmp_path, timeout=30)
    ctx = f"{r.describe()}\n{fake.describe()}\nauth: {_kinds(fake, secrets)}"
    assert r.returncode == 0 and r.stdout == "200", ctx
    assert [x.transport for x in fake.snapshot()] == ["sse"], ctx
    _assert_real_key_only(fake, secrets, ctx)
    envs = (dump / "env").read_bytes().split(b"\0")
    assert not [e for e in envs if e.startswith(b"AGENTVAULT_PASSWORD=")], \
        "the vault's master password reached codex"
    assert password.encode() not in (dump / "env").read_bytes()


# ---- the launcher's own errors -------------------------------------------------

def test_missing_codex_is_127(tmp_path, secrets):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = _launcher_env(tmp_path, secrets)
    env["PATH"] = f"{empty}:/usr/bin:/bin"
    r = run_bounded([launcher_path(), "--state-dir", tmp_path / "state", "--", "exec", "hi"],
                    env=env, cwd=tmp_path, timeout=30)
    assert r.returncode == 127, r.describe()
    _one_error_line(r, "codex", "not found")
    r = run_bounded([launcher_path(), "--codex", tmp_path / "no-such-codex"], env=env,
                    cwd=tmp_path, timeout=30)
    assert r.returncode == 127, r.describe()
    _one_error_line(r, "no-such-codex")


def test_codex_not_executable_is_126(tmp_path, secrets):
    f = tmp_path / "bin" / "codex"
    f.parent.mkdir()
    f.write_text("#!/bin/sh\nexit 0\n")
    f.chmod(0o644)
    env = _launcher_env(tmp_path, secrets)
    r = run_bounded([launcher_path(), "--codex", f], env=env, cwd=tmp_path, timeout=30)
    assert r.returncode == 126, r.describe()
    _one_error_line(r, str(f))
    env["PATH"] = f"{f.parent}:/nonexistent"
    r = run_bounded([launcher_path()], env=env, cwd=tmp_path, timeout=30)
    assert r.returncode == 126, r.describe()
    _one_error_line(r, str(f))
    r = run_bounded([launcher_path(), "--codex", tmp_path], env=env, cwd=tmp_path, timeout=30)
    assert r.returncode == 126, r.describe()
    _one_error_line(r)


@pytest.mark.parametrize("args,needle", [
    (["--no-such-option"], "--no-such-option"),
    (["-x", "--", "exec"], "-x"),
    (["--state-dir"], "--state-dir"),
    (["--log-level", "loud"], "--log-level"),
    (["--resolve", "api.openai.com:443:not-an-address"], "--resolve"),
], ids=["unknown", "unknown-short", "missing-value", "bad-level", "bad-resolve"])
def test_bad_option_is_2(tmp_path, secrets, args, needle):
    marker = tmp_path / "ran"
    script = _stand_in(tmp_path, f"touch {marker}\n")
    env = _launcher_env(tmp_path, secrets)
    r = run_bounded([launcher_path(), "--codex", script, "--state-dir", tmp_path / "state",
                     *args], env=env, cwd=tmp_path, timeout=30)
    assert r.returncode == 2, r.describe()
    _one_error_line(r, needle)
    assert not marker.exists(), "codex ran despite a bad option"


def test_missing_key_is_an_error(tmp_path, secrets):
    marker = tmp_path / "ran"
    script = _stand_in(tmp_path, f"touch {marker}\n")
    env = _launcher_env(tmp_path, secrets)
    del env["OPENAI_API_KEY"]
    r = run_bounded([launcher_path(), "--codex", script, "--state-dir", tmp_path / "state"],
                    env=env, cwd=tmp_path, timeout=30)
    assert r.returncode == 1, r.describe()
    _one_error_line(r, "OPENAI_API_KEY")
    assert not marker.exists()


def test_bad_config_is_an_error(tmp_path, secrets):
    conf = tmp_path / "bad.conf"
    conf.write_text('[service "openai"]\nhost = api.openai.com\ncolour = blue\n')
    script = _stand_in(tmp_path, "exit 0\n")
    env = _launcher_env(tmp_path, secrets)
    r = run_bounded([launcher_path(), "--codex", script, "--state-dir", tmp_path / "state",
                     "-c", conf], env=env, cwd=tmp_path, timeout=30)
    assert r.returncode == 1, r.describe()
    _one_error_line(r, "bad.conf:3")


def test_help(tmp_path, secrets):
    r = run_bounded([launcher_path(), "--help"], env=_launcher_env(tmp_path, secrets),
                    cwd=tmp_path, timeout=30)
    assert r.returncode == 0 and "usage: agentvault-codex" in r.stdout, r.describe()
