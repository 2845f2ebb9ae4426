"""Fixtures of the Python binding's tests.

Origins come from the integration suite's helpers (tests/integration/avtest):
a recording HTTPS/1.1 origin (UpstreamServer) and a WebSocket origin
(WsUpstream), both on 127.0.0.1 with certificates from a per-session test
CA. Vaults reach them through resolve pins, so the origins' real names
(api.openai.com, api.github.com) never leave 127.0.0.1.
"""
import os
import secrets as _random
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BINDING = HERE.parent
REPO = BINDING.parent.parent
sys.path.insert(0, str(BINDING))
sys.path.insert(0, str(REPO / "tests" / "integration"))

import agentvault  # noqa: E402
from avtest import certs  # noqa: E402
from avtest.upstream import UpstreamServer  # noqa: E402
from avtest.ws_upstream import WsUpstream  # noqa: E402

OPENAI = "https://api.openai.com"
GITHUB = "https://api.github.com"


def pytest_sessionstart(session):
    # The binding must run against the build under test, never a system copy.
    if not os.environ.get("AGENTVAULT_LIB"):
        raise pytest.UsageError("set AGENTVAULT_LIB to BUILD/libagentvault/libagentvault.so.0 "
                                "(bindings/python/run_tests.sh does)")


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory):
    return certs.build_test_ca(tmp_path_factory.mktemp("testca"))


@pytest.fixture
def upstream(test_ca):
    srv = UpstreamServer("upstream", test_ca.server_cert, test_ca.server_key).start()
    yield srv
    srv.stop()
    assert srv.protocol_errors == [], f"the origin saw malformed requests: {srv.protocol_errors}"


@pytest.fixture
def ws_upstream(test_ca):
    srv = WsUpstream(test_ca.server_cert, test_ca.server_key, name="ws").start()
    yield srv
    srv.stop()


@pytest.fixture
def keys():
    """Random per-test secrets."""
    return {"openai": "sk-test-" + _random.token_hex(16),
            "github": "ghp_" + _random.token_hex(16)}


@pytest.fixture
def state_dir(tmp_path):
    return tmp_path / "state"


def openai_service(**extra):
    svc = {"name": "openai", "host": "api.openai.com", "auth": "bearer",
           "secret": "callback:openai"}
    svc.update(extra)
    return svc


def github_service(**extra):
    svc = {"name": "github", "host": "api.github.com",
           "auth": 'header Authorization "token {secret}"', "secret": "callback:github"}
    svc.update(extra)
    return svc


@pytest.fixture
def make_vault(test_ca, upstream, state_dir, keys):
    """make_vault(**kwargs) -> a started Vault with the openai and github
    services (callback secrets from `keys`), api.openai.com and
    api.github.com pinned to the `upstream` origin and the test CA trusted.
    Keyword arguments override Vault's. Every vault is closed at teardown."""
    made = []

    def make(*args, **kw):
        kw.setdefault("state_dir", state_dir)
        kw.setdefault("services", [openai_service(), github_service()])
        if "secret_fn" not in kw:
            kw.setdefault("secrets", dict(keys))
        kw.setdefault("resolve", [f"api.openai.com:443:127.0.0.1:{upstream.port}",
                                  f"api.github.com:443:127.0.0.1:{upstream.port}"])
        kw.setdefault("upstream_cacert", test_ca.ca_pem)
        v = agentvault.Vault(*args, **kw)
        made.append(v)
        return v

    yield make
    for v in made:
        v.close(0)


def assert_no_secret(blob, keys):
    """No secret (raw) in what a client received."""
    text = blob.decode("latin-1") if isinstance(blob, bytes) else blob
    for name, value in keys.items():
        assert value not in text, f"the {name} secret reached a client"
