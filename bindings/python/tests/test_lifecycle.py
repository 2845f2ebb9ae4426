"""Loading, configuration errors, and the Vault's life cycle."""
import gc
import os
import re
import socket
import time

import httpx
import pytest

import agentvault
from conftest import OPENAI, openai_service


def test_library_loaded_from_agentvault_lib():
    want = os.path.realpath(os.environ["AGENTVAULT_LIB"])
    assert os.path.realpath(agentvault.library_path()) == want
    assert re.fullmatch(r"\d+\.\d+\.\d+", agentvault.version())
    assert agentvault.ERR_CONFIG == -8 and agentvault.ERR_STATE == -17
    assert "config" in agentvault.strerror(agentvault.ERR_CONFIG).lower()


def test_config_text_error_names_the_line(state_dir):
    with pytest.raises(agentvault.Error) as ei:
        agentvault.Vault("[proxy]\nunmatched = deny\ncolour = red\n", state_dir=state_dir)
    e = ei.value
    assert e.code == agentvault.ERR_CONFIG and e.code_name == "AV_ERR_CONFIG"
    assert ":3:" in e.message and 'unknown key "colour"' in e.message, e.message
    assert e.message in str(e)


def test_config_file_error_names_the_file(tmp_path, state_dir):
    conf = tmp_path / "agentvault.conf"
    conf.write_text('[service "x"]\nhost = api.example.com\nauth = sideways\nsecret = env:X\n')
    with pytest.raises(agentvault.Error) as ei:
        agentvault.Vault(conf, state_dir=state_dir)
    assert ei.value.code == agentvault.ERR_CONFIG
    assert f"{conf}:3:" in ei.value.message, ei.value.message
    with pytest.raises(agentvault.Error) as ei:
        agentvault.Vault(str(tmp_path / "missing.conf"), state_dir=state_dir)
    assert "missing.conf" in ei.value.message, ei.value.message


def test_service_errors_name_the_service(state_dir):
    with pytest.raises(agentvault.Error) as ei:
        agentvault.Vault(state_dir=state_dir, services={"wild": {
            "host": "*.com", "auth": "bearer", "secret": "callback:w"}})
    assert 'service "wild"' in ei.value.message and "*.com" in ei.value.message, ei.value.message
    # cross-field validation (av_config_validate / section end)
    with pytest.raises(agentvault.Error) as ei:
        agentvault.Vault(state_dir=state_dir, services=[{"name": "nosecret",
                                                         "host": "api.openai.com",
                                                         "auth": "bearer"}])
    assert "nosecret" in ei.value.message and "secret" in ei.value.message
    with pytest.raises(agentvault.Error) as ei:
        agentvault.Vault(state_dir=state_dir, services=[openai_service(methods=["GET", "FETCH"])])
    assert "FETCH" in ei.value.message, ei.value.message
    with pytest.raises(agentvault.Error) as ei:
        agentvault.Vault(state_dir=state_dir, resolve=["api.openai.com:443"])
    assert ei.value.code is not None and ei.value.code < 0
    assert "api.openai.com:443" in ei.value.message, ei.value.message


def test_ctx_new_errors_carry_the_reason(state_dir, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        with pytest.raises(agentvault.Error) as ei:
            agentvault.Vault(state_dir=state_dir, listen=f"127.0.0.1:{port}")
        assert ei.value.code == agentvault.ERR_IO
        assert str(port) in ei.value.message and "in use" in ei.value.message, ei.value.message
    finally:
        taken.close()
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(agentvault.Error) as ei:
        agentvault.Vault(state_dir=state_dir, upstream_cacert=missing)
    assert str(missing) in ei.value.message, ei.value.message
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(agentvault.Error) as ei:
        agentvault.Vault(state_dir=blocker / "state")
    assert ei.value.code in (agentvault.ERR_CA, agentvault.ERR_IO), ei.value
    assert "a-file" in ei.value.message, ei.value.message


def test_argument_type_errors(state_dir):
    with pytest.raises(TypeError):
        agentvault.Vault(state_dir=state_dir, secrets=["not", "a", "mapping"])
    with pytest.raises(TypeError):
        agentvault.Vault(state_dir=state_dir, secret_fn="not callable")
    with pytest.raises(TypeError):
        agentvault.Vault(state_dir=state_dir, services=[{"host": "no name"}])
    with pytest.raises(ValueError):
        agentvault.Vault(state_dir=state_dir, log_level="loud")


def test_bad_origin(make_vault):
    v = make_vault()
    for bad in ("ftp://api.openai.com", "https://api.openai.com/v1", "api.openai.com",
                "https://user@api.openai.com"):
        with pytest.raises(agentvault.Error) as ei:
            v.gateway_url(bad)
        assert ei.value.code == agentvault.ERR_INVALID and bad in ei.value.message
        with pytest.raises(agentvault.Error):
            v.open_stream(bad)


def test_close_is_idempotent_and_closed_vault_raises(make_vault, upstream):
    v = make_vault(listen=True)
    base = v.gateway_url(OPENAI)
    assert v.proxy_url.startswith("http://127.0.0.1:")
    port = int(base.rsplit(":", 1)[1])
    assert not v.closed
    v.close()
    assert v.closed
    v.close()        # twice: no error, no crash
    v.close(0)
    for use in (lambda: v.gateway_url(OPENAI), lambda: v.open_stream(OPENAI),
                lambda: v.proxy_url, lambda: v.proxy_port, lambda: v.gateways,
                lambda: v.__enter__()):
        with pytest.raises(agentvault.Error) as ei:
            use()
        assert ei.value.code == agentvault.ERR_STATE and "closed" in ei.value.message
    assert "closed" in repr(v)
    # the gateway's port is closed with the context
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_context_manager(make_vault, upstream, keys):
    with make_vault() as v:
        with httpx.Client(base_url=v.gateway_url(OPENAI), trust_env=False, timeout=10) as c:
            assert c.get("/echo").status_code == 200
        v.close()            # closing inside the block is fine too
    assert v.closed


def test_close_while_an_exchange_is_in_flight(make_vault, upstream):
    v = make_vault()
    s = v.open_stream(OPENAI, timeout=10)
    s.sendall(b"GET /sse HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
    data = b""
    while b"data: first" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    t0 = time.monotonic()
    v.close(drain_seconds=0.2)
    assert time.monotonic() - t0 < 5
    # the stream ends (the relay is gone); reads return EOF or an error
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    s.close()
    assert b"200" in data.split(b"\r\n", 1)[0]
    assert b"data: second" not in data       # cut at the drain deadline


def test_forgotten_vault_is_stopped_by_gc(state_dir):
    v = agentvault.Vault(state_dir=state_dir)
    base = v.gateway_url(OPENAI)
    port = int(base.rsplit(":", 1)[1])
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    del v
    gc.collect()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_gateway_url_is_stable_per_origin(make_vault):
    v = make_vault()
    a = v.gateway_url(OPENAI)
    assert v.gateway_url(OPENAI + "/") == a
    assert v.gateway_url("https://api.github.com") != a
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", a)
    assert v.proxy_url is None and v.proxy_port is None
    assert v.services == ["openai", "github"]


EXIT_SCRIPT = r"""
import sys, threading
sys.path.insert(0, sys.argv[1])
import agentvault, httpx
port, cacert, state = int(sys.argv[2]), sys.argv[3], sys.argv[4]
calls = []
v = agentvault.Vault(state_dir=state, upstream_cacert=cacert,
                     resolve=[f"api.openai.com:443:127.0.0.1:{port}"],
                     services=[{"name": "openai", "host": "api.openai.com", "auth": "bearer",
                                "secret": "callback:openai"}],
                     secret_fn=lambda name: calls.append(name) or "sk-exit-test",
                     log=lambda level, msg: None, log_level="debug")
base = v.gateway_url("https://api.openai.com")
assert httpx.get(base + "/echo-auth", trust_env=False, timeout=10).status_code == 200
# leave an exchange in flight and the vault open: exit must still be clean
s = v.open_stream("https://api.openai.com")
s.sendall(b"GET /sse HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
got = b""
while b"data: first" not in got:
    chunk = s.recv(65536)
    assert chunk, got
    got += chunk
print("exiting", calls, flush=True)
"""


def test_interpreter_exit_with_an_open_vault(upstream, test_ca, tmp_path):
    """A Vault never closed is stopped at interpreter exit (weakref.finalize),
    before Python tears down: no crash, exit status 0."""
    import subprocess
    import sys
    from conftest import BINDING
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, str(BINDING), str(upstream.port),
         str(test_ca.ca_pem), str(tmp_path / "state")],
        env={"AGENTVAULT_LIB": os.environ["AGENTVAULT_LIB"], "PATH": os.environ.get("PATH", ""),
             "PYTHONDONTWRITEBYTECODE": "1",
             **{k: v for k, v in os.environ.items() if k.startswith(("ASAN_", "UBSAN_", "LD_"))}},
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exiting ['openai']" in proc.stdout
    assert "Fatal" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
