"""The Node installs the compat suite uses, and file leak checks.

tests/compat/node/node_modules comes from `npm ci` in scripts/setup-node.sh
(package.json / package-lock.json here pin every version). Codex comes from
tests/node (pinned 0.131.0) and tests/node/codex-latest (the newest), also
installed by scripts/setup-node.sh. Anything missing fails the test with
the command that fixes it; nothing is skipped.
"""
import json
import os
from pathlib import Path

import pytest

import compat

NODE_DIR = Path(__file__).resolve().parent
REPO = NODE_DIR.parents[2]
MODULES = NODE_DIR / "node_modules"
BIN = MODULES / ".bin"
CODEX_INSTALLS = {
    "0.131.0": REPO / "tests" / "node" / "node_modules" / ".bin" / "codex",
    "latest": REPO / "tests" / "node" / "codex-latest" / "node_modules" / ".bin" / "codex",
}
FIX = "run scripts/setup-node.sh"


def node():
    return compat.which("node")


def pinned():
    return json.loads((NODE_DIR / "package.json").read_text())["dependencies"]


def require_modules():
    """Every pinned package is installed at its pinned version."""
    node()
    for name, version in pinned().items():
        pj = MODULES / name / "package.json"
        if not pj.is_file():
            pytest.fail(f"{name} is not installed in {MODULES}: {FIX}", pytrace=False)
        got = json.loads(pj.read_text()).get("version")
        if got != version:
            pytest.fail(f"{name} {got} installed in {MODULES}, package.json pins {version}: "
                        f"{FIX}", pytrace=False)


def require_bin(name):
    require_modules()
    p = BIN / name
    if not (p.exists() and os.access(p, os.X_OK)):
        pytest.fail(f"{p} missing or not executable: {FIX}", pytrace=False)
    return p


def require_codex(which):
    p = CODEX_INSTALLS[which]
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.fail(f"Codex {which} is not installed at {p}: {FIX}", pytrace=False)
    return p


def files_containing(roots, needles, limit=64 << 20):
    """[(path)] of regular files under roots containing any needle (bytes)."""
    hits = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                p = Path(dirpath) / f
                try:
                    if p.is_symlink() or not p.is_file() or p.stat().st_size > limit:
                        continue
                    data = p.read_bytes()
                except OSError:
                    continue
                if any(n in data for n in needles):
                    hits.append(p)
    return hits


def assert_no_key_in_files(roots, keys, result=None):
    """No real key (nor its base64 form) in any file a client wrote, nor in
    its output."""
    from avtest import daemon as avd
    forbidden = []
    for k in keys:
        forbidden.append(k)
        forbidden += avd.base64_fragments(k, prefixes=[""])
    needles = [f.encode() for f in forbidden if f]
    hits = files_containing(roots, needles)
    assert not hits, f"a real key in files the client wrote: {sorted(map(str, hits))}"
    if result is not None:
        assert not avd.find_leaks(result.stdout + result.stderr, forbidden), \
            "a real key in the client's output"


def exchanges_in_log(d):
    """[(host, agent proto, origin proto)] of every exchange in the daemon's
    log (the embedded default writes no audit log to read them from)."""
    out = []
    for line in d.log_text().splitlines():
        if " exchange " not in line:
            continue
        f = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
        agent, _, origin = f.get("proto", "-").partition(">")
        out.append((f.get("host", "").rsplit(":", 1)[0], agent, origin))
    return out
