"""Python's own ssl module and the library's TLS in one process."""
import ctypes
import os
import socket
import ssl
import threading

import _ssl
import httpx

import agentvault
from conftest import OPENAI, assert_no_secret


def mapped_file(addr):
    """The file /proc/self/maps shows at |addr|."""
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi and len(parts) >= 6:
                return parts[5]
    raise AssertionError(f"address {addr:#x} is not mapped")


def mapped_files():
    with open("/proc/self/maps") as f:
        return {line.split()[5] for line in f if len(line.split()) >= 6}


def python_libssl():
    """The libssl Python's _ssl module is bound to: resolve SSL_CTX_new
    through _ssl's own dependency scope and see where it lives."""
    handle = ctypes.CDLL(_ssl.__file__)
    addr = ctypes.cast(handle.SSL_CTX_new, ctypes.c_void_p).value
    return mapped_file(addr)


def test_tls_library_reports_the_backend_in_use():
    info = agentvault.tls_library()
    assert info.backend in ("boringssl", "openssl")
    assert info.path != "?" and os.path.isabs(info.path)
    real = os.path.realpath(info.path)
    assert real in {os.path.realpath(p) for p in mapped_files()}, "not mapped in this process"
    py = os.path.realpath(python_libssl())
    assert "libssl" in os.path.basename(py)
    if info.backend == "boringssl":
        # Debian's BoringSSL (android-libboringssl), not the OpenSSL of _ssl
        assert info.path.startswith("/usr/lib/x86_64-linux-gnu/android/"), info.path
        assert real != py, f"the library uses Python's libssl {py}"
    else:
        # an OpenSSL build shares the process's one libssl with _ssl
        assert real == py, (real, py)
        assert "android" not in info.path


def test_python_ssl_and_vault_tls_at_the_same_time(make_vault, upstream, test_ca, keys):
    """Python's ssl verifies the test origin directly (client side, and the
    origin itself is Python ssl on the server side) while the vault talks
    TLS upstream on its loop thread. Both work, concurrently."""
    v = make_vault()
    base = v.gateway_url(OPENAI)
    py_ctx = ssl.create_default_context(cafile=str(test_ca.ca_pem))
    errors = []
    counts = {"py": 0, "vault": 0}

    def python_side():
        try:
            with httpx.Client(verify=py_ctx, trust_env=False, timeout=15) as c:
                for i in range(10):
                    r = c.get(f"https://localhost:{upstream.port}/echo?via=python&i={i}",
                              headers={"Connection": "close"})
                    assert r.status_code == 200
                    counts["py"] += 1
            # and a raw ssl socket: handshake, verification and ALPN by _ssl
            raw = socket.create_connection(("127.0.0.1", upstream.port), timeout=15)
            with py_ctx.wrap_socket(raw, server_hostname="api.openai.com") as t:
                assert t.version() in ("TLSv1.2", "TLSv1.3")
                t.sendall(b"GET /echo-auth HTTP/1.1\r\nHost: api.openai.com\r\n"
                          b"Connection: close\r\n\r\n")
                data = b""
                while chunk := t.recv(65536):
                    data += chunk
                assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"(none)\n")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"python ssl: {e!r}")

    def vault_side():
        try:
            with httpx.Client(base_url=base, trust_env=False, timeout=15) as c:
                for i in range(10):
                    r = c.get(f"/echo?via=vault&i={i}")
                    assert r.status_code == 200
                    assert_no_secret(r.content, keys)
                    counts["vault"] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"vault: {e!r}")

    threads = [threading.Thread(target=python_side), threading.Thread(target=vault_side)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert counts == {"py": 10, "vault": 10}
    reqs = upstream.wait_requests(21)
    via_vault = [r for r in reqs if "via=vault" in r.target]
    via_python = [r for r in reqs if "via=python" in r.target]
    assert len(via_vault) == 10 and len(via_python) == 10
    assert all(r.header_values("authorization") == [f"Bearer {keys['openai']}"]
               for r in via_vault)
    assert all(r.header_values("authorization") == [] for r in via_python)
    # the vault verified the origin: a certificate from an unknown CA fails
    # there (nothing sent), while Python's ssl keeps its own trust settings
    v.close()
    with httpx.Client(verify=py_ctx, trust_env=False, timeout=15) as c:
        assert c.get(f"https://localhost:{upstream.port}/empty").status_code == 200


def test_vault_refuses_an_untrusted_origin(make_vault, test_ca, state_dir, keys):
    """Upstream verification is the library's own: without the test CA in
    upstream_cacert the origin's certificate is refused (502), nothing sent."""
    from avtest.upstream import UpstreamServer
    bad = UpstreamServer("bad", test_ca.bad_server_cert, test_ca.bad_server_key).start()
    try:
        v = make_vault(resolve=[f"api.openai.com:443:127.0.0.1:{bad.port}"])
        with httpx.Client(base_url=v.gateway_url(OPENAI), trust_env=False, timeout=15) as c:
            r = c.get("/echo")
        assert r.status_code == 502 and r.headers.get("x-agentvault-error")
        assert not bad.http_bytes_received
    finally:
        bad.stop()
