"""The embedded default services (no -c) with the header each client
sends: Codex and the openai SDKs `Authorization: Bearer`; Claude Code
`x-api-key`; the Anthropic SDKs >= 1.0 `Authorization: Bearer`; gh
`Authorization: token`, most GitHub clients `Bearer`. The dummy keys
`agentvault run` hands out must be replaced, never forwarded."""
import pytest

import compat

DEFAULTS = {
    "openai": ("api.openai.com", "OPENAI_API_KEY"),
    "anthropic": ("api.anthropic.com", "ANTHROPIC_API_KEY"),
    "github": ("api.github.com", "GITHUB_TOKEN"),
}

CASES = [
    # service, header template sent by the client ($V: the variable run set), accepted
    ("openai", "Authorization: Bearer ${V}", "authorization", "Bearer {k}"),
    ("anthropic", "x-api-key: ${V}", "x-api-key", "{k}"),
    ("anthropic", "Authorization: Bearer ${V}", "authorization", "Bearer {k}"),
    ("github", "Authorization: token ${V}", "authorization", "Bearer {k}"),
    ("github", "Authorization: Bearer ${V}", "authorization", "Bearer {k}"),
]


@pytest.mark.parametrize("svc,sent,hname,hval", CASES,
                         ids=[f"{c[0]}-{c[1].split(':')[0]}-{c[1].split()[1]}" for c in CASES])
def test_default_service_takes_the_clients_header(stack, svc, sent, hname, hval):
    host, var = DEFAULTS[svc]
    key = f"sk-real-{svc}-" + compat._secrets.token_hex(12)
    o = stack.add_origin(svc, host=host, env_var=var, key=key, gateway=False,
                         accept=[(hname, hval.format(k=key))])
    stack.start(config=False)
    curl = compat.which("curl")
    form = sent.split("$")[0].strip().rstrip(":")
    with stack.case(f"default {svc} service, {form}", "proxy", o):
        script = (f'test -n "${var}" && case "${var}" in agentvault-placeholder*) ;; '
                  f'*) echo "run did not set the placeholder" >&2; exit 3;; esac; '
                  f'exec {curl} -sS --fail -H "{sent.replace("V", var)}" https://{host}/v1/x')
        r = stack.run_proxied(["/bin/sh", "-c", script]).check()
        assert '"ok": true' in r.stdout
        o.server.assert_all_keyed(1)
