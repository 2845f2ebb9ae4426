"""Coding-agent CLIs through agentvault: Codex (pinned 0.131.0 and the
newest), Claude Code (`claude -p`) and Gemini CLI (`gemini -p`), each in
proxy mode (`agentvault run -- CLI`) and gateway mode (the CLI's base URL
at a [gateway]), against a local fake of its API that answers only with
the real key (Claude Code and Gemini: compat.FakeOrigin + fake_apis;
Codex: avtest's fake Responses server, WebSocket and SSE, checked after the
run). The CLIs get dummy credentials (run's placeholders in proxy mode);
every request must carry the real key and no dummy; the real key must
appear neither in what the CLI printed nor in any file it wrote.

Everything stays on loopback: the daemon runs with `unmatched = deny` when
it has a config file, and the CLIs' own background traffic (telemetry,
update checks) is turned off through their settings / variables.
"""
import json
import secrets as _secrets
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import compat

NODE_DIR = Path(__file__).resolve().parent / "node"
sys.path.insert(0, str(NODE_DIR))
import fake_apis  # noqa: E402
import node_env  # noqa: E402
from avtest import certs  # noqa: E402
from avtest.fake_openai import FakeOpenAI, run_bounded  # noqa: E402

AGENT_TIMEOUT = 120.0
DUMMY = "sk-compat-dummy"


@pytest.fixture
def word():
    return "vault" + _secrets.token_hex(4)


def _prompt(word):
    return f"Reply exactly: {word}"


def _run_agent(stack, argv, *, proxied, env=None, cwd=None):
    """Runs a CLI in its own process group (the whole group is killed on
    timeout: these CLIs start helpers), with the stack's minimal
    environment; its output joins the stack's leak check."""
    if proxied:
        argv = [str(compat.avd.require_binary()), "run", "--proxy", stack.proxy_url, "--"] + \
            list(argv)
    r = run_bounded(argv, env=stack.base_env(env), cwd=cwd, timeout=AGENT_TIMEOUT)
    stack.outputs.append(r.stdout + r.stderr)
    return r


def _assert_printed(r, word):
    assert r.returncode == 0 and not r.timed_out, r.describe()
    assert word in r.stdout, f"the CLI did not print {word!r}\n{r.describe()}"


def _workdir(tmp_path):
    w = tmp_path / "agent-work"
    w.mkdir()
    return w


def _leaf_for(stack, names, stem):
    """A leaf for `names` signed by the compat CA (whose key sits next to its
    certificate), for origins whose host the harness certificate lacks."""
    ca_pem = Path(stack.ca_pem)
    cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    key = serialization.load_pem_private_key(ca_pem.with_suffix(".key").read_bytes(), None)
    ca = certs.CertPair(cert, key, ca_pem, ca_pem.with_suffix(".key"))
    leaf = certs.issue(ca, names, ["127.0.0.1"], stack.work, stem)
    return leaf.cert_path, leaf.key_path


def _add_origin_for_host(stack, name, host, **kw):
    """stack.add_origin for a host outside the harness certificate."""
    saved = stack.leaf_pem, stack.leaf_key
    stack.leaf_pem, stack.leaf_key = _leaf_for(stack, [host], f"{name}-leaf")
    try:
        return stack.add_origin(name, host=host, **kw)
    finally:
        stack.leaf_pem, stack.leaf_key = saved


# ---- Claude Code -----------------------------------------------------------------

CLAUDE_ENV = {
    # No telemetry, error reporting, auto-update or other non-API traffic.
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
}


def _claude(stack, word, tmp_path, *, proxied, env):
    claude = node_env.require_bin("claude")
    e = dict(CLAUDE_ENV)
    e.update(env)
    return _run_agent(stack, [claude, "-p", _prompt(word)], proxied=proxied, env=e,
                      cwd=_workdir(tmp_path))


def test_claude_code_proxy_default_service(stack, word, tmp_path):
    """`agentvault run -- claude -p` through the embedded default (no -c):
    Claude Code sends x-api-key (the placeholder run set as
    ANTHROPIC_API_KEY); the origin wants the real key there and nothing else."""
    key = "sk-real-anthropic-" + _secrets.token_hex(12)
    o = stack.add_origin("anthropic", host="api.anthropic.com", env_var="ANTHROPIC_API_KEY",
                         key=key, gateway=False, app=fake_apis.anthropic_app(word),
                         accept=[("x-api-key", key)])
    stack.start(config=False)
    with stack.case("Claude Code (claude -p, default service)", "proxy", o) as info:
        r = _claude(stack, word, tmp_path, proxied=True, env={})
        _assert_printed(r, word)
        o.server.assert_all_keyed(1)
        assert any(x.path == "/v1/messages" for x in o.server.snapshot()), \
            o.server.snapshot()
        # The embedded default passes unmatched hosts through: make sure
        # Claude Code asked for nothing but the API.
        ex = node_env.exchanges_in_log(stack.daemon)
        assert {h for h, _a, _o in ex} == {"api.anthropic.com"}, stack.daemon.log_dump()
        # No audit log with the embedded default: protocols from the log lines.
        info["agent"] = "+".join(sorted({a for _h, a, _o in ex}))
        info["origin"] = "+".join(sorted({x for _h, _a, x in ex}))
    node_env.assert_no_key_in_files([tmp_path], [key])


def test_claude_code_gateway(stack, word, tmp_path):
    """ANTHROPIC_BASE_URL at a gateway to api.anthropic.com (x-api-key service)."""
    o = stack.add_origin("anthropic", host="api.anthropic.com",
                         auth='header x-api-key "{secret}"', app=fake_apis.anthropic_app(word))
    stack.start()
    with stack.case("Claude Code (claude -p)", "gateway", o):
        r = _claude(stack, word, tmp_path, proxied=False,
                    env={"ANTHROPIC_BASE_URL": stack.gateway_url("anthropic"),
                         "ANTHROPIC_API_KEY": DUMMY})
        _assert_printed(r, word)
        o.server.assert_all_keyed(1)
        assert any(x.path == "/v1/messages" for x in o.server.snapshot())
    node_env.assert_no_key_in_files([tmp_path], [o.key])


# ---- Gemini CLI ---------------------------------------------------------------------

GEMINI_HOST = "generativelanguage.googleapis.com"
GEMINI_MODEL = "gemini-2.5-flash"
# Settings (~/.gemini/settings.json): no usage statistics, telemetry or
# update checks (nothing but the API leaves the CLI), and API-key auth.
# Gemini CLI 0.61.0 treats GOOGLE_GEMINI_BASE_URL alone as the "gateway"
# auth type, which its own validation then rejects ("Invalid auth method
# selected."); naming gemini-api-key here avoids that, and the base URL
# still applies.
GEMINI_SETTINGS = {
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "security": {"auth": {"selectedType": "gemini-api-key"}},
}


def _gemini(stack, word, tmp_path, *, proxied, env):
    gemini = node_env.require_bin("gemini")
    gdir = stack.home / ".gemini"
    gdir.mkdir(parents=True, exist_ok=True)
    (gdir / "settings.json").write_text(json.dumps(GEMINI_SETTINGS))
    e = {"GEMINI_CLI_TRUST_WORKSPACE": "true"}   # headless: trust the work dir
    e.update(env)
    # -m: one model, so the CLI does not first ask a classifier model to route.
    return _run_agent(stack, [gemini, "-m", GEMINI_MODEL, "-p", _prompt(word)],
                      proxied=proxied, env=e, cwd=_workdir(tmp_path))


def _gemini_origin(stack, word):
    return _add_origin_for_host(stack, "gemini", GEMINI_HOST,
                                auth='header x-goog-api-key "{secret}"',
                                service_extra="agent_env = GEMINI_API_KEY",
                                app=fake_apis.gemini_app(word))


def _assert_gemini_turn(o):
    o.server.assert_all_keyed(1)
    paths = [x.path for x in o.server.snapshot()]
    assert f"/v1beta/models/{GEMINI_MODEL}:streamGenerateContent" in paths, paths


def test_gemini_cli_proxy(stack, word, tmp_path):
    """`agentvault run -- gemini -p`: GEMINI_API_KEY is run's placeholder
    (the service's agent_env), the CLI uses HTTPS_PROXY and
    NODE_EXTRA_CA_CERTS, and sends the key as x-goog-api-key."""
    o = _gemini_origin(stack, word)
    stack.start()
    with stack.case("Gemini CLI (gemini -p)", "proxy", o):
        r = _gemini(stack, word, tmp_path, proxied=True, env={})
        _assert_printed(r, word)
        _assert_gemini_turn(o)
    node_env.assert_no_key_in_files([tmp_path], [o.key])


def test_gemini_cli_gateway(stack, word, tmp_path):
    """GOOGLE_GEMINI_BASE_URL at a gateway, a dummy GEMINI_API_KEY."""
    o = _gemini_origin(stack, word)
    stack.start()
    with stack.case("Gemini CLI (gemini -p)", "gateway", o):
        r = _gemini(stack, word, tmp_path, proxied=False,
                    env={"GOOGLE_GEMINI_BASE_URL": stack.gateway_url("gemini"),
                         "GEMINI_API_KEY": DUMMY})
        _assert_printed(r, word)
        _assert_gemini_turn(o)
    node_env.assert_no_key_in_files([tmp_path], [o.key])


# ---- Codex ----------------------------------------------------------------------------

CODEX_FLAGS = ["exec", "--skip-git-repo-check", "--ephemeral", "--disable", "plugins",
               "-c", "analytics.enabled=false", "--dangerously-bypass-approvals-and-sandbox"]


def _codex_flags(codex, stack):
    """CODEX_FLAGS, plus `--disable api_key_model_discovery` where the build
    knows that feature (it fetches a model list from chatgpt.com)."""
    home = stack.work / "codex-features"
    home.mkdir(exist_ok=True)
    r = run_bounded([codex, "features", "list"], env=stack.base_env({"CODEX_HOME": str(home)}),
                    timeout=30)
    assert r.returncode == 0, f"`codex features list` failed\n{r.describe()}"
    names = {line.split()[0] for line in r.stdout.splitlines() if line.split()}
    extra = ["--disable", "api_key_model_discovery"] if "api_key_model_discovery" in names else []
    return CODEX_FLAGS + extra


def _codex_origin(stack, word):
    """avtest's fake Responses server at api.openai.com (the harness
    certificate covers it), registered with the stack so that the daemon
    gets a bearer service, a gateway and a --resolve for it, and its key
    joins the teardown leak check."""
    fake = FakeOpenAI(stack.leaf_pem, stack.leaf_key, reply_text=word).start()
    key = "sk-real-codex-" + _secrets.token_hex(16)
    o = compat.Origin("codex", "api.openai.com", key, "COMPAT_CODEX_KEY", "bearer", fake)
    stack.origins["codex"] = o
    return o


def _assert_codex_keyed(o):
    fake = o.server
    reqs = fake.snapshot()
    ctx = fake.describe()
    assert reqs, f"the fake Responses server saw no request\n{ctx}"
    bad = [(r.transport, r.path) for r in reqs
           if r.header_values("authorization") != [f"Bearer {o.key}"]]
    assert not bad, f"requests without exactly `Authorization: Bearer <real key>`: {bad}\n{ctx}"
    for d in compat.DUMMY_KEYS:
        assert not fake.saw(d), f"a dummy credential reached the server\n{ctx}"
    assert fake.errors == [], ctx
    assert fake.count("ws_turns") + fake.count("sse_turns") == 1, ctx


@pytest.mark.parametrize("which", list(node_env.CODEX_INSTALLS))
@pytest.mark.parametrize("mode", ["proxy", "gateway"])
def test_codex(stack, which, mode, word, tmp_path):
    codex = node_env.require_codex(which)
    o = _codex_origin(stack, word)
    stack.start()
    flags = _codex_flags(codex, stack)
    chome = stack.home / ".codex"
    chome.mkdir(parents=True, exist_ok=True)
    env = {"CODEX_HOME": str(chome)}
    with stack.case(f"Codex {which}", mode, o) as info:
        if mode == "proxy":
            # run sets CODEX_API_KEY / OPENAI_API_KEY to its placeholder.
            r = _run_agent(stack, [codex, *flags, _prompt(word)], proxied=True, env=env,
                           cwd=_workdir(tmp_path))
        else:
            env["CODEX_API_KEY"] = DUMMY
            url = stack.gateway_url("codex") + "/v1"
            r = _run_agent(stack, [codex, *flags, "-c", f'openai_base_url="{url}"',
                                   _prompt(word)], proxied=False, env=env,
                           cwd=_workdir(tmp_path))
        _assert_printed(r, word)
        _assert_codex_keyed(o)
        assert o.server.count("ws_turns") == 1, \
            f"the turn did not arrive over the WebSocket\n{o.server.describe()}"
        version = run_bounded([codex, "--version"], env=stack.base_env(), timeout=30)
        info["note"] = f"{version.stdout.split()[-1]}, Responses over WebSocket"
    node_env.assert_no_key_in_files([tmp_path], [o.key])

