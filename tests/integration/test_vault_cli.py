"""`agentvault secret`: the encrypted vault through the real CLI.

Values go in on stdin (or a no-echo prompt on a pseudo-terminal), the master
password through AGENTVAULT_PASSWORD, a password file or the prompt. No value
or password may ever show up in output, argv or the environment the process
exposes, and a failed command must leave the vault file byte for byte as it
was.
"""
import errno
import os
import pty
import re
import secrets as _secrets
import select
import stat
import subprocess
import time

import pytest

from avtest.daemon import base_env, require_binary

PW = "master-" + _secrets.token_hex(8)
TIMEOUT = 30.0


def _run(args, env, stdin=None, home=None):
    cmd = [str(require_binary()), "secret"] + [str(a) for a in args]
    try:
        return subprocess.run(cmd, input=stdin, capture_output=True, env=env, timeout=TIMEOUT,
                              stdin=None if stdin is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{cmd} did not finish within {TIMEOUT}s")


class Vault:
    """A vault file in a temporary HOME, driven through the CLI."""

    def __init__(self, tmp_path):
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.path = tmp_path / "v.avv"
        self.seen = []  # every value and password used: must never be printed

    def env(self, password=PW, **extra):
        e = base_env(self.home)
        if password is not None:
            e["AGENTVAULT_PASSWORD"] = password
            self.seen.append(password)
        e.update(extra)
        return e

    def run(self, *args, stdin=None, env=None, vault=True):
        a = list(args) + (["--vault", self.path] if vault else [])
        p = _run(a, env if env is not None else self.env(), stdin=stdin)
        out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
        for s in self.seen:  # (too short to be told apart from other text: skipped)
            assert len(s.strip()) < 8 or s.strip() not in out, f"{s!r} printed by secret {args}: {out!r}"
        return p

    def set(self, name, value, **kw):
        self.seen.append(value)
        p = self.run("set", name, stdin=value.encode(), **kw)
        assert p.returncode == 0, p.stderr
        return p

    def names(self, **kw):
        p = self.run("list", **kw)
        assert p.returncode == 0, p.stderr
        lines = p.stdout.decode().splitlines()
        return [ln.split()[0] for ln in lines[1:]]

    def bytes(self):
        return self.path.read_bytes()


@pytest.fixture
def vault(tmp_path):
    require_binary()
    return Vault(tmp_path)


def _err(p):
    return p.stderr.decode(errors="replace")


def test_set_list_roundtrip(vault):
    v1 = "sk-" + _secrets.token_hex(16)
    v2 = "ghp_" + _secrets.token_hex(16)
    p = vault.set("openai", v1 + "\n")  # one trailing newline is dropped
    assert "created vault" in _err(p)
    vault.set("github.token", v2)
    assert stat.S_IMODE(vault.path.stat().st_mode) == 0o600
    p = vault.run("list")
    assert p.returncode == 0, _err(p)
    out = p.stdout.decode()
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "CREATED", "UPDATED"]
    assert [ln.split()[0] for ln in lines[1:]] == ["github.token", "openai"]
    assert all(re.fullmatch(r"\S+\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ln)
               for ln in lines[1:]), out
    # the file holds ciphertext only
    data = vault.bytes()
    for s in (v1, v2, PW):
        assert s.encode() not in data
    # replacing keeps one entry
    vault.set("openai", "sk-rotated-" + _secrets.token_hex(8))
    assert vault.names() == ["github.token", "openai"]


def test_default_vault_in_state_dir(vault):
    vault.set("svc", "value-" + _secrets.token_hex(8), vault=False)
    f = vault.home / ".local" / "state" / "agentvault" / "vault.avv"
    assert f.is_file()
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE(f.parent.stat().st_mode) == 0o700
    assert vault.names(vault=False) == ["svc"]
    # --state-dir and XDG_STATE_HOME pick other places
    sd = vault.home / "sd"
    p = vault.run("set", "other", "--state-dir", sd, stdin=b"v1", vault=False)
    assert p.returncode == 0, _err(p)
    assert (sd / "vault.avv").is_file()
    env = vault.env(XDG_STATE_HOME=str(vault.home / "xdg"))
    p = vault.run("set", "x", stdin=b"v2", env=env, vault=False)
    assert p.returncode == 0, _err(p)
    assert (vault.home / "xdg" / "agentvault" / "vault.avv").is_file()


def test_wrong_password_exit_1_file_unchanged(vault):
    vault.set("openai", "sk-" + _secrets.token_hex(8))
    before = vault.bytes()
    bad = vault.env(password="not-the-password")
    for args, stdin in ((("list",), None), (("rm", "openai"), None), (("set", "x"), b"val"),
                        (("passwd",), None)):
        e = dict(bad, AGENTVAULT_NEW_PASSWORD="newpw")
        p = vault.run(*args, stdin=stdin, env=e)
        assert p.returncode == 1, (args, _err(p))
        msg = _err(p)
        assert msg.startswith("agentvault: ") and msg.count("\n") == 1, msg
        assert str(vault.path) in msg and "wrong master password" in msg, msg
        assert vault.bytes() == before
    assert vault.names() == ["openai"]


def test_damaged_file_names_file_and_problem(vault):
    vault.set("a", "value-a")
    data = bytearray(vault.bytes())
    for off, what in ((len(data) // 2, "damaged"), (3, "not an agentvault vault")):
        bad = bytearray(data)
        bad[off] ^= 0x20
        vault.path.write_bytes(bytes(bad))
        p = vault.run("list")
        assert p.returncode == 1, _err(p)
        assert str(vault.path) in _err(p) and what in _err(p), _err(p)
        assert vault.bytes() == bytes(bad)
    vault.path.write_bytes(bytes(data[:100]))
    p = vault.run("list")
    assert p.returncode == 1 and "truncated" in _err(p), _err(p)
    vault.path.write_bytes(bytes(data) + b"garbage")
    p = vault.run("list")
    assert p.returncode == 1 and "unexpected bytes" in _err(p), _err(p)


def test_missing_vault(vault):
    for args in (("list",), ("rm", "x"), ("passwd",)):
        p = vault.run(*args)
        assert p.returncode == 1, _err(p)
        assert "no such vault" in _err(p) and str(vault.path) in _err(p)
    assert not vault.path.exists()


def test_rm(vault):
    vault.set("a", "value-a")
    vault.set("b", "value-b")
    p = vault.run("rm", "a")
    assert p.returncode == 0, _err(p)
    assert vault.names() == ["b"]
    before = vault.bytes()
    p = vault.run("rm", "a")
    assert p.returncode == 1 and "no secret named a" in _err(p), _err(p)
    assert vault.bytes() == before
    p = vault.run("rm", "b")
    assert p.returncode == 0
    p = vault.run("list")
    assert p.returncode == 0 and p.stdout == b"" and "holds no secrets" in _err(p)


def test_passwd_env_and_files(vault, tmp_path):
    vault.set("a", "value-a")
    new = "new-" + _secrets.token_hex(8)
    vault.seen.append(new)
    p = vault.run("passwd", env=vault.env(AGENTVAULT_NEW_PASSWORD=new))
    assert p.returncode == 0, _err(p)
    p = vault.run("list")
    assert p.returncode == 1 and "wrong master password" in _err(p)
    assert vault.names(env=vault.env(password=new)) == ["a"]
    # the same through files (a trailing newline is not part of the password)
    pf, nf = tmp_path / "pw", tmp_path / "newpw"
    pf.write_text(new + "\n")
    third = "third-" + _secrets.token_hex(8)
    vault.seen.append(third)
    nf.write_text(third + "\n")
    p = vault.run("passwd", "--password-file", pf, "--new-password-file", nf,
                  env=vault.env(password=None))
    assert p.returncode == 0, _err(p)
    assert vault.names(env=vault.env(password=third)) == ["a"]
    p = vault.run("list", "--password-file", nf, env=vault.env(password=None))
    assert p.returncode == 0 and b"a " in p.stdout


def test_no_password_key_file(vault):
    p = vault.run("set", "tok", "--no-password", stdin=b"token-value", env=vault.env(password=None))
    assert p.returncode == 0, _err(p)
    key = vault.path.with_suffix(".key")
    assert key.is_file()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(vault.path.stat().st_mode) == 0o600
    assert vault.names(env=vault.env(password=None)) == ["tok"]
    before = vault.bytes()
    # --no-password is for creation only
    p = vault.run("set", "x", "--no-password", stdin=b"v", env=vault.env(password=None))
    assert p.returncode == 2 and "creating" in _err(p), _err(p)
    # a wrong key file
    other = vault.path.parent / "other.avv"
    p = _run(["set", "o", "--no-password", "--vault", other], vault.env(password=None), stdin=b"v")
    assert p.returncode == 0, _err(p)
    saved = key.read_bytes()
    key.write_bytes(other.with_suffix(".key").read_bytes())
    p = vault.run("list", env=vault.env(password=None))
    assert p.returncode == 1 and str(key) in _err(p) and "does not belong" in _err(p), _err(p)
    # a missing key file
    key.unlink()
    p = vault.run("list", env=vault.env(password=None))
    assert p.returncode == 1 and str(key) in _err(p) and "no such key file" in _err(p), _err(p)
    assert vault.bytes() == before
    key.write_bytes(saved)
    key.chmod(0o600)
    # passwd turns it into a password vault and removes the key file
    p = vault.run("passwd", env=vault.env(password=None, AGENTVAULT_NEW_PASSWORD=PW))
    assert p.returncode == 0, _err(p)
    assert not key.exists()
    assert vault.names() == ["tok"]


def test_value_never_in_argv(vault):
    value = "sk-argv-" + _secrets.token_hex(8)
    p = vault.run("set", "openai", value)
    assert p.returncode == 2, _err(p)
    assert "never from the command line" in _err(p)
    assert value not in _err(p) and value.encode() not in p.stdout
    assert not vault.path.exists()
    vault.set("openai", "x")
    before = vault.bytes()
    p = vault.run("set", "openai", "--vault", vault.path, value, vault=False)
    assert p.returncode == 2 and value not in _err(p)
    assert vault.bytes() == before


@pytest.mark.parametrize("args", [("bogus",), ("set",), ("rm",), ("set", "a b"),
                                  ("set", "x" * 65), ("list", "extra"), ("list", "--frob"),
                                  ("list", "--vault"), ("passwd", "--no-password"), ()])
def test_usage_errors_exit_2(vault, args):
    p = vault.run(*args, stdin=b"v", vault=False)
    assert p.returncode == 2, (args, _err(p))
    assert _err(p).startswith("agentvault: ")


def test_empty_and_oversized_values(vault):
    p = vault.run("set", "a", stdin=b"")
    assert p.returncode == 1 and "empty" in _err(p)
    p = vault.run("set", "a", stdin=b"\n")
    assert p.returncode == 1 and "empty" in _err(p)
    assert not vault.path.exists()
    vault.set("a", "v" * 65536)
    p = vault.run("set", "b", stdin=b"v" * 65537)
    assert p.returncode == 1 and "larger" in _err(p)
    assert vault.names() == ["a"]


def test_no_password_source_without_tty(vault):
    vault.set("a", "v")
    p = vault.run("list", env=vault.env(password=None))
    assert p.returncode == 1 and "AGENTVAULT_PASSWORD" in _err(p), _err(p)


# ---- a real terminal ------------------------------------------------------


class Pty:
    """The CLI on a pseudo-terminal (its controlling tty)."""

    def __init__(self, args, env):
        binary = str(require_binary())
        argv = [binary, "secret"] + [str(a) for a in args]
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child
            try:
                os.execve(binary, argv, env)
            finally:
                os._exit(127)
        self.out = b""

    def _read(self, deadline):
        r, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            return False
        try:
            chunk = os.read(self.fd, 4096)
        except OSError as e:
            if e.errno == errno.EIO:
                return None
            raise
        if not chunk:
            return None
        self.out += chunk
        return True

    def expect(self, text, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        start = 0
        while text.encode() not in self.out[start:]:
            if time.monotonic() > deadline or self._read(deadline) is None:
                raise AssertionError(f"no {text!r} in {self.out!r}")
        return self

    def send(self, line):
        os.write(self.fd, line.encode() + b"\n")

    def finish(self):
        deadline = time.monotonic() + TIMEOUT
        while self._read(deadline) not in (None, False):
            pass
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)

    def proc_file(self, name):
        with open(f"/proc/{self.pid}/{name}", "rb") as f:
            return f.read()


def test_prompts_without_echo(vault):
    value = "sk-tty-" + _secrets.token_hex(8)
    pw = "tty-pw-" + _secrets.token_hex(8)
    t = Pty(["set", "svc", "--vault", vault.path], vault.env(password=None))
    t.expect("Value for svc:").send(value)
    t.expect("New master password").send(pw)
    t.expect("Repeat").send(pw)
    assert t.finish() == 0, t.out
    assert value.encode() not in t.out and pw.encode() not in t.out, t.out
    assert vault.names(env=vault.env(password=pw)) == ["svc"]
    # passwd: current password, then the new one twice; a mismatch changes nothing
    before = vault.bytes()
    t = Pty(["passwd", "--vault", vault.path], vault.env(password=None))
    t.expect("Master password").send(pw)
    t.expect("New master password").send("one")
    t.expect("Repeat").send("two")
    assert t.finish() == 1
    assert b"differ" in t.out and vault.bytes() == before
    t = Pty(["passwd", "--vault", vault.path], vault.env(password=None))
    t.expect("Master password").send(pw)
    t.expect("New master password").send("three")
    t.expect("Repeat").send("three")
    assert t.finish() == 0, t.out
    assert b"three" not in t.out
    assert vault.names(env=vault.env(password="three")) == ["svc"]


def test_env_password_scrubbed_and_value_not_in_argv(vault):
    """While the CLI waits at the value prompt, its environment and command
    line hold neither the password nor anything secret."""
    vault.set("a", "v")
    value = "sk-proc-" + _secrets.token_hex(8)
    t = Pty(["set", "b", "--vault", vault.path], vault.env())
    t.expect("Value for b:")
    environ = t.proc_file("environ")
    cmdline = t.proc_file("cmdline")
    assert PW.encode() not in environ, environ
    assert b"AGENTVAULT_PASSWORD" not in environ
    t.send(value)
    assert t.finish() == 0, t.out
    assert value.encode() not in cmdline and value.encode() not in t.out
    assert vault.names() == ["a", "b"]


# ---- files ssh would refuse (issue 12, item 8) ------------------------------

def _one_line(p):
    err = _err(p).strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o606], ids=oct)
def test_refuses_vault_open_to_group_or_others(vault, mode):
    vault.set("openai", "sk-" + _secrets.token_hex(8))
    vault.path.chmod(mode)
    before = vault.bytes()
    for args in (("list",), ("set", "other"), ("rm", "openai"), ("passwd",)):
        p = vault.run(*args, stdin=b"value-" + _secrets.token_bytes(4).hex().encode(),
                      env=vault.env(AGENTVAULT_NEW_PASSWORD=PW))
        err = _one_line(p)
        assert p.returncode == 1, (args, err)
        assert f"chmod 600 {vault.path}" in err, err
    # refused, not repaired behind the operator's back
    assert stat.S_IMODE(vault.path.stat().st_mode) == mode
    assert vault.bytes() == before
    vault.path.chmod(0o600)
    assert vault.names() == ["openai"]


def test_refuses_key_file_open_to_others(vault):
    p = vault.run("set", "tok", "--no-password", stdin=b"token-value", env=vault.env(password=None))
    assert p.returncode == 0, _err(p)
    key = vault.path.with_suffix(".key")
    key.chmod(0o644)
    p = vault.run("list", env=vault.env(password=None))
    err = _one_line(p)
    assert p.returncode == 1 and f"chmod 600 {key}" in err, err


def test_refuses_symlinked_vault_and_key_file(vault, tmp_path):
    vault.set("openai", "sk-" + _secrets.token_hex(8))
    before = vault.bytes()
    link = tmp_path / "link.avv"
    link.symlink_to(vault.path)
    for args in (["list"], ["set", "x"]):
        p = _run(args + ["--vault", link], vault.env(), stdin=b"value")
        err = _one_line(p)
        assert p.returncode == 1 and str(link) in err and "symbolic link" in err, err
    assert link.is_symlink() and vault.bytes() == before
    # a dangling link is not created through either
    dangling = tmp_path / "dangling.avv"
    dangling.symlink_to(tmp_path / "nowhere.avv")
    p = _run(["set", "x", "--vault", dangling], vault.env(AGENTVAULT_NEW_PASSWORD=PW), stdin=b"value")
    assert p.returncode == 1 and str(dangling) in _one_line(p), _err(p)
    assert not (tmp_path / "nowhere.avv").exists()
    # the key file of a key-file vault
    kv = tmp_path / "k.avv"
    p = _run(["set", "tok", "--no-password", "--vault", kv], vault.env(password=None), stdin=b"v")
    assert p.returncode == 0, _err(p)
    key = tmp_path / "k.key"
    real = tmp_path / "real.key"
    key.rename(real)
    key.symlink_to(real)
    p = _run(["list", "--vault", kv], vault.env(password=None))
    err = _one_line(p)
    assert p.returncode == 1 and str(key) in err and "symbolic link" in err, err


def test_refuses_vault_owned_by_another_user(vault, tmp_path):
    vault.set("openai", "sk-" + _secrets.token_hex(8))
    if os.geteuid() == 0:
        os.chown(vault.path, 65534, 65534)
        path = vault.path
    else:  # a file someone else (root) owns
        path = "/etc/hostname"
        assert os.stat(path).st_uid != os.geteuid()
    p = _run(["list", "--vault", path], vault.env())
    err = _one_line(p)
    assert p.returncode == 1 and str(path) in err and "owned by" in err, err


def test_set_removes_stale_temporary_files(vault):
    vault.set("a", "v1-" + _secrets.token_hex(8))
    dead = subprocess.Popen(["true"])
    dead.wait()
    d = vault.path.parent
    name = vault.path.name
    stale = d / f"{name}.tmp-{dead.pid}-0badc0de"        # its writer is gone
    old = d / f"{name}.tmp-{os.getpid()}-00c0ffee"        # alive, but hours old
    live = d / f"{name}.tmp-{os.getpid()}-1badcafe"       # a live writer's
    other = d / f"other.avv.tmp-{dead.pid}-0badc0de"      # another file's
    for f in (stale, old, live, other):
        f.write_bytes(b"partial")
        f.chmod(0o600)
    two_hours = time.time() - 7200
    os.utime(old, (two_hours, two_hours))
    vault.set("b", "v2-" + _secrets.token_hex(8))
    assert not stale.exists() and not old.exists()
    assert live.exists() and other.exists()
    assert vault.names() == ["a", "b"]


def test_concurrent_sets_lose_no_update(vault):
    """Writers that run at once (two agents' setup scripts) each read, change
    and save the whole vault: without a lock one of them dropped the other's
    entry. With it, every name set is there."""
    env = vault.env()
    p = vault.run("set", "first", stdin=b"v0", env=env)
    assert p.returncode == 0, _err(p)
    names = [f"n{i}" for i in range(6)]
    cmd = [str(require_binary()), "secret", "set"]
    procs = [subprocess.Popen(cmd + [n, "--vault", str(vault.path)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in names]
    for n, pr in zip(names, procs):  # all of them read their value at once
        pr.stdin.write(b"value-of-" + n.encode())
        pr.stdin.close()
    for pr in procs:
        pr.wait(timeout=TIMEOUT)
        assert pr.returncode == 0, pr.stderr.read().decode(errors="replace")
    assert vault.names(env=env) == sorted(["first"] + names)
    # the lock file is the vault's own, private, and not a temporary file
    lock = vault.path.parent / (vault.path.name + ".lock")
    assert lock.exists() and stat.S_IMODE(lock.stat().st_mode) == 0o600
