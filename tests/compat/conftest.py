"""Fixtures of the compatibility suite (real clients x proxy/gateway mode).
See README.md. The harness is compat.py; it builds on tests/integration/avtest."""
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "integration"))

import compat  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="session")
def compat_ca(tmp_path_factory):
    """(ca_pem, leaf_pem, leaf_key): the CA the daemon trusts for origins
    (--upstream-cacert) and the origins' leaf for ORIGIN_DNS_NAMES."""
    return compat.make_compat_ca(tmp_path_factory.mktemp("compat-ca"))


@pytest.fixture
def stack(request, tmp_path, compat_ca):
    """A compat.Stack: add_origin(...) then start(); run_proxied / run_client.
    At teardown: the daemon must stop cleanly, and no real key may appear in
    its output, its audit log or any client's output."""
    s = compat.Stack(tmp_path, compat_ca)
    yield s
    call = getattr(request.node, "rep_call", None)
    if call is not None and call.failed and s.daemon is not None:
        print(f"daemon {' '.join(s.daemon.argv)}\n{s.daemon.log_dump()}")
    problems = s.close()
    assert not problems, "\n".join(problems)
