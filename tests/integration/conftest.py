"""Fixtures of the agentvault integration suite. See README.md."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from avtest import certs, client  # noqa: E402
from avtest import daemon as avd  # noqa: E402
from avtest.upstream import UpstreamServer  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(autouse=True)
def no_secret_reaches_a_client(request):
    """Every response curl received in any test of the suite (bodies and
    heads) is free of the test's secrets and their base64 forms: the agent
    never sees a credential, not even echoed back (SECURITY 11). Daemon logs
    are checked in the daemon fixture."""
    client.RECEIVED.clear()
    sec = request.getfixturevalue("secrets") if "secrets" in request.fixturenames else None
    yield
    if sec is None:
        return
    forbidden = avd.forbidden_strings(sec)
    leaks = []
    for blob in client.RECEIVED:
        text = blob.decode("latin-1")
        leaks += avd.find_leaks(text, forbidden)
    client.RECEIVED.clear()
    assert not leaks, f"secret material reached a client ({len(leaks)} string(s))"


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory):
    """Trusted test CA + upstream leaf, and an untrusted CA + leaf (TestCA)."""
    return certs.build_test_ca(tmp_path_factory.mktemp("testca"))


def _server(name, cert=None, key=None):
    srv = UpstreamServer(name, cert, key).start()
    yield srv
    srv.stop()
    # A proxy must never send the origin something it cannot parse.
    assert srv.protocol_errors == [], f"{name} saw malformed requests: {srv.protocol_errors}"


@pytest.fixture
def upstream(test_ca):
    """HTTPS/1.1 origin on 127.0.0.1:<port> with a cert from the test CA."""
    yield from _server("upstream", test_ca.server_cert, test_ca.server_key)


@pytest.fixture
def plain_upstream():
    """Cleartext HTTP/1.1 origin on 127.0.0.1:<port>."""
    yield from _server("plain")


@pytest.fixture
def bad_cert_upstream(test_ca):
    """HTTPS origin whose cert is signed by a CA the daemon does not trust."""
    yield from _server("bad-cert", test_ca.bad_server_cert, test_ca.bad_server_key)


@pytest.fixture
def secrets(tmp_path):
    """Random per-test secrets (Secrets); the github token is in a file."""
    d = tmp_path / "secrets"
    d.mkdir()
    return avd.Secrets.make(d)


@pytest.fixture
def client_home(tmp_path):
    h = tmp_path / "client-home"
    h.mkdir()
    return h


@pytest.fixture(params=["http", "https"])
def proxy_scheme(request):
    """Scheme of the proxy URL given to curl -x."""
    return request.param


@pytest.fixture
def daemon(request, tmp_path, test_ca, upstream, secrets, client_home):
    """Factory: daemon(config=None|text, ...) -> started avtest.daemon.Daemon.

    config      config text (default: avd.config_text(secrets)); False: no -c
    resolve     list of HOST:PORT:ADDR[:PORT] (default: api.openai.com,
                api.github.com, upstream.test -> the `upstream` fixture)
    extra_resolve  appended to resolve
    state_dir   True (tmp/state), a path, or None (no --state-dir)
    env         extra environment variables
    args        extra command-line arguments
    argv0       list to run instead of the binary (harness self-tests)

    At teardown every daemon gets SIGTERM and must exit 0 within 5 s, and no
    secret (nor a base64 form of it) may appear in its stdout/stderr.
    """
    started = []
    counter = [0]

    def start(config=None, *, resolve=None, extra_resolve=(), state_dir=True, env=None,
              args=(), argv0=None, listen="127.0.0.1:0"):
        counter[0] += 1
        work = tmp_path / f"daemon{counter[0]}"
        work.mkdir()
        home = work / "home"
        home.mkdir()
        cmd = list(argv0) if argv0 else [str(avd.require_binary())]
        cmd.append("serve")
        if config is None:
            config = avd.config_text(secrets)
        if config is not False:
            conf = work / "agentvault.conf"
            if "\naudit =" not in "\n" + config and not config.lstrip().startswith("audit"):
                # Every daemon of the suite keeps an audit log, checked for
                # secrets at teardown like its output.
                audit = work / "audit.jsonl"
                if "[proxy]" in config:
                    config = config.replace("[proxy]", f"[proxy]\naudit = {audit}", 1)
                else:
                    config = f"[proxy]\naudit = {audit}\n\n" + config
            conf.write_text(config)
            cmd += ["-c", str(conf)]
        cmd += ["--listen", listen]
        sd = None
        if state_dir:
            sd = work / "state" if state_dir is True else Path(state_dir)
            cmd += ["--state-dir", str(sd)]
        if resolve is None:
            resolve = avd.default_resolve(upstream.port)
        for r in list(resolve) + list(extra_resolve):
            cmd += ["--resolve", r]
        cmd += ["--upstream-cacert", str(test_ca.ca_pem), "--log-level", "debug"]
        workers = os.environ.get("AVTEST_WORKERS")
        if (workers and not argv0 and "--workers" not in args
                and "\nworkers =" not in "\n" + (config or "")):
            # AVTEST_WORKERS=N runs every fixture daemon with N workers
            # (unset: the daemon's default, auto = one per CPU).
            cmd += ["--workers", workers]
        cmd += list(args)
        full_env = avd.base_env(home)
        full_env.update(secrets.env())
        full_env.update(env or {})
        d = avd.Daemon(cmd, full_env, work, sd, secrets, client_home)
        started.append(d)
        d.start()
        return d

    yield start

    call = getattr(request.node, "rep_call", None)
    if call is not None and call.failed:
        for d in started:  # shown under "Captured stdout teardown"
            print(f"daemon {' '.join(d.argv)}\n{d.log_dump()}")
    problems = []
    for d in started:
        if d.proc is None:
            continue
        if d.failed_start:
            d.kill()  # the start failure was already reported by the test
        else:
            rc = d.stop()
            if rc != 0:
                problems.append(f"daemon exited with {rc} after SIGTERM (expected 0 within "
                                f"{avd.STOP_TIMEOUT}s)\n{d.log_dump()}")
        leaks = avd.find_leaks(d.log_text(), avd.forbidden_strings(secrets))
        if leaks:
            problems.append(f"secret material in daemon output ({len(leaks)} string(s))")
        audit = d.workdir / "audit.jsonl"
        if audit.exists():
            leaks = avd.find_leaks(audit.read_text(errors="replace"), avd.forbidden_strings(secrets))
            if leaks:
                problems.append(f"secret material in the audit log ({len(leaks)} string(s))")
    assert not problems, "\n".join(problems)


@pytest.fixture
def curl(client_home):
    """curl(args..., urls=1, timeout=20, input=None) -> client.CurlResult (no proxy)."""
    def run(*args, urls=1, timeout=client.DEFAULT_TIMEOUT, input=None):
        return client.run_curl(list(args), home=client_home, urls_count=urls,
                               timeout=timeout, input=input)
    return run
