"""pip install from a local registry: a simple-index (PEP 503) origin
serving a wheel built at test time, taking its key as Basic __token__:KEY,
through `agentvault run` (HTTPS_PROXY, PIP_CERT) and a gateway
(--index-url http://.../simple/ --trusted-host). The index links are
relative, so they work through a gateway too."""
import base64
import hashlib
import io
import zipfile

import pytest

import compat

PY = "/usr/bin/python3"
NAME, VERSION = "compat-hello", "1.0"
DIST = "compat_hello"


def build_wheel():
    """A minimal pure-Python wheel (PEP 427), made by hand."""
    files = {
        f"{DIST}/__init__.py": b'GREETING = "hello through agentvault"\n',
        f"{DIST}-{VERSION}.dist-info/METADATA":
            f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n".encode(),
        f"{DIST}-{VERSION}.dist-info/WHEEL":
            b"Wheel-Version: 1.0\nGenerator: compat\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = ""
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{path},sha256={digest},{len(data)}\n"
    record += f"{DIST}-{VERSION}.dist-info/RECORD,,\n"
    files[f"{DIST}-{VERSION}.dist-info/RECORD"] = record.encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files.items():
            z.writestr(path, data)
    return f"{DIST}-{VERSION}-py3-none-any.whl", buf.getvalue()


def index_app():
    fname, wheel = build_wheel()
    sha = hashlib.sha256(wheel).hexdigest()
    root = b'<!DOCTYPE html><html><body><a href="compat-hello/">compat-hello</a></body></html>\n'
    page = (f'<!DOCTYPE html><html><body><a href="../../files/{fname}#sha256={sha}">'
            f"{fname}</a></body></html>\n").encode()

    def app(req):
        if req.path == "/simple/":
            return compat.Response(200, [("content-type", "text/html")], root)
        if req.path in ("/simple/compat-hello/", "/simple/compat_hello/"):
            return compat.Response(200, [("content-type", "text/html")], page)
        if req.path == f"/files/{fname}":
            return compat.Response(200, [("content-type", "application/octet-stream")], wheel)
        return compat.Response(404, [("content-type", "text/plain")], b"not found\n")
    return app


@pytest.mark.parametrize("where", ["proxy", "gateway"])
def test_pip_install(stack, tmp_path, where):
    o = stack.add_origin("pypi", auth="basic __token__", app=index_app())
    stack.start()
    target = tmp_path / "site"
    args = [PY, "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check",
            "--no-input", "--target", str(target)]
    with stack.case("pip install", where, o):
        if where == "proxy":
            r = stack.run_proxied(args + ["--index-url", f"https://{o.host}/simple/", NAME])
        else:
            r = stack.run_client(args + ["--index-url", f"{stack.gateway_url('pypi')}/simple/",
                                         "--trusted-host", "127.0.0.1", NAME])
        r.check()
        assert (target / DIST / "__init__.py").read_text().startswith("GREETING")
        o.server.assert_all_keyed(2)  # the project page and the wheel
