"""Starting, probing and stopping the agentvault daemon; secrets; log checks."""
import base64
import os
import re
import secrets as _secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import client

REPO = Path(__file__).resolve().parents[3]
LISTEN_RE = re.compile(r"agentvault: listening on 127\.0\.0\.1:(\d+)")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
# Users the suite puts in front of proxy tokens in Basic credentials.
BASIC_USERS = ("agent", "agent1", "x", "")


# Variables passed through from the test runner's environment to the daemon
# (sanitizer builds and uninstalled libraries need them).
PASSTHROUGH_ENV = ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS", "MSAN_OPTIONS",
                   "TSAN_OPTIONS", "ASAN_SYMBOLIZER_PATH", "LLVM_SYMBOLIZER_PATH",
                   "LD_LIBRARY_PATH", "LLVM_PROFILE_FILE")


def base_env(home):
    """The minimal environment every agentvault process gets."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    env.update({k: os.environ[k] for k in PASSTHROUGH_ENV if k in os.environ})
    return env


def binary_path():
    p = os.environ.get("AGENTVAULT_BIN")
    return Path(p) if p else REPO / "build" / "daemon" / "agentvault"


def require_binary():
    """Returns the daemon path or fails the test (never skips)."""
    import pytest
    p = binary_path()
    if not p.is_file() or not os.access(p, os.X_OK):
        pytest.fail(f"agentvault binary not found or not executable at {p} "
                    f"(build it with meson/ninja into build/, or set AGENTVAULT_BIN)",
                    pytrace=False)
    return p


@dataclass
class Secrets:
    openai_key: str
    github_token: str
    github_token_file: Path
    agent_token: str
    plain_key: str

    @classmethod
    def make(cls, directory):
        directory = Path(directory)
        gh = "ghp_test" + _secrets.token_hex(16)
        f = directory / "github_token"
        f.write_text(gh + "\n")
        f.chmod(0o600)
        return cls(openai_key="sk-test-" + _secrets.token_hex(12),
                   github_token=gh, github_token_file=f,
                   agent_token="avtok-" + _secrets.token_hex(12),
                   plain_key="pk-test-" + _secrets.token_hex(12))

    def env(self):
        return {"OPENAI_API_KEY": self.openai_key, "AGENT1_TOKEN": self.agent_token,
                "PLAIN_API_KEY": self.plain_key}

    def values(self):
        return [self.openai_key, self.github_token, self.agent_token, self.plain_key]


def base64_fragments(secret, prefixes=()):
    """Base64 strings that must not occur in logs: the full encodings of
    PREFIX+secret, and for each of the three alignments the part of the
    encoding of the secret that does not depend on surrounding bytes."""
    s = secret.encode()
    out = set()
    for p in prefixes:
        out.add(base64.b64encode(p.encode() + s).decode())
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + s + b"\0\0\0").decode()
        first = (8 * k + 5) // 6          # first char whose bits start at byte >= k
        last = (8 * (k + len(s))) // 6    # chars [first, last) lie inside the secret
        frag = enc[first:last]
        if len(frag) >= 12:
            out.add(frag)
    return sorted(out)


def forbidden_strings(secrets_):
    out = []
    for v in secrets_.values():
        out.append(v)
        out += base64_fragments(v, prefixes=[u + ":" for u in BASIC_USERS])
    return out


def find_leaks(text, forbidden):
    return [f for f in forbidden if f and f in text]


def config_text(secrets_, *, unmatched="passthrough", proxy_extra="", tokens=False,
                services=True, extra=""):
    parts = ["[proxy]", f"unmatched = {unmatched}"]
    if proxy_extra:
        parts.append(proxy_extra.strip("\n"))
    parts.append("")
    if services:
        parts += [
            '[service "openai"]',
            "host = api.openai.com",
            "auth = bearer",
            "secret = env:OPENAI_API_KEY",
            "",
            '[service "github"]',
            "host = api.github.com",
            "path = /repos/*",
            "methods = GET, POST",
            'auth = header Authorization "token {secret}"',
            f"secret = file:{secrets_.github_token_file}",
            "",
        ]
    if tokens:
        parts += ['[token "agent1"]', "secret = env:AGENT1_TOKEN", ""]
    if extra:
        parts.append(extra.strip("\n"))
        parts.append("")
    return "\n".join(parts) + "\n"


def plain_service(port, name="plain", host="plain.test"):
    return (f'[service "{name}"]\nscheme = http\nhost = {host}\nport = {port}\n'
            f"auth = bearer\nsecret = env:PLAIN_API_KEY\n")


class Daemon:
    def __init__(self, argv, env, workdir, state_dir, secrets_, home):
        self.argv = [str(a) for a in argv]
        self.env = env
        self.workdir = Path(workdir)
        self.state_dir = Path(state_dir) if state_dir else None
        self.secrets = secrets_
        self.home = Path(home)  # HOME for clients
        self.stderr_lines = []
        self.stdout_lines = []
        self._cond = threading.Condition()
        self.port = None
        self.proc = None
        self.returncode = None
        self.stopped = False
        self.failed_start = False

    # -- lifecycle ----------------------------------------------------------
    def start(self):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     env=self.env, cwd=str(self.workdir),
                                     start_new_session=True)
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout_lines),
                             daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr_lines),
                             daemon=True)]
        for t in self._threads:
            t.start()
        deadline = time.monotonic() + START_TIMEOUT
        with self._cond:
            while self.port is None:
                if self.proc.poll() is not None and not any(t.is_alive() for t in self._threads):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.2))
        if self.port is None:
            self.failed_start = True
            rc = self.proc.poll()
            if rc is None:
                self.kill()
            raise AssertionError(
                f"agentvault did not print 'agentvault: listening on 127.0.0.1:PORT' within "
                f"{START_TIMEOUT}s (exit code {rc})\ncommand: {' '.join(self.argv)}\n"
                f"{self.log_dump()}")
        self._wait_healthy()
        return self

    def _pump(self, stream, sink):
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                sink.append(line)
                if self.port is None:
                    m = LISTEN_RE.search(line)
                    if m:
                        self.port = int(m.group(1))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _wait_healthy(self):
        try:
            self._probe_healthz()
        except BaseException:
            self.failed_start = True
            self.kill()
            raise

    def _probe_healthz(self):
        deadline = time.monotonic() + 5.0
        last = None
        while time.monotonic() < deadline:
            try:
                c = client.RawConn.connect(self.port, timeout=3)
            except ConnectionRefusedError as e:
                last = e
                time.sleep(0.05)
                continue
            try:
                c.send(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       b"Connection: close\r\n\r\n")
                r = c.read_response()
            finally:
                c.close()
            assert (r.status, r.body) == (200, b"ok\n"), \
                f"/healthz answered {r.status} {r.body!r}\n{self.log_dump()}"
            return
        raise AssertionError(f"cannot connect to 127.0.0.1:{self.port}: {last}\n{self.log_dump()}")

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def wait(self, timeout=STOP_TIMEOUT):
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        for t in self._threads:
            t.join(2)
        self.stopped = True
        return self.returncode

    def stop(self):
        """SIGTERM, wait <= 5 s; returns the exit code (None if it had to be killed)."""
        if self.stopped:
            return self.returncode
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        rc = self.wait(STOP_TIMEOUT)
        if rc is None:
            self.kill()
            return None
        return rc

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.stopped = True

    # -- logs ---------------------------------------------------------------
    def log_text(self):
        with self._cond:
            return "\n".join(self.stdout_lines + self.stderr_lines)

    def log_dump(self, limit=8000):
        with self._cond:
            return ("--- daemon stdout ---\n" + "\n".join(self.stdout_lines)[-limit:] +
                    "\n--- daemon stderr ---\n" + "\n".join(self.stderr_lines)[-limit:])

    def wait_log(self, predicate, timeout=5.0):
        """Waits for a log line satisfying predicate(line); returns it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.stdout_lines + self.stderr_lines:
                    if predicate(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching log line within {timeout}s\n"
                                         f"{self.log_dump()}")
                self._cond.wait(left)

    def assert_no_secrets(self):
        text = self.log_text()
        leaks = find_leaks(text, forbidden_strings(self.secrets))
        assert not leaks, f"secret material found in daemon output: {len(leaks)} string(s)" \
            f" (first starts {leaks[0][:6]!r}...)"

    # -- client helpers -----------------------------------------------------
    @property
    def ca_pem(self):
        assert self.state_dir is not None, "daemon started without --state-dir"
        return self.state_dir / "ca.pem"

    def proxy_url(self, scheme="http", userinfo=None):
        ui = f"{userinfo}@" if userinfo else ""
        return f"{scheme}://{ui}127.0.0.1:{self.port}"

    def proxy_args(self, scheme="http", userinfo=None, cacert=None):
        args = ["-x", self.proxy_url(scheme, userinfo)]
        if scheme == "https":
            args += ["--proxy-cacert", str(cacert or self.ca_pem)]
        return args

    def curl(self, *args, scheme="http", userinfo=None, cacert=None, urls=1,
             timeout=client.DEFAULT_TIMEOUT, input=None, proxy=True):
        """curl through this proxy; --cacert is the proxy's CA (for MITM)."""
        ca = cacert or self.ca_pem
        pre = (self.proxy_args(scheme, userinfo, ca) if proxy else []) + ["--cacert", str(ca)]
        return client.run_curl(pre + list(args), home=self.home, urls_count=urls,
                               timeout=timeout, input=input)

    def streaming_curl(self, *args, scheme="http", timeout=client.DEFAULT_TIMEOUT):
        pre = self.proxy_args(scheme) + ["--cacert", str(self.ca_pem)]
        return client.StreamingCurl(pre + list(args), home=self.home, timeout=timeout)


def default_resolve(port):
    return [f"{h}:443:127.0.0.1:{port}" for h in ("api.openai.com", "api.github.com",
                                                  "upstream.test")]
