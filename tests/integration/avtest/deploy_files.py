"""The deploy recipes (deploy/), read the way the tests use them.

test_replicas.py runs what these files say (the image's ENTRYPOINT, CMD,
USER and HEALTHCHECK, the ConfigMap's configuration, the Deployment's probe
path and drain timings); test_deploy_files.py checks the files themselves.
Reading them here, instead of repeating their values in the tests, is what
keeps the recipes and the tested commands from drifting apart.
"""
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "docker" / "compose.yaml"
COMPOSE_CONF = DEPLOY / "docker" / "agentvault.conf"
UNIT = DEPLOY / "systemd" / "agentvault.service"
K8S = DEPLOY / "kubernetes"


@dataclass
class Stage:
    base: str
    name: str
    instructions: list = field(default_factory=list)   # [(KEYWORD, raw argument text)]

    def all(self, keyword):
        return [arg for k, arg in self.instructions if k == keyword]

    def last(self, keyword):
        found = self.all(keyword)
        return found[-1] if found else None


def _exec_form(arg):
    """A JSON-array (exec form) argument; anything else is an error here:
    the recipes use exec form so that no shell sits between tini and the
    daemon."""
    arg = arg.strip()
    assert arg.startswith("["), f"not exec form: {arg!r}"
    v = json.loads(arg)
    assert isinstance(v, list) and all(isinstance(s, str) for s in v), arg
    return v


def dockerfile_stages(path=DOCKERFILE):
    """The Dockerfile's stages, instructions joined across line continuations."""
    logical, cur = [], ""
    for line in path.read_text().splitlines():
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue  # a comment inside a continued instruction
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        logical.append(cur + s)
        cur = ""
    assert not cur, "Dockerfile ends in a line continuation"
    stages = []
    for ins in logical:
        kw, _, arg = ins.partition(" ")
        kw = kw.upper()
        if kw == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", arg.strip(), re.I)
            assert m, f"FROM {arg!r}"
            stages.append(Stage(m.group(1), m.group(2) or ""))
            continue
        assert stages, f"{kw} before FROM"
        stages[-1].instructions.append((kw, arg.strip()))
    return stages


@dataclass
class Image:
    """The runtime stage: what a container of the image runs."""
    stages: list
    runtime: Stage
    entrypoint: list
    cmd: list
    user: str
    healthcheck_options: dict
    healthcheck_cmd: list
    expose: list
    volumes: list
    stopsignal: str
    apt_packages: dict          # stage name -> packages it installs

    @property
    def port(self):
        assert len(self.expose) == 1, self.expose
        return int(self.expose[0].split("/")[0])

    @property
    def uid_gid(self):
        u, _, g = self.user.partition(":")
        return int(u), int(g or u)


def _apt_packages(stage):
    pkgs = []
    for arg in stage.all("RUN"):
        for m in re.finditer(r"apt-get install ([^&;]*)", arg):
            pkgs += [w for w in m.group(1).split() if not w.startswith("-")]
    return pkgs


def image(path=DOCKERFILE):
    stages = dockerfile_stages(path)
    runtime = next(s for s in stages if s.name == "runtime")
    hc = runtime.last("HEALTHCHECK")
    assert hc, "no HEALTHCHECK in the runtime stage"
    opts = dict(re.findall(r"--([a-z-]+)=(\S+)", hc))
    m = re.search(r"\bCMD\s+(\[.*\])\s*$", hc)
    assert m, f"HEALTHCHECK without an exec-form CMD: {hc!r}"
    vol = runtime.last("VOLUME")
    return Image(stages=stages, runtime=runtime,
                 entrypoint=_exec_form(runtime.last("ENTRYPOINT")),
                 cmd=_exec_form(runtime.last("CMD")),
                 user=runtime.last("USER"),
                 healthcheck_options=opts, healthcheck_cmd=_exec_form(m.group(1)),
                 expose=runtime.last("EXPOSE").split(),
                 volumes=_exec_form(vol) if vol else [],
                 stopsignal=runtime.last("STOPSIGNAL"),
                 apt_packages={s.name: _apt_packages(s) for s in stages})


def cmd_option(argv, name):
    """The value of option |name| in an argv list (None if absent)."""
    for i, a in enumerate(argv):
        if a == name:
            return argv[i + 1]
    return None


def k8s_objects():
    """Every object of every manifest in deploy/kubernetes, by (kind, name)."""
    objs = {}
    for f in sorted(K8S.glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(f.read_text()):
            if doc is None:
                continue
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objs, f"{key} defined twice"
            objs[key] = doc
    return objs


def k8s_config_text():
    """The daemon configuration the ConfigMap holds."""
    cms = [o for (k, _), o in k8s_objects().items() if k == "ConfigMap"]
    assert len(cms) == 1, cms
    return cms[0]["data"]["agentvault.conf"]


def k8s_deployment():
    deps = [o for (k, _), o in k8s_objects().items() if k == "Deployment"]
    assert len(deps) == 1, deps
    return deps[0]


def k8s_container():
    cs = k8s_deployment()["spec"]["template"]["spec"]["containers"]
    assert len(cs) == 1, cs
    return cs[0]


def config_value(text, key, section="proxy"):
    """A key of a section of an agentvault.conf text (None if absent)."""
    cur = None
    for line in text.splitlines():
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        if s.startswith("["):
            cur = s.strip("[]").split()[0]
            continue
        k, _, v = s.partition("=")
        if cur == section and k.strip() == key:
            return v.strip()
    return None


def drain_seconds(text):
    """(drain_delay, drain_timeout) of a configuration, with the defaults."""
    d = config_value(text, "drain_delay")
    t = config_value(text, "drain_timeout")
    return float(d or 0), float(t or 10)


def unit_settings(path=UNIT):
    """{key: [values]} of the unit's [Service] section."""
    out, sec = {}, None
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        if s.startswith("["):
            sec = s
            continue
        k, _, v = s.partition("=")
        out.setdefault((sec, k.strip()), []).append(v.strip())
    return out


def unit_exec(path=UNIT, key="ExecStart"):
    return shlex.split(unit_settings(path)[("[Service]", key)][0])
