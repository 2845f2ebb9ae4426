"""The forward-proxy listener of a Vault, configured from Python or text."""
import httpx

import agentvault
from conftest import assert_no_secret, openai_service


def test_proxy_listener_with_httpx(make_vault, upstream, keys):
    v = make_vault(listen=True)
    assert v.proxy_url == f"http://127.0.0.1:{v.proxy_port}"
    pem = v.ca_pem
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    with open(v.ca_path) as f:
        assert f.read().strip() == pem.strip()
    with httpx.Client(proxies=v.proxy_url, verify=v.ca_path, trust_env=False,
                      timeout=15) as c:
        r = c.get("https://api.openai.com/echo-auth",
                  headers={"Authorization": "Bearer dummy"})
        assert r.status_code == 200
        assert_no_secret(r.content, keys)
    # the proxy's own endpoints, asked directly (not through the proxy)
    assert httpx.get(f"{v.proxy_url}/healthz", trust_env=False, timeout=15).status_code == 200
    assert httpx.get(f"{v.proxy_url}/ca.pem", trust_env=False, timeout=15).text.strip() == \
        pem.strip()
    assert upstream.only_request().header_values("authorization") == [
        f"Bearer {keys['openai']}"]


def test_config_text_sections_and_python_overrides(test_ca, upstream, state_dir, tmp_path,
                                                   keys):
    """A config file (its [proxy] and [service]) plus Python-side services,
    listen and pins; a [gateway] section gets its own port."""
    conf = tmp_path / "agentvault.conf"
    conf.write_text(
        "[proxy]\n"
        "listen = 127.0.0.1:1\n"          # replaced by listen= below
        "unmatched = deny\n"
        f"resolve = api.openai.com:443:127.0.0.1:{upstream.port}\n"
        "\n"
        '[gateway "gw"]\n'
        "listen = 127.0.0.1:0\n"
        "upstream = https://api.openai.com\n")
    with agentvault.Vault(conf, state_dir=state_dir, listen="127.0.0.1:0",
                          services=[openai_service(path="/echo*")],
                          secrets={"openai": keys["openai"]},
                          upstream_cacert=test_ca.ca_pem) as v:
        assert v.proxy_url and not v.proxy_url.endswith(":1")
        assert set(v.gateways) == {"gw"}
        with httpx.Client(base_url=v.gateways["gw"], trust_env=False, timeout=15) as c:
            assert c.get("/echo-auth").status_code == 200
            denied = c.get("/status/200")           # unmatched = deny (from the file)
            assert denied.status_code == 403
    assert upstream.only_request().header_values("authorization") == [
        f"Bearer {keys['openai']}"]
