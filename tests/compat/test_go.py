"""Go net/http (Debian's golang-go, standard library only): a tiny client
built at test time, through `agentvault run` (HTTPS_PROXY, SSL_CERT_FILE;
Go speaks HTTP/2 through the tunnel) and through a gateway."""
import subprocess

import pytest

import compat

SRC = compat.HERE / "clients" / "goclient" / "main.go"


@pytest.fixture(scope="module")
def goclient(tmp_path_factory):
    go = compat.which("go")
    d = tmp_path_factory.mktemp("goclient")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(d), "GOCACHE": str(d / "cache"),
           "GOPATH": str(d / "gopath"), "GOPROXY": "off", "GOFLAGS": "-mod=mod",
           "GO111MODULE": "off", "CGO_ENABLED": "0"}
    out = d / "goclient"
    p = subprocess.run([go, "build", "-o", str(out), str(SRC)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, f"go build failed:\n{p.stdout}\n{p.stderr}"
    return out


def test_go_through_run(stack, goclient):
    o = stack.add_origin("go")
    stack.start()
    with stack.case("Go net/http", "proxy", o):
        r = stack.run_proxied([goclient, f"{o.server.url}/v1/x"]).check()
        assert r.stdout.split() == ["ok", "HTTP/2.0"], r.stdout
        o.server.assert_all_keyed(1)


def test_go_through_gateway(stack, goclient):
    o = stack.add_origin("go")
    stack.start()
    with stack.case("Go net/http", "gateway", o):
        r = stack.run_client([goclient, f"{stack.gateway_url('go')}/v1/x"]).check()
        assert r.stdout.split() == ["ok", "HTTP/1.1"], r.stdout
        o.server.assert_all_keyed(1)
