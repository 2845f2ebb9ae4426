"""The deploy recipes (deploy/) are well-formed and agree with each other
and with the daemon: the Kubernetes manifests pass an offline schema check
(kubernetes-models, tests/deploy) and cross-checks the schema cannot make
(selectors, ports, probe path, Secret keys, the grace period covering the
drain); the systemd unit passes `systemd-analyze verify` and an offline
security review; the Dockerfile and compose.yaml use Debian packages that
exist, a non-root user, the probe and ports the rest uses. What runs them
is test_replicas.py. No image is built here (no container runtime)."""
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from avtest import daemon as avd
from avtest import deploy_files as df

VALIDATOR = df.ROOT / "tests" / "deploy" / "validate_k8s.mjs"


def _check_config(text, tmp_path, secret_root, files):
    """`agentvault check` on |text| with |secret_root| mapped to a directory
    holding |files|; returns the CompletedProcess."""
    sec = tmp_path / "secrets"
    sec.mkdir(exist_ok=True)
    for name, data in files.items():
        (sec / name).write_bytes(data)
        (sec / name).chmod(0o600)
    conf = tmp_path / "agentvault.conf"
    conf.write_text(text.replace(secret_root, str(sec)).replace("/var/lib/agentvault", str(tmp_path / "state")))
    return subprocess.run([str(avd.require_binary()), "check", "-c", str(conf)], capture_output=True, text=True,
                          env=avd.base_env(tmp_path), timeout=30)


def _real_ca_and_tokens(tmp_path):
    gen = tmp_path / "gen"
    b, env = str(avd.require_binary()), avd.base_env(tmp_path)
    assert subprocess.run([b, "ca", "pem", "--state-dir", str(gen)], capture_output=True, env=env).returncode == 0
    assert subprocess.run([b, "token", "create", "--name", "agent", "--state-dir", str(gen)],
                          capture_output=True, env=env).returncode == 0
    return {n: (gen / n).read_bytes() for n in ("ca.pem", "ca.key", "tokens")}


# ---- Dockerfile ------------------------------------------------------------------

def _depends_closure(pkgs):
    """|pkgs| and, recursively, the installed packages they depend on."""
    seen, todo = set(), list(pkgs)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Depends},${Pre-Depends}", p], capture_output=True, text=True)
        for alt in r.stdout.split(","):
            for name in alt.split("|"):
                n = name.strip().split(" ")[0].split(":")[0]
                if n:
                    todo.append(n)
    return seen


def test_dockerfile():
    img = df.image()
    for i, s in enumerate(img.stages):   # Debian, or an earlier stage of this file
        assert s.base == "debian:bookworm-slim" or s.base in {t.name for t in img.stages[:i]}, s.base
    assert {"build", "runtime"} <= {s.name for s in img.stages}
    uid, gid = img.uid_gid
    assert uid != 0 and gid != 0, img.user
    assert img.entrypoint[:2] == ["tini", "--"] and img.entrypoint[2:] == ["agentvault"], img.entrypoint
    assert img.cmd[0] == "serve", img.cmd
    state = df.cmd_option(img.cmd, "--state-dir")
    assert img.volumes == [state], (img.volumes, state)
    assert df.cmd_option(img.cmd, "--listen") == f"0.0.0.0:{img.port}"
    assert df.cmd_option(img.cmd, "--log-format") == "json"
    assert df.cmd_option(img.cmd, "--log-output") == "stdout"
    assert img.stopsignal == "SIGTERM"
    hc = " ".join(img.healthcheck_cmd)
    assert f"/dev/tcp/127.0.0.1/{img.port}" in hc and "GET /healthz " in hc, hc
    assert img.healthcheck_cmd[0] in ("bash",), "the slim image has bash, not curl"
    # The runtime user owns the state directory the image declares.
    run = " ".join(img.runtime.all("RUN"))
    assert f"install -d -o {uid} -g {gid} -m 0700 {state}" in run, run
    # Every package the build and runtime stages install is a Debian package,
    # installed on this machine (scripts/setup.sh): the tests run the same ones.
    for stage in ("build", "runtime"):
        pkgs = img.apt_packages[stage]
        assert pkgs, stage
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Status}\n"] + pkgs,
                           capture_output=True, text=True)
        installed = {l.split()[0] for l in r.stdout.splitlines() if l.endswith("install ok installed")}
        assert set(pkgs) <= installed, f"{stage}: not installed here: {sorted(set(pkgs) - installed)}"
    # The runtime libraries are the ones the built daemon links.
    ldd = subprocess.run(["ldd", str(avd.require_binary())], capture_output=True, text=True).stdout
    # (dpkg knows the merged-/usr paths: /usr/lib/..., not /lib/...)
    libs = [os.path.realpath(m) for m in re.findall(r"=> (/\S+)", ldd) if "libagentvault" not in m]
    owners = subprocess.run(["dpkg", "-S"] + libs, capture_output=True, text=True).stdout
    needed = {l.split(":")[0] for l in owners.splitlines()}
    assert "libev4" in needed, ldd
    # In every Debian image; the sanitizers' runtimes (an ASan build); the
    # TLS library of this build (the image builds the default, BoringSSL).
    needed -= {"libc6", "libgcc-s1", "libstdc++6", "libssl3", "android-libboringssl"}
    needed = {n for n in needed if not re.match(r"lib(asan|ubsan|lsan)\d", n)}
    assert "android-libboringssl" in img.apt_packages["runtime"]
    assert "android-libboringssl-dev" in img.apt_packages["build"]
    runtime = _depends_closure(img.apt_packages["runtime"])   # what apt-get install brings
    assert needed <= runtime, f"the daemon links libraries of {sorted(needed - runtime)}"


def test_dockerignore_keeps_builds_out():
    ign = (df.ROOT / ".dockerignore").read_text().split()
    assert "build*/" in ign and ".git" in ign


# ---- compose.yaml ---------------------------------------------------------------

def test_compose(tmp_path):
    c = yaml.safe_load(df.COMPOSE.read_text())
    img = df.image()
    vault, agent = c["services"]["vault"], c["services"]["agent"]
    stages = {s.name for s in img.stages}
    for svc in (vault, agent):
        b = svc["build"]
        assert (df.COMPOSE.parent / b["context"] / b["dockerfile"]).resolve() == df.DOCKERFILE
        assert b["target"] in stages
    assert vault["build"]["target"] == "runtime"
    # The vault: the config and the state volume where the image expects them.
    conf_arg = df.cmd_option(img.cmd, "-c")
    mounts = {m.split(":")[1]: m.split(":")[0] for m in vault["volumes"]}
    assert conf_arg in mounts and img.volumes[0] in mounts, mounts
    assert (df.COMPOSE.parent / mounts[conf_arg]).resolve() == df.COMPOSE_CONF
    assert vault["read_only"] is True and vault["cap_drop"] == ["ALL"]
    assert vault["stop_signal"] == img.stopsignal
    delay, timeout = df.drain_seconds(df.COMPOSE_CONF.read_text())
    grace = int(vault["stop_grace_period"].rstrip("s"))
    assert grace > delay + timeout, (grace, delay, timeout)
    # The agent: a placeholder key, a proxy token, only the internal network,
    # and agentvault run pointed at the vault's port.
    assert agent["networks"] == ["agents"] and c["networks"]["agents"]["internal"] is True
    assert "egress" in vault["networks"]
    cmd = agent["command"]
    assert cmd[:4] == ["agentvault", "run", "--proxy", f"http://vault:{img.port}"], cmd
    assert "AGENTVAULT_TOKEN" in agent["environment"]
    assert "placeholder" in agent["environment"]["OPENAI_API_KEY"]
    assert agent["depends_on"]["vault"]["condition"] == "service_healthy"
    # Its file is a valid configuration whose key comes from the Compose secret.
    secret_target = "/run/secrets/" + vault["secrets"][0]
    text = df.COMPOSE_CONF.read_text()
    assert f"file:{secret_target}" in text
    r = _check_config(text, tmp_path, "/run/secrets", {})
    assert r.returncode == 0, r.stderr


# ---- systemd --------------------------------------------------------------------

def _unit_with_binary(tmp_path):
    unit = tmp_path / "agentvault.service"
    unit.write_text(df.UNIT.read_text().replace("/usr/bin/agentvault", str(avd.require_binary())))
    return unit


def test_systemd_unit_verifies(tmp_path):
    # verify needs the ExecStart binary to exist: the built one stands in
    # for the installed /usr/bin/agentvault.
    unit = _unit_with_binary(tmp_path)
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20", "--no-pager",
                        str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    m = re.search(r"Overall exposure level for agentvault.service: ([\d.]+)", r.stdout)
    assert m and float(m.group(1)) <= 2.0, r.stdout[-500:]


def test_systemd_unit_verify_catches_a_broken_unit(tmp_path):
    """The check above can fail: a misspelt directive is reported."""
    unit = _unit_with_binary(tmp_path)
    unit.write_text(unit.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "Unknown key" in r.stdout + r.stderr


def test_systemd_unit_settings():
    s = df.unit_settings()
    get = lambda k: s.get(("[Service]", k), [None])[0]  # noqa: E731
    start = df.unit_exec(key="ExecStart")
    assert start[:2] == ["/usr/bin/agentvault", "serve"]
    assert df.cmd_option(start, "--state-dir") == "${STATE_DIRECTORY}" and get("StateDirectory") == "agentvault"
    assert df.unit_exec(key="ExecStartPre")[:2] == ["/usr/bin/agentvault", "check"]
    assert df.cmd_option(start, "-c") == df.cmd_option(df.unit_exec(key="ExecStartPre"), "-c")
    assert get("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert get("DynamicUser") == "yes" and get("User") == "agentvault"
    assert get("ProtectSystem") == "strict" and get("NoNewPrivileges") == "yes"
    assert int(get("LimitNOFILE")) >= 65536
    assert get("KillSignal") == "SIGTERM"
    # drain-friendly: longer than any drain the shipped configurations ask for
    worst = max(sum(df.drain_seconds(t)) for t in (df.k8s_config_text(), df.COMPOSE_CONF.read_text(), ""))
    assert int(get("TimeoutStopSec")) > worst + 5, (get("TimeoutStopSec"), worst)


# ---- Kubernetes -----------------------------------------------------------------

def _node_modules():
    nm = df.ROOT / "tests" / "deploy" / "node_modules"
    assert (nm / "kubernetes-models" / "package.json").is_file(), \
        "tests/deploy/node_modules is missing: run scripts/setup-node.sh"
    return nm


def test_kubernetes_manifests_pass_the_schema_check():
    _node_modules()
    files = sorted(str(p) for p in df.K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    r = subprocess.run(["node", str(VALIDATOR)] + files, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(": valid") == len(df.k8s_objects()), r.stdout


def test_kubernetes_schema_check_catches_errors(tmp_path):
    """The validator can fail: a probe without a port, a string replica count."""
    _node_modules()
    dep = df.k8s_deployment()
    bad = yaml.safe_load(yaml.safe_dump(dep))
    del bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"]
    bad["spec"]["replicas"] = "three"
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    r = subprocess.run(["node", str(VALIDATOR), str(p)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "INVALID" in r.stdout, r.stdout + r.stderr
    assert "port" in r.stdout and "replicas" in r.stdout, r.stdout


def test_kustomization_lists_every_manifest():
    k = yaml.safe_load((df.K8S / "kustomization.yaml").read_text())
    assert sorted(k["resources"]) == sorted(p.name for p in df.K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_kubernetes_objects_agree(tmp_path):
    objs = df.k8s_objects()
    kinds = sorted(k for k, _ in objs)
    assert kinds == sorted(["ConfigMap", "Secret", "Secret", "Deployment", "Service", "PodDisruptionBudget",
                            "NetworkPolicy"]), kinds
    img = df.image()
    dep = df.k8s_deployment()
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    sel = dep["spec"]["selector"]["matchLabels"]
    assert sel.items() <= labels.items()
    assert dep["spec"]["replicas"] >= 2
    ru = dep["spec"]["strategy"]["rollingUpdate"]
    assert ru["maxUnavailable"] == 0
    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        (o,) = [v for (k, _), v in objs.items() if k == kind]
        s = o["spec"]["selector"] if kind == "Service" else (
            o["spec"]["selector"]["matchLabels"] if kind == "PodDisruptionBudget" else
            o["spec"]["podSelector"]["matchLabels"])
        assert s.items() <= labels.items(), kind

    c = df.k8s_container()
    # The container runs the image's ENTRYPOINT and CMD unchanged.
    assert "command" not in c and "args" not in c
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"proxy": img.port}
    text = df.k8s_config_text()
    assert df.config_value(text, "listen") == f"0.0.0.0:{img.port}"
    (svc,) = [v for (k, _), v in objs.items() if k == "Service"]
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["proxy"]
    (np,) = [v for (k, _), v in objs.items() if k == "NetworkPolicy"]
    assert [p["port"] for p in np["spec"]["ingress"][0]["ports"]] == [img.port]
    for probe in ("readinessProbe", "livenessProbe"):
        hg = c[probe]["httpGet"]
        assert hg == {"path": "/healthz", "port": "proxy"}, probe
    # Readiness notices the drain before the listener closes.
    rp = c["readinessProbe"]
    delay, timeout = df.drain_seconds(text)
    assert rp["periodSeconds"] * rp["failureThreshold"] < delay, (rp, delay)
    # The grace period covers preStop + drain_delay + drain_timeout.
    pre = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre[0] == "sleep"
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace >= int(pre[1]) + delay + timeout + 2, (grace, pre, delay, timeout)
    # The image's user; nothing writable but what is mounted.
    psc = pod["spec"]["securityContext"]
    assert (psc["runAsUser"], psc["runAsGroup"]) == img.uid_gid and psc["runAsNonRoot"] is True
    csc = c["securityContext"]
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
    assert pod["spec"]["automountServiceAccountToken"] is False
    # The configuration is mounted where the CMD reads it.
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    conf_arg = df.cmd_option(img.cmd, "-c")
    assert conf_arg == mounts["config"] + "/agentvault.conf"
    assert vols["config"]["configMap"]["name"] in {n for k, n in objs if k == "ConfigMap"}
    # Every file: reference names a key of a Secret projected into the mount.
    sec_dir = mounts["secrets"]
    keys = set()
    for src in vols["secrets"]["projected"]["sources"]:
        keys |= set(objs[("Secret", src["secret"]["name"])]["stringData"])
    refs = re.findall(r"file:(\S+)", text) + [df.config_value(text, "tokens_file")]
    assert refs
    for ref in refs:
        d, _, name = ref.rpartition("/")
        assert d == sec_dir and name in keys, ref
    assert df.config_value(text, "ca_cert") and df.config_value(text, "ca_key")
    assert df.config_value(text, "audit") == "stdout"
    # With real files behind the references, the daemon accepts it.
    files = _real_ca_and_tokens(tmp_path)
    files["openai-api-key"] = b"sk-test"
    r = _check_config(text, tmp_path, sec_dir, files)
    assert r.returncode == 0, r.stderr
