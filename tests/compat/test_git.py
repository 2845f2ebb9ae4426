"""git clone and push over HTTPS: `git http-backend` (CGI) behind a fake
origin that checks the key (Basic x-access-token:KEY, as GitHub takes
tokens), through `agentvault run` and through a gateway (http:// remote).
git sends no credential of its own (the origin never answers 401)."""
import subprocess

import pytest

import compat

BACKEND = "/usr/lib/git-core/git-http-backend"
GIT_ENV = {"GIT_AUTHOR_NAME": "compat", "GIT_AUTHOR_EMAIL": "compat@example.invalid",
           "GIT_COMMITTER_NAME": "compat", "GIT_COMMITTER_EMAIL": "compat@example.invalid",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}


def git(*args, cwd=None, env=None):
    e = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", **GIT_ENV, **(env or {})}
    p = subprocess.run(["git", *args], cwd=cwd, env=e, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, f"git {' '.join(args)}: {p.stderr}"
    return p.stdout


def backend_app(root):
    """A compat app running git http-backend as CGI for every request."""
    def app(req):
        env = {"PATH": "/usr/bin:/bin", "GIT_PROJECT_ROOT": str(root),
               "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": req.method,
               "PATH_INFO": req.path, "QUERY_STRING": req.query,
               "CONTENT_TYPE": req.header("content-type") or "",
               "CONTENT_LENGTH": str(len(req.body)), "REMOTE_USER": "compat",
               "REMOTE_ADDR": "127.0.0.1", "GATEWAY_INTERFACE": "CGI/1.1",
               "SERVER_PROTOCOL": "HTTP/1.1"}
        for k, v in req.headers:
            if k.lower() not in ("authorization", "content-type", "content-length"):
                env["HTTP_" + k.upper().replace("-", "_")] = v
        p = subprocess.run([BACKEND], input=req.body, env=env, capture_output=True, timeout=60)
        head, _, body = p.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, body = p.stdout.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                headers.append((k.strip(), v.strip()))
        return compat.Response(status, headers, body)
    return app


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    bare = root / "project.git"
    git("init", "-q", "--bare", "-b", "main", str(bare))
    git("config", "http.receivepack", "true", cwd=bare)
    seed = tmp_path / "seed"
    git("init", "-q", "-b", "main", str(seed))
    (seed / "README").write_text("compat\n")
    git("add", "README", cwd=seed)
    git("commit", "-q", "-m", "first", cwd=seed)
    git("push", "-q", str(bare), "main", cwd=seed)
    return root


def _clone_commit_push(stack, url, proxied, work):
    run = stack.run_proxied if proxied else stack.run_client
    env = {**GIT_ENV, "GIT_CONFIG_GLOBAL": "/dev/null"}
    r = run(["git", "clone", "-q", url, str(work)], env=env).check()
    assert (work / "README").read_text() == "compat\n", r.stderr
    (work / "new.txt").write_text("pushed through agentvault\n")
    run(["git", "-C", str(work), "add", "new.txt"], env=env).check()
    run(["git", "-C", str(work), "commit", "-q", "-m", "second"], env=env).check()
    run(["git", "-C", str(work), "push", "-q", "origin", "main"], env=env).check()


@pytest.mark.parametrize("where", ["proxy", "gateway"])
def test_git_clone_and_push(stack, repo, tmp_path, where):
    o = stack.add_origin("git", auth="basic x-access-token", app=backend_app(repo))
    stack.start()
    with stack.case("git clone + push", where, o):
        if where == "proxy":
            url = f"https://{o.host}/project.git"
        else:
            url = f"{stack.gateway_url('git')}/project.git"
        _clone_commit_push(stack, url, where == "proxy", tmp_path / "clone")
        log = git("--git-dir", str(repo / "project.git"), "log", "--format=%s", "main")
        assert log.split() == ["second", "first"]
        # info/refs + upload-pack for the clone, info/refs + receive-pack for the push
        o.server.assert_all_keyed(4)
